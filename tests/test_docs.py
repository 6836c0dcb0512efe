"""The manual stays true to the code: generated API reference, hooks, settings, CLI, links, what
the guides quote, and ./dev."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import click
import pytest
from lxml import etree

import convkit.hookspecs
from convkit.cli import main as cli_main
from convkit.errors import ValidationError
from convkit.job import JobSpec
from convkit.service import ConvKit
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


# -- (7) what the guides quote --------------------------------------------------------------------


def test_quickstart_lists_the_example_templates() -> None:
    """The `GET /templates` answer quoted in the quickstart is what ./dev serve's folder holds."""
    from convkit.plugins import get_plugin_manager
    from convkit.service import EngineTable
    from convkit.settings import Settings
    from convkit.templates import FileTemplateSource

    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    quoted = re.search(r'^# (\{"templates":.*\})$', text, re.MULTILINE)
    assert quoted is not None
    engines = EngineTable.from_plugins(get_plugin_manager(), Settings()).engines()
    names = FileTemplateSource(ROOT / "examples" / "templates", engines).names()
    assert json.loads(quoted.group(1)) == {"templates": names}


def _document_text(content: bytes) -> str:
    """The text of a rendered document: every XML part of an office file, or the bytes."""
    if not zipfile.is_zipfile(io.BytesIO(content)):
        return content.decode("utf-8")
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return "\n".join(
            "".join(etree.fromstring(zf.read(name)).itertext())
            for name in zf.namelist()
            if name.endswith(".xml")
        )


_LOCALE_TAGS = "{{ n|format_decimal }} {{ d|format_date('long') }}"


def _locale_template(suffix: str, tags: str = _LOCALE_TAGS) -> bytes:
    from convkit.testing.builders import docx as docx_builder
    from convkit.testing.builders import odf as odf_builder
    from convkit.testing.builders import xlsx as xlsx_builder

    if suffix == ".docx":
        return docx_builder.docx(docx_builder.p(tags))
    if suffix == ".odt":
        return odf_builder.odt(odf_builder.p(odf_builder.t(tags)))
    if suffix == ".xlsx":
        return xlsx_builder.xlsx([xlsx_builder.Sheet("S", {"A1": tags})])
    return tags.encode()


@pytest.mark.parametrize("suffix", [".txt", ".html", ".docx", ".odt", ".xlsx"])
def test_locale_filters_work_in_every_engine(suffix: str, tmp_path: Path) -> None:
    """Quickstart §3: `convkit.render(..., locale=...)` formats numbers and dates in each engine."""
    import convkit

    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    assert "`{{ 1234.5|format_decimal }}` renders `1.234,5`" in text
    template = tmp_path / f"t{suffix}"
    template.write_bytes(_locale_template(suffix))
    data = {"n": 1234.5, "d": "2026-01-15"}
    de = _document_text(convkit.render(template, data, locale="de_DE"))
    en = _document_text(convkit.render(template, data, locale="en_US"))
    assert "1.234,5 15. Januar 2026" in de
    assert "1,234.5 January 15, 2026" in en


@pytest.mark.parametrize("suffix", [".txt", ".docx"])
def test_unknown_currency_is_a_template_error_naming_the_filter(
    suffix: str, tmp_path: Path
) -> None:
    """templates.md: a bad currency code is a `template_error` naming the filter (Babel alone
    would print `1.234,50 XYZQ`), in the Jinja engine and an office one."""
    import convkit
    from convkit.errors import TemplateError

    text = (DOCS / "templates.md").read_text(encoding="utf-8")
    assert "A bad pattern, currency code or value is a `template_error` naming the filter" in text
    template = tmp_path / f"t{suffix}"
    template.write_bytes(_locale_template(suffix, "{{ 1234.5|format_currency('XYZQ') }}"))
    with pytest.raises(TemplateError) as exc:
        convkit.render(template, {}, locale="de_DE")
    assert exc.value.code == "template_error"
    assert "format_currency: unknown currency code 'XYZQ'" in exc.value.message
    template.write_bytes(_locale_template(suffix, "{{ 1234.5|format_currency('EUR') }}"))
    assert "1.234,50\xa0€" in _document_text(convkit.render(template, {}, locale="de_DE"))


