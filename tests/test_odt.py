"""The ODT engine: tag families on LibreOffice-style templates, escaping, rich content, flat
ODT, errors, limits, safety and the PDF LibreOffice makes of the result."""

from __future__ import annotations

import base64
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

from convkit import Settings, get_plugin_manager
from convkit.backends.engines.odt import OdtEngine
from convkit.errors import TemplateError, UnsafeDocument
from convkit.ports import RenderedDocument, Template
from convkit.testing.builders.odf import (
    NS,
    cell,
    declared_columns,
    fodt,
    odt,
    odt_text,
    p,
    paragraphs,
    raw_table,
    read_odt,
    split,
    t,
    table,
    table_rows,
)
from convkit.testing.engine import TemplateEngineContract
from convkit.testing.office import ODT_KIT, OfficeEngineContract, OfficeKit

EXAMPLES = Path(__file__).parent.parent / "examples" / "templates"


def tpl(source: bytes, fmt: str = "odt", name: str = "letter") -> Template:
    return Template(name, "odt", fmt, source, origin=f"/templates/{name}.{fmt}")


def render(engine: OdtEngine, source: bytes, data: dict[str, Any], **kw: Any) -> bytes:
    return engine.render(tpl(source), data, **kw).content


@pytest.fixture
def engine() -> OdtEngine:
    return OdtEngine()


