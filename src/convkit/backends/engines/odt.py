"""The ODT engine: LibreOffice Writer ``.odt`` packages and flat ``.fodt`` documents, filled with
the docxtpl dialect of Jinja2.

How a template becomes a compiled template (once per content hash, then cached):

1. Every part with text (``content.xml``, ``styles.xml`` for headers and footers, ``meta.xml``;
   the whole document for ``.fodt``) is parsed safely (:mod:`convkit.office.safezip`).
2. Paragraph by paragraph, Jinja tags that LibreOffice split over ``text:span`` elements (after a
   partial formatting, a spell-check, a bookmark) are joined back into the first text node they
   start in; the markup between the pieces stays where it was, so the XML stays balanced. Smart
   quotes inside a tag become straight quotes.
3. The docxtpl forms ``{%p %}``, ``{%tr %}``, ``{%tc %}``, ``{%r %}`` replace their enclosing
   paragraph (``text:p``/``text:h``, or the list item it is alone in), table row, table cell or
   span with the plain tag; ``{{p x }}`` and ``{{r x }}`` make ``x`` the whole paragraph or span.
4. Expressions outside paragraph text (attribute values, ``meta.xml``) are marked to render as
   plain escaped text; the rest render through the engine's ``finalize``, which escapes the value
   and turns the control conventions (``\\n``, ``\\t``, ``\\a``, ``\\f``) and rich JSON values
   (``$image``, ``$rich``, ``$link``) into ODF markup.

Rendering a job runs the compiled parts, checks that the result is well-formed XML, splits
paragraphs at ``\\a``/``\\f``, adds the automatic styles and pictures the values needed, and
writes a valid ODF package (``mimetype`` first, stored).
"""

from __future__ import annotations

import base64
import contextvars
import copy
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import jinja2
from lxml import etree
from markupsafe import Markup

from convkit.errors import TemplateError, UnsafeDocument
from convkit.office.engine import OfficeEngine
from convkit.office.package import Member, read_package, write_package, xml_bytes
from convkit.office.parts import CompiledPart, OutputBudget, SourceBuilder, TagInfo
from convkit.office.safezip import parse_xml
from convkit.office.tags import (
    MAX_SPAN,
    Tag,
    TagMatch,
    UnclosedTag,
    cell_color,
    cell_span,
    join_split_tags,
    parse_tag,
    scan_tags,
    sub_tags,
)
from convkit.office.xml import (
    NAMESPACES,
    ancestor,
    attached,
    clean_xml_text,
    escape_plain,
    normalize_tag,
    plain_xml,
    qn,
    remove_keep_tail,
    replace_with_text,
    text_before,
    unescape_xml,
    with_namespaces,
)
from convkit.ports import Template
from convkit.templating.errors import where
from convkit.templating.rich import (
    Image,
    Link,
    RichValue,
    TextRun,
    is_rich_candidate,
    parse_rich,
)
from convkit.templating.scope import check_deadline

__all__ = ["OdtEngine"]

# --------------------------------------------------------------------------------------------------
# Names

#: Namespace of the engine's private markers (paragraph splits, cell tags); none survive a render.
CK_NS = NAMESPACES["ck"]

T_P, T_H = qn("text:p"), qn("text:h")
T_SPAN, T_A = qn("text:span"), qn("text:a")
T_S, T_TAB, T_LB = qn("text:s"), qn("text:tab"), qn("text:line-break")
T_SOFT_PB = qn("text:soft-page-break")
T_LIST_ITEM = qn("text:list-item")
T_ROW, T_CELL = qn("table:table-row"), qn("table:table-cell")
_PARAGRAPHS = frozenset({T_P, T_H})
# Inline containers whose text is part of the paragraph's text stream.
_INLINE = frozenset({T_SPAN, T_A, qn("text:meta"), qn("text:ruby"), qn("text:ruby-base")})
# Empty elements that stand for characters.
_CHARS = {T_S: " ", T_TAB: "\t", T_LB: "\n", T_SOFT_PB: ""}
# The elements docxtpl's families stand for.
_FAMILY_ELEMENTS = {
    "p": _PARAGRAPHS,
    "tr": frozenset({T_ROW}),
    "tc": frozenset({T_CELL}),
    "r": frozenset({T_SPAN}),
}

