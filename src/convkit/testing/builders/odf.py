"""Build ODT/FODT templates the way LibreOffice writes them, and read rendered ones back.

LibreOffice writes ``content.xml`` on (almost) one line with every namespace declared on the
root, automatic styles ``P1``/``T1`` for partial formatting, and it splits text into
``text:span`` elements wherever the formatting changes, so a Jinja tag typed in Writer and then
partly formatted ends up spread over several spans. The helpers here write exactly that.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

from lxml import etree

from convkit.office.xml import NAMESPACES

#: The namespaces LibreOffice declares on a document's root.
NS = {
    **{p: NAMESPACES[p] for p in ("office", "style", "text", "table", "draw", "fo", "xlink")},
    "dc": "http://purl.org/dc/elements/1.1/",
    "meta": "urn:oasis:names:tc:opendocument:xmlns:meta:1.0",
    "number": "urn:oasis:names:tc:opendocument:xmlns:datastyle:1.0",
    **{p: NAMESPACES[p] for p in ("svg", "loext")},
    "officeooo": "http://openoffice.org/2009/office",
    "manifest": NAMESPACES["manifest"],
}
_DECLS = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items() if p != "manifest")

MIMETYPE = b"application/vnd.oasis.opendocument.text"

AUTOMATIC_STYLES = (
    '<style:style style:name="P1" style:family="paragraph" style:parent-style-name="Standard">'
    '<style:text-properties officeooo:rsid="0001"/></style:style>'
    '<style:style style:name="T1" style:family="text">'
    '<style:text-properties fo:font-weight="bold" style:font-weight-asian="bold"/></style:style>'
    '<style:style style:name="T2" style:family="text">'
    '<style:text-properties fo:font-style="italic"/></style:style>'
    '<style:style style:name="T3" style:family="text">'
    '<style:text-properties officeooo:rsid="0002"/></style:style>'
    '<style:style style:name="Table1" style:family="table">'
    '<style:table-properties style:width="17cm" table:align="margins"/></style:style>'
    '<style:style style:name="Table1.A1" style:family="table-cell">'
    '<style:table-cell-properties fo:padding="0.1cm" fo:border="0.5pt solid #000000"/>'
    "</style:style>"
)


def split(tag: str, *styles: str) -> str:
    """``tag`` split into spans like LibreOffice does after partial formatting: the middle of
    the tag in a span per style (default T1, then T3), each a few characters long."""
    styles = styles or ("T1", "T3")
    n = len(styles) + 1
    size = max(1, len(tag) // n)
    pieces = [tag[i * size : (i + 1) * size] for i in range(n - 1)] + [tag[(n - 1) * size :]]
    out = pieces[0]
    for style, piece in zip(styles, pieces[1:], strict=False):
        out += f'<text:span text:style-name="{style}">{_esc(piece[:1])}</text:span>'
        out += _esc(piece[1:])
    return out


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def p(inner: str, style: str = "P1") -> str:
    """A paragraph; ``inner`` is XML (use :func:`t` for plain text)."""
    return f'<text:p text:style-name="{style}">{inner}</text:p>'


def t(text: str) -> str:
    return _esc(text)


def table(rows: Iterable[Iterable[str]], name: str = "Table1") -> str:
    """A Writer table; each cell is the XML of its content (paragraphs)."""
    grid = [list(r) for r in rows]
    cols = max(len(r) for r in grid)
    out = f'<table:table table:name="{name}" table:style-name="{name}">'
    out += (
        f'<table:table-column table:style-name="{name}.A" table:number-columns-repeated="{cols}"/>'
    )
    for row in grid:
        out += "<table:table-row>"
        for cell in row:
            out += (
                f'<table:table-cell table:style-name="{name}.A1" office:value-type="string">'
                f"{cell}</table:table-cell>"
            )
        out += "</table:table-row>"
    return out + "</table:table>"


def cell(inner: str, *, span: int = 1, style: str = "Table1.A1") -> str:
    """A cell LibreOffice merged over ``span`` columns (``number-columns-spanned`` and the
    covered cells after it); use in :func:`raw_table`."""
    attrs = f' table:number-columns-spanned="{span}"' if span > 1 else ""
    out = (
        f'<table:table-cell table:style-name="{style}"{attrs} office:value-type="string">'
        f"{inner}</table:table-cell>"
    )
    return out + "<table:covered-table-cell/>" * (span - 1)


def raw_table(rows: Iterable[Iterable[str]], columns: int, name: str = "Table1") -> str:
    """A Writer table whose rows are cell XML (from :func:`cell`), ``columns`` wide."""
    out = f'<table:table table:name="{name}" table:style-name="{name}">'
    out += (
        f'<table:table-column table:style-name="{name}.A" '
        f'table:number-columns-repeated="{columns}"/>'
    )
    for row in rows:
        out += "<table:table-row>" + "".join(row) + "</table:table-row>"
    return out + "</table:table>"


_TABLE = "{" + NS["table"] + "}"


def table_rows(xml: bytes, index: int = 0) -> list[list[etree._Element]]:
    """The cells (``table-cell`` and ``covered-table-cell``) of each row of the ``index``-th
    table of a part, a repeated cell counted as often as it repeats."""
    root = etree.fromstring(xml)
    tbl = list(root.iter(_TABLE + "table"))[index]
    rows = []
    for row in tbl.iter(_TABLE + "table-row"):
        cells: list[etree._Element] = []
        for c in row:
            if c.tag in (_TABLE + "table-cell", _TABLE + "covered-table-cell"):
                cells.extend([c] * int(c.get(_TABLE + "number-columns-repeated", "1")))
        rows.append(cells)
    return rows


def declared_columns(xml: bytes, index: int = 0) -> int:
    root = etree.fromstring(xml)
    tbl = list(root.iter(_TABLE + "table"))[index]
    return sum(
        int(c.get(_TABLE + "number-columns-repeated", "1"))
        for c in tbl.iter(_TABLE + "table-column")
    )


def content_xml(body: str, automatic_styles: str = AUTOMATIC_STYLES) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<office:document-content {_DECLS} office:version="1.3">'
        '<office:scripts/><office:font-face-decls><style:font-face style:name="Liberation Serif" '
        'svg:font-family="&apos;Liberation Serif&apos;" style:font-family-generic="roman"/>'
        "</office:font-face-decls>"
        f"<office:automatic-styles>{automatic_styles}</office:automatic-styles>"
        f"<office:body><office:text>"
        '<text:sequence-decls><text:sequence-decl text:display-outline-level="0" '
        'text:name="Illustration"/></text:sequence-decls>'
        f"{body}</office:text></office:body></office:document-content>"
    ).encode()


def styles_xml(header: str = "", footer: str = "") -> bytes:
    master = '<style:master-page style:name="Standard" style:page-layout-name="pm1">'
    if header:
        master += f"<style:header>{header}</style:header>"
    if footer:
        master += f"<style:footer>{footer}</style:footer>"
    master += "</style:master-page>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<office:document-styles {_DECLS} office:version="1.3">'
        "<office:styles>"
        '<style:style style:name="Standard" style:family="paragraph" style:class="text"/>'
        '<style:style style:name="Heading_20_1" style:display-name="Heading 1" '
        'style:family="paragraph" style:parent-style-name="Standard">'
        '<style:text-properties fo:font-size="130%" fo:font-weight="bold"/></style:style>'
        "</office:styles>"
        '<office:automatic-styles><style:page-layout style:name="pm1">'
        '<style:page-layout-properties fo:page-width="21.001cm" fo:page-height="29.7cm" '
        'fo:margin-top="2cm" fo:margin-bottom="2cm" fo:margin-left="2cm" fo:margin-right="2cm"/>'
        "</style:page-layout></office:automatic-styles>"
        f"<office:master-styles>{master}</office:master-styles></office:document-styles>"
    ).encode()


def meta_xml(title: str = "", extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<office:document-meta {_DECLS} office:version="1.3"><office:meta>'
        "<meta:generator>LibreOffice/7.6$Linux_X86_64</meta:generator>"
        f"<dc:title>{_esc(title)}</dc:title>{extra}"
        "</office:meta></office:document-meta>"
    ).encode()


def manifest_xml(extra: Iterable[tuple[str, str]] = ()) -> bytes:
    entries = [
        ("/", "application/vnd.oasis.opendocument.text"),
        ("content.xml", "text/xml"),
        ("styles.xml", "text/xml"),
        ("meta.xml", "text/xml"),
        ("settings.xml", "text/xml"),
        ("Thumbnails/thumbnail.png", "image/png"),  # LibreOffice refuses unlisted members
        *extra,
    ]
    body = "".join(
        f'<manifest:file-entry manifest:full-path="{path}" manifest:media-type="{mt}"'
        + (' manifest:version="1.3"' if path == "/" else "")
        + "/>"
        for path, mt in entries
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<manifest:manifest xmlns:manifest="{NS["manifest"]}" manifest:version="1.3">'
        f"{body}</manifest:manifest>"
    ).encode()


def odt(
    body: str,
    *,
    header: str = "",
    footer: str = "",
    title: str = "",
    meta_extra: str = "",
    extra_members: dict[str, bytes] | None = None,
    automatic_styles: str = AUTOMATIC_STYLES,
) -> bytes:
    """A complete .odt package as LibreOffice writes it (mimetype first and stored)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), MIMETYPE, compress_type=zipfile.ZIP_STORED)
        zf.writestr("content.xml", content_xml(body, automatic_styles))
        zf.writestr("styles.xml", styles_xml(header, footer))
        zf.writestr("meta.xml", meta_xml(title, meta_extra))
        zf.writestr(
            "settings.xml",
            f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-settings {_DECLS}/>',
        )
        zf.writestr("Thumbnails/thumbnail.png", b"\x89PNG\r\n\x1a\n")
        for name, data in (extra_members or {}).items():
            zf.writestr(name, data)
        zf.writestr("META-INF/manifest.xml", manifest_xml())
    return buf.getvalue()


