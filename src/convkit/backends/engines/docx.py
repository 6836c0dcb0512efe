"""The DOCX engine: Word templates with docxtpl's tag syntax, rendered in convkit's sandbox.

A template is prepared once per content hash (kept in an LRU): the archive is read through
:mod:`convkit.office.safezip`, every text-bearing part (body, headers, footers, footnotes, endnotes,
comments, core and custom properties) is parsed, its Jinja tags are made whole again where Word
split them over several runs (proofing marks and bookmarks in between do not matter), docxtpl's
tag families (``{%p %}``, ``{%tr %}``, ``{%tc %}``, ``{%r %}``, ``{{p }}``, ``{{r }}``,
``{% colspan %}``, ``{% cellbg %}``, ``{% vm %}``, ``{% hm %}``) are turned into plain Jinja
around the right XML element, and the result is compiled. Parts without tags and every other
member are kept as bytes. A render then only runs the compiled parts, streaming their output
into the new archive.

Every value printed by ``{{ }}`` goes through one of this module's output filters: it is
XML-escaped, characters XML 1.0 cannot carry are dropped, ``\\n`` becomes a line break, ``\\t`` a
tab, ``\\f`` a page break, ``\\a`` a new paragraph, and rich-content values (see
:mod:`convkit.templating.rich`) become runs, hyperlinks and embedded images.
"""

from __future__ import annotations

import contextvars
import copy
import io
import posixpath
import re
import secrets
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import jinja2
from lxml import etree
from markupsafe import escape

from convkit.errors import TemplateError, UnsafeDocument
from convkit.office.engine import OfficeEngine
from convkit.office.package import (
    add_relationships,
    read_package,
    rels_name,
    xml_bytes,
    zip_entry,
)
from convkit.office.parts import CompiledPart, OutputBudget, SourceBuilder, TagInfo
from convkit.office.safezip import DEFAULT_LIMITS, ZipLimits, parse_xml
from convkit.office.tags import Tag, cell_color, cell_span, join_split_tags, parse_tag
from convkit.office.xml import (
    NAMESPACES,
    ancestor,
    attached,
    normalize_tag,
    plain_xml,
    qn,
    replace_with_text,
    text_before,
)
from convkit.ports import Template
from convkit.templating.errors import as_template_error, where
from convkit.templating.rich import (
    Image,
    ImageLoader,
    Link,
    RichText,
    TextRun,
    is_rich_candidate,
    mm_to_emu,
    parse_rich,
)
from convkit.templating.sandbox import MAX_OUTPUT_BYTES
from convkit.templating.scope import MAX_RENDER_SECONDS

__all__ = ["DocxEngine"]

# --------------------------------------------------------------------------------------------------
# Namespaces and part kinds

W = NAMESPACES["w"]
R_NS = NAMESPACES["r"]
WP = NAMESPACES["wp"]
A_NS = NAMESPACES["a"]
PIC = NAMESPACES["pic"]
REL_IMAGE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/image"
REL_LINK = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink"

_W_P = qn("w:p")
_W_R = qn("w:r")
_W_T = qn("w:t")
_W_TC = qn("w:tc")
_W_TCPR = qn("w:tcPr")
_W_RPR = qn("w:rPr")
_W_PPR = qn("w:pPr")
_W_INSTR = qn("w:instrText")
_WP_DOCPR = qn("wp:docPr")
_XML_SPACE = qn("xml:space")
_PARAGRAPH = frozenset({_W_P})
_CELL = frozenset({_W_TC})
# The elements docxtpl's families stand for.
_FAMILY_ELEMENTS = {level: frozenset({qn("w:" + level)}) for level in ("p", "tr", "tc", "r")}

_CT_PREFIX = "application/vnd.openxmlformats-officedocument."
# Content types of the parts that are rendered: Word XML parts, and the two property parts.
_WORD_PARTS = tuple(
    _CT_PREFIX + "wordprocessingml." + kind + "+xml"
    for kind in (
        "document.main",
        "template.main",
        "header",
        "footer",
        "footnotes",
        "endnotes",
        "comments",
    )
)
_PROPERTY_PARTS = (
    "application/vnd.openxmlformats-package.core-properties+xml",
    _CT_PREFIX + "custom-properties+xml",
)
_IMAGE_DEFAULTS = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp"}

# The order of children in w:tcPr (CT_TcPr), so inserted elements land where Word expects them.
_TCPR_ORDER = [
    "cnfStyle",
    "tcW",
    "gridSpan",
    "hMerge",
    "vMerge",
    "tcBorders",
    "shd",
    "noWrap",
    "tcMar",
    "textDirection",
    "tcFitText",
    "vAlign",
    "hideMark",
    "headers",
    "cellIns",
    "cellDel",
    "cellMerge",
    "tcPrChange",
]
# The order of children in w:rPr (CT_RPr), for rich runs merged onto a template run's format.
_RPR_ORDER = [
    "rStyle",
    "rFonts",
    "b",
    "bCs",
    "i",
    "iCs",
    "caps",
    "smallCaps",
    "strike",
    "dstrike",
    "outline",
    "shadow",
    "emboss",
    "imprint",
    "noProof",
    "snapToGrid",
    "vanish",
    "webHidden",
    "color",
    "spacing",
    "w",
    "kern",
    "position",
    "sz",
    "szCs",
    "highlight",
    "u",
    "effect",
    "bdr",
    "shd",
    "fitText",
    "vertAlign",
    "rtl",
    "cs",
    "em",
    "lang",
    "eastAsianLayout",
    "specVanish",
    "oMath",
]

