"""Sessions: tests (all), one per adapter extra, lint, typecheck, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

ADAPTERS = ("fastapi", "flask", "django")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite with every extra installed (what `./dev test` runs)."""
    session.install("-e", ".[all,test]")
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("adapter", ADAPTERS)
def adapter(session: nox.Session, adapter: str) -> None:
    """One adapter's extra only, running its marker: a leaked framework import shows up."""
    session.install("-e", f".[{adapter},test]")
    session.run("pytest", "-m", adapter, "tests/test_http.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests")
    session.run("ruff", "format", "--check", "src", "tests")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[all,test]", "mypy")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the API reference and check docs against the code."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/gen_api_docs.py")
    session.run("pytest", "tests/test_docs.py")
