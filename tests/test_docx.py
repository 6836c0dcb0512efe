"""The DOCX engine: docxtpl's tag families, Word-like run splitting, every part, rich content,
escaping, limits, errors, the sandbox, unsafe packages, docxtpl parity and a real LibreOffice
conversion of the sample template."""

from __future__ import annotations

import base64
import importlib.util
import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from convkit.backends.engines.docx import DocxEngine
from convkit.errors import TemplateError, UnsafeDocument
from convkit.ports import RenderedDocument, Template
from convkit.testing.builders.docx import docx, p, r, tbl, tc, tr, word_split
from convkit.testing.engine import TemplateEngineContract
from convkit.testing.office import DOCX_KIT, OfficeEngineContract, OfficeKit

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
EXAMPLES = Path(__file__).parent.parent / "examples" / "templates"


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def engine() -> DocxEngine:
    return DocxEngine()


def tpl(source: bytes, name: str = "t") -> Template:
    return Template(name, engine="docx", format="docx", source=source)


def render(
    engine: DocxEngine, source: bytes, data: dict[str, Any] | None = None, **kw: Any
) -> zipfile.ZipFile:
    out = engine.render(tpl(source), data or {}, **kw)
    assert out.format == "docx"
    return zipfile.ZipFile(io.BytesIO(out.content))


def xml(zf: zipfile.ZipFile, part: str = "word/document.xml") -> etree._Element:
    return etree.fromstring(zf.read(part))  # raises if not well-formed


def paragraph_text(para: etree._Element) -> str:
    out = []
    for el in para.iter(f"{W}t", f"{W}br", f"{W}tab"):
        if el.tag == f"{W}t":
            out.append(el.text or "")
        elif el.tag == f"{W}tab":
            out.append("\t")
        else:
            out.append("\f" if el.get(f"{W}type") == "page" else "\n")
    return "".join(out)


def texts(zf: zipfile.ZipFile, part: str = "word/document.xml") -> list[str]:
    """The text of each paragraph (w:t joined; w:br -> \\n, page break -> \\f, w:tab -> \\t)."""
    root = xml(zf, part)
    return [paragraph_text(para) for para in root.iter(f"{W}p")]


def body(zf: zipfile.ZipFile) -> str:
    return "\u2029".join(t for t in texts(zf) if t)


PNG = (
    b"\x89PNG\r\n\x1a\n"
    + struct.pack(">I", 13)
    + b"IHDR"
    + struct.pack(">IIBBBBB", 4, 2, 8, 2, 0, 0, 0)
    + struct.pack(">I", zlib.crc32(b"IHDR" + struct.pack(">IIBBBBB", 4, 2, 8, 2, 0, 0, 0)))
    + struct.pack(">I", 0)
    + b"IEND"
    + struct.pack(">I", zlib.crc32(b"IEND"))
)


class TestDocxOffice(OfficeEngineContract):
    @pytest.fixture
    def kit(self) -> OfficeKit:
        return DOCX_KIT


class TestDocxContract(TemplateEngineContract):
    @pytest.fixture
    def engine(self) -> DocxEngine:
        return DocxEngine()

    @pytest.fixture
    def engine_template(self) -> tuple[Template, dict[str, Any], str]:
        source = docx(p(r("Dear "), word_split("{{ name }}"), r(",")))
        return tpl(source), {"name": "Ada"}, "Dear Ada,"

    @pytest.fixture
    def broken_template(self) -> Template:
        return tpl(docx(p("{% if x %}")))

    def extract_text(self, document: RenderedDocument) -> str:
        return "\n".join(texts(zipfile.ZipFile(io.BytesIO(document.content))))


# --------------------------------------------------------------------------------------------------
# plain tags, run splitting, every part


def test_variables_split_across_runs_proofing_marks_and_bookmarks(engine: DocxEngine) -> None:
    source = docx(
        p(r("Dear "), word_split("{{ customer.name }}"), r(", total "), word_split("{{ total }}"))
        + p(word_split("{% if vip %}"), r("VIP "), word_split("{% endif %}"), r("end"))
    )
    zf = render(engine, source, {"customer": {"name": "Ada"}, "total": 12, "vip": True})
    assert texts(zf)[:2] == ["Dear Ada, total 12", "VIP end"]
    raw = zf.read("word/document.xml")
    assert b"proofErr" in raw
    assert b"bookmarkStart" in raw