def test_schema_error_is_the_documented_json_pointer(kit: ConvKit, templates_dir: Path) -> None:
    """templates.md quotes the 422 message for bad data; the service gives exactly that."""
    from convkit.testing.http import ALICE_KEY

    text = (DOCS / "templates.md").read_text(encoding="utf-8")
    quoted = re.search(r"\(`(data does not match the template's schema at [^`]+)`\)", text)
    assert quoted is not None
    item = {"type": "object", "properties": {"quantity": {"type": "number"}}}
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": item}}}
    (templates_dir / "greeting.schema.json").write_text(json.dumps(schema), encoding="utf-8")
    data = {"items": [{"quantity": 1}, {"quantity": 2}, {"quantity": 3}, {"quantity": "x"}]}
    tenant = kit.settings.tenant_for(ALICE_KEY)
    assert tenant is not None
    with pytest.raises(ValidationError) as exc:
        kit.validate(tenant, JobSpec("greeting", "txt", data=data))
    assert (exc.value.code, exc.value.message) == ("invalid_data", quoted.group(1))


@pytest.mark.libreoffice
@pytest.mark.slow
def test_worker_starts_the_office_pool_at_start_up(tmp_path: Path) -> None:
    """operations.md: a worker starts LibreOffice in the background as it starts, before any
    job asks for a conversion."""
    from convkit.service import ConvKit
    from convkit.settings import Settings
    from convkit.worker import Worker
    from tests.fixtures.office.support import Recorder, require_soffice

    require_soffice()
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    assert "starts the pool in the background\n  as it starts" in text
    recorder = Recorder()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        storage_url=str(tmp_path / "storage"),
        templates_dir=str(tmp_path),
        office_pool_size=1,
        worker_threads=1,
    )
    kit = ConvKit.from_settings(settings, plugins=[recorder], migrate=True)
    worker = Worker(kit)
    try:
        worker.start()
        deadline = time.monotonic() + 120  # a bound for a slow machine, not a measurement
        while not any(e["idle"] for e in recorder.of("converter_pool_changed")):
            assert time.monotonic() < deadline, "no LibreOffice process became idle"
            time.sleep(0.1)
    finally:
        worker.stop()
        kit.close()


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def _examples_paths(text: str) -> set[str]:
    return set(re.findall(r"examples/[\w./-]*\w", text))


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md", "docs/cli.md"])
def test_example_files_the_guides_name_exist(page: str) -> None:
    """Every `examples/...` file a guide's command uses is in the repository."""
    paths = _examples_paths((ROOT / page).read_text(encoding="utf-8"))
    assert paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