# Everything a value may contain that is not plain XML text: C0 controls, lone surrogates and
# the two non-characters XML 1.0 excludes.
_SPECIAL_CHARS = re.compile("[\x00-\x1f\ud800-\udfff\ufffe\uffff]")
_BREAK = '</w:t><w:br/><w:t xml:space="preserve">'
_TAB = '</w:t><w:tab/><w:t xml:space="preserve">'
_PAGE = '</w:t><w:br w:type="page"/><w:t xml:space="preserve">'
_FIRST_DOCPR_ID = 100_000


# --------------------------------------------------------------------------------------------------
# Prepared templates


@attrs.frozen
class _RunStyle:
    """Where a ``{{ }}`` sits: its run's and paragraph's properties, for breaks and rich runs."""

    rpr: str
    ppr: str
    #: The run is a direct child of its paragraph (so ``\\a`` may close the paragraph).
    direct: bool
    #: (local name, XML) of each rPr child, for merging rich-run formatting.
    rpr_children: tuple[tuple[str, str], ...]


@attrs.define
class _Tag:
    text: str
    part: str
    paragraph: int
    #: The Jinja text that replaces the tag's token.
    jinja: str = ""
    #: Position in the part's tag list (its token is ``cvk<nonce>t<index>e``).
    index: int = -1
    #: docxtpl's ``{%-`` / ``-%}``: join the tag to the text before / after it.
    merge_before: bool = False
    merge_after: bool = False


@attrs.define
class _Part:
    part: CompiledPart
    styles: list[_RunStyle]
    #: A ``{%tc %}`` loop may change the cells per row: the grid is recomputed after a render.
    fix_tables: bool


@attrs.define
class _Prepared:
    """A template ready to render: compiled parts and the untouched members, in archive order."""

    #: ("static", name, bytes) or ("part", name, _Part)
    members: list[tuple[str, str, Any]]
    #: Relationship parts of rendered parts: rels name -> original bytes (None if absent).
    rels: dict[str, bytes | None]


# --------------------------------------------------------------------------------------------------
# Per-render state, reached by the output filters


@attrs.define
class _RenderState:
    image_loader: ImageLoader | None
    styles: list[_RunStyle] = attrs.Factory(list)
    part_dir: str = "word"
    #: (rId, type, target, external) added to the part being rendered.
    rels: list[tuple[str, str, str, bool]] = attrs.Factory(list)
    part_images: dict[str, str] = attrs.Factory(dict)
    part_links: dict[str, str] = attrs.Factory(dict)
    #: Image digest -> archive name, for the whole document.
    media: dict[str, str] = attrs.Factory(dict)
    media_data: list[tuple[str, bytes]] = attrs.Factory(list)
    next_rel: int = 1
    next_docpr: int = _FIRST_DOCPR_ID
    rpr_cache: dict[tuple[int, TextRun | None, bool], str] = attrs.Factory(dict)

    def docpr_id(self) -> int:
        self.next_docpr += 1
        return self.next_docpr

    def new_rel(self, kind: str, target: str, external: bool) -> str:
        rid = f"rIdCvk{self.next_rel}"
        self.next_rel += 1
        self.rels.append((rid, kind, target, external))
        return rid


_STATE: contextvars.ContextVar[_RenderState | None] = contextvars.ContextVar(
    "convkit_docx_state", default=None
)


def _state() -> _RenderState:
    state = _STATE.get()
    if state is None:  # also stops Jinja from folding a filter call at compile time
        raise RuntimeError("DOCX output filter used outside a render")
    return state


# --------------------------------------------------------------------------------------------------
# Text and rich content -> WordprocessingML


class _Xml(str):
    """Markup made by this module. A plain str subclass: building one is a C call, and Jinja's
    autoescape (which calls ``__html__``) passes it through unescaped."""

    __slots__ = ()

    def __html__(self) -> str:
        return self


# Characters that need work in element text: the three XML specials and _SPECIAL_CHARS.
_TEXT_WORK = re.compile("[&<>\x00-\x1f\ud800-\udfff\ufffe\uffff]")


def _text_xml(text: str, style: _RunStyle | None) -> str:
    """Escaped text for inside a ``w:t``, with the control-character conventions applied."""
    if _TEXT_WORK.search(text) is None:
        return text
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if _SPECIAL_CHARS.search(escaped) is None:
        return escaped
    if "\r" in escaped:
        escaped = escaped.replace("\r\n", "\n").replace("\r", "\n")
    if style is not None and style.direct:
        para = f'</w:t></w:r></w:p><w:p>{style.ppr}<w:r>{style.rpr}<w:t xml:space="preserve">'
    else:
        para = _BREAK
    table = {"\n": _BREAK, "\t": _TAB, "\f": _PAGE, "\a": para}
    return _SPECIAL_CHARS.sub(lambda m: table.get(m.group(), ""), escaped)


