"""FileTemplateSource: name validation, resolution, listing; and the shipped example templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convkit.backends.engines.jinja import JinjaTextEngine
from convkit.errors import ConfigError, TemplateNotFound, ValidationError
from convkit.templates import FileTemplateSource, validate_template_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "templates"


@pytest.fixture
def engine() -> JinjaTextEngine:
    return JinjaTextEngine()


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "invoice.html").write_text("<p>{{ n }}</p>")
    (d / "hello.txt").write_text("hi\n")
    (d / "report.v2.htm").write_text("<h1>v2</h1>")
    (d / "invoice.schema.json").write_text("{}")
    (d / ".hidden.html").write_text("secret")
    (d / "notes.md").write_text("# not a template")
    return d


@pytest.fixture
def source(tdir: Path, engine: JinjaTextEngine) -> FileTemplateSource:
    return FileTemplateSource(tdir, [engine])


def test_load(source: FileTemplateSource, tdir: Path) -> None:
    t = source.load("invoice")
    assert (t.name, t.engine, t.format) == ("invoice", "jinja", "html")
    assert t.source == b"<p>{{ n }}</p>"
    assert t.origin == str(tdir / "invoice.html")
    assert source.load("hello").format == "txt"
    assert source.load("report.v2").format == "html"


def test_names(source: FileTemplateSource) -> None:
    assert source.names() == ["hello", "invoice", "report.v2"]


@pytest.mark.parametrize(
    "name", ["../x", "a/b", ".hidden", "", "..", "/etc/passwd", "a\\b", "x" * 65, "a\x00b", "é"]
)
def test_invalid_names(source: FileTemplateSource, name: str) -> None:
    with pytest.raises(ValidationError) as exc:
        source.load(name)
    assert exc.value.code == "invalid_template_name"


@pytest.mark.parametrize("name", ["nope", "invoice.html", "notes", "invoice.schema"])
def test_not_found(source: FileTemplateSource, name: str) -> None:
    with pytest.raises(TemplateNotFound):
        source.load(name)


def test_ambiguous(source: FileTemplateSource, tdir: Path) -> None:
    (tdir / "invoice.txt").write_text("x")
    with pytest.raises(ValidationError) as exc:
        source.load("invoice")
    assert exc.value.code == "ambiguous_template"
    assert "invoice" in source.names()


def test_missing_directory(tmp_path: Path, engine: JinjaTextEngine) -> None:
    source = FileTemplateSource(tmp_path / "absent", [engine])
    assert source.names() == []
    with pytest.raises(TemplateNotFound):
        source.load("invoice")


def test_symlink_escape(source: FileTemplateSource, tdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    (tdir / "leak.txt").symlink_to(outside)
    (tdir / "inside.txt").symlink_to(tdir / "hello.txt")
    with pytest.raises(TemplateNotFound):
        source.load("leak")
    assert source.load("inside").source == b"hi\n"
    assert "leak" not in source.names()
    assert "inside" in source.names()


def test_directory_named_like_a_template(source: FileTemplateSource, tdir: Path) -> None:
    (tdir / "folder.html").mkdir()
    with pytest.raises(TemplateNotFound):
        source.load("folder")


@pytest.mark.parametrize("name", [None, 7, b"invoice", ["invoice"]])
def test_a_name_must_be_a_string(name: object) -> None:
    """The one name rule refuses non-strings before matching; valid names come back unchanged."""
    with pytest.raises(ValidationError) as exc:
        validate_template_name(name)
    assert exc.value.code == "invalid_template_name"
    assert validate_template_name("report.v2") == "report.v2"


def test_two_engines_claiming_a_suffix(tmp_path: Path) -> None:
    class Other(JinjaTextEngine):
        name = "other"
        suffixes = {".txt": "txt"}

    with pytest.raises(ConfigError, match=r"'jinja' and 'other' both claim the suffix '.txt'"):
        FileTemplateSource(tmp_path, [JinjaTextEngine(), Other()])


def test_example_invoice_renders(engine: JinjaTextEngine) -> None:
    source = FileTemplateSource(EXAMPLES, [engine])
    assert {"invoice", "hello"} <= set(source.names())
    data = json.loads((EXAMPLES / "invoice.json").read_text(encoding="utf-8"))
    assert data["customer"]["name"] == "Ada Lovelace Ltd."
    assert len(data["items"]) == 4
    subtotal = sum(i["quantity"] * i["unit_price"] for i in data["items"])
    total = subtotal * (1 + data["invoice"]["tax_rate"])
    html = engine.render(source.load("invoice"), data, options={"strict": True}).content.decode()
    assert "Ada Lovelace Ltd." in html
    assert f"{total:.2f}" == "2654.59"
    assert "2654.59" in html


def test_example_hello_renders(engine: JinjaTextEngine) -> None:
    source = FileTemplateSource(EXAMPLES, [engine])
    assert engine.render(source.load("hello"), {"name": "Ada"}).content == b"Hello Ada!\n"