# What XML 1.0 cannot carry, but keeping \a (new paragraph) and \f (page break) for the ODF
# conventions.
_XML_ILLEGAL_KEEP_CONTROLS = re.compile(
    "[^\x07\x0c\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)

# Paragraph numbers ride inside tags from step 2 to step 4 between two private-use characters.
_WHERE_MARK = re.compile("\ue0f0(\\d+)\ue0f1")


def _unmarked(text: str) -> tuple[str, str]:
    """A tag's text without its paragraph mark, and the mark ("" if none)."""
    mark = _WHERE_MARK.search(text)
    if mark is None:
        return text, ""
    return _WHERE_MARK.sub("", text), mark.group(0)


def _tag_source(serialized: str) -> SourceBuilder:
    """The Jinja source of a preprocessed part: tags get their XML escaping undone and the place
    their paragraph mark names.

    :raises UnclosedTag: a tag spans elements it cannot span (two paragraphs, two cells).
    """
    built = SourceBuilder()
    pos = 0
    for m in scan_tags(serialized, markup=True):
        built.literal(serialized[pos : m.start])
        pos = m.end
        raw, mark = _unmarked(m.text)
        text = normalize_tag(unescape_xml(raw))
        place = f"paragraph {mark[1:-1]}" if mark else ""
        built.tag(text, TagInfo(place, text))
    built.literal(serialized[pos:])
    return built


# --------------------------------------------------------------------------------------------------
# Rich content (images, rich runs, links) from plain JSON


#: The formatting of a rich run that needs an automatic text style (text and link aside).
StyleKey = tuple[
    bool | None, bool | None, bool | None, bool | None, str | None, float | None, str | None
]


def _style_key(run: TextRun) -> StyleKey:
    return (run.bold, run.italic, run.underline, run.strike, run.color, run.size_pt, run.font)


class _RenderState:
    """What one part's render collected: automatic text styles and pictures to add."""

    def __init__(self, *, flat: bool, styles: dict[StyleKey, str], images: dict[str, Image]):
        self.flat = flat
        self.styles = styles  # shared by the parts of one document
        self.images = images
        self.frames = 0


_STATE: contextvars.ContextVar[_RenderState | None] = contextvars.ContextVar(
    "convkit_odt_state", default=None
)


_TEXT_SPECIAL = re.compile(r"[&<>\t\n\x07\x0c]|(?:^|(?<=[\t\n\x07\x0c]))( +)|(?<= )( +)")
_TEXT_REPL = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "\t": "<text:tab/>",
    "\n": "<text:line-break/>",
    "\x07": '<ck:p xmlns:ck="' + CK_NS + '"/>',
    "\x0c": '<ck:pb xmlns:ck="' + CK_NS + '"/>',
}


def _spaces(n: int) -> str:
    return "<text:s/>" if n == 1 else f'<text:s text:c="{n}"/>'


def _text_sub(m: re.Match[str]) -> str:
    run = m.group(1) or m.group(2)
    if run:
        # A run of spaces at the start (or after a tab/break), or the 2nd.. of a run: text:s.
        return _spaces(len(run))
    return _TEXT_REPL[m.group(0)]


def odf_text(text: str) -> str:
    """``text`` as ODF paragraph content: escaped, spaces kept (``text:s``), ``\\n`` a line
    break, ``\\t`` a tab, ``\\a``/``\\f`` markers for a new paragraph / a page break, and the
    characters XML 1.0 cannot carry dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _XML_ILLEGAL_KEEP_CONTROLS.sub("", text)
    text = _TEXT_SPECIAL.sub(_text_sub, text)
    if text.endswith(" "):
        # A trailing space before a tag's following text could be collapsed; keep it.
        text = text[:-1] + "<text:s/>"
    return text


def _escape_attr(text: str) -> str:
    return escape_plain(text)


# --------------------------------------------------------------------------------------------------
# Template preprocessing


@attrs.define
class _Slot:
    node: etree._Element
    tail: bool
    char: str | None = None  # for character elements (text:s, ...): what they stand for

    def get(self) -> str:
        if self.char is not None:
            return self.char
        return (self.node.tail if self.tail else self.node.text) or ""

    def set(self, value: str) -> None:
        if self.tail:
            self.node.tail = value or None
        else:
            self.node.text = value or None


def _collect(el: etree._Element, slots: list[_Slot]) -> None:
    slots.append(_Slot(el, False))
    for child in el:
        tag = child.tag
        if isinstance(tag, str):
            if tag in _CHARS:
                rep = _CHARS[tag]
                if tag == T_S:
                    try:
                        rep = " " * max(1, int(child.get(qn("text:c"), "1")))
                    except ValueError:
                        rep = " "
                slots.append(_Slot(child, False, rep))
            elif tag in _INLINE:
                _collect(child, slots)
        slots.append(_Slot(child, True))


def _join_split_tags(paragraph: etree._Element, number: int) -> None:
    """Join the Jinja tags of one paragraph that are split over spans (step 2); each carries
    its paragraph's number to the tag table."""
    slots: list[_Slot] = []
    _collect(paragraph, slots)
    fixed = frozenset(i for i, slot in enumerate(slots) if slot.char is not None)
    mark = f"\ue0f0{number}\ue0f1"
    texts, placed, swallowed = join_split_tags(
        [slot.get() for slot in slots], lambda m: m.text[:-2] + mark + m.text[-2:], fixed
    )
    if not placed:
        return
    for i, slot in enumerate(slots):
        if i not in fixed and texts[i] != slot.get():
            slot.set(texts[i])
    for i in sorted(swallowed):
        remove_keep_tail(slots[i].node)


def _marked(text: str, mark: str) -> str:
    return text[:-2] + mark + text[-2:]


def _family_tag(value: str) -> tuple[int, int, Tag, str] | None:
    """The first docxtpl family tag of ``value``: (start, end, tag, paragraph mark)."""
    for m in scan_tags(value):
        text, mark = _unmarked(m.text)
        tag = parse_tag(normalize_tag(text))
        if tag.family:
            return m.start, m.end, tag, mark
    return None