def _merge_rpr(style: _RunStyle | None, run: TextRun | None, link: bool) -> str:
    """The template run's rPr with the rich run's formatting laid over it (cached per render)."""
    state = _state()
    key = (id(style), run, link)
    cached = state.rpr_cache.get(key)
    if cached is not None:
        return cached
    children = dict(style.rpr_children) if style is not None else {}
    if run is not None:
        if run.bold is not None:
            children["b"] = "<w:b/>" if run.bold else '<w:b w:val="0"/>'
            children["bCs"] = children["b"].replace("w:b", "w:bCs")
        if run.italic is not None:
            children["i"] = "<w:i/>" if run.italic else '<w:i w:val="0"/>'
            children["iCs"] = children["i"].replace("w:i", "w:iCs")
        if run.underline is not None:
            children["u"] = f'<w:u w:val="{"single" if run.underline else "none"}"/>'
        if run.strike is not None:
            children["strike"] = "<w:strike/>" if run.strike else '<w:strike w:val="0"/>'
        if run.color is not None:
            children["color"] = f'<w:color w:val="{run.color}"/>'
        if run.size_pt is not None:
            half = round(run.size_pt * 2)
            children["sz"] = f'<w:sz w:val="{half}"/>'
            children["szCs"] = f'<w:szCs w:val="{half}"/>'
        if run.font is not None:
            font = escape(run.font)
            children["rFonts"] = (
                f'<w:rFonts w:ascii="{font}" w:hAnsi="{font}" w:cs="{font}" w:eastAsia="{font}"/>'
            )
    if link:
        children.setdefault("color", '<w:color w:val="0563C1"/>')
        children.setdefault("u", '<w:u w:val="single"/>')
    order = {name: n for n, name in enumerate(_RPR_ORDER)}
    body = "".join(xml for _, xml in sorted(children.items(), key=lambda c: order.get(c[0], 99)))
    result = f"<w:rPr>{body}</w:rPr>" if body else ""
    state.rpr_cache[key] = result
    return result


def _link_xml(url: str, runs_xml: str, style: _RunStyle | None) -> str:
    """A hyperlink around ``runs_xml``; plain runs where a hyperlink cannot nest."""
    if style is not None and not style.direct:
        return runs_xml
    if url.startswith("#"):
        return f'<w:hyperlink w:anchor="{escape(url[1:])}" w:history="1">{runs_xml}</w:hyperlink>'
    state = _state()
    rid = state.part_links.get(url)
    if rid is None:
        rid = state.new_rel(REL_LINK, url, True)
        state.part_links[url] = rid
    return f'<w:hyperlink xmlns:r="{R_NS}" r:id="{rid}" w:history="1">{runs_xml}</w:hyperlink>'


def _run_xml(text: str, rpr: str, style: _RunStyle | None) -> str:
    return f'<w:r>{rpr}<w:t xml:space="preserve">{_text_xml(text, style)}</w:t></w:r>'


def _image_xml(image: Image, style: _RunStyle | None) -> str:
    state = _state()
    name = state.media.get(image.digest)
    if name is None:
        name = f"word/media/cvk_image{len(state.media) + 1}.{image.format}"
        state.media[image.digest] = name
        state.media_data.append((name, image.data))
    rid = state.part_images.get(image.digest)
    if rid is None:
        target = posixpath.relpath(name, state.part_dir)
        rid = state.new_rel(REL_IMAGE, target, False)
        state.part_images[image.digest] = rid
    width, height = image.size_mm()
    cx, cy = mm_to_emu(width), mm_to_emu(height)
    pid = state.docpr_id()
    alt = escape(image.alt)
    rpr = style.rpr if style is not None else ""
    return (
        f"<w:r>{rpr}<w:drawing>"
        f'<wp:inline xmlns:wp="{WP}" distT="0" distB="0" distL="0" distR="0">'
        f'<wp:extent cx="{cx}" cy="{cy}"/><wp:docPr id="{pid}" name="Picture {pid}" descr="{alt}"/>'
        f'<wp:cNvGraphicFramePr><a:graphicFrameLocks xmlns:a="{A_NS}" noChangeAspect="1"/>'
        f'</wp:cNvGraphicFramePr><a:graphic xmlns:a="{A_NS}">'
        f'<a:graphicData uri="{PIC}"><pic:pic xmlns:pic="{PIC}">'
        f'<pic:nvPicPr><pic:cNvPr id="0" name="{posixpath.basename(name)}" descr="{alt}"/>'
        f"<pic:cNvPicPr/></pic:nvPicPr>"
        f'<pic:blipFill><a:blip xmlns:r="{R_NS}" r:embed="{rid}"/>'
        f"<a:stretch><a:fillRect/></a:stretch></pic:blipFill>"
        f'<pic:spPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="{cx}" cy="{cy}"/></a:xfrm>'
        f'<a:prstGeom prst="rect"><a:avLst/></a:prstGeom></pic:spPr>'
        f"</pic:pic></a:graphicData></a:graphic></wp:inline></w:drawing></w:r>"
    )


