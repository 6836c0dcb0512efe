"""The manual stays true to the code: generated API reference, hooks, settings, CLI, links."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType

import click
import pytest

import convkit.hookspecs
from convkit.cli import main as cli_main
from convkit.settings import CORE_SETTINGS, Setting, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"


def _load_generator() -> ModuleType:
    return _load_script("gen_api_docs")


def _load_script(name: str) -> ModuleType:
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hookspecs() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(convkit.hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "convkit_spec")
    }


def _annotation(value: object) -> str:
    # hookspecs.py uses `from __future__ import annotations`: annotations are the source text.
    return value if isinstance(value, str) else inspect.formatannotation(value)


def hook_heading(name: str, fn: object) -> str:
    """``## name(arg: Type, ...) -> Ret``, exactly as the signature is written in hookspecs.py."""
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = ", ".join(
        f"{p.name}: {_annotation(p.annotation)}" if p.annotation is not p.empty else p.name
        for p in sig.parameters.values()
    )
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"## {name}({params}){ret}"


# -- (1) the API reference is generated ------------------------------------------------------------


def test_api_md_is_generated_from_openapi() -> None:
    gen = _load_generator()
    expected = gen.render()
    actual = (DOCS / "api.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/api.md is stale: run python scripts/gen_api_docs.py"


def test_api_md_documents_every_operation() -> None:
    from convkit.http.openapi import openapi_document

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    doc = openapi_document()
    base = doc["servers"][0]["url"]
    for path, methods in doc["paths"].items():
        for method in methods:
            assert f"### {method.upper()} {base}{path}\n" in text


def test_error_table_matches_the_codes_in_the_source() -> None:
    assert _load_generator().check_error_table() == []


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _load_generator()
    stale = tmp_path / "api.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


# -- (2) every hook, with its exact signature ------------------------------------------------------


def test_heading_of_a_hook_signature() -> None:
    def sample(job: Job, will_retry: bool) -> None:  # type: ignore[name-defined]  # noqa: F821
        """Only its signature matters."""

    assert hook_heading("sample", sample) == "## sample(job: Job, will_retry: bool) -> None"


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_every_hookspec_is_documented_with_its_signature(name: str) -> None:
    text = (DOCS / "plugin_hooks.md").read_text(encoding="utf-8")
    heading = hook_heading(name, _hookspecs()[name])
    assert heading in text.splitlines(), f"docs/plugin_hooks.md lacks the heading {heading!r}"


def test_plugin_hooks_md_documents_no_unknown_hook() -> None:
    text = (DOCS / "plugin_hooks.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^## (\w+)\(", text, re.MULTILINE))
    assert documented == set(_hookspecs())


# -- (3) every hook has a test (the meta-test) -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_every_hookspec_has_a_test(name: str) -> None:
    pattern = re.compile(rf"^\s*(?:async\s+)?def test_hook_{name}\b", re.MULTILINE)
    for path in sorted(TESTS.rglob("*.py")):
        if pattern.search(path.read_text(encoding="utf-8")):
            return
    pytest.fail(f"no test function named test_hook_{name} under tests/")


# -- (4) every environment variable: configuration.md is generated from the declarations -------


def _load_config_generator() -> ModuleType:
    return _load_script("gen_config_doc")


def test_configuration_md_is_generated_from_the_declarations() -> None:
    expected = _load_config_generator().render()
    actual = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/configuration.md is stale: run python scripts/gen_config_doc.py"
    )


def test_config_check_mode_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _load_config_generator()
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert "stale" in capsys.readouterr().out


@pytest.mark.parametrize("setting", CORE_SETTINGS, ids=lambda s: s.env)
def test_every_core_setting_has_a_row(setting: Setting) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| `{setting.env}`", text, re.MULTILINE)
    for old in setting.deprecated_names:
        assert f"`{old}`" in text


def test_template_suffixes_come_from_the_engines() -> None:
    """TEMPLATES_DIR's note lists every suffix a built-in engine renders."""
    from convkit.plugins import get_plugin_manager
    from convkit.service import EngineTable

    pm = get_plugin_manager(load_entry_points=False)
    line = next(
        line
        for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("- `TEMPLATES_DIR`")
    )
    for engine in EngineTable.from_plugins(pm, Settings()).engines():
        for suffix in engine.suffixes:
            assert f"`{suffix}`" in line


# -- (5) every CLI command and option --------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli_main.commands))
def test_every_cli_command_is_documented(command: str) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert re.search(rf"^## `?convkit {command}\b", text, re.MULTILINE), (
        f"docs/cli.md has no '## convkit {command}' section"
    )


@pytest.mark.parametrize("command", sorted(cli_main.commands))
def test_every_cli_option_is_documented(command: str) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    section = re.split(rf"^## `?convkit {command}\b.*$", text, flags=re.MULTILINE)[-1]
    section = re.split(r"^## ", section, flags=re.MULTILINE)[0]
    for param in cli_main.commands[command].params:
        if isinstance(param, click.Option):
            flag = max(param.opts, key=len)
            assert f"`{flag}" in section, f"docs/cli.md, convkit {command}: {flag} undocumented"
        else:
            assert (param.name or "").upper() in section


# -- (6) links ------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(text: str) -> list[str]:
    # Code blocks and inline code are not links.
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [
        target
        for target in _LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


def test_link_scanner() -> None:
    text = "[a](jobs.md) [b](https://x.org) [c](#top) `[d](no.md)` [e](../README.md#x)"
    assert _relative_links(text) == ["jobs.md", "../README.md#x"]


def _anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_anchor_slugs(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text(
        "## convkit serve\n## 3. Render in Python, without a server\n## A\n## A\n",
        encoding="utf-8",
    )
    assert _anchors(page) == {"convkit-serve", "3-render-in-python-without-a-server", "a", "a-1"}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_link_anchors_exist(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    code_free = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    targets = [t for t in _LINK.findall(code_free) if "#" in t and not re.match(r"^[a-z]+:", t)]
    broken = []
    for target in targets:
        file_part, anchor = target.split("#", 1)
        path = (DOCS / file_part) if file_part else DOCS / page
        if path.suffix == ".md" and path.exists() and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"docs/{page} links to missing anchors: {broken}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_point_at_existing_files(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    broken = [
        target
        for target in _relative_links(text)
        if not (DOCS / target.split("#", 1)[0]).resolve().exists()
    ]
    assert not broken, f"docs/{page} links to missing files: {broken}"


def test_docs_pages_exist() -> None:
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {
        "index.md",
        "quickstart.md",
        "configuration.md",
        "api.md",
        "frameworks.md",
        "jobs.md",
        "plugins.md",
        "plugin_hooks.md",
        "operations.md",
        "cli.md",
    } <= pages
