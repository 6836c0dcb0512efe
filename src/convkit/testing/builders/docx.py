"""Build DOCX fixtures in memory, the way Word writes them: runs split in the middle of tags,
with different formatting on each piece, proofing marks and bookmarks between the pieces.

    docx(body=p(r("Hello "), word_split("{{ name }}"), r("!")))

writes a complete package (content types, relationships, styles, settings, core and custom
properties, optional headers, footers, footnotes, endnotes and comments).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any
from xml.sax.saxutils import escape, quoteattr

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
R_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
NAMESPACES = (
    f'xmlns:w="{W_NS}" xmlns:r="{R_NS}" '
    'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
    'xmlns:w14="http://schemas.microsoft.com/office/word/2010/wordml" '
    'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
    'mc:Ignorable="w14"'
)
DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
CT_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml"


def rpr(
    *,
    b: bool = False,
    i: bool = False,
    u: bool = False,
    color: str | None = None,
    size: int | None = None,
    font: str | None = None,
) -> str:
    parts = []
    if font:
        parts.append(f'<w:rFonts w:ascii="{font}" w:hAnsi="{font}"/>')
    if b:
        parts.append("<w:b/>")
    if i:
        parts.append("<w:i/>")
    if color:
        parts.append(f'<w:color w:val="{color}"/>')
    if size:
        parts.append(f'<w:sz w:val="{size * 2}"/>')
    if u:
        parts.append('<w:u w:val="single"/>')
    return f"<w:rPr>{''.join(parts)}</w:rPr>" if parts else ""


def r(text: str, **fmt: object) -> str:
    """One run, the way Word writes it (rsid attributes, xml:space when needed)."""
    space = ' xml:space="preserve"' if text != text.strip() or not text else ""
    return (
        f'<w:r w:rsidR="00A1B2C3">{rpr(**fmt)}'  # type: ignore[arg-type]
        f"<w:t{space}>{escape(text)}</w:t></w:r>"
    )


_BOOKMARK = 0


def word_split(text: str) -> str:
    """``text`` as Word might store it after editing: one run per few characters, alternating
    formatting, a spelling mark and a bookmark in between."""
    global _BOOKMARK
    cuts = [1, 3, 6, 8, 11, 15]
    pieces = []
    start = 0
    for cut in cuts:
        if cut >= len(text):
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    out = []
    formats: list[dict[str, Any]] = [{}, {"b": True}, {"i": True}, {"color": "FF0000"}, {"u": True}]
    for n, piece in enumerate(pieces):
        if n == 1:
            out.append('<w:proofErr w:type="spellStart"/>')
        if n == 2:
            _BOOKMARK += 1
            out.append(f'<w:bookmarkStart w:id="{_BOOKMARK}" w:name="_GoBack{_BOOKMARK}"/>')
        out.append(r(piece, **formats[n % len(formats)]))
        if n == 3:
            out.append(f'<w:bookmarkEnd w:id="{_BOOKMARK}"/>')
        if n == 4:
            out.append('<w:proofErr w:type="spellEnd"/>')
    return "".join(out)


def p(*content: str, style: str | None = None, align: str | None = None) -> str:
    ppr = ""
    if style or align:
        ppr = "<w:pPr>"
        if style:
            ppr += f'<w:pStyle w:val="{style}"/>'
        if align:
            ppr += f'<w:jc w:val="{align}"/>'
        ppr += "</w:pPr>"
    runs = "".join(c if c.startswith("<") else r(c) for c in content)
    return f'<w:p w:rsidR="00B1C2D3" w14:paraId="1A2B3C4D">{ppr}{runs}</w:p>'


def tc(*paragraphs: str, width: int = 2000, span: int | None = None) -> str:
    body = "".join(paragraphs) or p()
    grid = f'<w:gridSpan w:val="{span}"/>' if span else ""
    return f'<w:tc><w:tcPr><w:tcW w:w="{width}" w:type="dxa"/>{grid}</w:tcPr>{body}</w:tc>'


def tr(*cells: str) -> str:
    return f"<w:tr>{''.join(cells)}</w:tr>"


def tbl(*rows: str, cols: int = 3, width: int = 2000) -> str:
    grid = "".join(f'<w:gridCol w:w="{width}"/>' for _ in range(cols))
    return (
        '<w:tbl><w:tblPr><w:tblStyle w:val="TableGrid"/><w:tblW w:w="0" w:type="auto"/>'
        f"</w:tblPr><w:tblGrid>{grid}</w:tblGrid>{''.join(rows)}</w:tbl>"
    )


def _notes(kind: str, items: list[str]) -> str:
    tag = kind[:-1]
    seps = (
        f'<w:{tag} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{tag}>'
        f'<w:{tag} w:type="continuationSeparator" w:id="0"><w:p><w:r>'
        f"<w:continuationSeparator/></w:r></w:p></w:{tag}>"
    )
    body = "".join(f'<w:{tag} w:id="{n}">{x}</w:{tag}>' for n, x in enumerate(items, start=1))
    return f"{DECL}<w:{kind} {NAMESPACES}>{seps}{body}</w:{kind}>"


def docx(
    body: str,
    *,
    headers: list[str] = (),  # type: ignore[assignment]
    footers: list[str] = (),  # type: ignore[assignment]
    footnotes: list[str] = (),  # type: ignore[assignment]
    endnotes: list[str] = (),  # type: ignore[assignment]
    comments: list[str] = (),  # type: ignore[assignment]
    title: str = "Fixture",
    custom: dict[str, str] | None = None,
    extra: dict[str, bytes] | None = None,
    main_type: str = f"{CT_MAIN}.document.main+xml",
) -> bytes:
    """A complete DOCX package whose body is ``body`` (paragraph and table XML)."""
    overrides = {
        "/word/document.xml": main_type,
        "/word/styles.xml": f"{CT_MAIN}.styles+xml",
        "/word/settings.xml": f"{CT_MAIN}.settings+xml",
        "/docProps/core.xml": "application/vnd.openxmlformats-package.core-properties+xml",
        "/docProps/app.xml": (
            "application/vnd.openxmlformats-officedocument.extended-properties+xml"
        ),
    }
    doc_rels = [
        ("rId1", "styles", "styles.xml"),
        ("rId2", "settings", "settings.xml"),
    ]
    files: dict[str, str | bytes] = {}
    sect = ""
    for kind, items in (("header", headers), ("footer", footers)):
        for n, xml in enumerate(items, start=1):
            name = f"{kind}{n}.xml"
            rid = f"rId{len(doc_rels) + 1}"
            doc_rels.append((rid, kind, name))
            overrides[f"/word/{name}"] = f"{CT_MAIN}.{kind}+xml"
            tag = "hdr" if kind == "header" else "ftr"
            files[f"word/{name}"] = f"{DECL}<w:{tag} {NAMESPACES}>{xml}</w:{tag}>"
            kind_attr = "default" if n == 1 else ("first" if n == 2 else "even")
            sect += f'<w:{kind}Reference w:type="{kind_attr}" r:id="{rid}"/>'
    for kind, items in (("footnotes", footnotes), ("endnotes", endnotes)):
        if items:
            doc_rels.append((f"rId{len(doc_rels) + 1}", kind, f"{kind}.xml"))
            overrides[f"/word/{kind}.xml"] = f"{CT_MAIN}.{kind}+xml"
            files[f"word/{kind}.xml"] = _notes(kind, list(items))
    if comments:
        doc_rels.append((f"rId{len(doc_rels) + 1}", "comments", "comments.xml"))
        overrides["/word/comments.xml"] = f"{CT_MAIN}.comments+xml"
        body_c = "".join(
            f'<w:comment w:id="{n}" w:author="A" w:initials="A">{x}</w:comment>'
            for n, x in enumerate(comments)
        )
        files["word/comments.xml"] = f"{DECL}<w:comments {NAMESPACES}>{body_c}</w:comments>"
    root_rels = [
        (
            "rId1",
            "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument",
            "word/document.xml",
        ),
        (
            "rId2",
            "http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties",
            "docProps/core.xml",
        ),
        (
            "rId3",
            "http://schemas.openxmlformats.org/officeDocument/2006/relationships/extended-properties",
            "docProps/app.xml",
        ),
    ]
    if custom is not None:
        overrides["/docProps/custom.xml"] = (
            "application/vnd.openxmlformats-officedocument.custom-properties+xml"
        )
        root_rels.append(
            (
                "rId4",
                "http://schemas.openxmlformats.org/officeDocument/2006/relationships/custom-properties",
                "docProps/custom.xml",
            )
        )
        props = "".join(
            f'<property fmtid="{{D5CDD505-2E9C-101B-9397-08002B2CF9AE}}" pid="{n}" '
            f"name={quoteattr(k)}><vt:lpwstr>{escape(v)}</vt:lpwstr></property>"
            for n, (k, v) in enumerate(custom.items(), start=2)
        )
        files["docProps/custom.xml"] = (
            f'{DECL}<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/'
            'custom-properties" xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/'
            f'docPropsVTypes">{props}</Properties>'
        )
    ct = (
        f'{DECL}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        + "".join(f'<Override PartName="{k}" ContentType="{v}"/>' for k, v in overrides.items())
        + "</Types>"
    )
    rels_xml = (
        f'{DECL}<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        + "".join(f'<Relationship Id="{i}" Type="{t}" Target="{g}"/>' for i, t, g in root_rels)
        + "</Relationships>"
    )
    base = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
    doc_rels_xml = (
        f'{DECL}<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        + "".join(f'<Relationship Id="{i}" Type="{base}{t}" Target="{g}"/>' for i, t, g in doc_rels)
        + "</Relationships>"
    )
    document = (
        f"{DECL}<w:document {NAMESPACES}><w:body>{body}"
        f'<w:sectPr>{sect}<w:pgSz w:w="11906" w:h="16838"/>'
        '<w:pgMar w:top="1417" w:right="1417" w:bottom="1134" w:left="1417" w:header="708" '
        'w:footer="708" w:gutter="0"/></w:sectPr></w:body></w:document>'
    )
    styles = (
        f"{DECL}<w:styles {NAMESPACES}><w:docDefaults><w:rPrDefault><w:rPr>"
        '<w:rFonts w:ascii="Calibri" w:hAnsi="Calibri"/><w:sz w:val="22"/></w:rPr></w:rPrDefault>'
        '</w:docDefaults><w:style w:type="paragraph" w:default="1" w:styleId="Normal">'
        '<w:name w:val="Normal"/></w:style><w:style w:type="table" w:styleId="TableGrid">'
        '<w:name w:val="Table Grid"/><w:tblPr><w:tblBorders>'
        + "".join(
            f'<w:{e} w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
            for e in ("top", "left", "bottom", "right", "insideH", "insideV")
        )
        + "</w:tblBorders></w:tblPr></w:style></w:styles>"
    )
    settings = f'{DECL}<w:settings {NAMESPACES}><w:zoom w:percent="100"/></w:settings>'
    core = (
        f'{DECL}<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
        'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:dcterms="http://purl.org/dc/terms/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<dc:title>{escape(title)}</dc:title><dc:creator>convkit tests</dc:creator>"
        "</cp:coreProperties>"
    )
    app = (
        f'{DECL}<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/'
        'extended-properties"><Application>Microsoft Office Word</Application></Properties>'
    )
    files.update(
        {
            "[Content_Types].xml": ct,
            "_rels/.rels": rels_xml,
            "word/document.xml": document,
            "word/_rels/document.xml.rels": doc_rels_xml,
            "word/styles.xml": styles,
            "word/settings.xml": settings,
            "docProps/core.xml": core,
            "docProps/app.xml": app,
        }
    )
    files.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in [
            "[Content_Types].xml",
            *sorted(k for k in files if k != "[Content_Types].xml"),
        ]:
            data = files[name]
            zf.writestr(name, data.encode("utf-8") if isinstance(data, str) else data)
    return buf.getvalue()