def png(width: int = 4, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class TestOdtContract(TemplateEngineContract):
    @pytest.fixture
    def engine(self) -> OdtEngine:
        return OdtEngine()

    @pytest.fixture
    def engine_template(self) -> tuple[Template, dict[str, Any], str]:
        return tpl(odt(p("Dear " + split("{{ name }}") + ","))), {"name": "Ada"}, "Dear Ada,"

    @pytest.fixture
    def broken_template(self) -> Template:
        return tpl(odt(p("{% if x %}")))

    def extract_text(self, document: RenderedDocument) -> str:
        return "\n".join(odt_text(document.content))


class TestOdtOffice(OfficeEngineContract):
    @pytest.fixture
    def kit(self) -> OfficeKit:
        return ODT_KIT


# --------------------------------------------------------------------------------------------------
# Tag families


def test_registered_through_the_plugin_hook() -> None:
    pm = get_plugin_manager(["convkit.backends.engines"], load_entry_points=False)
    engines = [e for r in pm.hook.register_template_engines(settings=Settings()) for e in r]
    [found] = [e for e in engines if e.name == "odt"]
    assert found.suffixes == {".odt": "odt", ".fodt": "fodt"}


def test_split_spans_and_whitespace_control(engine: OdtEngine) -> None:
    body = p("Hello " + split("{{ name }}", "T1", "T2", "T3") + "!") + p(
        split("{{- greeting -}}") + " x"
    )
    texts = odt_text(render(engine, odt(body), {"name": "Ada", "greeting": "hi"}))
    assert texts[:2] == ["Hello Ada!", "hi x"]


def test_tag_split_at_the_braces_and_smart_quotes(engine: OdtEngine) -> None:
    body = p('{<text:span text:style-name="T1">{ </text:span>name|default(“nobody”) }}')
    assert odt_text(render(engine, odt(body), {}))[0] == "nobody"


def test_paragraph_loop_and_condition(engine: OdtEngine) -> None:
    body = (
        p(split("{%p for x in items %}"))
        + p("- {{ x }}")
        + p("{%p endfor %}")
        + p("{%p if show %}")
        + p("shown")
        + p("{%p endif %}")
        + p("end")
    )
    assert odt_text(render(engine, odt(body), {"items": [1, 2, 3], "show": False})) == [
        "- 1",
        "- 2",
        "- 3",
        "end",
    ]


def test_table_rows_repeat_with_styles(engine: OdtEngine) -> None:
    body = table(
        [
            [p("Name"), p("Qty")],
            [p("{%tr for r in rows %}"), p("")],
            [p(split("{{ r.name }}")), p("{{ r.qty }}")],
            [p("{%tr endfor %}"), p("")],
        ]
    )
    rows = [{"name": f"item {i}", "qty": i} for i in range(3)]
    content = read_odt(render(engine, odt(body), {"rows": rows}))["content.xml"]
    root = etree.fromstring(content)
    trs = root.findall(f".//{{{NS['table']}}}table-row")
    assert len(trs) == 4
    cells = trs[2].findall(f"{{{NS['table']}}}table-cell")
    assert [c.get(f"{{{NS['table']}}}style-name") for c in cells] == ["Table1.A1"] * 2
    assert paragraphs(content) == ["Name", "Qty", "item 0", "0", "item 1", "1", "item 2", "2"]


def test_thousands_of_rows(engine: OdtEngine) -> None:
    body = table([[p("{%tr for r in rows %}")], [p("{{ r }}")], [p("{%tr endfor %}")]])
    texts = odt_text(render(engine, odt(body), {"rows": list(range(5000))}))
    assert len(texts) == 5000 and texts[-1] == "4999"


def test_table_cells_repeat(engine: OdtEngine) -> None:
    body = table([[p("{%tc for c in cols %}"), p("{{ c }}"), p("{%tc endfor %}")]])
    content = read_odt(render(engine, odt(body), {"cols": ["a", "b"]}))["content.xml"]
    root = etree.fromstring(content)
    assert len(root.findall(f".//{{{NS['table']}}}table-cell")) == 2
    assert paragraphs(content) == ["a", "b"]


def test_run_forms(engine: OdtEngine) -> None:
    body = p(
        'A<text:span text:style-name="T1">{%r if flag %}</text:span>'
        '<text:span text:style-name="T2">yes</text:span>'
        '<text:span text:style-name="T1">{%r endif %}</text:span>'
        '<text:span text:style-name="T2">{{r word }}</text:span>B'
    ) + p("{{p whole }}")
    texts = odt_text(render(engine, odt(body), {"flag": True, "word": "W", "whole": "P"}))
    assert texts[:2] == ["AyesWB", "P"]
    texts = odt_text(render(engine, odt(body), {"flag": False, "word": "W", "whole": "P"}))
    assert texts[0] == "AWB"


def test_list_items_repeat(engine: OdtEngine) -> None:
    def item(inner: str) -> str:
        return f"<text:list-item>{p(inner)}</text:list-item>"

    body = (
        '<text:list text:style-name="L1">'
        + item("{%p for x in xs %}")
        + item("{{ x }}")
        + item("{%p endfor %}")
        + "</text:list>"
    )
    content = read_odt(render(engine, odt(body), {"xs": ["a", "b"]}))["content.xml"]
    root = etree.fromstring(content)
    assert len(root.findall(f".//{{{NS['text']}}}list-item")) == 2


def test_headers_footers_and_meta(engine: OdtEngine) -> None:
    src = odt(
        p("body"),
        header=p("Invoice " + split("{{ number }}")),
        footer=p("Page footer {{ company }}"),
        title="Invoice {{ number }}",
        meta_extra='<meta:user-defined meta:name="Client">{{ company }}</meta:user-defined>',
    )
    files = read_odt(render(engine, src, {"number": "A&1\n2", "company": "<ACME>"}))
    assert paragraphs(files["styles.xml"]) == ["Invoice A&1\n2", "Page footer <ACME>"]
    meta = etree.fromstring(files["meta.xml"])
    assert meta.findtext(f".//{{{NS['dc']}}}title") == "Invoice A&1\n2"
    assert meta.findtext(f".//{{{NS['meta']}}}user-defined") == "<ACME>"


def test_control_conventions(engine: OdtEngine) -> None:
    content = read_odt(render(engine, odt(p("[{{ v }}]")), {"v": "a\nb\tc\ad\fe  f"}))[
        "content.xml"
    ]
    assert paragraphs(content) == ["[a\nb\tc", "d", "e  f]"]
    root = etree.fromstring(content)
    paras = root.findall(f".//{{{NS['text']}}}p")
    page_style = paras[2].get(f"{{{NS['text']}}}style-name")
    style = root.find(f".//{{{NS['style']}}}style[@{{{NS['style']}}}name='{page_style}']")
    assert style is not None
    props = style.find(f"{{{NS['style']}}}paragraph-properties")
    assert props is not None and props.get(f"{{{NS['fo']}}}break-before") == "page"
    assert b"urn:x-convkit" not in content


def test_spaces_are_kept(engine: OdtEngine) -> None:
    assert odt_text(render(engine, odt(p("x{{ v }}y")), {"v": "  a   b "}))[0] == "x  a   b y"


def test_locale_filters(engine: OdtEngine) -> None:
    src = odt(p("{{ amount|format_currency('EUR') }} {{ day|format_date('long') }}"))
    data = {"amount": 1234.5, "day": "2026-01-15"}
    de = odt_text(engine.render(tpl(src), data, locale="de_DE").content)[0]
    assert de == "1.234,50\xa0€ 15. Januar 2026"
    en = odt_text(engine.render(tpl(src), data, locale="en_US").content)[0]
    assert en == "€1,234.50 January 15, 2026"


# --------------------------------------------------------------------------------------------------
# Rich content


def test_rich_runs_links_and_images(engine: OdtEngine) -> None:
    data = {
        "r": {
            "$rich": [
                {"text": "Bold", "bold": True},
                " plain ",
                {"text": "red", "color": "#c00000", "size_pt": 14, "link": "https://e.com/x"},
            ]
        },
        "link": {"$link": {"url": "https://example.com/?a=1&b=2", "text": "site"}},
        "logo": {"$image": {"data": base64.b64encode(png()).decode(), "width_mm": 40}},
    }
    src = odt(p("{{ r }}") + p("See {{ link }}.") + p("{{ logo }}"), header=p("{{ logo }}"))
    out = render(engine, src, data)
    files = read_odt(out)
    content = etree.fromstring(files["content.xml"])
    assert paragraphs(files["content.xml"])[:2] == ["Bold plain red", "See site."]
    spans = content.findall(f".//{{{NS['text']}}}span")
    bold_style = spans[0].get(f"{{{NS['text']}}}style-name")
    style = content.find(f".//{{{NS['style']}}}style[@{{{NS['style']}}}name='{bold_style}']")
    assert style is not None
    props = style.find(f"{{{NS['style']}}}text-properties")
    assert props is not None and props.get(f"{{{NS['fo']}}}font-weight") == "bold"
    links = [a.get(f"{{{NS['xlink']}}}href") for a in content.iter(f"{{{NS['text']}}}a")]
    assert links == ["https://e.com/x", "https://example.com/?a=1&b=2"]
    frame = content.find(f".//{{{NS['draw']}}}frame")
    assert frame is not None and frame.get(f"{{{NS['svg']}}}width") == "40.00mm"
    assert frame.get(f"{{{NS['svg']}}}height") == "20.00mm"
    image = frame.find(f"{{{NS['draw']}}}image")
    assert image is not None
    href = image.get(f"{{{NS['xlink']}}}href")
    assert href is not None and files[href] == png()
    assert [n for n in files if n.startswith("Pictures/ck")] == [href]  # one copy
    assert href.encode() in files["META-INF/manifest.xml"]
    styles = etree.fromstring(files["styles.xml"])
    assert styles.find(f".//{{{NS['draw']}}}frame") is not None


def test_bad_rich_content_is_a_template_error(engine: OdtEngine) -> None:
    with pytest.raises(TemplateError) as err:
        render(engine, odt(p("{{ l }}")), {"l": {"$link": {"url": "javascript:alert(1)"}}})
    assert err.value.code == "invalid_rich_content"


def test_package_is_valid_odf(engine: OdtEngine) -> None:
    out = render(engine, odt(p("{{ x }}")), {"x": 1})
    with zipfile.ZipFile(io.BytesIO(out)) as zf:
        first = zf.infolist()[0]
        assert first.filename == "mimetype"
        assert first.compress_type == zipfile.ZIP_STORED
        assert zf.read("mimetype") == b"application/vnd.oasis.opendocument.text"
        for name in zf.namelist():
            if name.endswith(".xml"):
                etree.fromstring(zf.read(name))
    assert out[30:38] == b"mimetype"


def test_flat_odt(engine: OdtEngine) -> None:
    src = fodt(
        p(split("{{ name }}")) + p("{{ logo }}"), header=p("H {{ name }}"), title="{{ name }}"
    )
    data = {"name": "Ada & Co", "logo": {"$image": {"data": base64.b64encode(png()).decode()}}}
    out = engine.render(tpl(src, "fodt"), data)
    assert out.format == "fodt"
    root = etree.fromstring(out.content)
    assert paragraphs(out.content) == ["H Ada & Co", "Ada & Co", ""]
    assert root.findtext(f".//{{{NS['dc']}}}title") == "Ada & Co"
    binary = root.find(f".//{{{NS['office']}}}binary-data")
    assert binary is not None and base64.b64decode(binary.text or "") == png()


# --------------------------------------------------------------------------------------------------
# Any string survives


_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\a\f\r"),
    max_size=60,
) | st.sampled_from(
    ["<", "&", "]]>", "</text:p>", "\"'", "\U0001f600 \U0001d518", "{{ x }}", "  lead"]
)