def _texts_with(
    root: etree._Element, wanted: Callable[[str], bool]
) -> list[tuple[etree._Element, bool]]:
    """(element, is its tail) of every text below ``root`` that holds a tag and is ``wanted``."""
    found = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for is_tail in (False, True):
            value = el.tail if is_tail else el.text
            if value and "{" in value and wanted(value):
                found.append((el, is_tail))
    return found


def _apply_forms(root: etree._Element) -> None:
    """Step 3: ``{%p %}``, ``{%tr %}``, ``{%tc %}``, ``{%r %}``, ``{{p }}``, ``{{r }}``,
    ``{#p #}``."""
    for el, is_tail in _texts_with(root, lambda value: _family_tag(value) is not None):
        while attached(el, root):
            value = (el.tail if is_tail else el.text) or ""
            form = _family_tag(value)
            if form is None:
                break
            owner = el.getparent() if is_tail else el
            assert owner is not None
            if not _apply_form(owner, el, is_tail, value, form):
                break


def _apply_form(
    owner: etree._Element,
    el: etree._Element,
    is_tail: bool,
    value: str,
    form: tuple[int, int, Tag, str],
) -> bool:
    """Apply one form; False when the text that held it is gone (its element was replaced)."""
    start, end, tag, mark = form
    plain = _marked(tag.plain(), mark)
    target = ancestor(owner, _FAMILY_ELEMENTS[tag.family])
    if target is None:
        # No such ancestor (a {%r %} outside any span): the plain tag stays where it is.
        _set_text(el, is_tail, value[:start] + plain + value[end:])
        return True
    if tag.kind != "{":
        table = ancestor(target, frozenset({T_TABLE})) if tag.family == "tc" else None
        if table is not None:  # its rows may grow: declared columns follow after the render
            table.set(CK_FIT, "1")
        if tag.family == "p":
            parent = target.getparent()
            if (
                parent is not None
                and parent.tag == T_LIST_ITEM
                and len([c for c in parent if isinstance(c.tag, str)]) == 1
            ):
                target = parent
        replace_with_text(target, plain)
        return False
    for child in list(target):
        target.remove(child)
    target.text = plain
    return False


def _set_text(el: etree._Element, is_tail: bool, value: str) -> None:
    if is_tail:
        el.tail = value
    else:
        el.text = value


def _plain_expr(m: TagMatch) -> str:
    """Mark one expression to render as plain escaped text (outside paragraph text)."""
    text, mark = _unmarked(m.text)
    tag = parse_tag(normalize_tag(text))
    if tag.kind != "{":
        return m.text
    return _marked(tag.plain(f"ck_plain(({tag.body}))"), mark)


def _mark_plain(root: etree._Element) -> None:
    """Step 4: expressions in attributes and outside paragraphs render as plain text."""

    def walk(el: etree._Element, in_para: bool) -> None:
        inside = in_para or el.tag in _PARAGRAPHS
        for name, value in el.attrib.items():
            if "{{" in value:
                el.set(name, sub_tags(value, _plain_expr))
        if not inside and el.text and "{{" in el.text:
            el.text = sub_tags(el.text, _plain_expr)
        for child in el:
            if isinstance(child.tag, str):
                walk(child, inside)
            if not inside and child.tail and "{{" in child.tail:
                child.tail = sub_tags(child.tail, _plain_expr)

    walk(root, False)


# --------------------------------------------------------------------------------------------------
# docxtpl's cell tags: {% colspan n %}, {% cellbg color %}, {% vm %}, {% hm %}
#
# At compile time the tag leaves the paragraph and becomes private attributes on its cell
# (``ck:colspan``, ``ck:bg``, ``ck:vm``) holding Jinja expressions, and for vm/hm Jinja
# conditions around the cell. After the render, :func:`_fix_tables` turns the attributes into
# ODF: spans with their covered cells, automatic cell styles, row spans.

T_COVERED = qn("table:covered-table-cell")
T_TABLE = qn("table:table")
_ROW_GROUPS = frozenset(
    {qn("table:table-header-rows"), qn("table:table-rows"), qn("table:table-row-group")}
)
A_COLS_SPANNED = qn("table:number-columns-spanned")
A_ROWS_SPANNED = qn("table:number-rows-spanned")
A_COLS_REPEATED = qn("table:number-columns-repeated")
CK_COLSPAN = f"{{{CK_NS}}}colspan"
CK_BG = f"{{{CK_NS}}}bg"
CK_VM = f"{{{CK_NS}}}vm"
CK_FIT = f"{{{CK_NS}}}fit"

_FIRST = "{% if loop is not defined or loop.first %}"


def _drop_static_span(cell: etree._Element) -> int:
    """Remove the template's own column span of ``cell`` (the attribute and the covered cells
    after it); return the span it had."""
    try:
        span = max(1, int(cell.get(A_COLS_SPANNED, "1")))
    except ValueError:
        span = 1
    cell.attrib.pop(A_COLS_SPANNED, None)
    for _ in range(span - 1):
        nxt = cell.getnext()
        if nxt is None or nxt.tag != T_COVERED:
            break
        remove_keep_tail(nxt)
    return span


