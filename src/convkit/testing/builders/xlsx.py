"""Build XLSX templates the way Excel writes them: shared strings, styles by index, column
widths, merged cells, formulas with cached values and a calculation chain, ``x14ac`` row
attributes and ``mc:Ignorable`` on the root.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable

import attrs

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_ROOT_NS = (
    f'xmlns="{MAIN}" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
    'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
    'mc:Ignorable="x14ac xr xr2 xr3" '
    'xmlns:x14ac="http://schemas.microsoft.com/office/spreadsheetml/2009/9/ac" '
    'xmlns:xr="http://schemas.microsoft.com/office/spreadsheetml/2014/revision" '
    'xmlns:xr2="http://schemas.microsoft.com/office/spreadsheetml/2015/revision2" '
    'xmlns:xr3="http://schemas.microsoft.com/office/spreadsheetml/2016/revision3"'
)

#: Style indexes of the cellXfs written by :func:`xlsx`.
STYLE_DEFAULT, STYLE_BOLD, STYLE_MONEY, STYLE_DATE, STYLE_FILL = 0, 1, 2, 3, 4


@attrs.frozen
class Formula:
    text: str  # without "="
    cached: float | None = None


@attrs.frozen
class Inline:
    """A cell written as an inline string (t="inlineStr") instead of a shared string."""

    text: str


@attrs.define
class Sheet:
    name: str
    cells: dict[str, object]
    styles: dict[str, int] = attrs.field(factory=dict)
    merges: list[str] = attrs.field(factory=list)
    cols: list[tuple[int, int, float]] = attrs.field(factory=list)
    heights: dict[int, float] = attrs.field(factory=dict)
    #: Text spread over rich-text runs in the shared string (Excel does this after partial
    #: formatting): cell -> list of run texts.
    runs: dict[str, list[str]] = attrs.field(factory=dict)
    conditional: list[str] = attrs.field(factory=list)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _split(ref: str) -> tuple[str, int]:
    m = re.match(r"([A-Z]+)(\d+)$", ref)
    assert m, ref
    return m.group(1), int(m.group(2))


def _col_index(col: str) -> int:
    n = 0
    for ch in col:
        n = n * 26 + ord(ch) - 64
    return n


def xlsx(sheets: Iterable[Sheet], *, defined_names: dict[str, str] | None = None) -> bytes:
    sheets = list(sheets)
    shared: list[str] = []
    shared_xml: list[str] = []
    index: dict[str, int] = {}

    def sst(text: str, runs: list[str] | None = None) -> int:
        key = text if runs is None else "\x00".join(runs)
        if key not in index:
            index[key] = len(shared)
            shared.append(text)
            if runs:
                body = "".join(
                    f'<r><rPr><b val="{int(i % 2 == 1)}"/><sz val="11"/></rPr>'
                    f'<t xml:space="preserve">{_esc(r)}</t></r>'
                    for i, r in enumerate(runs)
                )
                shared_xml.append(f"<si>{body}</si>")
            else:
                shared_xml.append(f'<si><t xml:space="preserve">{_esc(text)}</t></si>')
        return index[key]

    sheet_xml: list[str] = []
    chain: list[str] = []
    for n, sheet in enumerate(sheets, start=1):
        rows: dict[int, list[tuple[str, object]]] = {}
        for ref, value in sheet.cells.items():
            col, row = _split(ref)
            rows.setdefault(row, []).append((col, value))
        for row in sheet.heights:
            rows.setdefault(row, [])
        body = []
        max_col, max_row = 1, 1
        for r in sorted(rows):
            cells = sorted(rows[r], key=lambda cv: _col_index(cv[0]))
            height = sheet.heights.get(r)
            attrs_ = f' r="{r}" spans="1:{max(1, len(cells))}" x14ac:dyDescent="0.25"'
            if height:
                attrs_ += f' ht="{height}" customHeight="1"'
            out = f"<row{attrs_}>"
            for col, value in cells:
                ref = f"{col}{r}"
                max_col, max_row = max(max_col, _col_index(col)), max(max_row, r)
                style = sheet.styles.get(ref)
                s = f' s="{style}"' if style else ""
                if isinstance(value, Formula):
                    v = f"<v>{value.cached}</v>" if value.cached is not None else ""
                    out += f'<c r="{ref}"{s}><f>{_esc(value.text)}</f>{v}</c>'
                    chain.append(f'<c r="{ref}" i="{n}"/>')
                elif isinstance(value, bool):
                    out += f'<c r="{ref}"{s} t="b"><v>{int(value)}</v></c>'
                elif isinstance(value, int | float):
                    out += f'<c r="{ref}"{s}><v>{value}</v></c>'
                elif isinstance(value, Inline):
                    out += f'<c r="{ref}"{s} t="inlineStr"><is><t>{_esc(value.text)}</t></is></c>'
                elif isinstance(value, str):
                    idx = sst(value, sheet.runs.get(ref))
                    out += f'<c r="{ref}"{s} t="s"><v>{idx}</v></c>'
            body.append(out + "</row>")
        cols = ""
        if sheet.cols:
            cols = "<cols>" + "".join(
                f'<col min="{a}" max="{b}" width="{w}" customWidth="1"/>' for a, b, w in sheet.cols
            )
            cols += "</cols>"
        merges = ""
        if sheet.merges:
            merges = f'<mergeCells count="{len(sheet.merges)}">' + "".join(
                f'<mergeCell ref="{m}"/>' for m in sheet.merges
            )
            merges += "</mergeCells>"
        cond = "".join(
            f'<conditionalFormatting sqref="{ref}"><cfRule type="cellIs" dxfId="0" priority="1" '
            'operator="greaterThan"><formula>100</formula></cfRule></conditionalFormatting>'
            for ref in sheet.conditional
        )
        last = f"{_col_letter(max_col)}{max_row}"
        sheet_xml.append(
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
            f'<worksheet {_ROOT_NS} xr:uid="{{00000000-0001-0000-0000-00000000000{n}}}">'
            f'<dimension ref="A1:{last}"/>'
            '<sheetViews><sheetView workbookViewId="0"><selection activeCell="A1" sqref="A1"/>'
            "</sheetView></sheetViews>"
            '<sheetFormatPr defaultRowHeight="15" x14ac:dyDescent="0.25"/>'
            f"{cols}<sheetData>{''.join(body)}</sheetData>{merges}{cond}"
            '<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" '
            'footer="0.3"/></worksheet>'
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", _content_types(len(sheets), bool(chain)))
        zf.writestr("_rels/.rels", _ROOT_RELS)
        zf.writestr("docProps/app.xml", _APP)
        zf.writestr("xl/workbook.xml", _workbook(sheets, defined_names or {}))
        zf.writestr("xl/_rels/workbook.xml.rels", _workbook_rels(len(sheets), bool(chain)))
        for n, xml in enumerate(sheet_xml, start=1):
            zf.writestr(f"xl/worksheets/sheet{n}.xml", xml)
        zf.writestr("xl/styles.xml", _STYLES)
        zf.writestr(
            "xl/sharedStrings.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
            f'<sst xmlns="{MAIN}" count="{len(shared)}" uniqueCount="{len(shared)}">'
            + "".join(shared_xml)
            + "</sst>",
        )
        if chain:
            zf.writestr(
                "xl/calcChain.xml",
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
                f'<calcChain xmlns="{MAIN}">{"".join(chain)}</calcChain>',
            )
    return buf.getvalue()


def _col_letter(n: int) -> str:
    out = ""
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def _content_types(n: int, chain: bool) -> str:
    sheets = "".join(
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for i in range(1, n + 1)
    )
    calc = (
        '<Override PartName="/xl/calcChain.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.calcChain+xml"/>'
        if chain
        else ""
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/'
        'vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        f"{sheets}"
        '<Override PartName="/xl/styles.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
        f"{calc}"
        '<Override PartName="/docProps/app.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.extended-properties+xml"/>'
        "</Types>"
    )


_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="xl/workbook.xml"/>'
    '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/extended-properties" Target="docProps/app.xml"/>'
    "</Relationships>"
)

_APP = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
    '<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties">'
    "<Application>Microsoft Excel</Application></Properties>"
)


def _workbook(sheets: list[Sheet], names: dict[str, str]) -> str:
    sheet_els = "".join(
        f'<sheet name="{_esc(s.name)}" sheetId="{i}" r:id="rId{i}"/>'
        for i, s in enumerate(sheets, start=1)
    )
    defined = ""
    if names:
        defined = "<definedNames>" + "".join(
            f'<definedName name="{k}"'
            + (' localSheetId="0"' if k.startswith("_xlnm") else "")
            + f">{_esc(v)}</definedName>"
            for k, v in names.items()
        )
        defined += "</definedNames>"
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
        f"<workbook {_ROOT_NS}>"
        '<workbookPr defaultThemeVersion="166925"/>'
        '<bookViews><workbookView xWindow="0" yWindow="0" windowWidth="28800" '
        'windowHeight="12300"/></bookViews>'
        f"<sheets>{sheet_els}</sheets>{defined}"
        '<calcPr calcId="191029"/></workbook>'
    )


def _workbook_rels(n: int, chain: bool) -> str:
    rels = "".join(
        f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/'
        f'2006/relationships/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, n + 1)
    )
    base = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    rels += f'<Relationship Id="rId{n + 1}" Type="{base}/styles" Target="styles.xml"/>'
    rels += (
        f'<Relationship Id="rId{n + 2}" Type="{base}/sharedStrings" Target="sharedStrings.xml"/>'
    )
    if chain:
        rels += f'<Relationship Id="rId{n + 3}" Type="{base}/calcChain" Target="calcChain.xml"/>'
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f"{rels}</Relationships>"
    )


_STYLES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
    f'<styleSheet xmlns="{MAIN}">'
    '<numFmts count="1"><numFmt numFmtId="164" formatCode="#,##0.00\\ &quot;€&quot;"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="3"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill>'
    '<fill><patternFill patternType="solid"><fgColor rgb="FFFFFF00"/></patternFill></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="5">'
    '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="0" fontId="0" fillId="2" borderId="0" xfId="0" applyFill="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    '<dxfs count="1"><dxf><font><b/></font></dxf></dxfs>'
    "</styleSheet>"
)