def _rich_runs(value: Any, style: _RunStyle | None) -> str | None:
    """Runs (and hyperlinks, drawings) for a rich value; None if ``value`` is not rich."""
    rich = parse_rich(value, image_loader=_state().image_loader)
    if rich is None:
        return None
    if isinstance(rich, Image):
        return _image_xml(rich, style)
    if isinstance(rich, Link):
        runs = _run_xml(rich.text, _merge_rpr(style, None, True), style)
        return _link_xml(rich.url, runs, style)
    assert isinstance(rich, RichText)
    out = []
    for run in rich.runs:
        linked = run.link is not None
        xml = _run_xml(run.text, _merge_rpr(style, run, linked), style)
        out.append(_link_xml(run.link, xml, style) if run.link is not None else xml)
    return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        return str(value)  # raises under strict mode, "" otherwise
    return str(value)


# The output filters. pass_context keeps Jinja from evaluating them at compile time.


@jinja2.pass_context
def _filter_text(_ctx: Any, value: Any, n: int) -> _Xml:
    """``{{ value }}`` inside a ``w:t`` of the run with style ``n``."""
    kind = type(value)
    if kind is str:
        return _Xml(_text_xml(value, _state().styles[n]))
    if kind is int or kind is float:
        return _Xml(value)
    if hasattr(value, "__html__"):
        return _Xml(value.__html__())
    if is_rich_candidate(value):
        style = _state().styles[n]
        runs = _rich_runs(value, style)
        if runs is not None:
            return _Xml(f'</w:t></w:r>{runs}<w:r>{style.rpr}<w:t xml:space="preserve">')
    return _Xml(_text_xml(_as_text(value), _state().styles[n]))


@jinja2.pass_context
def _filter_paragraph(_ctx: Any, value: Any, n: int) -> _Xml:
    """``{{p value }}``: a whole paragraph (or several) made from the value."""
    style = _state().styles[n]
    runs = _rich_runs(value, style) if is_rich_candidate(value) else None
    if runs is None:
        if hasattr(value, "__html__"):
            return _Xml(value.__html__())
        runs = _run_xml(_as_text(value), style.rpr, style)
    return _Xml(f"<w:p>{style.ppr}{runs}</w:p>")


@jinja2.pass_context
def _filter_plain(_ctx: Any, value: Any) -> _Xml:
    """``{{ value }}`` in a property part or an attribute: escaped text only."""
    return _Xml(plain_xml(value))


@jinja2.pass_context
def _filter_span(_ctx: Any, value: Any) -> str:
    """``{% colspan n %}``/``{% hm %}``: a checked ``w:gridSpan`` value."""
    return str(cell_span(value))


@jinja2.pass_context
def _filter_fill(_ctx: Any, value: Any) -> str:
    """``{% cellbg c %}``: a checked ``w:shd`` fill (``auto`` for none)."""
    return cell_color(value) or "auto"


@jinja2.pass_context
def _filter_docpr(_ctx: Any, _value: Any) -> str:
    """A fresh drawing id, so drawings repeated by a loop stay unique."""
    return str(_state().docpr_id())


_FILTERS: dict[str, Callable[..., Any]] = {
    "_cvk_t": _filter_text,
    "_cvk_p": _filter_paragraph,
    "_cvk_x": _filter_plain,
    "_cvk_id": _filter_docpr,
    "_cvk_span": _filter_span,
    "_cvk_fill": _filter_fill,
}


# --------------------------------------------------------------------------------------------------
# Preprocessing: Word XML -> Jinja source