def _find_cell_tags(
    root: etree._Element,
) -> list[tuple[etree._Element, list[tuple[str, str, str, str]]]]:
    """Take every cell tag out of the text; return the cells with their tags
    (kind, expression, paragraph mark, original text), in document order."""
    found = _texts_with(root, lambda value: "{%" in value and bool(_cell_tags(value)))
    cells: dict[int, tuple[etree._Element, list[tuple[str, str, str, str]]]] = {}
    for el, is_tail in found:
        value = (el.tail if is_tail else el.text) or ""
        tags = _cell_tags(value)
        kept = []
        pos = 0
        for m, _tag, _mark in tags:
            kept.append(value[pos : m.start])
            pos = m.end
        _set_text(el, is_tail, "".join(kept) + value[pos:])
        owner = el.getparent() if is_tail else el
        cell = ancestor(owner, frozenset({T_CELL})) if owner is not None else None
        if cell is None:
            continue  # outside a table cell: the tag prints nothing, as in DOCX
        entry = cells.setdefault(id(cell), (cell, []))
        for m, tag, mark in tags:
            entry[1].append((tag.cell, tag.argument, mark, _unmarked(m.text)[0]))
    return list(cells.values())


def _cell_tags(value: str) -> list[tuple[TagMatch, Tag, str]]:
    """The cell tags of a text: (where, parsed tag, paragraph mark)."""
    out = []
    for m in scan_tags(value):
        text, mark = _unmarked(m.text)
        tag = parse_tag(normalize_tag(text))
        if tag.cell:
            out.append((m, tag, mark))
    return out


def _apply_cell_tags(
    cells: list[tuple[etree._Element, list[tuple[str, str, str, str]]]],
) -> dict[str, str]:
    """Turn the cell tags into attributes and conditions; return generated expression →
    original tag text (for error messages)."""
    originals: dict[str, str] = {}
    for cell, tags in cells:
        by_kind = {kind: (expr, mark, original) for kind, expr, mark, original in tags}
        span_expr: str | None = None
        if "colspan" in by_kind or "hm" in by_kind:
            factor = str(_drop_static_span(cell))
            if "colspan" in by_kind:
                factor = f"({by_kind['colspan'][0]})"
            if "hm" in by_kind:
                span_expr = f"ck_span((loop.length if loop is defined else 1) * {factor})"
                mark, original = by_kind["hm"][1:]
            else:
                span_expr = f"ck_span({factor})"
                mark, original = by_kind["colspan"][1:]
            originals[normalize_tag(span_expr)] = original
            cell.set(CK_COLSPAN, "{{ " + span_expr + " " + mark + "}}")
        if "cellbg" in by_kind:
            expr, mark, original = by_kind["cellbg"]
            call = f"ck_color(({expr}))"
            originals[normalize_tag(call)] = original
            cell.set(CK_BG, "{{ " + call + " " + mark + "}}")
        if "vm" in by_kind:
            mark = by_kind["vm"][1]
            cell.set(CK_VM, "1")
            covered = cell.makeelement(T_COVERED, {CK_VM: "2"})
            if span_expr is not None:
                covered.set(CK_COLSPAN, cell.get(CK_COLSPAN, ""))
            text_before(cell, _FIRST[:-2] + mark + "%}")
            covered.tail = "{% endif %}" + (cell.tail or "")
            cell.tail = "{% else %}"
            cell.addnext(covered)
        elif "hm" in by_kind:
            text_before(cell, _FIRST[:-2] + by_kind["hm"][1] + "%}")
            cell.tail = "{% endif %}" + (cell.tail or "")
    return originals


def ck_span(value: Any) -> str:
    """``{% colspan %}``/``{% hm %}``: a column span (:func:`convkit.office.tags.cell_span`)."""
    return str(cell_span(value))


def ck_color(value: Any) -> str:
    """``{% cellbg %}``: a background colour as ODF writes it, or ``transparent``."""
    color = cell_color(value)
    return "transparent" if color is None else "#" + color.lower()


#: The namespaces the rendered markup may use, declared on every part's root.
_MARKUP_NS = {
    p: NAMESPACES[p] for p in ("office", "style", "text", "table", "draw", "fo", "xlink", "svg")
}


def preprocess_odf(xml: bytes, part: str) -> SourceBuilder | None:
    """Turn one ODF XML part into a Jinja source (steps 1 to 4) with its tag table; None if
    the part holds no tag.

    :raises UnclosedTag: a tag is not closed in its paragraph.
    """
    root = parse_xml(xml, part=part)
    if b"{" not in xml:
        return None
    root = with_namespaces(root, _MARKUP_NS)
    for number, el in enumerate(list(root.iter(T_P, T_H)), start=1):
        _join_split_tags(el, number)
    _apply_forms(root)
    cells = _find_cell_tags(root)
    originals: dict[str, str] = {}
    if cells or root.find(f".//*[@{{{CK_NS}}}fit]") is not None:
        root = with_namespaces(root, {"ck": CK_NS})
    if cells:
        originals = _apply_cell_tags(cells)
    _mark_plain(root)
    serialized = etree.tostring(root, encoding="unicode")
    built = _tag_source('<?xml version="1.0" encoding="UTF-8"?>' + serialized)
    if originals:
        built.tags = [_original_tag(tag, originals) for tag in built.tags]
    return built