def test_every_part_is_rendered(engine: DocxEngine) -> None:
    source = docx(
        p("Body {{ n }}"),
        headers=[p("Header ", word_split("{{ n }}"))],
        footers=[p("Footer {{ n }}")],
        footnotes=[p("Footnote {{ n }}")],
        endnotes=[p("Endnote {{ n }}")],
        comments=[p("Comment {{ n }}")],
        title="Title {{ n }}",
        custom={"Number": "{{ n }}"},
    )
    zf = render(engine, source, {"n": "N-1 <&>"})
    assert "Body N-1 <&>" in texts(zf)
    assert texts(zf, "word/header1.xml") == ["Header N-1 <&>"]
    assert texts(zf, "word/footer1.xml") == ["Footer N-1 <&>"]
    assert "Footnote N-1 <&>" in texts(zf, "word/footnotes.xml")
    assert "Endnote N-1 <&>" in texts(zf, "word/endnotes.xml")
    assert texts(zf, "word/comments.xml") == ["Comment N-1 <&>"]
    core = xml(zf, "docProps/core.xml")
    assert core.findtext("{http://purl.org/dc/elements/1.1/}title") == "Title N-1 <&>"
    custom = xml(zf, "docProps/custom.xml")
    assert "".join(custom.itertext()) == "N-1 <&>"


def test_untouched_members_are_kept(engine: DocxEngine) -> None:
    source = docx(p("{{ x }}"), extra={"word/media/logo.bin": b"\x00\x01binary"})
    zf = render(engine, source, {"x": 1})
    assert zf.read("word/media/logo.bin") == b"\x00\x01binary"
    assert zf.read("word/styles.xml") == zipfile.ZipFile(io.BytesIO(source)).read("word/styles.xml")
    assert zf.testzip() is None


def test_literal_delimiter_escapes(engine: DocxEngine) -> None:
    zf = render(engine, docx(p("a {_{ b }_} c {_% d %_}")), {})
    assert texts(zf)[0] == "a {{ b }} c {% d %}"


# --------------------------------------------------------------------------------------------------
# docxtpl's tag families


def test_paragraph_tags_repeat_and_drop_paragraphs(engine: DocxEngine) -> None:
    source = docx(
        p("{%p for item in items %}")
        + p("- ", word_split("{{ item }}"))
        + p("{%p endfor %}")
        + p("{%p if show %}")
        + p("hidden")
        + p("{%p endif %}")
        + p("{#p a comment #}")
        + p("after")
    )
    zf = render(engine, source, {"items": ["a", "b", "c"], "show": False})
    assert [t for t in texts(zf) if t] == ["- a", "- b", "- c", "after"]


def test_table_row_loop_repeats_rows(engine: DocxEngine) -> None:
    source = docx(
        tbl(
            tr(tc(p("Name")), tc(p("Qty")), tc(p("Price"))),
            tr(tc(p(word_split("{%tr for row in rows %}")))),
            tr(tc(p("{{ row.name }}")), tc(p("{{ row.qty }}")), tc(p("{{ row.price }}"))),
            tr(tc(p("{%tr endfor %}"))),
        )
    )
    rows = [{"name": f"n{i}", "qty": i, "price": i * 1.5} for i in range(50)]
    zf = render(engine, source, {"rows": rows})
    table = xml(zf).find(f".//{W}tbl")
    assert table is not None
    trs = table.findall(f"{W}tr")
    assert len(trs) == 51
    assert [paragraph_text(c) for c in trs[7].iter(f"{W}tc")] == ["n6", "6", "9.0"]


def test_nested_row_and_cell_loops_fix_the_grid(engine: DocxEngine) -> None:
    source = docx(
        tbl(
            tr(tc(p("{%tr for row in matrix %}"))),
            tr(
                tc(p("{%tc for cell in row %}")),
                tc(p("{{ cell }}")),
                tc(p("{%tc endfor %}")),
            ),
            tr(tc(p("{%tr endfor %}"))),
            cols=3,
        )
    )
    zf = render(engine, source, {"matrix": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]})
    table = xml(zf).find(f".//{W}tbl")
    assert table is not None
    trs = table.findall(f"{W}tr")
    assert [[paragraph_text(c) for c in row.findall(f"{W}tc")] for row in trs] == [
        ["1", "2", "3", "4", "5"],
        ["6", "7", "8", "9", "10"],
    ]
    assert len(table.findall(f"{W}tblGrid/{W}gridCol")) == 5