def _expected(value: str) -> str:
    import re

    return re.sub("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", "", value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_TEXT)
def test_any_string_appears_exactly(value: str) -> None:
    engine = _SHARED
    out = render(engine, _ANY_TEMPLATE, {"v": value})
    texts = odt_text(out)
    assert texts[0] == "[" + _expected(value) + "]"
    assert odt_text(out, "styles.xml")[0] == "H[" + _expected(value) + "]"
    meta = etree.fromstring(read_odt(out)["meta.xml"])
    assert meta.findtext(f".//{{{NS['dc']}}}title") == _expected(value)


_SHARED = OdtEngine()
_ANY_TEMPLATE = odt(p("[" + split("{{ v }}") + "]"), header=p("H[{{ v }}]"), title="{{ v }}")


# --------------------------------------------------------------------------------------------------
# Errors, sandbox, limits


def test_syntax_error_names_part_paragraph_and_tag(engine: OdtEngine) -> None:
    src = odt(p("fine") + p("Total: " + split("{{ total | }}")))
    with pytest.raises(TemplateError) as err:
        engine.check(tpl(src))
    msg = err.value.message
    assert err.value.code == "template_error"
    assert "'letter'" in msg and "content.xml" in msg and "paragraph 2" in msg
    assert "{{ total | }}" in msg