def _original_tag(tag: TagInfo, originals: dict[str, str]) -> TagInfo:
    """A tag generated for a cell tag, shown as the cell tag the author wrote."""
    if "ck_" not in tag.text:
        return tag
    for generated, original in originals.items():
        if generated in tag.text:
            return TagInfo(tag.place, original)
    return tag


# --------------------------------------------------------------------------------------------------
# Post-processing of a rendered part


def _split_paragraph(marker: etree._Element, paragraph: etree._Element) -> etree._Element:
    """Split ``paragraph`` at ``marker`` (a descendant); return the new second paragraph, which
    holds everything after the marker with the same enclosing spans."""
    cont: etree._Element | None = None
    node = marker
    text_after = marker.tail
    marker.tail = None
    anc = marker.getparent()
    while anc is not None:
        clone = anc.makeelement(anc.tag, dict(anc.attrib))
        for attr in (qn("text:id"), "{http://www.w3.org/XML/1998/namespace}id"):
            clone.attrib.pop(attr, None)
        if cont is None:
            clone.text = text_after
        else:
            clone.append(cont)
            cont.tail = text_after
        for sib in list(node.itersiblings()):
            clone.append(sib)
        if anc is paragraph:
            cont = clone
            break
        text_after = anc.tail
        anc.tail = None
        cont = clone
        node = anc
        anc = anc.getparent()
    assert cont is not None
    parent = marker.getparent()
    if parent is not None:
        parent.remove(marker)
    cont.tail = paragraph.tail
    paragraph.tail = None
    paragraph.addnext(cont)
    return cont


def _resolve_markers(root: etree._Element, auto_styles: etree._Element | None) -> None:
    markers = list(root.iter(f"{{{CK_NS}}}p", f"{{{CK_NS}}}pb"))
    page_styles: dict[str | None, str] = {}
    for marker in markers:
        paragraph = ancestor(marker, _PARAGRAPHS)
        if paragraph is None:
            remove_keep_tail(marker)
            continue
        page = marker.tag == f"{{{CK_NS}}}pb"
        new = _split_paragraph(marker, paragraph)
        if page and auto_styles is not None:
            style = paragraph.get(qn("text:style-name"))
            if style not in page_styles:
                page_styles[style] = _page_break_style(auto_styles, style, len(page_styles))
            new.set(qn("text:style-name"), page_styles[style])


def _page_break_style(auto_styles: etree._Element, base: str | None, n: int) -> str:
    name = f"ckPageBreak{n + 1}"
    props = _derived_style(auto_styles, base, name, "paragraph")
    props.set(qn("fo:break-before"), "page")
    return name


def _derived_style(
    auto: etree._Element, base: str | None, name: str, family: str
) -> etree._Element:
    """Add the automatic style ``name``: a copy of the automatic style ``base`` if there is one
    (borders, padding... kept), else a ``family`` style deriving from the common style ``base``.
    Return its ``style:<family>-properties`` element, for the caller to set what differs."""
    existing = next(
        (st for st in auto.iterchildren(qn("style:style")) if st.get(qn("style:name")) == base),
        None,
    )
    if base is not None and existing is not None:
        style = copy.deepcopy(existing)
        style.tail = None
        style.attrib.pop(qn("style:display-name"), None)
    else:
        style = etree.Element(qn("style:style"))
        style.set(qn("style:family"), family)
        if base is not None:  # a common style: automatic styles may derive from those
            style.set(qn("style:parent-style-name"), base)
    style.set(qn("style:name"), name)
    props = style.find(qn(f"style:{family}-properties"))
    if props is None:
        props = etree.Element(qn(f"style:{family}-properties"))
        style.insert(0, props)
    auto.append(style)
    return props


# --------------------------------------------------------------------------------------------------
# Post-processing of the cell tags


def _table_rows(table: etree._Element) -> list[etree._Element]:
    """The rows of ``table`` in order (inside header rows and row groups; not nested tables)."""
    rows: list[etree._Element] = []

    def walk(el: etree._Element) -> None:
        for child in el:
            if child.tag == T_ROW:
                rows.append(child)
            elif child.tag in _ROW_GROUPS:
                walk(child)

    walk(table)
    return rows


def _row_grid(row: etree._Element) -> list[etree._Element]:
    """The cell elements of ``row`` by column (a repeated cell stands in several columns)."""
    grid: list[etree._Element] = []
    for child in row:
        if child.tag in (T_CELL, T_COVERED):
            try:
                repeat = max(1, min(MAX_SPAN, int(child.get(A_COLS_REPEATED, "1"))))
            except ValueError:
                repeat = 1
            grid.extend([child] * repeat)
    return grid


def _cell_bg_style(
    auto: etree._Element, cache: dict[tuple[str | None, str], str], base: str | None, color: str
) -> str:
    """An automatic table-cell style: ``base`` (borders, padding kept) with ``color`` as its
    background."""
    key = (base, color)
    found = cache.get(key)
    if found is not None:
        return found
    names = {st.get(qn("style:name")) for st in auto}
    n = len(cache) + 1
    while f"ckCell{n}" in names:
        n += 1
    name = f"ckCell{n}"
    props = _derived_style(auto, base, name, "table-cell")
    for image in props.findall(qn("style:background-image")):
        props.remove(image)
    props.set(qn("fo:background-color"), color)
    cache[key] = name
    return name