def test_run_tags_keep_surrounding_text_and_formatting(engine: DocxEngine) -> None:
    source = docx(p(r("Dear {%r if title %}Dr. {%r endif %}Ada", b=True)))
    zf = render(engine, source, {"title": True})
    assert texts(zf)[0] == "Dear Dr. Ada"
    zf = render(engine, source, {"title": False})
    assert texts(zf)[0] == "Dear Ada"
    runs = xml(zf).findall(f".//{W}r")
    assert all(run.find(f"{W}rPr/{W}b") is not None for run in runs)


def test_colspan_and_cellbg(engine: DocxEngine) -> None:
    source = docx(
        tbl(
            tr(tc(p("{% colspan span %}wide")), tc(p(word_split("{% cellbg color %}"), "red"))),
            cols=3,
        )
    )
    zf = render(engine, source, {"span": 2, "color": "FF0000"})
    cells = xml(zf).findall(f".//{W}tc")
    assert cells[0].find(f"{W}tcPr/{W}gridSpan").get(f"{W}val") == "2"  # type: ignore[union-attr]
    shd = cells[1].find(f"{W}tcPr/{W}shd")
    assert shd is not None and shd.get(f"{W}fill") == "FF0000"
    assert [paragraph_text(c) for c in cells] == ["wide", "red"]
    # tcPr children stay in schema order: tcW before gridSpan
    assert [etree.QName(c).localname for c in cells[0].find(f"{W}tcPr")][:2] == [  # type: ignore[union-attr]
        "tcW",
        "gridSpan",
    ]


def test_vertical_merge(engine: DocxEngine) -> None:
    source = docx(
        tbl(
            tr(tc(p("{%tr for row in rows %}"))),
            tr(tc(p("{% vm %}{{ group }}")), tc(p("{{ row }}"))),
            tr(tc(p("{%tr endfor %}"))),
            cols=2,
        )
    )
    zf = render(engine, source, {"group": "G", "rows": ["a", "b", "c"]})
    trs = xml(zf).findall(f".//{W}tr")
    merges = [row.find(f"{W}tc/{W}tcPr/{W}vMerge").get(f"{W}val") for row in trs]  # type: ignore[union-attr]
    assert merges == ["restart", "continue", "continue"]
    assert [paragraph_text(row.find(f"{W}tc")) for row in trs] == ["G", "", ""]  # type: ignore[arg-type]


def test_horizontal_merge(engine: DocxEngine) -> None:
    source = docx(
        tbl(
            tr(tc(p("{%tc for x in cols %}")), tc(p("{% hm %}Title")), tc(p("{%tc endfor %}"))),
            tr(tc(p("{%tc for x in cols %}")), tc(p("{{ x }}")), tc(p("{%tc endfor %}"))),
            cols=1,
        )
    )
    zf = render(engine, source, {"cols": ["a", "b", "c"]})
    trs = xml(zf).findall(f".//{W}tr")
    first = trs[0].findall(f"{W}tc")
    assert len(first) == 1
    assert first[0].find(f"{W}tcPr/{W}gridSpan").get(f"{W}val") == "3"  # type: ignore[union-attr]
    assert [paragraph_text(c) for c in trs[1].findall(f"{W}tc")] == ["a", "b", "c"]


def test_whitespace_control_joins_paragraphs_like_docxtpl(engine: DocxEngine) -> None:
    source = docx(p("Items:") + p("{%- for x in xs %} {{ x }}") + p("{%- endfor %}") + p("end"))
    zf = render(engine, source, {"xs": [1, 2]})
    assert [t for t in texts(zf) if t] == ["Items: 1 2", "end"]


def test_control_characters_in_values(engine: DocxEngine) -> None:
    source = docx(p(r("[{{ v }}]", b=True)))
    zf = render(engine, source, {"v": "a\nb\tc\fd\ae\r\nf\x00\x0bg\ud800"})
    assert [t for t in texts(zf) if t] == ["[a\nb\tc\fd", "e\nfg]"]
    # the new paragraph keeps the run's formatting
    assert all(run.find(f"{W}rPr/{W}b") is not None for run in xml(zf).iter(f"{W}r"))


# --------------------------------------------------------------------------------------------------
# rich content


