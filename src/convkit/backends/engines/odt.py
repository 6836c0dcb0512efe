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
import io
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import attrs
import jinja2
from jinja2.exceptions import SecurityError
from lxml import etree
from markupsafe import Markup

from convkit.errors import TemplateError, UnsafeDocument
from convkit.office.safezip import parse_xml, read_zip
from convkit.ports import RenderedDocument, Template, TemplateEngine
from convkit.templating.cache import LRU
from convkit.templating.rich import (
    Image,
    Link,
    RichValue,
    TextRun,
    is_rich_candidate,
    parse_rich,
    plain_text,
)
from convkit.templating.sandbox import (
    MAX_OUTPUT_BYTES,
    TEMPLATE_FILENAME,
    make_environment,
    template_line,
    undeclared_variables,
)
from convkit.templating.scope import MAX_RENDER_SECONDS, check_deadline, render_scope

__all__ = [
    "OdtEngine",
    "clean_xml_text",
]

# --------------------------------------------------------------------------------------------------
# Namespaces

NS = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "style": "urn:oasis:names:tc:opendocument:xmlns:style:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "fo": "urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0",
    "xlink": "http://www.w3.org/1999/xlink",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
    "manifest": "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0",
    "loext": "urn:org:documentfoundation:names:experimental:office:xmlns:loext:1.0",
}
#: Namespace of the engine's private markers (paragraph splits); none survive a render.
CK_NS = "urn:x-convkit:odf-markers"


def _q(prefix: str, local: str) -> str:
    return f"{{{NS[prefix]}}}{local}"


T_P, T_H = _q("text", "p"), _q("text", "h")
T_SPAN, T_A = _q("text", "span"), _q("text", "a")
T_S, T_TAB, T_LB = _q("text", "s"), _q("text", "tab"), _q("text", "line-break")
T_SOFT_PB = _q("text", "soft-page-break")
T_LIST_ITEM = _q("text", "list-item")
T_ROW, T_CELL = _q("table", "table-row"), _q("table", "table-cell")
_PARAGRAPHS = frozenset({T_P, T_H})
# Inline containers whose text is part of the paragraph's text stream.
_INLINE = frozenset({T_SPAN, T_A, _q("text", "meta"), _q("text", "ruby"), _q("text", "ruby-base")})
# Empty elements that stand for characters.
_CHARS = {T_S: " ", T_TAB: "\t", T_LB: "\n", T_SOFT_PB: ""}

# --------------------------------------------------------------------------------------------------
# Text helpers shared with the XLSX engine

# Everything XML 1.0 cannot carry (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# The same, but keeping \a (new paragraph) and \f (page break) for the ODF conventions.
_XML_ILLEGAL_KEEP_CONTROLS = re.compile(
    "[^\x07\x0c\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def clean_xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot carry (they are dropped, not replaced)."""
    return _XML_ILLEGAL.sub("", text)


def escape_plain(text: str) -> str:
    """Escape ``text`` for XML element content or an attribute value, keeping newlines and tabs
    as character references (attribute normalisation would turn them into spaces)."""
    text = clean_xml_text(text)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\r", "&#13;")
        .replace("\n", "&#10;")
        .replace("\t", "&#9;")
    )


def unescape_xml(text: str) -> str:
    """Undo what lxml's serializer did to a Jinja tag's text (one level)."""
    if "&" not in text:
        return text
    for ent, char in (
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", '"'),
        ("&apos;", "'"),
        ("&#10;", " "),
        ("&#13;", " "),
        ("&#9;", " "),
    ):
        text = text.replace(ent, char)
    return text.replace("&amp;", "&")


_SMART = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\xa0": " ",
    }
)


def normalize_tag(text: str) -> str:
    """A Jinja tag as typed in an office suite: smart quotes straightened, no-break spaces and
    line breaks made plain spaces."""
    return text.translate(_SMART).replace("\n", " ").replace("\r", " ").replace("\t", " ")


TAG_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)

# --------------------------------------------------------------------------------------------------
# Compiled-template plumbing shared with the XLSX engine


@attrs.frozen
class TagInfo:
    """Where a Jinja tag of a compiled part came from, for error messages."""

    where: str  # "paragraph 12", "Sheet1!B7"
    text: str


@attrs.frozen
class CompiledPart:
    """One XML part compiled into a Jinja template; line ``n + 2`` of its source is tag ``n``."""

    part: str
    template: jinja2.Template
    tags: tuple[TagInfo, ...]
    source: str = attrs.field(repr=False)

    def tag_for_line(self, line: int | None) -> TagInfo | None:
        if line is None or not 2 <= line < len(self.tags) + 2:
            return None
        return self.tags[line - 2]