def test_unclosed_block_and_unclosed_tag(engine: OdtEngine) -> None:
    with pytest.raises(TemplateError, match=r"content\.xml"):
        engine.check(tpl(odt(p("{% for x in y %}"))))
    with pytest.raises(TemplateError, match=r"not closed in the same paragraph"):
        engine.check(tpl(odt(p("{{ x") + p("}}"))))


def test_broken_markup_from_the_template_is_caught(engine: OdtEngine) -> None:
    src = odt(p(t("{{ '<text:span>'|safe }}")))
    with pytest.raises(TemplateError, match="not well-formed"):
        render(engine, src, {})


def test_strict_undefined_names_tag(engine: OdtEngine) -> None:
    src = odt(p("a") + p("{{ missing }}"))
    assert odt_text(render(engine, src, {}))[1] == ""
    with pytest.raises(TemplateError) as err:
        render(engine, src, {}, options={"strict": True})
    assert "missing" in err.value.message and "paragraph 2" in err.value.message


@pytest.mark.parametrize(
    "expr",
    [
        "''.__class__.__mro__",
        "x|attr('__class__')",
        "'{0.__class__}'.format(x)",
        "x.__init__.__globals__",
        "'a'|format_map({})",
    ],
)
def test_sandbox_escapes_are_template_errors(engine: OdtEngine, expr: str) -> None:
    with pytest.raises(TemplateError) as err:
        render(engine, odt(p("{{ " + expr + " }}")), {"x": "s"})
    assert err.value.code == "template_error"


def test_output_limit() -> None:
    engine = OdtEngine(max_output_bytes=100_000)
    src = odt(p("{% for i in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}"))
    with pytest.raises(TemplateError) as err:
        render(engine, src, {})
    assert err.value.code == "template_limit_exceeded"


