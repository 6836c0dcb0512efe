"""Regenerate ``invoice_docx.docx`` (and its sample data ``invoice_docx.json``).

    python examples/templates/make_docx_examples.py

Needs python-docx (installed with the ``test`` extra, through docxtpl). The template uses
docxtpl's syntax, so it renders the same with convkit and with docxtpl: a header and a footer
with the invoice number, a ``{%tr for %}`` line-items table, totals, and locale-formatted dates
and money. One tag is deliberately split over runs with different formatting, as Word does.

``build_invoice(locale_filters=False)`` gives the same document with plain Jinja formatting in
place of the Babel filters (docxtpl has no locale filters); the DOCX benchmark renders that one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

HERE = Path(__file__).parent


def build_invoice(*, locale_filters: bool = True) -> bytes:
    from docx import Document
    from docx.enum.table import WD_TABLE_ALIGNMENT
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Mm, Pt, RGBColor

    def money(expr: str) -> str:
        if locale_filters:
            return f"{{{{ ({expr})|format_currency(invoice.currency) }}}}"
        return f'{{{{ "%.2f"|format({expr}) }}}} {{{{ invoice.currency }}}}'

    date = "{{ invoice.date|format_date('long') }}" if locale_filters else "{{ invoice.date }}"
    due = "{{ invoice.due|format_date('long') }}" if locale_filters else "{{ invoice.due }}"

    doc = Document()
    section = doc.sections[0]
    section.page_width, section.page_height = Mm(210), Mm(297)
    section.left_margin = section.right_margin = Mm(20)

    header = section.header.paragraphs[0]
    header.text = "{{ company.name }} · Invoice {{ invoice.number }}"
    header.alignment = WD_ALIGN_PARAGRAPH.RIGHT
    footer = section.footer.paragraphs[0]
    footer.text = f"Invoice {{{{ invoice.number }}}} · {date} · {{{{ company.email }}}}"
    footer.alignment = WD_ALIGN_PARAGRAPH.CENTER

    title = doc.add_paragraph(style="Title")
    title.add_run("Invoice ")
    # Word-like: the tag spread over runs with different formatting.
    for piece, bold in (("{{ in", True), ("voice.num", False), ("ber }}", True)):
        title.add_run(piece).bold = bold

    meta = doc.add_paragraph()
    meta.add_run("Date: ").bold = True
    meta.add_run(date)
    meta.add_run("\t")
    meta.add_run("Due: ").bold = True
    meta.add_run(due)

    doc.add_paragraph().add_run("Bill to").bold = True
    doc.add_paragraph("{{ customer.name }}")
    doc.add_paragraph("{{ customer.address }}")  # "\n" in the value -> line breaks

    table = doc.add_table(rows=4, cols=4)
    table.style = "Table Grid"
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    widths = (Mm(85), Mm(20), Mm(32), Mm(33))
    heads = ("Description", "Qty", "Unit price", "Amount")
    cells = (
        "{{ item.description }}",
        "{{ item.quantity }}",
        money("item.unit_price"),
        money("item.quantity * item.unit_price"),
    )
    for row in table.rows:
        for cell, width in zip(row.cells, widths, strict=True):
            cell.width = width
    for cell, text in zip(table.rows[0].cells, heads, strict=True):
        cell.paragraphs[0].add_run(text).bold = True
    table.rows[1].cells[0].paragraphs[0].text = "{%tr for item in items %}"
    for cell, text in zip(table.rows[2].cells, cells, strict=True):
        cell.paragraphs[0].text = text
    for cell in table.rows[2].cells[1:]:
        cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.RIGHT
    table.rows[3].cells[0].paragraphs[0].text = "{%tr endfor %}"

    totals = doc.add_table(rows=3, cols=2)
    totals.alignment = WD_TABLE_ALIGNMENT.RIGHT
    rows = (
        ("Net", money("totals.net")),
        ("VAT {{ totals.vat_rate }} %", money("totals.vat")),
        ("Total", money("totals.gross")),
    )
    for row, (label, value) in zip(totals.rows, rows, strict=True):
        row.cells[0].paragraphs[0].add_run(label).bold = label == "Total"
        run = row.cells[1].paragraphs[0].add_run(value)
        run.bold = label == "Total"
        row.cells[1].paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.RIGHT

    doc.add_paragraph("{%p if notes %}")
    note = doc.add_paragraph()
    run = note.add_run("Note: {{ notes }}")
    run.italic = True
    run.font.size = Pt(9)
    run.font.color.rgb = RGBColor(0x55, 0x55, 0x55)
    doc.add_paragraph("{%p endif %}")
    doc.add_paragraph(f"Please pay by {due}. Thank you for your business.")

    doc.core_properties.title = "Invoice {{ invoice.number }}"
    doc.core_properties.author = "{{ company.name }}"
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def sample_data(rows: int = 3) -> dict[str, object]:
    """Invoice data with ``rows`` line items (the sample uses 3, the benchmark thousands)."""
    base = [
        ("Consulting <Python & XML>", 12, 95.0),
        ("Template design — “Word” edition", 1, 480.0),
        ("Hosting, 12 months\n(billed yearly)", 1, 240.0),
    ]
    items = [
        {
            "description": base[n % 3][0] if rows <= 3 else f"Line item {n + 1}: {base[n % 3][0]}",
            "quantity": base[n % 3][1],
            "unit_price": base[n % 3][2],
        }
        for n in range(rows)
    ]
    net = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)  # type: ignore[operator]
    vat = round(net * 0.19, 2)
    return {
        "company": {"name": "Acme Tools GmbH", "email": "billing@acme.example"},
        "customer": {"name": "Jane Doe & Co.", "address": "Hauptstraße 1\n10115 Berlin"},
        "invoice": {
            "number": "INV-2026-0042",
            "date": "2026-01-15",
            "due": "2026-02-14",
            "currency": "EUR",
        },
        "items": items,
        "totals": {"net": net, "vat_rate": 19, "vat": vat, "gross": round(net + vat, 2)},
        "notes": "Reverse charge does not apply.",
    }


def main() -> None:
    (HERE / "invoice_docx.docx").write_bytes(build_invoice())
    data = sample_data()
    (HERE / "invoice_docx.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