def where_prefix(template: Template) -> str:
    where = f"template {template.name!r}"
    if template.origin != "<memory>":
        where += f" ({template.origin})"
    return where


def describe(template: Template, part: str, tag: TagInfo | None) -> str:
    text = f"{where_prefix(template)}, {part}"
    if tag is not None:
        shown = tag.text if len(tag.text) <= 120 else tag.text[:117] + "..."
        text += f", {tag.where}, tag {shown}"
    return text


def compile_part(
    env: jinja2.Environment,
    template: Template,
    part: str,
    source: str,
    tags: Iterable[TagInfo],
) -> CompiledPart:
    """Compile one part's Jinja source; a syntax error names the part and the offending tag."""
    tag_list = tuple(tags)
    try:
        code = env.compile(source, name=template.name, filename=TEMPLATE_FILENAME)
        compiled = env.template_class.from_code(env, code, env.make_globals(None))
    except jinja2.TemplateSyntaxError as exc:
        info = None
        if exc.lineno and 2 <= exc.lineno < len(tag_list) + 2:
            info = tag_list[exc.lineno - 2]
        raise TemplateError(f"{describe(template, part, info)}: {exc.message}") from exc
    except Exception as exc:  # RecursionError on absurd nesting, and the like
        raise TemplateError(f"{describe(template, part, None)}: cannot compile: {exc}") from exc
    return CompiledPart(part, compiled, tag_list, source)