def test_image_is_embedded_with_relationship_and_size(engine: DocxEngine) -> None:
    image = {"$image": {"data": base64.b64encode(PNG).decode(), "width_mm": 40, "alt": "logo"}}
    source = docx(
        p("Logo: {{ logo }}!") + p("{{p logo }}"),
        headers=[p("{{ logo }}")],
    )
    zf = render(engine, source, {"logo": image})
    names = zf.namelist()
    media = [n for n in names if n.startswith("word/media/")]
    assert len(media) == 1 and zf.read(media[0]) == PNG  # one copy for three uses
    for part, rels in (
        ("word/document.xml", "word/_rels/document.xml.rels"),
        ("word/header1.xml", "word/_rels/header1.xml.rels"),
    ):
        root = xml(zf, part)
        blips = root.findall(".//{http://schemas.openxmlformats.org/drawingml/2006/main}blip")
        assert blips
        rid = blips[0].get(
            "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}embed"
        )
        rel_root = xml(zf, rels)
        targets = {el.get("Id"): el.get("Target") for el in rel_root}
        assert targets[rid] == "media/" + media[0].rsplit("/", 1)[1]
    extent = xml(zf).find(
        ".//{http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing}extent"
    )
    assert extent is not None
    assert (extent.get("cx"), extent.get("cy")) == (str(40 * 36000), str(20 * 36000))
    ids = [
        el.get("id")
        for el in xml(zf).iter(
            "{http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing}docPr"
        )
    ]
    assert len(ids) == len(set(ids)) == 2
    assert b'Extension="png"' in zf.read("[Content_Types].xml")
    assert texts(zf)[0] == "Logo: !"


def test_rich_text_runs_and_links(engine: DocxEngine) -> None:
    value = {
        "$rich": [
            {"text": "Bold ", "bold": True, "color": "#c00000", "size_pt": 14, "font": "Arial"},
            {"text": "site", "link": "https://example.com/?a=1&b=2"},
        ]
    }
    zf = render(
        engine,
        docx(p(r("[{{ v }}] {{ l }}", i=True))),
        {
            "v": value,
            "l": {"$link": {"url": "mailto:a@example.com"}},
        },
    )
    assert texts(zf)[0] == "[Bold site] mailto:a@example.com"
    root = xml(zf)
    bold_run = next(run for run in root.iter(f"{W}r") if paragraph_text(run) == "Bold ")
    rpr = bold_run.find(f"{W}rPr")
    assert rpr is not None
    assert rpr.find(f"{W}b") is not None and rpr.find(f"{W}i") is not None  # merged format
    assert rpr.find(f"{W}color").get(f"{W}val") == "C00000"  # type: ignore[union-attr]
    assert rpr.find(f"{W}sz").get(f"{W}val") == "28"  # type: ignore[union-attr]
    links = root.findall(f".//{W}hyperlink")
    assert len(links) == 2
    rels = {
        el.get("Target"): el.get("TargetMode") for el in xml(zf, "word/_rels/document.xml.rels")
    }
    assert rels["https://example.com/?a=1&b=2"] == "External"
    assert rels["mailto:a@example.com"] == "External"


@pytest.mark.parametrize(
    "value",
    [
        {"$image": {"data": "not base64!"}},
        {"$image": {"data": base64.b64encode(b"GIF00").decode()}},
        {"$image": {"storage_key": "t/x.png"}},
        {"$link": {"url": "javascript:alert(1)"}},
        {"$rich": [{"text": "x", "color": "red"}]},
        {"$rich": [{"text": "x", "blink": True}]},
    ],
)
def test_malformed_rich_content_is_a_template_error(engine: DocxEngine, value: object) -> None:
    with pytest.raises(TemplateError) as info:
        render(engine, docx(p("{{ v }}")), {"v": value})
    assert info.value.code == "invalid_rich_content"
    assert "invalid rich content" in info.value.message
    assert "word/document.xml" in info.value.message


def test_storage_key_images_go_through_the_loader() -> None:
    seen = []

    def loader(key: str) -> bytes:
        seen.append(key)
        return PNG

    engine = DocxEngine(image_loader=loader)
    zf = render(engine, docx(p("{{ v }}")), {"v": {"$image": {"storage_key": "t1/logo.png"}}})
    assert seen == ["t1/logo.png"]
    assert any(n.startswith("word/media/") for n in zf.namelist())
    with pytest.raises(TemplateError):
        render(engine, docx(p("{{ v }}")), {"v": {"$image": {"storage_key": "../etc/passwd"}}})