def test_huge_repetition_is_a_limit(engine: OdtEngine) -> None:
    with pytest.raises(TemplateError) as err:
        render(engine, odt(p("{{ 'x' * 1000000000 }}")), {})
    assert err.value.code == "template_limit_exceeded"


def test_time_limit_on_nested_ranges() -> None:
    engine = OdtEngine(time_limit_s=0.2)
    src = odt(p("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"))
    with pytest.raises(TemplateError) as err:
        render(engine, src, {})
    assert err.value.code == "template_limit_exceeded"
    assert odt_text(render(engine, odt(p("{{ 1 }}")), {})) == ["1"]  # the engine lives on


def test_cache_compiles_once(engine: OdtEngine) -> None:
    src = odt(p("{{ x }}"))
    engine.render(tpl(src), {"x": 1})
    engine.render(tpl(src, name="other"), {"x": 2})
    assert engine.cache_misses == 1 and engine.cache_hits == 1


def test_variables(engine: OdtEngine) -> None:
    src = odt(
        p("{%p for r in rows %}") + p("{{ r.a }} {{ tax }}") + p("{%p endfor %}"),
        header=p("{{ company }}"),
        title="{{ title }}",
    )
    assert engine.variables(tpl(src)) == {"rows", "tax", "company", "title"}


# --------------------------------------------------------------------------------------------------
# Safe parsing


def _zip(members: dict[str, bytes], mimetype: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_unsafe_templates_are_refused(engine: OdtEngine) -> None:
    good = read_odt(odt(p("x")))
    with pytest.raises(UnsafeDocument, match="macros"):
        engine.check(tpl(_zip({**good, "Basic/Standard/Module1.xml": b"<x/>"})))
    with pytest.raises(UnsafeDocument, match="macros"):
        engine.check(tpl(_zip({**good, "Scripts/python/x.py": b"print(1)"})))
    with pytest.raises(UnsafeDocument, match="unsafe name"):
        engine.check(tpl(_zip({**good, "../evil.xml": b"<x/>"})))
    doctype = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<office:document-content/>"
    )
    with pytest.raises(UnsafeDocument, match="DOCTYPE"):
        engine.check(tpl(_zip({**good, "content.xml": doctype})))
    with pytest.raises(UnsafeDocument, match="bomb"):
        engine.check(tpl(_zip({**good, "content.xml": b"<a>" + b" " * 50_000_000 + b"</a>"})))
    with pytest.raises(UnsafeDocument):
        engine.check(tpl(b"not a zip"))
    with pytest.raises(UnsafeDocument, match="DOCTYPE"):
        engine.check(tpl(b'<?xml version="1.0"?><!DOCTYPE x><x/>', "fodt"))


# --------------------------------------------------------------------------------------------------
# The sample template, through LibreOffice