_COVERED_COST = len("<table:covered-table-cell/>")


def _fix_tables(root: etree._Element, auto: etree._Element, budget: OutputBudget | None) -> None:
    """Turn the cell tags' attributes into ODF: ``ck:colspan`` → ``number-columns-spanned`` and
    covered cells after the cell, ``ck:bg`` → an automatic cell style with the background,
    ``ck:vm`` → ``number-rows-spanned`` over the covered cells below (the loop's copies)."""
    tables: dict[int, etree._Element] = {}
    styles: dict[tuple[str | None, str], str] = {}
    vm = False
    for el in list(root.iter(T_CELL, T_COVERED)):
        attrib = el.attrib
        if CK_COLSPAN not in attrib and CK_BG not in attrib and CK_VM not in attrib:
            continue
        check_deadline()
        table = ancestor(el, frozenset({T_TABLE}))
        if table is not None:
            tables[id(table)] = table
        vm = vm or CK_VM in attrib
        span = attrib.pop(CK_COLSPAN, None)
        if span is not None:
            n = int(span)  # checked by ck_span
            if el.tag == T_CELL:
                if n > 1:
                    el.set(A_COLS_SPANNED, str(n))
                else:
                    attrib.pop(A_COLS_SPANNED, None)
            if budget is not None:
                budget.add(_COVERED_COST * (n - 1))
            for _ in range(n - 1):
                el.addnext(el.makeelement(T_COVERED, {}))
        color = attrib.pop(CK_BG, None)
        if color is not None and el.tag == T_CELL:
            base = el.get(qn("table:style-name"))
            el.set(qn("table:style-name"), _cell_bg_style(auto, styles, base, color))
    for table in root.iter(T_TABLE):
        if table.attrib.pop(CK_FIT, None) is not None:
            tables[id(table)] = table
    for table in tables.values():
        rows = _table_rows(table)
        grids = [_row_grid(row) for row in rows]
        if vm:
            _merge_vertically(grids)
        _fit_columns(table, grids)


def _merge_vertically(grids: list[list[etree._Element]]) -> None:
    """A ``ck:vm="1"`` cell spans the rows below it that hold a ``ck:vm="2"`` covered cell in
    the same column (the copies the loop made); a stray copy becomes an empty cell."""
    for r, grid in enumerate(grids):
        check_deadline()
        for c, el in enumerate(grid):
            if el.get(CK_VM) != "1":
                continue
            del el.attrib[CK_VM]
            k = 1
            while r + k < len(grids) and c < len(grids[r + k]):
                below = grids[r + k][c]
                if below.tag != T_COVERED or below.get(CK_VM) != "2":
                    break
                del below.attrib[CK_VM]
                k += 1
            if k > 1:
                el.set(A_ROWS_SPANNED, str(k))
            else:
                el.attrib.pop(A_ROWS_SPANNED, None)
    for grid in grids:
        for el in grid:
            if el.get(CK_VM) is not None:
                del el.attrib[CK_VM]
                if el.tag == T_COVERED:  # nothing above to continue: an empty cell instead
                    el.tag = T_CELL
                    etree.SubElement(el, T_P)


def _repeats(column: etree._Element) -> int:
    try:
        return max(1, int(column.get(A_COLS_REPEATED, "1")))
    except ValueError:
        return 1


def _fit_columns(table: etree._Element, grids: list[list[etree._Element]]) -> None:
    """Declare as many columns as the widest row now has (a ``{%tc %}`` loop or a span may have
    widened or narrowed the rows), so LibreOffice shows every cell."""
    width = max((len(g) for g in grids), default=0)
    columns = [c for c in table.iter(qn("table:table-column")) if _owner_table(c) is table]
    if not columns or width == 0:
        return
    declared = sum(_repeats(c) for c in columns)
    if width > declared:
        columns[-1].set(A_COLS_REPEATED, str(_repeats(columns[-1]) + width - declared))
    while declared > width:
        last = columns[-1]
        keep = max(0, _repeats(last) - (declared - width))
        declared -= _repeats(last) - keep
        if keep == 0 and len(columns) > 1:
            remove_keep_tail(columns.pop())
        elif keep > 1:
            last.set(A_COLS_REPEATED, str(keep))
        else:
            last.attrib.pop(A_COLS_REPEATED, None)
            declared = max(declared, width)


def _owner_table(el: etree._Element) -> etree._Element | None:
    return ancestor(el, frozenset({T_TABLE}))