class _Preprocessor:
    """Turns one XML part into Jinja source. Tags become tokens (``cvk<nonce>t<n>e``) while the
    tree is edited, and the tokens become Jinja text after serialisation."""

    def __init__(self, part: str, raw: bytes) -> None:
        self.part = part
        nonce = secrets.token_hex(4)
        while nonce.encode() in raw:
            nonce = secrets.token_hex(4)
        self.nonce = nonce
        self.token_re = re.compile(rf"cvk{nonce}t(\d+)e")
        self.tags: list[_Tag] = []
        self.styles: list[_RunStyle] = []
        self._style_index: dict[tuple[str, str, bool], int] = {}
        self.fix_tables = False
        self.root = parse_xml(raw, part=part)
        # Namespace declarations of the root, stripped from serialised fragments.
        self._root_ns = re.compile(
            "|".join(re.escape(f' xmlns:{p}="{u}"') for p, u in self.root.nsmap.items() if p)
            or "(?!)"
        )

    # -- tokens ---------------------------------------------------------------------------------
    def token(self, tag: _Tag) -> str:
        if tag.index < 0:
            tag.index = len(self.tags)
            self.tags.append(tag)
        return f"cvk{self.nonce}t{tag.index}e"

    # -- styles ---------------------------------------------------------------------------------
    def _fragment(self, el: etree._Element | None) -> str:
        if el is None:
            return ""
        return str(self._root_ns.sub("", etree.tostring(el, encoding="unicode", with_tail=False)))

    def style_of(self, node: etree._Element) -> int | None:
        run = node.getparent()
        if run is None or run.tag != _W_R:
            return None
        para = run.getparent()
        while para is not None and para.tag != _W_P:
            para = para.getparent()
        rpr_el = run.find(_W_RPR)
        rpr = self._fragment(rpr_el)
        ppr = self._fragment(para.find(_W_PPR)) if para is not None else ""
        direct = para is not None and run.getparent() is para
        key = (rpr, ppr, direct)
        index = self._style_index.get(key)
        if index is None:
            children = tuple(
                (etree.QName(child).localname, self._fragment(child))
                for child in (rpr_el if rpr_el is not None else ())
                if isinstance(child.tag, str)
            )
            index = len(self.styles)
            self.styles.append(_RunStyle(rpr, ppr, direct, children))
            self._style_index[key] = index
        return index

    # -- the passes -----------------------------------------------------------------------------
    def run_word(self) -> None:
        found: list[tuple[_Tag, etree._Element, Tag]] = []
        for number, para in enumerate(self.root.iter(_W_P), start=1):
            nodes = [t for t in para.iter(_W_T) if ancestor(t, _PARAGRAPH) is para]
            found += self._merge_paragraph(number, nodes)
        for node in list(self.root.iter(_W_INSTR)):
            found += self._merge_paragraph(0, [node])
        # Structural forms, outermost first; then everything else.
        for tag, node, parsed in found:
            if parsed.cell in ("colspan", "cellbg"):
                self._cell_property(tag, node, parsed)
        for level in ("tr", "tc", "p"):
            self._replace_elements(found, level)
        for tag, node, parsed in found:
            if parsed.cell in ("vm", "hm") and attached(node, self.root):
                self._merge_cells(tag, node, parsed.cell)
        for tag, node, parsed in found:
            if parsed.family == "r" and parsed.kind == "%" and attached(node, self.root):
                self._split_run(tag, node, parsed)
        for tag, node, parsed in found:
            if not tag.jinja:
                self._plain_tag(tag, node, parsed)
        for docpr in self.root.iter(_WP_DOCPR):
            if found and "id" in docpr.attrib:
                tag = _Tag("<drawing id>", self.part, 0)
                tag.jinja = "{{ 0|_cvk_id }}"
                docpr.set("id", self.token(tag))

    def run_properties(self) -> None:
        found = []
        for el in self.root.iter():
            if isinstance(el.tag, str) and el.text and "{" in el.text:
                found += self._merge_paragraph(0, [el])
        for tag, _node, parsed in found:
            self._plain_tag(tag, None, parsed)

    def _merge_paragraph(
        self, number: int, nodes: list[etree._Element]
    ) -> list[tuple[_Tag, etree._Element, Tag]]:
        """Join the paragraph's tags that Word split over runs: each becomes a token in the
        text node where it starts (:func:`convkit.office.tags.join_split_tags`)."""
        texts = [n.text or "" for n in nodes]
        if not any("{" in text for text in texts):
            return []
        made: list[_Tag] = []

        def token(match: Any) -> str:
            made.append(_Tag(normalize_tag(match.text), self.part, number))
            return self.token(made[-1])

        new, placed, _ = join_split_tags(texts, token)
        for node, text, old in zip(nodes, new, texts, strict=True):
            if text != old:
                node.text = text
                if node.tag == _W_T:
                    node.set(_XML_SPACE, "preserve")
        return [
            (tag, nodes[home], parse_tag(tag.text))
            for tag, (home, _) in zip(made, placed, strict=True)
        ]

    def _cell_property(self, tag: _Tag, node: etree._Element, parsed: Tag) -> None:
        self._drop_token(node, tag)
        tc = ancestor(node, _CELL)
        if tc is None:
            tag.jinja = "{#\n" + tag.text.replace("#}", "") + " outside a table cell #}"
            return
        value = self.token(_Tag(tag.text, tag.part, tag.paragraph))
        call = "_cvk_span" if parsed.cell == "colspan" else "_cvk_fill"
        self.tags[-1].jinja = "{{\n(" + parsed.argument + ")|" + call + " }}"
        if parsed.cell == "colspan":
            _set_tcpr(tc, "gridSpan", {"val": value})
        else:
            _set_tcpr(tc, "shd", {"val": "clear", "color": "auto", "fill": value})
        tag.jinja = "{#\n#}"

    def _merge_cells(self, tag: _Tag, node: etree._Element, kind: str) -> None:
        self._drop_token(node, tag)
        tag.jinja = "{#\n#}"
        tc = ancestor(node, _CELL)
        if tc is None:
            return

        def stmt(text: str) -> str:
            token = self.token(_Tag(tag.text, tag.part, tag.paragraph))
            self.tags[-1].jinja = "{%\n" + text + " %}"
            return token

        if kind == "vm":
            value = stmt("if loop.first") + "restart" + stmt("else") + "continue" + stmt("endif")
            _set_tcpr(tc, "vMerge", {"val": value})
            for para in tc.findall(_W_P):
                ppr = para.find(_W_PPR)
                opening = stmt("if loop.first")
                if ppr is not None:
                    ppr.tail = opening + (ppr.tail or "")
                else:
                    para.text = opening + (para.text or "")
                last = para[len(para) - 1] if len(para) else None
                closing = stmt("endif")
                if last is None:
                    para.text = (para.text or "") + closing
                else:
                    last.tail = (last.tail or "") + closing
        else:
            tcpr = tc.find(_W_TCPR)
            span = tcpr.find(f"{{{W}}}gridSpan") if tcpr is not None else None
            factor = span.get(f"{{{W}}}val", "1") if span is not None else "1"
            factor = factor if factor.isdigit() else "1"
            value = self.token(_Tag(tag.text, tag.part, tag.paragraph))
            self.tags[-1].jinja = "{{\n(loop.length * " + factor + ")|_cvk_span }}"
            _set_tcpr(tc, "gridSpan", {"val": value})
            text_before(tc, stmt("if loop.first"))
            tc.tail = stmt("endif") + (tc.tail or "")

    def _replace_elements(self, found: list[tuple[_Tag, etree._Element, Tag]], level: str) -> None:
        """docxtpl's ``{%tr ...%}`` (and tc, p): the whole row (cell, paragraph) holding the tag
        is replaced by the tag. Several such tags in one element are kept in order."""
        groups: OrderedDict[int, tuple[etree._Element, list[_Tag]]] = OrderedDict()
        for tag, node, parsed in found:
            if parsed.family != level or tag.jinja:
                continue
            el = ancestor(node, _FAMILY_ELEMENTS[level])
            if el is None or not attached(el, self.root):
                continue
            if parsed.kind == "{":
                style = str(self._style_for_p(node))
                tag.jinja = "{{\n(" + parsed.body + ")|_cvk_p(" + style + ") }}"
            elif parsed.kind == "%":
                tag.jinja = "{%\n" + parsed.body + " " + parsed.close_ws + "%}"
            else:
                tag.jinja = "{#" + parsed.body + "#}"
            groups.setdefault(id(el), (el, []))[1].append(tag)
        for el, tags in groups.values():
            if level == "tc":
                self.fix_tables = True
            replace_with_text(el, "".join(self.token(t) for t in tags))

    def _style_for_p(self, node: etree._Element) -> int:
        index = self.style_of(node)
        if index is None:
            index = len(self.styles)
            self.styles.append(_RunStyle("", "", True, ()))
        return index

    def _split_run(self, tag: _Tag, node: etree._Element, parsed: Tag) -> None:
        """docxtpl's ``{%r ...%}``: the tag leaves its run and stands between runs, the run's
        text before and after it keeping the run's formatting."""
        tag.jinja = "{%\n" + parsed.body + " " + parsed.close_ws + "%}"
        token = self.token(tag)
        # An earlier {%r %} of the same run may have moved this tag into a new run.
        if node.text is None or token not in node.text:
            node = next((t for t in self.root.iter(_W_T) if t.text and token in t.text), node)
        run = node.getparent()
        if run is None or run.tag != _W_R or node.text is None or token not in node.text:
            return
        before, after = node.text.split(token, 1)
        index = list(run).index(node)
        twin = copy.deepcopy(run)
        twin_nodes = list(twin)
        for child in twin_nodes[: index + 1]:
            if child.tag != _W_RPR:
                twin.remove(child)
        node.text = before
        for child in list(run)[index + 1 :]:
            run.remove(child)
        t = etree.SubElement(twin, _W_T)
        t.text = after
        t.set(_XML_SPACE, "preserve")
        rest = [c for c in twin_nodes[index + 1 :]]
        for child in rest:
            twin.remove(child)
            twin.append(child)
        run.addnext(twin)
        run.tail, twin.tail = token, run.tail

    def _plain_tag(self, tag: _Tag, node: etree._Element | None, parsed: Tag) -> None:
        if parsed.kind == "#":
            tag.jinja = tag.text
            return
        open_ws, close_ws, body = parsed.open_ws, parsed.close_ws, parsed.body
        if parsed.kind == "{":
            if not body:
                tag.jinja = "{{\n}}"  # Jinja's own "expected an expression" error
                return
            # {{r x }} (and a {{p x }} outside any paragraph) is {{ x }} here.
            style = self.style_of(node) if node is not None and node.tag == _W_T else None
            call = "_cvk_x" if style is None else f"_cvk_t({style})"
            tag.jinja = "{{" + open_ws + "\n(" + body + ")|" + call + " " + close_ws + "}}"
        else:
            # docxtpl's {%- and -%} join the tag to the text before/after it across paragraphs
            # (see _merge_whitespace_control) and are then plain {% %}.
            if node is not None and node.tag == _W_T and open_ws == "-":
                open_ws, tag.merge_before = "", True
            if node is not None and node.tag == _W_T and close_ws == "-":
                close_ws, tag.merge_after = "", True
            tag.jinja = "{%" + open_ws + "\n" + body + " " + close_ws + "%}"

    def _drop_token(self, node: etree._Element, tag: _Tag) -> None:
        token = self.token(tag)
        if node.text:
            node.text = node.text.replace(token, "")

    # -- output ---------------------------------------------------------------------------------
    def source(self) -> SourceBuilder:
        xml = etree.tostring(self.root, encoding="unicode")
        xml = self._merge_whitespace_control(xml)
        # docxtpl's escapes for literal delimiters in the document text.
        xml = (
            xml.replace("{_{", "{% raw %}{{{% endraw %}")
            .replace("{_%", "{% raw %}{%{% endraw %}")
            .replace("}_}", "}}")
            .replace("%_}", "%}")
        )
        built = SourceBuilder()
        built.literal('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n')
        pos = 0
        for match in self.token_re.finditer(xml):
            built.literal(xml[pos : match.start()])
            tag = self.tags[int(match.group(1))]
            place = f"paragraph {tag.paragraph}" if tag.paragraph else ""
            built.jinja(tag.jinja, TagInfo(place, tag.text))
            pos = match.end()
        built.literal(xml[pos:])
        return built

    def _merge_whitespace_control(self, xml: str) -> str:
        """``{%-`` pulls the tag into the text run before it, ``-%}`` pulls the next text run's
        text to it, dropping the XML in between (docxtpl's cross-paragraph whitespace control).
        The XML between must contain no other tag."""
        for tag in self.tags:
            if not (tag.merge_before or tag.merge_after):
                continue
            token = self.token(tag)
            if tag.merge_before:
                i = xml.find(token)
                j = xml.rfind("</w:t>", 0, i)
                if j >= 0:
                    between = xml[j + 6 : i]
                    k = between.rfind("<w:t")
                    if k >= 0 and not self.token_re.search(between):
                        text = between[between.index(">", k) + 1 :]
                        if "<" not in text:
                            xml = xml[:j] + text + xml[i:]
            if tag.merge_after:
                i = xml.find(token) + len(token)
                end = xml.find("</w:t>", i)
                if end >= 0:
                    m = re.compile(r"<w:t(?:\s[^>]*)?>").search(xml, end)
                    if m is not None:
                        between = xml[end : m.start()]
                        if not self.token_re.search(between) and "<w:t" not in between:
                            xml = xml[:end] + xml[m.end() :]
        return xml


