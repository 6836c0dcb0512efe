"""Write the sample ODT and XLSX templates of examples/templates (run from anywhere).

    python examples/templates/make_odf_xlsx_examples.py

The files are written the way LibreOffice and Excel write them (tags split over formatted spans,
shared strings, styles by index) so they exercise what real templates need. The JSON data next
to each template renders it: ``convkit render letter_odt --data letter_odt.json``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED = (2026, 1, 1, 0, 0, 0)

ODF_NS = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "style": "urn:oasis:names:tc:opendocument:xmlns:style:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "fo": "urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0",
    "xlink": "http://www.w3.org/1999/xlink",
    "dc": "http://purl.org/dc/elements/1.1/",
    "meta": "urn:oasis:names:tc:opendocument:xmlns:meta:1.0",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
}
DECLS = " ".join(f'xmlns:{p}="{u}"' for p, u in ODF_NS.items())


def _zip(members: list[tuple[str, bytes]], stored_first: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, (name, data) in enumerate(members):
            info = zipfile.ZipInfo(name, FIXED)
            stored = stored_first and n == 0
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def p(inner: str, style: str = "Standard") -> str:
    return f'<text:p text:style-name="{style}">{inner}</text:p>'


def letter_odt() -> bytes:
    cell = '<table:table-cell table:style-name="Items.A1" office:value-type="string">'
    row = "<table:table-row>{}</table:table-row>"

    def cells(*paras: str) -> str:
        return row.format("".join(f"{cell}{x}</table:table-cell>" for x in paras))

    body = (
        p("{{ sender.city }}, {{ date|format_date('long') }}", "Right")
        + p("")
        # Partly formatted while typing: LibreOffice splits the tag over spans.
        + p('Dear {{ <text:span text:style-name="T1">customer.</text:span>name }},')
        + p("thank you for your order of the {{ product }}. {{ intro }}")
        + '<text:h text:style-name="Heading" text:outline-level="1">'
        + "Invoice {{ number }}</text:h>"
        + '<table:table table:name="Items" table:style-name="Items">'
        + '<table:table-column table:number-columns-repeated="3"/>'
        + cells(p("Item", "Bold"), p("Qty", "Bold"), p("Amount", "Bold"))
        + cells(p("{%tr for line in lines %}"), p(""), p(""))
        + cells(
            p("{{ line.item }}"),
            p("{{ line.qty }}"),
            p("{{ line.amount|format_currency(currency) }}"),
        )
        + cells(p("{%tr endfor %}"), p(""), p(""))
        + "</table:table>"
        + p("Total: {{ total|format_currency(currency) }}", "Bold")
        + p("{%p if notes %}")
        + p("Notes: {{ notes }}")
        + p("{%p endif %}")
        + p("More at {{ website }}.")
        + p("Kind regards,")
        + p("{{ sender.name }}")
    )
    auto = (
        '<style:style style:name="T1" style:family="text">'
        '<style:text-properties fo:font-weight="bold"/></style:style>'
        '<style:style style:name="Items" style:family="table">'
        '<style:table-properties style:width="17cm" table:align="margins"/></style:style>'
        '<style:style style:name="Items.A1" style:family="table-cell">'
        '<style:table-cell-properties fo:padding="0.1cm" fo:border="0.5pt solid #000000"/>'
        "</style:style>"
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {DECLS} '
        f'office:version="1.3"><office:automatic-styles>{auto}</office:automatic-styles>'
        f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    styles = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-styles {DECLS} '
        'office:version="1.3"><office:styles>'
        '<style:style style:name="Standard" style:family="paragraph" style:class="text">'
        '<style:text-properties style:font-name="Liberation Sans" fo:font-size="11pt"/>'
        "</style:style>"
        '<style:style style:name="Right" style:family="paragraph" '
        'style:parent-style-name="Standard"><style:paragraph-properties fo:text-align="end"/>'
        "</style:style>"
        '<style:style style:name="Bold" style:family="paragraph" '
        'style:parent-style-name="Standard"><style:text-properties fo:font-weight="bold"/>'
        "</style:style>"
        '<style:style style:name="Heading" style:family="paragraph" '
        'style:parent-style-name="Standard"><style:text-properties fo:font-size="16pt" '
        'fo:font-weight="bold"/></style:style></office:styles>'
        '<office:automatic-styles><style:page-layout style:name="pm1">'
        '<style:page-layout-properties fo:page-width="21cm" fo:page-height="29.7cm" '
        'fo:margin-top="1.5cm" fo:margin-bottom="1.5cm" fo:margin-left="2cm" '
        'fo:margin-right="2cm"/><style:header-style/></style:page-layout>'
        "</office:automatic-styles><office:master-styles>"
        '<style:master-page style:name="Standard" style:page-layout-name="pm1">'
        "<style:header>"
        + p("{{ sender.name }} · {{ sender.city }}", "Right")
        + "</style:header></style:master-page></office:master-styles></office:document-styles>"
    )
    meta = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-meta {DECLS} '
        'office:version="1.3"><office:meta><dc:title>Invoice {{ number }}</dc:title>'
        "</office:meta></office:document-meta>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" '
        'manifest:version="1.3">'
        '<manifest:file-entry manifest:full-path="/" manifest:version="1.3" '
        'manifest:media-type="application/vnd.oasis.opendocument.text"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        '<manifest:file-entry manifest:full-path="styles.xml" manifest:media-type="text/xml"/>'
        '<manifest:file-entry manifest:full-path="meta.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    return _zip(
        [
            ("mimetype", b"application/vnd.oasis.opendocument.text"),
            ("content.xml", content.encode()),
            ("styles.xml", styles.encode()),
            ("meta.xml", meta.encode()),
            ("META-INF/manifest.xml", manifest.encode()),
        ],
        stored_first=True,
    )


LETTER_DATA = {
    "sender": {"name": "Babbage & Co", "city": "London"},
    "customer": {"name": "Ada Lovelace"},
    "date": "2026-01-15",
    "number": "INV-0042",
    "product": "Analytical Engine",
    "intro": "Your notes on the Bernoulli numbers are enclosed.\nWe ship next week.",
    "currency": "GBP",
    "lines": [
        {"item": "Mill", "qty": 1, "amount": 1200.0},
        {"item": "Store (1,000 numbers)", "qty": 1, "amount": 800.0},
        {"item": "Punched cards", "qty": 500, "amount": 25.5},
    ],
    "total": 2025.5,
    "notes": "Delivery by <steam> carriage & horse.",
    "website": {"$link": {"url": "https://example.com/engines", "text": "example.com/engines"}},
}


# --------------------------------------------------------------------------------------------------
# XLSX

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def report_xlsx() -> bytes:
    strings = [
        "Quarterly report {{ quarter }} for {{ company }}",  # 0
        "Product",  # 1
        "Units",  # 2
        "Unit price",  # 3
        "Revenue",  # 4
        "Since",  # 5
        "{%tr for line in lines %}",  # 6
        "{{ line.product }}",  # 7
        "{{ line.units }}",  # 8
        "{{ line.price }}",  # 9
        "{{ line.since }}",  # 10
        "{%tr endfor %}",  # 11
        "Total",  # 12
        "Prepared by {{ author }} ({{ generated|format_date('medium') }})",  # 13
    ]
    sst = "".join(f'<si><t xml:space="preserve">{s}</t></si>' for s in strings)
    rows = [
        '<row r="1" ht="24" customHeight="1"><c r="A1" s="1" t="s"><v>0</v></c></row>',
        '<row r="3"><c r="A3" s="2" t="s"><v>1</v></c><c r="B3" s="2" t="s"><v>2</v></c>'
        '<c r="C3" s="2" t="s"><v>3</v></c><c r="D3" s="2" t="s"><v>4</v></c>'
        '<c r="E3" s="2" t="s"><v>5</v></c></row>',
        '<row r="4"><c r="A4" t="s"><v>6</v></c></row>',
        '<row r="5"><c r="A5" t="s"><v>7</v></c><c r="B5" t="s"><v>8</v></c>'
        '<c r="C5" s="3" t="s"><v>9</v></c><c r="D5" s="3"><f>B5*C5</f><v>0</v></c>'
        '<c r="E5" s="4" t="s"><v>10</v></c></row>',
        '<row r="6"><c r="A6" t="s"><v>11</v></c></row>',
        '<row r="7"><c r="A7" s="2" t="s"><v>12</v></c><c r="B7" s="2"><f>SUM(B5:B5)</f>'
        '<v>0</v></c><c r="D7" s="5"><f>SUM(D5:D5)</f><v>0</v></c></row>',
        '<row r="9"><c r="A9" t="s"><v>13</v></c></row>',
    ]
    sheet = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<worksheet xmlns="{MAIN}" xmlns:r="{R}"><dimension ref="A1:E9"/>'
        '<sheetViews><sheetView workbookViewId="0"/></sheetViews>'
        '<sheetFormatPr defaultRowHeight="15"/>'
        '<cols><col min="1" max="1" width="32" customWidth="1"/>'
        '<col min="2" max="5" width="14" customWidth="1"/></cols>'
        f"<sheetData>{''.join(rows)}</sheetData>"
        '<mergeCells count="2"><mergeCell ref="A1:E1"/><mergeCell ref="A9:E9"/></mergeCells>'
        '<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/>'
        '<pageSetup orientation="landscape"/></worksheet>'
    )
    styles = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<styleSheet xmlns="{MAIN}">'
        '<numFmts count="1"><numFmt numFmtId="164" formatCode="#,##0.00"/></numFmts>'
        '<fonts count="3"><font><sz val="11"/><name val="Liberation Sans"/></font>'
        '<font><b/><sz val="16"/><name val="Liberation Sans"/></font>'
        '<font><b/><sz val="11"/><name val="Liberation Sans"/></font></fonts>'
        '<fills count="3"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill><fill><patternFill '
        'patternType="solid"><fgColor rgb="FFDDEBF7"/></patternFill></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/>'
        "</cellStyleXfs>"
        '<cellXfs count="6"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
        '<xf numFmtId="0" fontId="2" fillId="2" borderId="0" xfId="0" applyFont="1" '
        'applyFill="1"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="164" fontId="2" fillId="2" borderId="0" xfId="0" applyNumberFormat="1" '
        'applyFont="1" applyFill="1"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>"
    )
    workbook = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<workbook xmlns="{MAIN}" xmlns:r="{R}"><sheets>'
        '<sheet name="Report" sheetId="1" r:id="rId1"/></sheets>'
        '<definedNames><definedName name="_xlnm.Print_Area" localSheetId="0">'
        "Report!$A$1:$E$9</definedName></definedNames></workbook>"
    )
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    wb_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{rel}/styles" Target="styles.xml"/>'
        f'<Relationship Id="rId3" Type="{rel}/sharedStrings" Target="sharedStrings.xml"/>'
        "</Relationships>"
    )
    root_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>"
    )
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{ct}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{ct}.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{ct}.styles+xml"/>'
        f'<Override PartName="/xl/sharedStrings.xml" ContentType="{ct}.sharedStrings+xml"/>'
        "</Types>"
    )
    return _zip(
        [
            ("[Content_Types].xml", types.encode()),
            ("_rels/.rels", root_rels.encode()),
            ("xl/workbook.xml", workbook.encode()),
            ("xl/_rels/workbook.xml.rels", wb_rels.encode()),
            ("xl/worksheets/sheet1.xml", sheet.encode()),
            ("xl/styles.xml", styles.encode()),
            (
                "xl/sharedStrings.xml",
                (
                    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                    f'<sst xmlns="{MAIN}" count="{len(strings)}" uniqueCount="{len(strings)}">'
                    f"{sst}</sst>"
                ).encode(),
            ),
        ]
    )


REPORT_DATA = {
    "company": "Babbage & Co",
    "quarter": "Q1 2026",
    "author": "Ada Lovelace",
    "generated": "2026-04-02",
    "lines": [
        {"product": "Difference Engine", "units": 3, "price": 1500.0, "since": "2025-03-01"},
        {"product": "Analytical Engine", "units": 1, "price": 4200.5, "since": "2026-01-15"},
        {"product": "Punched cards", "units": 12000, "price": 0.05, "since": "2024-11-30"},
    ],
}


def main() -> None:
    (HERE / "letter_odt.odt").write_bytes(letter_odt())
    (HERE / "letter_odt.json").write_text(json.dumps(LETTER_DATA, indent=2) + "\n")
    (HERE / "report_xlsx.xlsx").write_bytes(report_xlsx())
    (HERE / "report_xlsx.json").write_text(json.dumps(REPORT_DATA, indent=2) + "\n")


if __name__ == "__main__":
    main()