def fodt(body: str, *, header: str = "", title: str = "") -> bytes:
    """A flat ODT (one XML document), as LibreOffice saves ``.fodt``."""
    master = '<style:master-page style:name="Standard" style:page-layout-name="pm1">'
    if header:
        master += f"<style:header>{header}</style:header>"
    master += "</style:master-page>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<office:document {_DECLS} office:version="1.3" '
        'office:mimetype="application/vnd.oasis.opendocument.text">'
        f"<office:meta><dc:title>{_esc(title)}</dc:title></office:meta>"
        "<office:styles>"
        '<style:style style:name="Standard" style:family="paragraph" style:class="text"/>'
        "</office:styles>"
        f"<office:automatic-styles>{AUTOMATIC_STYLES}"
        '<style:page-layout style:name="pm1"/></office:automatic-styles>'
        f"<office:master-styles>{master}</office:master-styles>"
        f"<office:body><office:text>{body}</office:text></office:body></office:document>"
    ).encode()


# --------------------------------------------------------------------------------------------------
# Reading rendered documents

_TEXT = "{" + NS["text"] + "}"


def inline_text(el: etree._Element) -> str:
    """The text of a paragraph by ODF rules: text:s/tab/line-break count, literal whitespace
    runs collapse to one space."""
    out: list[str] = []

    def walk(node: etree._Element) -> None:
        if node.text:
            out.append(_collapse(node.text))
        for child in node:
            tag = child.tag if isinstance(child.tag, str) else ""
            if tag == _TEXT + "s":
                out.append("\x00" * int(child.get(_TEXT + "c", "1")))
            elif tag == _TEXT + "tab":
                out.append("\x01")
            elif tag == _TEXT + "line-break":
                out.append("\x02")
            elif tag in (_TEXT + "span", _TEXT + "a", _TEXT + "meta"):
                walk(child)
            if child.tail:
                out.append(_collapse(child.tail))

    walk(el)
    # Leading/trailing literal whitespace of a paragraph is not displayed; text:s etc. are.
    text = _collapse("".join(out)).strip(" ")
    return text.replace("\x00", " ").replace("\x01", "\t").replace("\x02", "\n")


def _collapse(text: str) -> str:
    import re

    return re.sub(r"[ \t\r\n]+", " ", text)


def paragraphs(xml: bytes) -> list[str]:
    """Texts of every text:p/text:h of a part, in document order (ODF whitespace rules)."""
    root = etree.fromstring(xml)
    texts = []
    for para in root.iter(_TEXT + "p", _TEXT + "h"):
        texts.append(inline_text(para))
    return texts


def read_odt(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def odt_text(data: bytes, part: str = "content.xml") -> list[str]:
    return paragraphs(read_odt(data)[part])