def _set_tcpr(tc: etree._Element, name: str, attributes: dict[str, str]) -> None:
    tcpr = tc.find(_W_TCPR)
    if tcpr is None:
        tcpr = etree.Element(_W_TCPR)
        tc.insert(0, tcpr)
    qname = f"{{{W}}}{name}"
    for old in tcpr.findall(qname):
        tcpr.remove(old)
    new = etree.Element(qname, {f"{{{W}}}{k}": v for k, v in attributes.items()})
    rank = _TCPR_ORDER.index(name)
    for i, child in enumerate(tcpr):
        local = etree.QName(child).localname if isinstance(child.tag, str) else ""
        if local in _TCPR_ORDER and _TCPR_ORDER.index(local) > rank:
            tcpr.insert(i, new)
            return
    tcpr.append(new)


# --------------------------------------------------------------------------------------------------
# Tables whose cell count changed ({%tc for %})


def _gridspan(tc: etree._Element) -> int:
    span = tc.find(f"{_W_TCPR}/{qn('w:gridSpan')}")
    val = span.get(qn("w:val"), "1") if span is not None else "1"
    return int(val) if val.isdigit() else 1


def _fix_tables(xml: bytes, part: str) -> bytes:
    """Give every table whose rows now hold more (or fewer) cells than its grid a grid to match
    the widest row, dividing the table's width evenly, as Word and LibreOffice need."""
    root = parse_xml(xml, part=part)
    changed = False
    for tbl in root.iter(qn("w:tbl")):
        grid = tbl.find(qn("w:tblGrid"))
        if grid is None:
            continue
        cols = grid.findall(qn("w:gridCol"))
        widest = max(
            (sum(_gridspan(tc) for tc in tr.findall(_W_TC)) for tr in tbl.findall(qn("w:tr"))),
            default=0,
        )
        if widest == 0 or widest == len(cols):
            continue
        total = sum(int(c.get(qn("w:w"), "0") or 0) for c in cols) or 9000
        width = total // widest
        for col in cols:
            grid.remove(col)
        for _ in range(widest):
            etree.SubElement(grid, qn("w:gridCol"), {qn("w:w"): str(width)})
        for tc in tbl.iter(_W_TC):
            tcw = tc.find(f"{_W_TCPR}/{qn('w:tcW')}")
            if tcw is not None and tcw.get(qn("w:type")) == "dxa":
                tcw.set(qn("w:w"), str(width * _gridspan(tc)))
        changed = True
    return xml_bytes(root) if changed else xml