def _pdf_text(src: Path, tmp_path: Path) -> str:
    from pypdf import PdfReader

    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    assert soffice
    profile = tmp_path / "profile"
    subprocess.run(
        [
            soffice,
            f"-env:UserInstallation={profile.as_uri()}",
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
    pdf = tmp_path / (src.stem + ".pdf")
    return "\n".join(page.extract_text() for page in PdfReader(pdf).pages)


@pytest.mark.libreoffice
def test_example_letter_converts_to_pdf(tmp_path: Path) -> None:
    import json

    if not (shutil.which("soffice") or shutil.which("libreoffice")):
        pytest.skip("LibreOffice is not installed")
    source = (EXAMPLES / "letter_odt.odt").read_bytes()
    data = json.loads((EXAMPLES / "letter_odt.json").read_text())
    out = OdtEngine().render(tpl(source), data, locale="en_US")
    path = tmp_path / "letter.odt"
    path.write_bytes(out.content)
    text = _pdf_text(path, tmp_path)
    for expected in ("Dear Ada Lovelace", "Analytical Engine", "Bernoulli numbers", "Invoice"):
        assert expected in text
    assert "{{" not in text and "{%" not in text


def test_example_letter_renders(engine: OdtEngine) -> None:
    import json

    source = (EXAMPLES / "letter_odt.odt").read_bytes()
    data = json.loads((EXAMPLES / "letter_odt.json").read_text())
    texts = odt_text(engine.render(tpl(source), data).content)
    joined = "\n".join(texts)
    assert "Dear Ada Lovelace" in joined and "{{" not in joined


def test_t_helper_escapes() -> None:
    assert t("<&>") == "&lt;&amp;&gt;"


# --------------------------------------------------------------------------------------------------
# docxtpl's cell tags: colspan, cellbg, vm, hm

_T = "{" + NS["table"] + "}"
_STYLE = "{" + NS["style"] + "}"
_FO = "{" + NS["fo"] + "}"


def _spans(cells: list[etree._Element], attr: str = "number-columns-spanned") -> list[str | None]:
    return [c.get(_T + attr) for c in cells if c.tag == _T + "table-cell"]


def _covered(cells: list[etree._Element]) -> int:
    return sum(1 for c in cells if c.tag == _T + "covered-table-cell")


def _widths(xml: bytes, index: int = 0) -> list[int]:
    return [len(r) for r in table_rows(xml, index)]


def test_colspan_spans_the_cell_and_keeps_rows_even(engine: OdtEngine) -> None:
    body = table(
        [
            [p("{%tc for c in cols %}"), p("{{ c }}"), p("{%tc endfor %}")],
            [p("Total " + split("{% colspan cols|length %}"))],
        ]
    )
    content = read_odt(render(engine, odt(body), {"cols": ["a", "b", "c", "d"]}))["content.xml"]
    rows = table_rows(content)
    assert _widths(content) == [4, 4]
    assert _spans(rows[1]) == ["4"] and _covered(rows[1]) == 3
    assert declared_columns(content) >= 4
    assert paragraphs(content) == ["a", "b", "c", "d", "Total"]
    assert b"urn:x-convkit" not in content and b"ck:" not in content


def test_colspan_replaces_a_merge_made_in_libreoffice(engine: OdtEngine) -> None:
    body = raw_table(
        [
            [cell(p("A")), cell(p("B")), cell(p("C")), cell(p("D"))],
            [cell(p("{% colspan n %}" + split("{{ label }}")), span=3), cell(p("z"))],
        ],
        columns=4,
    )
    for n, widths in ((2, [4, 3]), (3, [4, 4]), (1, [4, 2])):
        content = read_odt(render(engine, odt(body), {"n": n, "label": "wide"}))["content.xml"]
        rows = table_rows(content)
        assert _widths(content) == widths
        assert _covered(rows[1]) == n - 1
        assert _spans(rows[1]) == ([str(n)] if n > 1 else [None]) + [None]
        assert paragraphs(content)[4:] == ["wide", "z"]


@pytest.mark.parametrize("bad", ["x", 0, 5000, True, None, "2.5"])
def test_colspan_bad_value_is_a_template_error(engine: OdtEngine, bad: Any) -> None:
    body = table([[p("a"), p("b")], [p("Total {% colspan n %}")]])
    with pytest.raises(TemplateError) as info:
        render(engine, odt(body), {"n": bad})
    message = str(info.value)
    assert "'letter'" in message and "content.xml" in message
    assert "paragraph 3" in message and "{% colspan n %}" in message


def test_cellbg_derives_an_automatic_style(engine: OdtEngine) -> None:
    body = table(
        [
            [p("{%tr for r in rows %}"), p("")],
            [p(split("{% cellbg r.color %}") + "{{ r.name }}"), p("{{ r.qty }}{% cellbg 'ccc' %}")],
            [p("{%tr endfor %}"), p("")],
        ]
    )
    rows = [
        {"name": "red", "color": "FF0000", "qty": 1},
        {"name": "green", "color": "#00ff00", "qty": 2},
    ]
    content = read_odt(render(engine, odt(body), {"rows": rows}))["content.xml"]
    root = etree.fromstring(content)
    styles = {
        st.get(_STYLE + "name"): st
        for st in root.iter(_STYLE + "style")
        if st.get(_STYLE + "family") == "table-cell"
    }
    cells = [c for r in table_rows(content) for c in r]
    names = [c.get(_T + "style-name") for c in cells]
    assert len(set(names)) == 3 and "Table1.A1" not in names
    colors = []
    for name in names:
        props = styles[name].find(_STYLE + "table-cell-properties")
        assert props is not None
        assert props.get(_FO + "border") == "0.5pt solid #000000"  # derived: borders survive
        colors.append(props.get(_FO + "background-color"))
    assert colors == ["#ff0000", "#cccccc", "#00ff00", "#cccccc"]
    assert paragraphs(content) == ["red", "1", "green", "2"]


def test_cellbg_bad_colour_names_the_tag(engine: OdtEngine) -> None:
    body = table([[p("x{% cellbg c %}")]])
    with pytest.raises(
        TemplateError,
        match=r"^template 'letter', content.xml, paragraph 1: tag \"\{% cellbg c %\}\": cellbg",
    ):
        render(engine, odt(body), {"c": "red; evil"})
    out = render(engine, odt(body), {"c": "auto"})
    assert b'fo:background-color="transparent"' in read_odt(out)["content.xml"]


def test_vm_merges_the_loop_copies_vertically(engine: OdtEngine) -> None:
    body = table(
        [
            [p("Group"), p("Item")],
            [p("{%tr for r in rows %}"), p("")],
            [p(split("{{ group }}") + "{% vm %}"), p("{{ r }}")],
            [p("{%tr endfor %}"), p("")],
            [p("end"), p("")],
        ]
    )
    content = read_odt(render(engine, odt(body), {"group": "G", "rows": [1, 2, 3]}))["content.xml"]
    rows = table_rows(content)
    assert _widths(content) == [2] * 5
    assert rows[1][0].get(_T + "number-rows-spanned") == "3"
    assert [r[0].tag for r in rows[2:4]] == [_T + "covered-table-cell"] * 2
    assert paragraphs(content) == ["Group", "Item", "G", "1", "2", "3", "end", ""]
    # One row: nothing to merge.
    content = read_odt(render(engine, odt(body), {"group": "G", "rows": [1]}))["content.xml"]
    assert table_rows(content)[1][0].get(_T + "number-rows-spanned") is None


def test_vm_with_colspan_and_nested_loops(engine: OdtEngine) -> None:
    body = raw_table(
        [
            [cell(p("{%tr for g in groups %}")), cell(p("")), cell(p(""))],
            [cell(p("{%tr for i in g.members %}")), cell(p("")), cell(p(""))],
            [cell(p("{{ g.name }}{% vm %}"), span=2), cell(p("{{ i }}"))],
            [cell(p("{%tr endfor %}")), cell(p("")), cell(p(""))],
            [cell(p("{%tr endfor %}")), cell(p("")), cell(p(""))],
        ],
        columns=3,
    )
    data = {"groups": [{"name": "A", "members": [1, 2]}, {"name": "B", "members": [3, 4, 5]}]}
    content = read_odt(render(engine, odt(body), data))["content.xml"]
    rows = table_rows(content)
    assert _widths(content) == [3] * 5
    assert rows[0][0].get(_T + "number-rows-spanned") == "2"
    assert rows[2][0].get(_T + "number-rows-spanned") == "3"
    assert [_covered(r) for r in rows] == [1, 2, 1, 2, 2]
    assert paragraphs(content) == ["A", "1", "2", "B", "3", "4", "5"]


def test_hm_merges_a_cell_loop_into_one_cell(engine: OdtEngine) -> None:
    body = table(
        [
            [p("{%tc for c in cols %}"), p("{{ c }}"), p("{%tc endfor %}")],
            [p("{%tc for c in cols %}"), p("{{ title }}" + split("{% hm %}")), p("{%tc endfor %}")],
        ]
    )
    data = {"cols": ["a", "b", "c"], "title": "merged"}
    content = read_odt(render(engine, odt(body), data))["content.xml"]
    rows = table_rows(content)
    assert _widths(content) == [3, 3]
    assert _spans(rows[1]) == ["3"] and _covered(rows[1]) == 2
    assert paragraphs(content) == ["a", "b", "c", "merged"]


def test_hm_keeps_the_cells_own_span(engine: OdtEngine) -> None:
    body = raw_table(
        [
            [
                cell(p("{%tc for c in cols %}")),
                cell(p("{{ c }}"), span=2),
                cell(p("{%tc endfor %}")),
            ],
            [
                cell(p("{%tc for c in cols %}")),
                cell(p("x{% hm %}"), span=2),
                cell(p("{%tc endfor %}")),
            ],
        ],
        columns=4,
    )
    content = read_odt(render(engine, odt(body), {"cols": [1, 2]}))["content.xml"]
    rows = table_rows(content)
    assert _widths(content) == [4, 4]
    assert _spans(rows[1]) == ["4"] and _covered(rows[1]) == 3


def test_cell_tags_outside_a_table_print_nothing(engine: OdtEngine) -> None:
    texts = odt_text(render(engine, odt(p("a{% vm %}b{% colspan 2 %}c{% cellbg 'f00' %}")), {}))
    assert texts == ["abc"]


def test_cell_tags_in_flat_odt(engine: OdtEngine) -> None:
    body = table(
        [
            [p("{%tr for r in rows %}"), p("")],
            [p("{{ r }}"), p("k{% vm %}{% cellbg 'EEEEEE' %}")],
            [p("{%tr endfor %}"), p("")],
            [p("{% colspan 2 %}sum")],
        ]
    )
    out = engine.render(tpl(fodt(body), "fodt"), {"rows": ["x", "y"]}).content
    assert _widths(out) == [2, 2, 2]
    rows = table_rows(out)
    assert rows[0][1].get(_T + "number-rows-spanned") == "2"
    assert _spans(rows[2]) == ["2"]
    assert b'fo:background-color="#eeeeee"' in out
    assert paragraphs(out) == ["x", "k", "y", "sum"]


def test_vm_over_thousands_of_rows(engine: OdtEngine) -> None:
    body = table(
        [
            [p("{%tr for r in rows %}"), p("")],
            [p("{{ r }}"), p("same{% vm %}")],
            [p("{%tr endfor %}"), p("")],
        ]
    )
    content = read_odt(render(engine, odt(body), {"rows": list(range(3000))}))["content.xml"]
    rows = table_rows(content)
    assert rows[0][1].get(_T + "number-rows-spanned") == "3000"
    assert _covered([c for r in rows for c in r]) == 2999


def _cell_tags_sample() -> bytes:
    return odt(
        table(
            [
                [p("{%tc for c in cols %}"), p("{{ c }}"), p("{%tc endfor %}")],
                [p("Quarterly total {% colspan cols|length %}" + split("{% cellbg 'FFFF00' %}"))],
                [p("{%tc for c in cols %}"), p("Merged heading{% hm %}"), p("{%tc endfor %}")],
            ]
        )
        + table(
            [
                [p("{%tr for r in rows %}"), p("")],
                [p("Region North{% vm %}"), p("{{ r }}")],
                [p("{%tr endfor %}"), p("")],
            ],
            name="Table2",
        )
    )


@pytest.mark.libreoffice
def test_cell_tags_convert_to_pdf(tmp_path: Path) -> None:
    from pypdf import PdfReader

    from convkit.backends.converters.libreoffice import LibreOfficeConverter

    if not (shutil.which("soffice") or shutil.which("libreoffice")):
        pytest.skip("LibreOffice is not installed")
    data = {"cols": ["Jan", "Feb", "Mar"], "rows": ["alpha", "beta", "gamma"]}
    out = OdtEngine().render(tpl(_cell_tags_sample()), data)
    src = tmp_path / "cells.odt"
    src.write_bytes(out.content)
    dst = tmp_path / "cells.pdf"
    converter = LibreOfficeConverter(timeout_s=120, pool_size=1)
    try:
        converter.convert(src, dst, source_format="odt", target_format="pdf")
    finally:
        converter.close()
    text = "\n".join(page.extract_text() for page in PdfReader(dst).pages)
    for expected in ("Jan", "Mar", "Quarterly total", "Merged heading", "Region North", "gamma"):
        assert expected in text
    assert text.count("Region North") == 1 and text.count("Merged heading") == 1
    assert "{%" not in text
