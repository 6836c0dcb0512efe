"""Finding Jinja tags in office text: one brace-aware scanner, docxtpl's tag families, and the
joining of tags that Word or LibreOffice split over several runs.

The scanner reads a tag the way Jinja's lexer does: ``}}`` or ``%}`` inside a string literal or
inside ``{...}`` (a dict) does not end it, so ``{{ {"a": {"b": 7}}["a"]["b"] }}`` is one tag in
every engine. Typographic quotes count as quotes (:data:`~convkit.office.xml.TAG_TYPOGRAPHY`).

docxtpl's families, recognised by :func:`parse_tag`:

=====================  =====================================================================
``{%p ... %}``          the tag replaces its whole paragraph (``{%tr %}`` its table row,
                        ``{%tc %}`` its cell, ``{%r %}`` its run)
``{{p x }}``            ``x`` becomes the whole paragraph; ``{{r x }}`` the whole run
``{% vm %}``            merge the cell with its copies below (vertical merge in a row loop)
``{% hm %}``            merge the cell's copies in a cell loop into one (horizontal merge)
``{% cellbg c %}``      the cell's background colour
``{% colspan n %}``     the cell spans ``n`` columns
=====================  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

from convkit.errors import TemplateError
from convkit.office.xml import TAG_TYPOGRAPHY

__all__ = [
    "CELL_TAGS",
    "FAMILIES",
    "MAX_SPAN",
    "Tag",
    "TagMatch",
    "UnclosedTag",
    "cell_color",
    "cell_span",
    "has_tag",
    "join_split_tags",
    "parse_tag",
    "scan_tags",
    "sub_tags",
]

#: docxtpl's element families: the XML element a ``{%x %}`` tag stands for.
FAMILIES = ("p", "tr", "tc", "r")
#: docxtpl's cell tags (``{% vm %}``, ...).
CELL_TAGS = ("colspan", "cellbg", "vm", "hm")

_OPEN = re.compile(r"\{[{%#]")
_CLOSE = {"{": "}}", "%": "%}", "#": "#}"}
_FAMILY = re.compile(r"(p|tr|tc|r)\s")
_CELL = re.compile(r"\s*(colspan|cellbg|vm|hm)\b")


@attrs.frozen
class TagMatch:
    """One tag found in a text: ``text[start:end]``."""

    start: int
    end: int
    text: str


class UnclosedTag(ValueError):
    """A tag in serialized XML runs into markup: it is not closed in its paragraph or cell."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _tag_end(text: str, start: int, markup: bool) -> int:
    """Where the tag opening at ``start`` ends (after its closing delimiter); -1 if it does not,
    -2 if it runs into markup (``markup``: ``text`` is serialized XML, where ``<`` is markup)."""
    kind = text[start + 1]
    close = _CLOSE[kind]
    end = len(text)
    if markup:
        lt = text.find("<", start)
        end = end if lt < 0 else lt
    if kind == "#":
        found = text.find(close, start + 2, end)
        return found + 2 if found >= 0 else (-2 if end < len(text) else -1)
    depth = 0
    quote = ""
    i = start + 2
    while i < end:
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif depth == 0 and text.startswith(close, i):
            return i + 2
        elif ch in "{[(":
            depth += 1
        elif ch in "}])" and depth:
            depth -= 1
        i += 1
    return -2 if end < len(text) else -1


def scan_tags(text: str, *, markup: bool = False) -> list[TagMatch]:
    """Every whole ``{{ }}``, ``{% %}`` and ``{# #}`` tag of ``text``, in order. An opening
    delimiter with no end is not a tag (Jinja reports it when the template compiles).

    :param markup: ``text`` is serialized XML, where a tag cannot contain ``<``.
    :raises UnclosedTag: (``markup``) a tag runs into markup.
    """
    if "{" not in text:
        return []
    plain = text.translate(TAG_TYPOGRAPHY)
    found: list[TagMatch] = []
    pos = 0
    while (m := _OPEN.search(plain, pos)) is not None:
        end = _tag_end(plain, m.start(), markup)
        if end == -2:
            raise UnclosedTag(text[m.start() : plain.find("<", m.start())])
        if end < 0:
            pos = m.start() + 1
            continue
        found.append(TagMatch(m.start(), end, text[m.start() : end]))
        pos = end
    return found


def sub_tags(text: str, replace: Callable[[TagMatch], str]) -> str:
    """``text`` with each whole tag replaced by ``replace(tag)``."""
    out: list[str] = []
    pos = 0
    for m in scan_tags(text):
        out.append(text[pos : m.start])
        out.append(replace(m))
        pos = m.end
    out.append(text[pos:])
    return "".join(out)


def has_tag(text: str) -> bool:
    """Whether ``text`` holds at least one whole tag."""
    return bool(scan_tags(text))