# --------------------------------------------------------------------------------------------------
# The engine


class DocxEngine(OfficeEngine[_Prepared]):
    """Renders ``.docx`` templates written for docxtpl (and plain Jinja in Word) into DOCX.

    Options and parameters: :class:`convkit.office.engine.OfficeEngine`, and

    :param compress_level: zlib level for the output archive (1 = fastest, 9 = smallest).
    :param image_loader: reads ``{"$image": {"storage_key": ...}}`` images; None: the render
        scope's loader, if any.
    """

    name = "docx"
    suffixes = {".docx": "docx"}

    def __init__(
        self,
        *,
        cache_size: int = 32,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        time_limit_s: float = MAX_RENDER_SECONDS,
        compress_level: int = 1,
        zip_limits: ZipLimits = DEFAULT_LIMITS,
        image_loader: ImageLoader | None = None,
    ) -> None:
        super().__init__(
            cache_size=cache_size,
            max_output_bytes=max_output_bytes,
            time_limit_s=time_limit_s,
            zip_limits=zip_limits,
        )
        self.compress_level = compress_level
        self.image_loader = image_loader

    def _environment(self, strict: bool) -> jinja2.Environment:
        env = super()._environment(strict)
        env.filters.update(_FILTERS)
        return env

    def _parts(self, compiled: _Prepared) -> Iterable[CompiledPart]:
        return (payload.part for kind, _, payload in compiled.members if kind == "part")

    # -- rendering ----------------------------------------------------------------------------
    def _render(
        self, compiled: _Prepared, template: Template, data: dict[str, Any], budget: OutputBudget
    ) -> bytes:
        state = _RenderState(image_loader=self.image_loader)
        token = _STATE.set(state)
        buffer = io.BytesIO()
        try:
            with zipfile.ZipFile(
                buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=self.compress_level
            ) as zf:
                self._write(zf, compiled, template, data, state, budget)
        finally:
            _STATE.reset(token)
        return buffer.getvalue()

    def _write(
        self,
        zf: zipfile.ZipFile,
        prepared: _Prepared,
        template: Template,
        data: dict[str, Any],
        state: _RenderState,
        budget: OutputBudget,
    ) -> None:
        new_rels: dict[str, list[tuple[str, str, str, bool]]] = {}
        for kind, name, payload in prepared.members:
            if kind == "static":
                zf.writestr(zip_entry(name), payload)
                continue
            part: _Part = payload
            state.styles = part.styles
            state.part_dir = posixpath.dirname(name)
            state.rels, state.part_images, state.part_links = [], {}, {}
            output = part.part.render(template, data, budget)
            if part.fix_tables:
                zf.writestr(zip_entry(name), _fix_tables(b"".join(output), name))
            else:
                # The output streams into the compressor: a large table never sits in memory.
                with zf.open(zip_entry(name), "w") as out:
                    for blob in output:
                        out.write(blob)
            if state.rels:
                new_rels[rels_name(name)] = state.rels
        for name, original in prepared.rels.items():
            if original is None and name not in new_rels:
                continue
            zf.writestr(zip_entry(name), add_relationships(original, new_rels.get(name, [])))
        for name, blob in state.media_data:
            try:
                budget.add(len(blob))
            except TemplateError as exc:
                raise as_template_error(exc, where(template)) from None
            zf.writestr(zip_entry(name, compressed=False), blob)

    # -- preparing ----------------------------------------------------------------------------
    def _build(self, template: Template, env: jinja2.Environment) -> _Prepared:
        members = {n: data for n, data, _ in read_package(template.source, limits=self.zip_limits)}
        ct_raw = members.get("[Content_Types].xml")
        if ct_raw is None:
            raise UnsafeDocument(f"{where(template)}: not a DOCX ([Content_Types].xml)")
        types_root = parse_xml(ct_raw, part="[Content_Types].xml")
        overrides = {
            el.get("PartName", "").lstrip("/"): el.get("ContentType", "")
            for el in types_root.iter(qn("ct:Override"))
        }
        if any("macroEnabled" in ct for ct in overrides.values()):
            raise UnsafeDocument(f"{where(template)}: macro-enabled documents are refused")
        if not any(ct in _WORD_PARTS[:2] for ct in overrides.values()):
            raise UnsafeDocument(f"{where(template)}: not a Word document")
        out: list[tuple[str, str, Any]] = []
        rels: dict[str, bytes | None] = {}
        for name, raw in members.items():
            ctype = overrides.get(name, "")
            if name == "[Content_Types].xml":
                out.append(("static", name, _with_image_defaults(types_root)))
                continue
            if ctype not in _WORD_PARTS and ctype not in _PROPERTY_PARTS:
                out.append(("static", name, raw))
                continue
            part = _compile_part(template, env, name, raw, ctype in _WORD_PARTS)
            if part is None:
                out.append(("static", name, raw))
                continue
            out.append(("part", name, part))
            if ctype in _WORD_PARTS:
                rels[rels_name(name)] = None
        for name in rels:
            rels[name] = members.get(name)
        out = [m for m in out if m[1] not in rels]
        return _Prepared(members=out, rels=rels)


def _compile_part(
    template: Template, env: jinja2.Environment, name: str, raw: bytes, word: bool
) -> _Part | None:
    if b"{" not in raw:
        return None
    pre = _Preprocessor(name, raw)
    if word:
        pre.run_word()
    else:
        pre.run_properties()
    if not pre.tags and b"{_" not in raw and b"_}" not in raw:
        return None
    compiled = pre.source().compile(env, template, name, name)
    return _Part(compiled, pre.styles, pre.fix_tables)


def _with_image_defaults(types_root: etree._Element) -> bytes:
    have = {el.get("Extension", "").lower() for el in types_root.iter(qn("ct:Default"))}
    for ext, media in _IMAGE_DEFAULTS.items():
        if ext not in have:
            el = etree.Element(qn("ct:Default"), Extension=ext, ContentType=media)
            types_root.insert(0, el)
    return xml_bytes(types_root)