# --------------------------------------------------------------------------------------------------
# escaping, any string


XML_DROPPED = set(range(0x00, 0x20)) - {0x09, 0x0A, 0x0D, 0x07, 0x0C}


def expected_text(value: str) -> str:
    return xml_text(value.replace("\r\n", "\n").replace("\r", "\n"))


def xml_text(value: str) -> str:
    """``value`` without what XML 1.0 cannot carry."""
    return "".join(
        c
        for c in value
        if ord(c) not in XML_DROPPED and not 0xD800 <= ord(c) <= 0xDFFF and c not in "\ufffe\uffff"
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        st.text(),
        st.sampled_from(["<", "&", "]]>", "</w:t>", "\"'", "😀𝄞", "&amp;", "<w:br/>", "{{ x }}"]),
        st.text(alphabet=st.sampled_from("<>&\"']]\n\t\a\f\r😀𝄞\x00\ufffe")),
    )
)
def test_any_string_value_appears_exactly_and_stays_well_formed(value: str) -> None:
    engine = _HYPOTHESIS_ENGINE
    zf = render(engine, _HYPOTHESIS_SOURCE, {"v": value, "props": value})
    for part in ("word/document.xml", "word/header1.xml"):
        # \a splits paragraphs: join them back with \a to compare.
        paragraphs = texts(zf, part)
        first = next(i for i, t in enumerate(paragraphs) if t.startswith("["))
        last = max(i for i, t in enumerate(paragraphs) if t.endswith("]"))
        assert "\a".join(paragraphs[first : last + 1]) == "[" + expected_text(value) + "]"
    custom = "".join(xml(zf, "docProps/custom.xml").itertext())
    assert custom == "".join(c for c in xml_text(value) if c not in "\a\f")


_HYPOTHESIS_ENGINE = DocxEngine()
_HYPOTHESIS_SOURCE = docx(
    p(r("["), word_split("{{ v }}"), r("]")),
    headers=[p("[{{ v }}]")],
    custom={"P": "{{ props }}"},
)


# --------------------------------------------------------------------------------------------------
# errors, sandbox, limits


def test_syntax_error_names_template_part_paragraph_and_tag(engine: DocxEngine) -> None:
    source = docx(p("Intro") + p("Total: ", word_split("{{ total | }}")))
    with pytest.raises(TemplateError) as info:
        engine.check(tpl(source, "invoice"))
    message = info.value.message
    assert info.value.code == "template_error"
    assert message.startswith(
        "template 'invoice', word/document.xml, paragraph 2: tag \"{{ total | }}\": "
    )


def test_unclosed_block_is_reported(engine: DocxEngine) -> None:
    with pytest.raises(TemplateError) as info:
        engine.check(tpl(docx(p("{%p for x in xs %}") + p("{{ x }}")), "loop"))
    assert "endfor" in info.value.message


def test_strict_mode_missing_variable(engine: DocxEngine) -> None:
    lenient = docx(p("[{{ missing }}]"))
    assert texts(render(engine, lenient, {}))[0] == "[]"  # lenient by default: empty
    source = docx(p("a"), footers=[p("Page of ", word_split("{{ missing.name }}"))])
    with pytest.raises(TemplateError) as info:
        render(engine, source, {}, options={"strict": True})
    message = info.value.message
    assert info.value.code == "template_error"
    assert "word/footer1.xml" in message and "missing" in message
    assert "{{ missing.name }}" in message


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "''.__class__.__mro__[1].__subclasses__()",
        "x|attr('__class__')|attr('__subclasses__')",
        "'{0.__class__}'.format(x)",
        "'{0.__class__.__init__.__globals__}'.format_map({'0': x})",
        "x.__init__.__globals__",
        "('{0.__class__}'.format)(x)",
        # CVE-2024-56326: str.format called through a stored reference
        "{% set f = ['{0.__init__.__globals__}']|map(attribute='format')|first %}{{ f(x) }}",
        # CVE-2025-27516: the attr filter reaching str.format
        "{% set f = '{0.__class__.__mro__}'|attr('format') %}{{ f(x) }}",
        "lipsum.__globals__",
        "range(10**8)|list|length",
    ],
)
def test_sandbox_escapes_are_template_errors(engine: DocxEngine, expression: str) -> None:
    text = expression if expression.startswith("{%") else "{{ " + expression + " }}"
    source = docx(p(text))
    with pytest.raises(TemplateError) as info:
        render(engine, source, {"x": "s"})
    assert info.value.code in ("template_error", "template_limit_exceeded")
    assert "word/document.xml" in info.value.message