@pytest.mark.libreoffice
@pytest.mark.slow
def test_quickstart_and_readme_sessions_run_as_written(tmp_path: Path) -> None:
    """Quickstart §2 and README's client session, run by bash as written (only the port
    differs) against `convkit serve` on the example templates: submit, keep `$JOB`, poll until
    succeeded, download, delete, upload the example spreadsheet. The poll loop also ends on a
    wrong id, with the error."""
    server, client = tmp_path / "server", tmp_path / "client"
    server.mkdir()
    client.mkdir()
    (client / "examples").symlink_to(ROOT / "examples")  # the guides' relative paths
    log = server / "serve.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "API_KEY": "dev-secret",
        "DATABASE_URL": f"sqlite:///{server / 'convkit.db'}",
        "STORAGE_URL": str(server / "storage"),
        "TEMPLATES_DIR": str(ROOT / "examples" / "templates"),
        "WORKER_THREADS": "1",
        "OFFICE_POOL_SIZE": "1",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "convkit.cli", "serve", "--port", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=server,
        )
    try:
        deadline = time.monotonic() + 60  # a bound for a slow machine, not a measurement
        while not (found := re.search(r"serving fastapi on http://(\S+)/api/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        address = found.group(1)

        def run(script: str) -> str:
            done = subprocess.run(
                ["bash", "-e", "-c", script.replace("127.0.0.1:8000", address)],
                env={**os.environ, "API_KEY": "dev-secret"},
                cwd=client,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, (done.stdout, done.stderr)
            return done.stdout

        quickstart = (DOCS / "quickstart.md").read_text(encoding="utf-8")
        session = quickstart.split("## 2. ", 1)[1].split("## 3. ", 1)[0]
        blocks = _sh_blocks(session)
        out = run("\n".join(blocks))
        assert {"succeeded", "204"} <= set(out.splitlines()), out
        assert (client / "invoice.pdf").read_bytes().startswith(b"%PDF")
        assert '"template":null' in out, out  # the upload became a job
        (client / "invoice.pdf").unlink()

        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        [block] = [b for b in _sh_blocks(readme) if b.startswith("KEY=dev-secret")]
        out = run(block)
        assert "succeeded" in out.splitlines() and "204 No Content" in out, out
        assert (client / "invoice.pdf").read_bytes().startswith(b"%PDF")

        setup = [line for line in blocks[0].splitlines() if line.startswith(("BASE=", "AUTH="))]
        [loop] = [b for b in blocks if "for try in" in b]
        wrong = "00000000-0000-0000-0000-000000000000"
        script = "\n".join([*setup, f"JOB={wrong}", loop])
        assert run(script) == f"error: no job '{wrong}'\n"
    finally:
        proc.terminate()
        proc.wait(60)


# -- (8) ./dev, the one entry point ---------------------------------------------------------------


def _run_dev(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("TEMPLATES_DIR", "CONVKIT_VENV")}
    return subprocess.run(
        [str(ROOT / "dev"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**environ, **env},
        cwd=cwd,
    )


@pytest.fixture
def fake_venv(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A virtualenv whose tools log their arguments, TEMPLATES_DIR and working directory (and
    fail when FAIL names them), marked as up to date, and a dpkg-query saying the OS packages
    are installed: ./dev installs nothing."""
    venv, log, tools = tmp_path / "venv", tmp_path / "calls.log", tmp_path / "tools"
    (venv / "bin").mkdir(parents=True)
    tools.mkdir()
    for name in ("python", "ruff", "mypy", "convkit"):
        script = venv / "bin" / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $* [$TEMPLATES_DIR] in $PWD" >> "{log}"\n'
            f'[ "$FAIL" != "{name}" ]\n'
        )
        script.chmod(0o755)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".convkit-deps").write_text(digest + "\n")
    dpkg = tools / "dpkg-query"
    dpkg.write_text("#!/bin/sh\nprintf 'install ok installed'\n")
    dpkg.chmod(0o755)
    env = {"CONVKIT_VENV": str(venv), "PATH": f"{tools}:{os.environ['PATH']}"}
    return env, log


@pytest.mark.parametrize("args", [(), ("help",)])
def test_dev_prints_its_usage(args: tuple[str, ...]) -> None:
    """`./dev` alone prints a usage naming every command of its case statement."""
    out = _run_dev(*args)
    assert out.returncode == 0
    assert out.stdout.startswith("Usage: ./dev COMMAND")
    script = (ROOT / "dev").read_text(encoding="utf-8")
    commands = re.findall(r"^  (\w+)(?: \| [\w-]+)*\)", script, re.MULTILINE)
    assert {"serve", "test", "convkit", "install", "help"} <= set(commands)
    for command in commands:
        assert re.search(rf"^  {command}\b", out.stdout, re.MULTILINE), command


def test_dev_refuses_an_unknown_command() -> None:
    out = _run_dev("deploy")
    assert out.returncode == 2
    assert "unknown command 'deploy'" in out.stderr
    assert "Usage: ./dev" in out.stderr


def test_dev_test_lints_and_type_checks_before_pytest(
    fake_venv: tuple[dict[str, str], Path],
) -> None:
    """What CI runs: ruff check, ruff format --check, mypy, then pytest with the arguments."""
    env, log = fake_venv
    out = _run_dev("test", "-p", "no:cacheprovider", **env)
    assert out.returncode == 0, out.stderr
    calls = [line.rsplit(" [", 1)[0].strip() for line in log.read_text().splitlines()]
    assert calls == [
        "ruff check src tests",
        "ruff format --check src tests",
        "mypy",
        "python -m pytest -p no:cacheprovider",
    ]
    assert all(line.endswith(f" in {ROOT}") for line in log.read_text().splitlines())


def test_dev_test_stops_at_the_first_failing_check(fake_venv: tuple[dict[str, str], Path]) -> None:
    env, log = fake_venv
    out = _run_dev("test", FAIL="mypy", **env)
    assert out.returncode != 0
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["ruff", "ruff", "mypy"]


def test_dev_convkit_serves_the_example_templates(fake_venv: tuple[dict[str, str], Path]) -> None:
    """`./dev convkit doctor` sees the templates `./dev serve` serves, unless TEMPLATES_DIR says
    otherwise."""
    env, log = fake_venv
    assert _run_dev("convkit", "doctor", **env).returncode == 0
    assert _run_dev("convkit", "doctor", TEMPLATES_DIR="/srv/t", **env).returncode == 0
    assert log.read_text().splitlines() == [
        f"convkit doctor [{ROOT / 'examples' / 'templates'}] in {ROOT}",
        f"convkit doctor [/srv/t] in {ROOT}",
    ]


@pytest.mark.parametrize("command", [("convkit", "convert", "a.docx", "-o", "a.pdf"), ("serve",)])
def test_dev_runs_the_cli_in_the_callers_directory(
    fake_venv: tuple[dict[str, str], Path], tmp_path: Path, command: tuple[str, ...]
) -> None:
    """`./dev convkit` and `./dev serve` from another directory: relative paths (and
    convkit.db, storage/) are the caller's; the templates stay the repository's examples."""
    env, log = fake_venv
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    assert _run_dev(*command, cwd=caller, **env).returncode == 0
    cli = " ".join(command[1:] if command[0] == "convkit" else command)
    assert log.read_text().splitlines() == [
        f"convkit {cli} [{ROOT / 'examples' / 'templates'}] in {caller}"
    ]


def test_dev_convkit_installs_the_os_packages(
    fake_venv: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    """`./dev convkit` needs LibreOffice (doctor, convert) like serve: it asks for the missing
    OS packages the same way (here a dpkg-query saying none is installed and a logging
    apt-get)."""
    env, log = fake_venv
    tools = Path(env["PATH"].split(os.pathsep, 1)[0])
    (tools / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    for name in ("apt-get", "sudo"):
        (tools / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (tools / name).chmod(0o755)
    assert _run_dev("convkit", "--version", **env).returncode == 0
    calls = log.read_text()
    assert "apt-get install" in calls and "libreoffice-writer-nogui" in calls, calls
    assert calls.splitlines()[-1].startswith("convkit --version")


def test_readme_says_how_to_list_the_nox_sessions() -> None:
    """README: `.venv/bin/nox -l` (./dev installs nox) lists lint, typecheck and tests."""
    pytest.importorskip("nox", reason="nox comes with the dev extra that ./dev installs")
    assert "`.venv/bin/nox -l`" in (ROOT / "README.md").read_text(encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "-f", str(ROOT / "noxfile.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    for session in ("tests", "lint", "typecheck", "docs"):
        assert re.search(rf"^[*-] {session}\b", out.stdout, re.MULTILINE), session


# -- README's production section: every variable it sets is a declared setting ------------------

_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def _production_env(readme: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs the sh blocks of README's "## Production" section give to
    convkit: ``export NAME=value`` lines and ``NAME=value`` prefixes of a command. A bare
    assignment (``KEY=...``, ``API1=$!``) is the shell's own variable and left out."""
    start = readme.index("\n## Production\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    pairs = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace(" & ", " ; "), comments=True)
            if words[:1] == ["export"]:
                words = words[1:]
                if m := _ASSIGNMENT.match(words[0]):
                    pairs.append((m[1], m[2]))
                continue
            prefix = []
            while words and (m := _ASSIGNMENT.match(words[0])):
                prefix.append((m[1], m[2]))
                words = words[1:]
            if words and words[0] != ";" and not any(v.startswith("$(") for _, v in prefix):
                pairs += prefix
    return pairs


def test_production_env_scanner() -> None:
    text = (
        "x\n## Production\n```sh\nexport A_B=1   # note\nKEY=secret\nC=2 D='{\"k\": 1}' run &"
        " W1=$!\nJOB=$(curl -s x \\\n```\n## Next\n```sh\nexport E=3\n```\n"
    )
    assert _production_env(text) == [("A_B", "1"), ("C", "2"), ("D", '{"k": 1}')]


def test_readme_production_section_sets_only_declared_settings() -> None:
    """Each variable README's production commands set is declared (core or a built-in
    plugin) and its value there is accepted, so the section cannot drift from the settings."""
    from convkit.plugins import get_plugin_manager

    pairs = _production_env((ROOT / "README.md").read_text(encoding="utf-8"))
    names = {name for name, _ in pairs}
    assert {"DATABASE_URL", "CONVKIT_QUEUE", "STORAGE_OPTIONS", "WORKER_THREADS"} <= names
    assert {"HEALTH_PORT", "OFFICE_POOL_SIZE"} <= names
    pm = get_plugin_manager(load_entry_points=False)
    exported = {n: v.replace("$PWD", str(ROOT)) for n, v in pairs}
    for name, value in pairs:
        env = exported | {name: value.replace("$PWD", str(ROOT))}
        settings = Settings.from_env(env).with_plugin_settings(pm)
        assert settings.get(name) is not None, name  # KeyError: not declared