@attrs.frozen
class Tag:
    """A tag's parts: ``{`` + kind + open_ws + [family] + body + close_ws + close.

    ``kind`` is ``{`` (expression), ``%`` (statement) or ``#`` (comment); ``open_ws`` and
    ``close_ws`` are Jinja's whitespace control (``-``/``+`` or empty); ``family`` is docxtpl's
    ``p``/``tr``/``tc``/``r`` or empty; ``cell`` names a cell tag (``vm``, ``colspan``, ...),
    whose argument is ``body`` after the name (:attr:`argument`).
    """

    kind: str
    family: str
    body: str
    open_ws: str = ""
    close_ws: str = ""
    cell: str = ""

    def plain(self, body: str | None = None) -> str:
        """The tag without its family (``{%tr for x in y %}`` -> ``{% for x in y %}``), its body
        optionally replaced."""
        close = _CLOSE[self.kind]
        inner = self.body if body is None else body
        return "{" + self.kind + self.open_ws + " " + inner + " " + self.close_ws + close

    @property
    def argument(self) -> str:
        """A cell tag's argument: ``{% cellbg r.color %}`` -> ``r.color``."""
        m = _CELL.match(self.body)
        return self.body[m.end() :].strip() if m else ""


def parse_tag(text: str) -> Tag:
    """Split a whole tag (as :func:`scan_tags` found it, typography already normalised)."""
    kind = text[1]
    inner = text[2:-2]
    open_ws = inner[:1] if inner[:1] in ("-", "+") else ""
    inner = inner[len(open_ws) :]
    close_ws = inner[-1:] if kind != "#" and inner[-1:] == "-" else ""
    inner = inner[: len(inner) - len(close_ws)]
    family = ""
    m = _FAMILY.match(inner)
    if m is not None and (kind != "{" or m.group(1) in ("p", "r")):
        family = m.group(1)
        inner = inner[m.end() :]
    cell = ""
    if kind == "%" and not family and (c := _CELL.match(inner)) is not None:
        cell = c.group(1)
    return Tag(kind, family, inner.strip(), open_ws, close_ws, cell)


#: The widest span ``{% colspan %}``/``{% hm %}`` may ask for.
MAX_SPAN = 1000
_HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


def cell_span(value: object) -> int:
    """``{% colspan n %}``/``{% hm %}``: ``n`` as a column span.

    :raises TemplateError: not a whole number from 1 to :data:`MAX_SPAN`.
    """
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    if n is None or not 1 <= n <= MAX_SPAN:
        raise TemplateError(f"colspan: {value!r} is not a whole number from 1 to {MAX_SPAN}")
    return n


def cell_color(value: object) -> str | None:
    """``{% cellbg c %}``: ``c`` as ``RRGGBB`` (upper case), None for no background (``auto``,
    ``none``, ``transparent`` or empty).

    :raises TemplateError: not an RGB hex colour (``FF0000``, ``#ff0000``, ``f00``).
    """
    text = str(value).strip() if value is not None else ""
    if text.lower() in ("", "auto", "none", "transparent"):
        return None
    m = _HEX_COLOR.fullmatch(text)
    if m is None:
        raise TemplateError(f"cellbg: {value!r} is not a colour (write RGB hex, like FF0000)")
    digits = m.group(1).upper()
    return digits if len(digits) == 6 else "".join(c * 2 for c in digits)


def join_split_tags(
    texts: list[str],
    replace: Callable[[TagMatch], str],
    fixed: frozenset[int] = frozenset(),
) -> tuple[list[str], list[tuple[int, TagMatch]], set[int]]:
    """Make whole again the tags of a paragraph that its runs split.

    ``texts`` are the paragraph's text pieces in order (``w:t`` texts; ODF texts and tails);
    each tag of their concatenation moves into the piece it starts in, as ``replace(tag)``, and
    leaves the pieces after; the literal text stays in its own pieces, so formatting, proofing
    marks and bookmarks between the pieces do not matter. Pieces in ``fixed`` stand for
    characters of an element (``text:s``, ``text:tab``) and cannot be edited.

    Returns the new texts, (piece index, tag) of each tag, and the fixed pieces that lay wholly
    inside a tag (their elements should go).
    """
    joined = "".join(texts)
    matches = scan_tags(joined)
    if not matches:
        return texts, [], set()
    bounds: list[tuple[int, int]] = []
    pos = 0
    for text in texts:
        bounds.append((pos, pos + len(text)))
        pos += len(text)
    pieces: list[list[str]] = [[] for _ in texts]
    swallowed: set[int] = set()
    placed: list[tuple[int, TagMatch]] = []

    def literal(start: int, end: int) -> None:
        for i, (lo, hi) in enumerate(bounds):
            lo, hi = max(start, lo), min(end, hi)
            if lo < hi and i not in fixed:
                pieces[i].append(joined[lo:hi])

    cursor = 0
    for match in matches:
        literal(cursor, match.start)
        cursor = match.end
        home = next(
            i for i, (lo, hi) in enumerate(bounds) if lo <= match.start < hi and i not in fixed
        )
        pieces[home].append(replace(match))
        placed.append((home, match))
        swallowed.update(
            i for i in fixed if match.start <= bounds[i][0] and bounds[i][1] <= match.end
        )
    literal(cursor, len(joined))
    return ["".join(p) for p in pieces], placed, swallowed