def test_output_limit() -> None:
    engine = DocxEngine(max_output_bytes=200_000)
    source = docx(p("{%p for i in range(100000) %}") + p("{{ i }} padding") + p("{%p endfor %}"))
    with pytest.raises(TemplateError) as info:
        render(engine, source, {})
    assert info.value.code == "template_limit_exceeded"


def test_render_deadline() -> None:
    engine = DocxEngine(time_limit_s=0.2)
    source = docx(
        p("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    )
    with pytest.raises(TemplateError) as info:
        render(engine, source, {})
    assert info.value.code == "template_limit_exceeded"


# --------------------------------------------------------------------------------------------------
# unsafe packages


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _members(source: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(source))
    return {n: zf.read(n) for n in zf.namelist()}


def test_zip_bomb_is_refused(engine: DocxEngine) -> None:
    members = _members(docx(p("x")))
    members["word/bomb.xml"] = b"0" * (20 * 1024 * 1024)
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(_zip(members)))


def test_dotdot_member_is_refused(engine: DocxEngine) -> None:
    members = _members(docx(p("x")))
    members["../../evil.xml"] = b"<x/>"
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(_zip(members)))


def test_macros_are_refused(engine: DocxEngine) -> None:
    members = _members(docx(p("x")))
    members["word/vbaProject.bin"] = b"\xd0\xcf\x11\xe0"
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(_zip(members)))
    docm = docx(
        p("x"),
        main_type="application/vnd.ms-word.document.macroEnabled.main+xml",
    )
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(docm))


def test_doctype_and_entities_are_refused(engine: DocxEngine) -> None:
    members = _members(docx(p("{{ x }}")))
    members["word/document.xml"] = members["word/document.xml"].replace(
        b"<w:document",
        b'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><w:document',
        1,
    )
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(_zip(members)))


def test_not_a_docx_is_refused(engine: DocxEngine) -> None:
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(b"plain text, not a zip"))
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(_zip({"hello.txt": b"hi"})))


# --------------------------------------------------------------------------------------------------
# caching, introspection, registration, locale


def test_prepared_once_per_content_hash() -> None:
    engine = DocxEngine()
    source = docx(p("{{ x }}"))
    engine.check(tpl(source, "a"))
    misses = engine.cache_misses
    for n in range(3):
        render(engine, source, {"x": n})
    render(engine, source, {"x": 1})
    assert engine.cache_misses == misses
    assert engine.cache_hits >= 4


def test_variables_across_parts(engine: DocxEngine) -> None:
    source = docx(
        p("{{ customer.name }}")
        + p("{%p for item in items %}")
        + p("{{ item.name }} {{ currency }}")
        + p("{%p endfor %}"),
        headers=[p("{{ number }}")],
        title="{{ title }}",
    )
    assert engine.variables(tpl(source)) == {"customer", "items", "currency", "number", "title"}


def test_locale_filters(engine: DocxEngine) -> None:
    source = docx(p("{{ d|format_date('long') }} / {{ m|format_currency('EUR') }}"))
    data = {"d": "2026-01-15", "m": 1234.5}
    assert texts(render(engine, source, data, locale="de_DE"))[0] == (
        "15. Januar 2026 / 1.234,50\xa0€"
    )
    assert texts(render(engine, source, data, locale="en_US"))[0] == (
        "January 15, 2026 / €1,234.50"
    )


def test_hook_registers_the_engine() -> None:
    import convkit

    pm = convkit.get_plugin_manager(["convkit.backends.engines"], load_entry_points=False)
    engines = [e for group in pm.hook.register_template_engines(settings=None) for e in group]
    found = [e for e in engines if e.name == "docx"]
    assert len(found) == 1 and found[0].suffixes == {".docx": "docx"}


# --------------------------------------------------------------------------------------------------
# docxtpl parity