def _text_style_xml(name: str, key: StyleKey) -> etree._Element:
    bold, italic, underline, strike, color, size_pt, font = key
    el = etree.Element(qn("style:style"))
    el.set(qn("style:name"), name)
    el.set(qn("style:family"), "text")
    props = etree.SubElement(el, qn("style:text-properties"))
    # True sets the property, False clears what the enclosing style may set, None inherits.
    if bold is not None:
        for ns, local in (("fo", "font-weight"), ("style", "font-weight-asian")):
            props.set(qn(f"{ns}:{local}"), "bold" if bold else "normal")
        props.set(qn("style:font-weight-complex"), "bold" if bold else "normal")
    if italic is not None:
        for ns, local in (("fo", "font-style"), ("style", "font-style-asian")):
            props.set(qn(f"{ns}:{local}"), "italic" if italic else "normal")
        props.set(qn("style:font-style-complex"), "italic" if italic else "normal")
    if underline is not None:
        props.set(qn("style:text-underline-style"), "solid" if underline else "none")
        if underline:
            props.set(qn("style:text-underline-width"), "auto")
            props.set(qn("style:text-underline-color"), "font-color")
    if strike is not None:
        props.set(qn("style:text-line-through-style"), "solid" if strike else "none")
    if color:
        props.set(qn("fo:color"), f"#{color}")
    if size_pt:
        size = f"{size_pt:g}pt"
        props.set(qn("fo:font-size"), size)
        props.set(qn("style:font-size-asian"), size)
        props.set(qn("style:font-size-complex"), size)
    if font:
        props.set(qn("style:font-name"), font)
        props.set(qn("fo:font-family"), font)
    return el


def _auto_styles(root: etree._Element) -> etree._Element:
    found = root.find(qn("office:automatic-styles"))
    if found is not None:
        return found
    el = etree.Element(qn("office:automatic-styles"))
    # automatic-styles comes after font-face-decls/styles and before master-styles/body.
    anchor = None
    for name in ("master-styles", "body"):
        anchor = root.find(qn(f"office:{name}"))
        if anchor is not None:
            break
    if anchor is not None:
        anchor.addprevious(el)
    else:
        root.append(el)
    return el


def postprocess_odf(
    rendered: bytes,
    part: str,
    template: Template,
    state: _RenderState,
    *,
    add_styles: bool,
    budget: OutputBudget | None = None,
) -> bytes:
    """Check the rendered XML, resolve paragraph markers and cell tags, add automatic styles;
    return bytes."""
    try:
        root = etree.fromstring(rendered, parser=_OUT_PARSER)
    except etree.XMLSyntaxError as exc:
        raise TemplateError(
            f"{where(template, part)}: the rendered XML is not well-formed ({exc}); "
            "check that block tags are balanced inside one paragraph, or use the "
            "{%p %} / {%tr %} / {%tc %} forms around paragraphs, rows and cells"
        ) from exc
    changed = False
    auto = None
    markers = CK_NS.encode() in rendered
    if markers or (add_styles and state.styles):
        auto = _auto_styles(root)
    if markers:
        _resolve_markers(root, auto)
        if auto is not None and root.nsmap.get("ck") == CK_NS:
            _fix_tables(root, auto, budget)
            keep = [prefix for prefix in root.nsmap if prefix and prefix != "ck"]
            etree.cleanup_namespaces(root, keep_ns_prefixes=keep)
        changed = True
    if add_styles and state.styles and auto is not None:
        existing = {st.get(qn("style:name")) for st in auto}
        for style, name in state.styles.items():
            if name not in existing:
                auto.append(_text_style_xml(name, style))
        changed = True
    return xml_bytes(root, standalone=None) if changed else rendered


_OUT_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
)

# --------------------------------------------------------------------------------------------------
# The engine

_TEXT_PARTS = ("content.xml", "styles.xml", "meta.xml")


@attrs.frozen
class _CompiledOdf:
    flat: bool
    #: Members of the package in their order (a flat document: none).
    members: tuple[Member, ...]
    parts: dict[str, CompiledPart]


class OdtEngine(OfficeEngine[_CompiledOdf]):
    """Renders LibreOffice Writer ``.odt`` and flat ``.fodt`` templates (docxtpl dialect).

    Options and parameters: :class:`convkit.office.engine.OfficeEngine`.
    """

    name = "odt"
    suffixes = {".odt": "odt", ".fodt": "fodt"}

    def _environment(self, strict: bool) -> jinja2.Environment:
        env = super()._environment(strict)
        env.finalize = _finalize_text
        env.globals["ck_plain"] = _plain
        env.globals["ck_span"] = ck_span
        env.globals["ck_color"] = ck_color
        return env

    def _build(self, template: Template, env: jinja2.Environment) -> _CompiledOdf:
        flat = template.format == "fodt"
        members: tuple[Member, ...] = ()
        if flat:
            sources = {"document": template.source}
        else:
            members = tuple(read_package(template.source, limits=self.zip_limits))
            sources = {name: data for name, data, _ in members if name in _TEXT_PARTS}
            if "content.xml" not in sources:
                raise UnsafeDocument(f"{where(template)}: not an ODF package (no content.xml)")
        parts: dict[str, CompiledPart] = {}
        for part, xml in sources.items():
            try:
                built = preprocess_odf(xml, part)
            except UnclosedTag as exc:
                raise TemplateError(
                    f"{where(template, part)}: the tag starting {exc.text!r} is not closed in "
                    "the same paragraph"
                ) from None
            if built is not None:
                parts[part] = built.compile(env, template, part, part)
        return _CompiledOdf(flat, members, parts)

    def _parts(self, compiled: _CompiledOdf) -> Iterable[CompiledPart]:
        return compiled.parts.values()

    def _render(
        self,
        compiled: _CompiledOdf,
        template: Template,
        data: dict[str, Any],
        budget: OutputBudget,
    ) -> bytes:
        images: dict[str, Image] = {}
        outputs: dict[str, bytes] = {}
        for part, cpart in compiled.parts.items():
            state = _RenderState(flat=compiled.flat, styles={}, images=images)
            token = _STATE.set(state)
            try:
                rendered = b"".join(cpart.render(template, data, budget))
            finally:
                _STATE.reset(token)
            check_deadline()
            outputs[part] = postprocess_odf(
                rendered, part, template, state, add_styles=part != "meta.xml", budget=budget
            )
        if compiled.flat:
            return outputs.get("document", template.source)
        return _package(compiled.members, outputs, images)