class OutputBudget:
    """Counts the characters a render produced over all parts, against the output limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def add(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise TemplateError(
                f"output exceeds {self.limit} bytes", code="template_limit_exceeded"
            )


def render_part(
    compiled: CompiledPart,
    template: Template,
    context: dict[str, Any],
    budget: OutputBudget,
) -> str:
    """Run one compiled part with the deadline and the output budget; every failure becomes a
    TemplateError naming the part and the tag."""
    chunks: list[str] = []
    try:
        for piece in compiled.template.generate(context):
            check_deadline()
            budget.add(len(piece))
            chunks.append(piece)
    except TemplateError as exc:
        tag = compiled.tag_for_line(template_line(exc.__traceback__))
        raise TemplateError(
            f"{describe(template, compiled.part, tag)}: {exc.message}", code=exc.code
        ) from exc
    except jinja2.UndefinedError as exc:
        tag = compiled.tag_for_line(template_line(exc.__traceback__))
        raise TemplateError(f"{describe(template, compiled.part, tag)}: {exc.message}") from exc
    except SecurityError as exc:
        tag = compiled.tag_for_line(template_line(exc.__traceback__))
        # The sandbox refuses `'x' * 10**10` and huge powers: those are limits, not escapes.
        limit = "exceed" in str(exc) or "too large" in str(exc)
        raise TemplateError(
            f"{describe(template, compiled.part, tag)}: sandbox: {exc}",
            code="template_limit_exceeded" if limit else None,
        ) from exc
    except Exception as exc:
        tag = compiled.tag_for_line(template_line(exc.__traceback__))
        raise TemplateError(
            f"{describe(template, compiled.part, tag)}: {type(exc).__name__}: {exc}"
        ) from exc
    return "".join(chunks)


def number_tags(serialized: str, part: str, default_where: str = "") -> tuple[str, list[TagInfo]]:
    """Make the serialized XML of a part a Jinja source whose line ``n + 2`` is tag ``n``.

    Tags get their XML escaping undone and a newline after their opening delimiter; every other
    newline becomes ``&#10;``. A tag whose text holds raw markup spans elements it cannot span
    (two paragraphs, two cells): that is a TemplateError naming it.
    """
    out: list[str] = []
    tags: list[TagInfo] = []
    pos = 0
    for m in TAG_RE.finditer(serialized):
        out.append(serialized[pos : m.start()].replace("\n", "&#10;"))
        pos = m.end()
        raw = m.group(0)
        where = default_where
        marker = _WHERE_MARK.search(raw)
        if marker:
            where = f"paragraph {marker.group(1)}"
            raw = _WHERE_MARK.sub("", raw)
        if "<" in raw:
            shown = re.sub(r"<[^>]*>", "", raw)[:80]
            raise _Unclosed(part, where, unescape_xml(shown))
        text = normalize_tag(unescape_xml(raw))
        head = 3 if text[2:3] in ("-", "+") else 2
        tags.append(TagInfo(where, text))
        out.append(text[:head] + "\n" + text[head:])
    out.append(serialized[pos:].replace("\n", "&#10;"))
    return "".join(out), tags


class _Unclosed(Exception):
    def __init__(self, part: str, where: str, text: str) -> None:
        super().__init__(text)
        self.part = part
        self.where = where
        self.text = text


# Paragraph numbers ride inside tags from step 2 to step 4 between two private-use characters.
_WHERE_MARK = re.compile("\ue0f0(\\d+)\ue0f1")

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
                        rep = " " * max(1, int(child.get(_q("text", "c"), "1")))
                    except ValueError:
                        rep = " "
                slots.append(_Slot(child, False, rep))
            elif tag in _INLINE:
                _collect(child, slots)
        slots.append(_Slot(child, True))


def _remove_keep_tail(el: etree._Element) -> None:
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail or ""
    prev = el.getprevious()
    if prev is not None:
        prev.tail = ((prev.tail or "") + tail) or None
    else:
        parent.text = ((parent.text or "") + tail) or None
    parent.remove(el)


def _join_split_tags(paragraph: etree._Element, number: int) -> None:
    """Join the Jinja tags of one paragraph that are split over spans (step 2)."""
    slots: list[_Slot] = []
    _collect(paragraph, slots)
    texts = [s.get() for s in slots]
    stream = "".join(texts)
    if "{" not in stream:
        return
    matches = list(TAG_RE.finditer(stream))
    if not matches:
        return
    starts: list[int] = []
    pos = 0
    for t in texts:
        starts.append(pos)
        pos += len(t)
    removed: list[etree._Element] = []
    mark = f"\ue0f0{number}\ue0f1"
    for m in reversed(matches):
        a, b = m.start(), m.end()
        tag = m.group(0)
        tag = tag[:-2] + mark + tag[-2:]
        first = True
        for i, slot in enumerate(slots):
            s, e = starts[i], starts[i] + len(texts[i])
            if slot.char is not None:
                if a <= s and e <= b and e > s:
                    removed.append(slot.node)
                continue
            if e <= a or s >= b:
                continue
            cur = slot.get()
            if first:
                # The slot the tag starts in: keep what is before, then the whole tag.
                slot.set(cur[: a - s] + tag + (cur[b - s :] if b <= e else ""))
                first = False
            else:
                slot.set(cur[b - s :] if b < e else "")
    for el in removed:
        _remove_keep_tail(el)


_FORM = re.compile(r"\{%(-?)(p|tr|tc|r)\s(.*?)%\}|\{\{(-?)(p|r)\s(.*?)\}\}", re.DOTALL)


def _place_instead(el: etree._Element, text: str) -> None:
    """Replace ``el`` by the text ``text`` (a Jinja tag) at its position."""
    parent = el.getparent()
    assert parent is not None
    insert = text + (el.tail or "")
    prev = el.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + insert
    else:
        parent.text = (parent.text or "") + insert
    parent.remove(el)


def _ancestor(el: etree._Element, tags: frozenset[str]) -> etree._Element | None:
    node: etree._Element | None = el
    while node is not None:
        if node.tag in tags:
            return node
        node = node.getparent()
    return None


def _attached(el: etree._Element, root: etree._Element) -> bool:
    node: etree._Element | None = el
    while node is not None:
        if node is root:
            return True
        node = node.getparent()
    return False


def _apply_forms(root: etree._Element) -> None:
    """Step 3: ``{%p %}``, ``{%tr %}``, ``{%tc %}``, ``{%r %}``, ``{{p }}``, ``{{r }}``."""
    found: list[tuple[etree._Element, bool]] = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for is_tail in (False, True):
            value = el.tail if is_tail else el.text
            if value and ("{%" in value or "{{" in value) and _FORM.search(value):
                found.append((el, is_tail))
    for el, is_tail in found:
        while _attached(el, root):
            value = (el.tail if is_tail else el.text) or ""
            m = _FORM.search(value)
            if m is None:
                break
            owner = el.getparent() if is_tail else el
            assert owner is not None
            if not _apply_form(owner, el, is_tail, m):
                break


def _apply_form(owner: etree._Element, el: etree._Element, is_tail: bool, m: re.Match[str]) -> bool:
    """Apply one form; False when the text that held it is gone (its element was replaced)."""
    if m.group(2):
        dash, kind, body = m.group(1), m.group(2), m.group(3)
        plain = "{%" + dash + " " + body + "%}"
        target_tags = {
            "p": _PARAGRAPHS,
            "tr": frozenset({T_ROW}),
            "tc": frozenset({T_CELL}),
            "r": frozenset({T_SPAN}),
        }[kind]
    else:
        dash, kind, body = m.group(4), m.group(5), m.group(6)
        plain = "{{" + dash + " " + body + "}}"
        target_tags = _PARAGRAPHS if kind == "p" else frozenset({T_SPAN})
    target = _ancestor(owner, target_tags)
    if target is None:
        # No such ancestor (a {%r %} outside any span): the plain tag stays where it is.
        value = m.string
        _set_text(el, is_tail, value[: m.start()] + plain + value[m.end() :])
        return True
    if m.group(2):
        if kind == "p":
            parent = target.getparent()
            if (
                parent is not None
                and parent.tag == T_LIST_ITEM
                and len([c for c in parent if isinstance(c.tag, str)]) == 1
            ):
                target = parent
        _place_instead(target, plain)
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


_EXPR = re.compile(r"\{\{(-|\+)?(.*?)(-|\+)?\}\}", re.DOTALL)


def _plain_expr(m: re.Match[str]) -> str:
    """Mark one expression to render as plain escaped text (outside paragraph text)."""
    whole = m.group(0)
    mark = _WHERE_MARK.search(whole)
    if mark:
        whole = _WHERE_MARK.sub("", whole)
        m2 = _EXPR.fullmatch(whole)
        assert m2 is not None
        m = m2
    body = m.group(2).strip()
    return (
        "{{"
        + (m.group(1) or "")
        + f" ck_plain({body}) "
        + (m.group(3) or "")
        + (mark.group(0) if mark else "")
        + "}}"
    )


def _mark_plain(root: etree._Element) -> None:
    """Step 4: expressions in attributes and outside paragraphs render as plain text."""

    def walk(el: etree._Element, in_para: bool) -> None:
        inside = in_para or el.tag in _PARAGRAPHS
        for name, value in el.attrib.items():
            if "{{" in value:
                el.set(name, _EXPR.sub(_plain_expr, value))
        if not inside and el.text and "{{" in el.text:
            el.text = _EXPR.sub(_plain_expr, el.text)
        for child in el:
            if isinstance(child.tag, str):
                walk(child, inside)
            if not inside and child.tail and "{{" in child.tail:
                child.tail = _EXPR.sub(_plain_expr, child.tail)

    walk(root, False)


# --------------------------------------------------------------------------------------------------
# docxtpl's cell tags: {% colspan n %}, {% cellbg color %}, {% vm %}, {% hm %}
#
# At compile time the tag leaves the paragraph and becomes private attributes on its cell
# (``ck:colspan``, ``ck:bg``, ``ck:vm``) holding Jinja expressions, and for vm/hm Jinja
# conditions around the cell. After the render, :func:`_fix_tables` turns the attributes into
# ODF: spans with their covered cells, automatic cell styles, row spans.

T_COVERED = _q("table", "covered-table-cell")
T_TABLE = _q("table", "table")
_ROW_GROUPS = frozenset(
    {_q("table", "table-header-rows"), _q("table", "table-rows"), _q("table", "table-row-group")}
)
A_COLS_SPANNED = _q("table", "number-columns-spanned")
A_ROWS_SPANNED = _q("table", "number-rows-spanned")
A_COLS_REPEATED = _q("table", "number-columns-repeated")
CK_COLSPAN = f"{{{CK_NS}}}colspan"
CK_BG = f"{{{CK_NS}}}bg"
CK_VM = f"{{{CK_NS}}}vm"
#: The widest span ``{% colspan %}``/``{% hm %}`` may ask for.
MAX_SPAN = 1000

_CELL_TAG = re.compile(r"\{%-?\s*(colspan|cellbg|vm|hm)\b(.*?)-?%\}", re.DOTALL)
_FIRST = "{% if loop is not defined or loop.first %}"


def _text_before(el: etree._Element, text: str) -> None:
    """Put ``text`` right before ``el`` (in its previous sibling's tail or its parent's text)."""
    prev = el.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + text
    else:
        parent = el.getparent()
        assert parent is not None
        parent.text = (parent.text or "") + text


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
        _remove_keep_tail(nxt)
    return span


def _find_cell_tags(
    root: etree._Element,
) -> list[tuple[etree._Element, list[tuple[str, str, str, str]]]]:
    """Take every cell tag out of the text; return the cells with their tags
    (kind, expression, paragraph mark, original text), in document order."""
    found: list[tuple[etree._Element, bool]] = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for is_tail in (False, True):
            value = el.tail if is_tail else el.text
            if value and "{%" in value and _CELL_TAG.search(value):
                found.append((el, is_tail))
    cells: dict[int, tuple[etree._Element, list[tuple[str, str, str, str]]]] = {}
    for el, is_tail in found:
        value = (el.tail if is_tail else el.text) or ""
        tags = list(_CELL_TAG.finditer(value))
        _set_text(el, is_tail, _CELL_TAG.sub("", value) or "")
        owner = el.getparent() if is_tail else el
        cell = _ancestor(owner, frozenset({T_CELL})) if owner is not None else None
        if cell is None:
            continue  # outside a table cell: the tag prints nothing, as in DOCX
        entry = cells.setdefault(id(cell), (cell, []))
        for m in tags:
            mark = _WHERE_MARK.search(m.group(2))
            expr = _WHERE_MARK.sub("", m.group(2)).strip()
            original = _WHERE_MARK.sub("", m.group(0))
            entry[1].append((m.group(1), expr, mark.group(0) if mark else "", original))
    return list(cells.values())


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
            _text_before(cell, _FIRST[:-2] + mark + "%}")
            covered.tail = "{% endif %}" + (cell.tail or "")
            cell.tail = "{% else %}"
            cell.addnext(covered)
        elif "hm" in by_kind:
            _text_before(cell, _FIRST[:-2] + by_kind["hm"][1] + "%}")
            cell.tail = "{% endif %}" + (cell.tail or "")
    return originals


def _with_ck(root: etree._Element) -> etree._Element:
    """``root`` with the private ``ck`` prefix declared (removed again after the render)."""
    if root.nsmap.get("ck") == CK_NS:
        return root
    nsmap = dict(root.nsmap)
    nsmap["ck"] = CK_NS
    new = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=nsmap)
    new.text = root.text
    for child in list(root):
        new.append(child)
    return new


def ck_span(value: Any) -> str:
    """``{% colspan %}``/``{% hm %}``: a column span, a whole number from 1 to MAX_SPAN."""
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        n = None
    if n is None or not 1 <= n <= MAX_SPAN:
        raise TemplateError(f"colspan: {value!r} is not a whole number from 1 to {MAX_SPAN}")
    return str(n)


_HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


def ck_color(value: Any) -> str:
    """``{% cellbg %}``: an RGB colour (``FF0000``, ``#ff0000``, ``f00``) or ``transparent``
    (``auto``, ``none``, or an empty value) as ODF writes it."""
    text = str(value).strip() if value is not None else ""
    if text.lower() in ("", "auto", "none", "transparent"):
        return "transparent"
    m = _HEX_COLOR.fullmatch(text)
    if m is None:
        raise TemplateError(f"cellbg: {value!r} is not a colour (write RGB hex, like FF0000)")
    digits = m.group(1).lower()
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return "#" + digits


def _with_namespaces(root: etree._Element) -> etree._Element:
    """``root`` with every namespace the rendered markup may use declared on it."""
    wanted = {p: NS[p] for p in ("office", "style", "text", "table", "draw", "fo", "xlink", "svg")}
    missing = {p: u for p, u in wanted.items() if u not in root.nsmap.values()}
    if not missing:
        return root
    nsmap = dict(root.nsmap)
    for prefix, uri in missing.items():
        if prefix in nsmap:  # the prefix is taken by another URI: keep the document's
            continue
        nsmap[prefix] = uri
    new = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=nsmap)
    new.text = root.text
    for child in list(root):
        new.append(child)
    return new


def preprocess_odf(xml: bytes, part: str) -> tuple[str, list[TagInfo]]:
    """Turn one ODF XML part into a Jinja source (steps 1 to 4) and its tag table."""
    root = parse_xml(xml, part=part)
    if b"{" not in xml:
        return "", []
    root = _with_namespaces(root)
    for number, el in enumerate(list(root.iter(T_P, T_H)), start=1):
        _join_split_tags(el, number)
    _apply_forms(root)
    cells = _find_cell_tags(root)
    originals: dict[str, str] = {}
    if cells:
        root = _with_ck(root)
        originals = _apply_cell_tags(cells)
    _mark_plain(root)
    serialized = etree.tostring(root, encoding="unicode")
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    source, tags = number_tags(head + serialized, part)
    if originals:
        tags = [_original_tag(tag, originals) for tag in tags]
    return source, tags


def _original_tag(tag: TagInfo, originals: dict[str, str]) -> TagInfo:
    """A tag generated for a cell tag, shown as the cell tag the author wrote."""
    if "ck_" not in tag.text:
        return tag
    for generated, original in originals.items():
        if generated in tag.text:
            return TagInfo(tag.where, original)
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
        for attr in (_q("text", "id"), "{http://www.w3.org/XML/1998/namespace}id"):
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
        paragraph = _ancestor(marker, _PARAGRAPHS)
        if paragraph is None:
            _remove_keep_tail(marker)
            continue
        page = marker.tag == f"{{{CK_NS}}}pb"
        new = _split_paragraph(marker, paragraph)
        if page and auto_styles is not None:
            style = paragraph.get(_q("text", "style-name"))
            if style not in page_styles:
                page_styles[style] = _page_break_style(auto_styles, style, len(page_styles))
            new.set(_q("text", "style-name"), page_styles[style])


def _page_break_style(auto_styles: etree._Element, base: str | None, n: int) -> str:
    name = f"ckPageBreak{n + 1}"
    existing = None
    if base is not None:
        for st in auto_styles.iterchildren(_q("style", "style")):
            if st.get(_q("style", "name")) == base:
                existing = st
                break
    if existing is not None:
        style = copy.deepcopy(existing)
        style.set(_q("style", "name"), name)
    else:
        style = etree.SubElement(auto_styles, _q("style", "style"))
        style.set(_q("style", "name"), name)
        style.set(_q("style", "family"), "paragraph")
        if base is not None:
            style.set(_q("style", "parent-style-name"), base)
    props = style.find(_q("style", "paragraph-properties"))
    if props is None:
        props = etree.Element(_q("style", "paragraph-properties"))
        style.insert(0, props)
    props.set(_q("fo", "break-before"), "page")
    if style.getparent() is None:
        auto_styles.append(style)
    return name


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
    names = {st.get(_q("style", "name")) for st in auto}
    n = len(cache) + 1
    while f"ckCell{n}" in names:
        n += 1
    name = f"ckCell{n}"
    existing = None
    if base is not None:
        for st in auto.iterchildren(_q("style", "style")):
            if st.get(_q("style", "name")) == base:
                existing = st
                break
    if existing is not None:
        style = copy.deepcopy(existing)
        style.tail = None
        style.set(_q("style", "name"), name)
        style.attrib.pop(_q("style", "display-name"), None)
    else:
        style = etree.Element(_q("style", "style"))
        style.set(_q("style", "name"), name)
        style.set(_q("style", "family"), "table-cell")
        if base is not None:  # a common style: automatic styles may derive from those
            style.set(_q("style", "parent-style-name"), base)
    props = style.find(_q("style", "table-cell-properties"))
    if props is None:
        props = etree.Element(_q("style", "table-cell-properties"))
        style.insert(0, props)
    for image in props.findall(_q("style", "background-image")):
        props.remove(image)
    props.set(_q("fo", "background-color"), color)
    auto.append(style)
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
        table = _ancestor(el, frozenset({T_TABLE}))
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
            base = el.get(_q("table", "style-name"))
            el.set(_q("table", "style-name"), _cell_bg_style(auto, styles, base, color))
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


def _fit_columns(table: etree._Element, grids: list[list[etree._Element]]) -> None:
    """Declare as many columns as the widest row now has (a span may have widened a row)."""
    width = max((len(g) for g in grids), default=0)
    columns = [c for c in table.iter(_q("table", "table-column")) if _owner_table(c) is table]
    declared = 0
    for col in columns:
        try:
            declared += max(1, int(col.get(A_COLS_REPEATED, "1")))
        except ValueError:
            declared += 1
    if columns and width > declared:
        last = columns[-1]
        try:
            repeat = max(1, int(last.get(A_COLS_REPEATED, "1")))
        except ValueError:
            repeat = 1
        last.set(A_COLS_REPEATED, str(repeat + width - declared))


def _owner_table(el: etree._Element) -> etree._Element | None:
    return _ancestor(el, frozenset({T_TABLE}))


def _text_style_xml(name: str, key: StyleKey) -> etree._Element:
    bold, italic, underline, strike, color, size_pt, font = key
    el = etree.Element(_q("style", "style"))
    el.set(_q("style", "name"), name)
    el.set(_q("style", "family"), "text")
    props = etree.SubElement(el, _q("style", "text-properties"))
    # True sets the property, False clears what the enclosing style may set, None inherits.
    if bold is not None:
        for ns, local in (("fo", "font-weight"), ("style", "font-weight-asian")):
            props.set(_q(ns, local), "bold" if bold else "normal")
        props.set(_q("style", "font-weight-complex"), "bold" if bold else "normal")
    if italic is not None:
        for ns, local in (("fo", "font-style"), ("style", "font-style-asian")):
            props.set(_q(ns, local), "italic" if italic else "normal")
        props.set(_q("style", "font-style-complex"), "italic" if italic else "normal")
    if underline is not None:
        props.set(_q("style", "text-underline-style"), "solid" if underline else "none")
        if underline:
            props.set(_q("style", "text-underline-width"), "auto")
            props.set(_q("style", "text-underline-color"), "font-color")
    if strike is not None:
        props.set(_q("style", "text-line-through-style"), "solid" if strike else "none")
    if color:
        props.set(_q("fo", "color"), f"#{color}")
    if size_pt:
        size = f"{size_pt:g}pt"
        props.set(_q("fo", "font-size"), size)
        props.set(_q("style", "font-size-asian"), size)
        props.set(_q("style", "font-size-complex"), size)
    if font:
        props.set(_q("style", "font-name"), font)
        props.set(_q("fo", "font-family"), font)
    return el


def _auto_styles(root: etree._Element) -> etree._Element:
    found = root.find(_q("office", "automatic-styles"))
    if found is not None:
        return found
    el = etree.Element(_q("office", "automatic-styles"))
    # automatic-styles comes after font-face-decls/styles and before master-styles/body.
    anchor = None
    for name in ("master-styles", "body"):
        anchor = root.find(_q("office", name))
        if anchor is not None:
            break
    if anchor is not None:
        anchor.addprevious(el)
    else:
        root.append(el)
    return el


def postprocess_odf(
    rendered: str,
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
        root = etree.fromstring(rendered.encode("utf-8"), parser=_OUT_PARSER)
    except etree.XMLSyntaxError as exc:
        raise TemplateError(
            f"{where_prefix(template)}, {part}: the rendered XML is not well-formed ({exc}); "
            "check that block tags are balanced inside one paragraph, or use the "
            "{%p %} / {%tr %} / {%tc %} forms around paragraphs, rows and cells"
        ) from exc
    changed = False
    auto = None
    markers = CK_NS in rendered
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
        existing = {st.get(_q("style", "name")) for st in auto}
        for style, name in state.styles.items():
            if name not in existing:
                auto.append(_text_style_xml(name, style))
        changed = True
    if changed:
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return rendered.encode("utf-8")


_OUT_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
)

# --------------------------------------------------------------------------------------------------
# The engine

_TEXT_PARTS = ("content.xml", "styles.xml", "meta.xml")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@attrs.frozen
class _CompiledOdf:
    flat: bool
    #: Members of the package in their order, with bytes for the ones not rendered.
    members: tuple[tuple[str, bytes | None, int], ...]
    parts: dict[str, CompiledPart]


class OdtEngine(TemplateEngine):
    """Renders LibreOffice Writer ``.odt`` and flat ``.fodt`` templates (docxtpl dialect).

    Options: ``strict`` (bool): an undefined name is a TemplateError.
    """

    name = "odt"
    suffixes = {".odt": "odt", ".fodt": "fodt"}

    def __init__(
        self,
        *,
        cache_size: int = 64,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        time_limit_s: float = MAX_RENDER_SECONDS,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.time_limit_s = time_limit_s
        self._cache: LRU[tuple[str, bool], _CompiledOdf] = LRU(cache_size)
        self._envs = {strict: self._make_env(strict) for strict in (False, True)}

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def _make_env(self, strict: bool) -> jinja2.Environment:
        env = make_environment(autoescape=True, strict=strict)
        env.finalize = _finalize_text
        env.globals["ck_plain"] = _plain
        env.globals["ck_span"] = ck_span
        env.globals["ck_color"] = ck_color
        return env

    # -- compile ------------------------------------------------------------------------------
    def _compile(self, template: Template, *, strict: bool) -> _CompiledOdf:
        key = (template.content_hash, strict)
        found = self._cache.get(key)
        if found is not None:
            return found
        env = self._envs[strict]
        flat = template.format == "fodt"
        parts: dict[str, CompiledPart] = {}
        members: list[tuple[str, bytes | None, int]] = []
        if flat:
            sources = {"document": template.source}
            members.append(("document", None, zipfile.ZIP_STORED))
        else:
            sources = {}
            files = read_zip(template.source)
            with zipfile.ZipFile(io.BytesIO(template.source)) as zf:
                order = [i for i in zf.infolist() if not i.filename.endswith("/")]
            if "content.xml" not in files:
                raise UnsafeDocument(
                    f"{where_prefix(template)}: not an ODF package (no content.xml)"
                )
            for info in order:
                name = info.filename
                if name in _TEXT_PARTS:
                    sources[name] = files[name]
                    members.append((name, files[name], info.compress_type))
                else:
                    members.append((name, files[name], info.compress_type))
        for part, xml in sources.items():
            try:
                source, tags = preprocess_odf(xml, part)
            except _Unclosed as exc:
                raise TemplateError(
                    f"{where_prefix(template)}, {exc.part}"
                    + (f", {exc.where}" if exc.where else "")
                    + f": the tag starting {exc.text!r} is not closed in the same paragraph"
                ) from None
            if not source:
                continue
            parts[part] = compile_part(env, template, part, source, tags)
        compiled = _CompiledOdf(flat, tuple(members), parts)
        self._cache.put(key, compiled)
        return compiled

    def check(self, template: Template) -> None:
        self._compile(template, strict=False)

    def variables(self, template: Template) -> frozenset[str]:
        compiled = self._compile(template, strict=False)
        env = self._envs[False]
        names: set[str] = set()
        for part in compiled.parts.values():
            names |= undeclared_variables(env, part.source)
        return frozenset(names)

    # -- render -------------------------------------------------------------------------------
    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        strict = bool((options or {}).get("strict"))
        compiled = self._compile(template, strict=strict)
        budget = OutputBudget(self.max_output_bytes)
        images: dict[str, Image] = {}
        outputs: dict[str, bytes] = {}
        with render_scope(locale, time_limit_s=self.time_limit_s):
            for part, cpart in compiled.parts.items():
                state = _RenderState(flat=compiled.flat, styles={}, images=images)
                token = _STATE.set(state)
                try:
                    rendered = render_part(cpart, template, data, budget)
                finally:
                    _STATE.reset(token)
                check_deadline()
                outputs[part] = postprocess_odf(
                    rendered,
                    part,
                    template,
                    state,
                    add_styles=part != "meta.xml",
                    budget=budget,
                )
        if compiled.flat:
            return RenderedDocument(outputs["document"], template.format)
        return RenderedDocument(self._package(compiled, outputs, images), template.format)

    def _package(
        self, compiled: _CompiledOdf, outputs: dict[str, bytes], images: dict[str, Image]
    ) -> bytes:
        buf = io.BytesIO()
        members = list(compiled.members)
        names = [m[0] for m in members]
        if "mimetype" in names:
            members.sort(key=lambda m: m[0] != "mimetype")
        with zipfile.ZipFile(buf, "w") as zf:
            for name, content, compress in members:
                if name == "mimetype":
                    info = zipfile.ZipInfo(name, _FIXED_TIME)
                    info.compress_type = zipfile.ZIP_STORED
                    zf.writestr(info, content or b"")
                    continue
                body = outputs.get(name, content) or b""
                if name == "META-INF/manifest.xml" and images:
                    body = _manifest_with(body, images)
                info = zipfile.ZipInfo(name, _FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                zf.writestr(info, body)
            for path, image in sorted(images.items()):
                if path in names:
                    continue
                info = zipfile.ZipInfo(path, _FIXED_TIME)
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, image.data)
        return buf.getvalue()


def _manifest_with(manifest: bytes, images: dict[str, Image]) -> bytes:
    root = parse_xml(manifest, part="META-INF/manifest.xml")
    have = {e.get(_q("manifest", "full-path")) for e in root}
    for path, image in sorted(images.items()):
        if path in have:
            continue
        entry = etree.SubElement(root, _q("manifest", "file-entry"))
        entry.set(_q("manifest", "full-path"), path)
        entry.set(_q("manifest", "media-type"), image.media_type)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# --------------------------------------------------------------------------------------------------
# Value rendering (finalize)


def _safe(xml: str) -> Markup:
    """Mark XML this module built (every value in it escaped) as safe for autoescape."""
    return Markup(xml)  # noqa: S704  # built by the escaping helpers above


def _plain(value: Any) -> Markup:
    """A value as plain escaped text (attributes, document properties)."""
    if isinstance(value, Markup):
        return _safe(clean_xml_text(str(value)))
    if is_rich_candidate(value):
        rich = parse_rich(value)
        if rich is not None:
            return _safe(escape_plain(plain_text(rich)))
    return _safe(escape_plain(str(value)))


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