PARITY = {
    "variables": (
        p("Dear ", word_split("{{ name }}"), ", you owe {{ amount }}.")
        + p("{{ name|upper }} {{ items|length }}"),
        {"name": "Ada & <Bob>", "amount": 12.5, "items": [1, 2]},
    ),
    "paragraph-loop": (
        p("{%p for x in items %}") + p("* {{ x }}") + p("{%p endfor %}") + p("end"),
        {"items": ["a", "b", "c"]},
    ),
    "rows": (
        tbl(
            tr(tc(p("H1")), tc(p("H2"))),
            tr(tc(p("{%tr for r in rows %}"))),
            tr(tc(p("{{ r.a }}")), tc(p("{% cellbg r.bg %}{{ r.b }}"))),
            tr(tc(p("{%tr endfor %}"))),
            cols=2,
        ),
        {"rows": [{"a": i, "b": f"b{i}", "bg": "FFFF00"} for i in range(5)]},
    ),
    "runs-and-if": (
        p(r("Hello {%r if vip %}dear {%r endif %}friend", b=True))
        + p("{% if vip %}VIP{% else %}regular{% endif %}"),
        {"vip": True},
    ),
    "listing": (p("{{ text }}"), {"text": "line1\nline2\tTabbed"}),
    "vmerge": (
        tbl(
            tr(tc(p("{%tr for r in rows %}"))),
            tr(tc(p("{% vm %}{{ g }}")), tc(p("{{ r }}"))),
            tr(tc(p("{%tr endfor %}"))),
            cols=2,
        ),
        {"g": "G", "rows": [1, 2, 3]},
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY))
def test_docxtpl_parity(engine: DocxEngine, case: str) -> None:
    from docxtpl import DocxTemplate

    body_xml, data = PARITY[case]
    source = docx(body_xml)
    reference = DocxTemplate(io.BytesIO(source))
    reference.render(data, autoescape=True)
    buf = io.BytesIO()
    reference.save(buf)
    theirs = [t for t in texts(zipfile.ZipFile(buf)) if t]
    ours = [t for t in texts(render(engine, source, data)) if t]
    assert ours == theirs


# --------------------------------------------------------------------------------------------------
# the sample template


def _load_examples() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_docx_examples", EXAMPLES / "make_docx_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_invoice_renders(engine: DocxEngine) -> None:
    import json

    source = (EXAMPLES / "invoice_docx.docx").read_bytes()
    data = json.loads((EXAMPLES / "invoice_docx.json").read_text(encoding="utf-8"))
    zf = render(engine, source, data, locale="de_DE", options={"strict": True})
    text = body(zf)
    assert "Invoice INV-2026-0042" in text
    assert "15. Januar 2026" in text
    assert "Consulting <Python & XML>" in text
    assert "1.140,00\xa0€" in text  # 12 x 95.00
    assert "Hauptstraße 1\n10115 Berlin" in text
    assert "Reverse charge" in text
    assert "{{" not in text and "{%" not in text
    assert "INV-2026-0042" in "".join(texts(zf, "word/header1.xml"))
    assert "INV-2026-0042" in "".join(texts(zf, "word/footer1.xml"))
    table = xml(zf).find(f".//{W}tbl")
    assert table is not None and len(table.findall(f"{W}tr")) == 1 + len(data["items"])


def test_sample_generator_is_deterministic_in_text() -> None:
    module = _load_examples()
    fresh = module.build_invoice()
    engine = DocxEngine()
    committed = (EXAMPLES / "invoice_docx.docx").read_bytes()
    data = module.sample_data()
    assert body(render(engine, fresh, data)) == body(render(engine, committed, data))


@pytest.mark.libreoffice
def test_sample_invoice_converts_to_pdf(engine: DocxEngine, tmp_path: Path) -> None:
    import json

    from pypdf import PdfReader

    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.skip("soffice not on PATH")
    source = (EXAMPLES / "invoice_docx.docx").read_bytes()
    data = json.loads((EXAMPLES / "invoice_docx.json").read_text(encoding="utf-8"))
    rendered = engine.render(tpl(source, "invoice_docx"), data, locale="de_DE")
    src = tmp_path / "invoice.docx"
    src.write_bytes(rendered.content)
    subprocess.run(
        [
            soffice,
            f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}",
            "--headless",
            "--convert-to",
            "pdf",
            "--outdir",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    text = "".join(page.extract_text() for page in PdfReader(tmp_path / "invoice.pdf").pages)
    text = " ".join(text.replace("\xa0", " ").split())  # table cells wrap lines
    for expected in (
        "INV-2026-0042",
        "Jane Doe & Co.",
        "Consulting <Python & XML>",
        "15. Januar 2026",
        "1.140,00 €",
        "2.213,40 €",
    ):
        assert expected in text