def _package(
    members: tuple[Member, ...], outputs: dict[str, bytes], images: dict[str, Image]
) -> bytes:
    """The rendered package: ``mimetype`` first and stored, as ODF wants, then the members with
    the rendered parts and the pictures the values added (listed in the manifest)."""
    names = {name for name, _, _ in members}
    ordered = sorted(members, key=lambda m: m[0] != "mimetype")
    out: list[Member] = []
    for name, content, compressed in ordered:
        body = outputs.get(name, content)
        if name == "META-INF/manifest.xml" and images:
            body = _manifest_with(body, images)
        out.append((name, body, compressed and name != "mimetype"))
    out += [
        (path, image.data, False) for path, image in sorted(images.items()) if path not in names
    ]
    return write_package(out)


def _manifest_with(manifest: bytes, images: dict[str, Image]) -> bytes:
    root = parse_xml(manifest, part="META-INF/manifest.xml")
    have = {e.get(qn("manifest:full-path")) for e in root}
    for path, image in sorted(images.items()):
        if path in have:
            continue
        entry = etree.SubElement(root, qn("manifest:file-entry"))
        entry.set(qn("manifest:full-path"), path)
        entry.set(qn("manifest:media-type"), image.media_type)
    return xml_bytes(root, standalone=None)


# --------------------------------------------------------------------------------------------------
# Value rendering (finalize)


def _safe(xml: str) -> Markup:
    """Mark XML this module built (every value in it escaped) as safe for autoescape."""
    return Markup(xml)  # noqa: S704  # built by the escaping helpers above


def _plain(value: Any) -> Markup:
    """A value as plain escaped text (attributes, document properties)."""
    return _safe(plain_xml(value))


def _finalize_text(value: Any) -> Any:
    """What ``{{ }}`` prints in paragraph text: escaped ODF text, or rich markup."""
    if isinstance(value, Markup):
        return _safe(clean_xml_text(str(value)))
    if is_rich_candidate(value):
        rich = parse_rich(value)
        if rich is not None:
            return _safe(_rich_markup(rich))
    return _safe(odf_text(str(value)))


def _rich_markup(rich: RichValue) -> str:
    state = _STATE.get()
    if isinstance(rich, Image):
        return _image_markup(rich, state)
    if isinstance(rich, Link):
        return _link(rich.url, odf_text(rich.text))
    out: list[str] = []
    for run in rich.runs:
        text = odf_text(run.text)
        key = _style_key(run)
        if any(v is not None for v in key) and state is not None:
            name = state.styles.get(key)
            if name is None:
                name = f"ckT{_style_id(key)}"
                state.styles[key] = name
            text = f'<text:span text:style-name="{name}">{text}</text:span>'
        if run.link:
            text = _link(run.link, text)
        out.append(text)
    return "".join(out)


def _link(url: str, inner: str) -> str:
    return f'<text:a xlink:type="simple" xlink:href="{escape_plain(url)}">{inner}</text:a>'


def _style_id(key: StyleKey) -> str:
    return hashlib.sha1(repr(key).encode(), usedforsecurity=False).hexdigest()[:10]


def _image_markup(image: Image, state: _RenderState | None) -> str:
    ext = "jpg" if image.format == "jpeg" else image.format
    path = f"Pictures/ck{image.digest[:24]}.{ext}"
    flat = state is not None and state.flat
    if state is not None:
        state.frames += 1
        if not flat:
            state.images[path] = image
        number = state.frames
    else:
        number = 1
    width, height = image.size_mm()
    frame = (
        f'<draw:frame draw:name="ckImage{number}" text:anchor-type="as-char" '
        f'svg:width="{width:.2f}mm" svg:height="{height:.2f}mm" draw:z-index="0">'
    )
    if flat:
        body = (
            f'<draw:image draw:mime-type="{image.media_type}"><office:binary-data>'
            f"{base64.b64encode(image.data).decode('ascii')}</office:binary-data></draw:image>"
        )
    else:
        body = (
            f'<draw:image xlink:href="{path}" xlink:type="simple" xlink:show="embed" '
            f'xlink:actuate="onLoad" draw:mime-type="{image.media_type}"/>'
        )
    alt = f"<svg:desc>{escape_plain(image.alt)}</svg:desc>" if image.alt else ""
    return frame + body + alt + "</draw:frame>"
