"""The XLSX engine: Jinja2 in the cells of an Excel workbook, worked on the XML directly.

A cell whose text (shared or inline string) holds ``{{ }}``/``{% %}`` is a template cell:

* A cell that is exactly one ``{{ expr }}`` becomes a typed cell: a JSON number a number, a
  boolean a boolean, an ISO 8601 date or date-time string (``2026-01-15``,
  ``2026-01-15T09:30:00``) an Excel date serial (the cell keeps its style if that style shows a
  date, else it gets a copy of its style with a date format), ``null``/undefined an empty cell,
  anything else text.
* Any other template cell renders to text (an inline string).
* Text is always text: a value ``=WEBSERVICE("...")`` is stored as a string, never a formula.

``{%tr ... %}`` in any cell of a row replaces that row with the plain tag, so::

    row 5:  {%tr for item in items %}
    row 6:  {{ item.name }} | {{ item.qty }} | =B6*C6
    row 7:  {%tr endfor %}

repeats row 6 (styles, heights, its formulas re-pointed at each copy's own row) once per item;
the control rows disappear and everything below moves: row numbers, cell references, merged
cells (a merge inside a repeated row is repeated), the ``dimension``, conditional formats, data
validations, hyperlinks, print areas and other defined names of the sheet, and same-sheet
references in formulas (a range over a repeated row grows to cover every copy). Cached formula
values are dropped and the workbook is marked for a full recalculation on load.
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import math
import re
from collections.abc import Iterable
from typing import Any

import attrs
import jinja2
from lxml import etree
from markupsafe import Markup

from convkit.errors import TemplateError, UnsafeDocument
from convkit.office.engine import OfficeEngine
from convkit.office.package import (
    Member,
    read_package,
    relationships,
    write_package,
    xml_bytes,
)
from convkit.office.parts import CompiledPart, OutputBudget, SourceBuilder, TagInfo
from convkit.office.safezip import parse_xml
from convkit.office.tags import parse_tag, scan_tags
from convkit.office.xml import (
    NAMESPACES,
    clean_xml_text,
    escape_plain,
    normalize_tag,
    plain_xml,
    qn,
    with_namespaces,
)
from convkit.ports import Template
from convkit.templating.errors import where
from convkit.templating.rich import is_rich_candidate, parse_rich, plain_text
from convkit.templating.scope import check_deadline

__all__ = ["XlsxEngine"]

CK = NAMESPACES["ck"]
XML_NS = NAMESPACES["xml"]


def _m(local: str) -> str:
    return qn("x:" + local)


_CELL_REF = re.compile(r"^([A-Z]{1,3})(\d+)$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_EPOCH = dt.datetime(1899, 12, 30)
# Built-in number formats that show dates or times.
_DATE_FMT_IDS = frozenset({14, 15, 16, 17, 18, 19, 20, 21, 22, 45, 46, 47})


# --------------------------------------------------------------------------------------------------
# Values


def _value_markup(value: Any) -> Markup:
    """What a whole-cell ``{{ expr }}`` produces: a typed marker the post-processing turns into
    the cell's type and value."""
    if isinstance(value, jinja2.Undefined):
        text = str(value)  # raises under strict mode
        return _safe("<ck:e/>" if not text else f"<ck:s>{escape_plain(text)}</ck:s>")
    if value is None:
        return _safe("<ck:e/>")
    if isinstance(value, bool):
        return _safe(f"<ck:b>{int(value)}</ck:b>")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return _safe(f"<ck:s>{value}</ck:s>")
        return _safe(f"<ck:n>{value!r}</ck:n>")
    if isinstance(value, dt.datetime | dt.date):
        return _date_markup(value)
    if isinstance(value, str):
        stripped = value.strip()
        if _ISO_DATE.match(stripped) or _ISO_DATETIME.match(stripped):
            try:
                parsed: dt.date = (
                    dt.date.fromisoformat(stripped)
                    if len(stripped) == 10
                    else dt.datetime.fromisoformat(stripped.replace(" ", "T"))
                )
            except ValueError:
                parsed = None  # type: ignore[assignment]
            if parsed is not None:
                return _date_markup(parsed)
        return _safe(f"<ck:s>{escape_plain(value)}</ck:s>")
    if isinstance(value, Markup):
        return _safe(f"<ck:s>{clean_xml_text(str(value))}</ck:s>")
    if is_rich_candidate(value):
        rich = parse_rich(value)
        if rich is not None:
            return _safe(f"<ck:s>{escape_plain(plain_text(rich))}</ck:s>")
    return _safe(f"<ck:s>{escape_plain(str(value))}</ck:s>")


def _date_markup(value: dt.date) -> Markup:
    if isinstance(value, dt.datetime):
        naive = value.replace(tzinfo=None)
        delta = naive - _EPOCH
        serial = delta.days + delta.seconds / 86400 + delta.microseconds / 86400e6
        return _safe(f'<ck:d time="1">{serial!r}</ck:d>')
    days = (value - _EPOCH.date()).days
    return _safe(f"<ck:d>{days}</ck:d>")


def _finalize(value: Any) -> Any:
    """``{{ }}`` inside a text cell: escaped text (rich content as its plain text)."""
    return _safe(plain_xml(value))


def _safe(xml: str) -> Markup:
    return Markup(xml)  # noqa: S704  # every value in it went through escape_plain


# --------------------------------------------------------------------------------------------------
# References


def col_index(col: str) -> int:
    n = 0
    for ch in col:
        n = n * 26 + ord(ch) - 64
    return n


def col_name(n: int) -> str:
    out = ""
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


@attrs.define
class RowMap:
    """Where the rows of the template sheet ended up in the rendered sheet."""

    present: list[int]  # row numbers the template sheet has, sorted
    first: dict[int, int] = attrs.field(factory=dict)
    last: dict[int, int] = attrs.field(factory=dict)
    emitted: list[int] = attrs.field(factory=list)  # sorted template rows that were emitted

    def _implicit_between(self, a: int, b: int) -> int:
        """Row numbers strictly between a and b that the template sheet does not hold."""
        if b - a <= 1:
            return 0
        lo = bisect.bisect_right(self.present, a)
        hi = bisect.bisect_left(self.present, b)
        return (b - a - 1) - (hi - lo)

    def position(self, row: int, *, end: bool = False) -> int:
        """New number of template row ``row`` (its last copy with ``end``)."""
        if row in self.first:
            return self.last[row] if end else self.first[row]
        i = bisect.bisect_right(self.emitted, row) - 1
        if i < 0:
            return self._implicit_between(0, row) + 1
        src = self.emitted[i]
        return self.last[src] + 1 + self._implicit_between(src, row)

    def ref(self, ref: str, *, end: bool = False, own: tuple[int, int] | None = None) -> str:
        """Map one cell reference (``$B$7``); ``own`` = (template row, new row) of the cell the
        reference is in, so a copy's references to its own template row point at itself."""
        m = _REF_PARTS.match(ref)
        if not m:
            return ref
        dollar_c, col, dollar_r, row_s = m.groups()
        row = int(row_s)
        new = own[1] if own is not None and row == own[0] else self.position(row, end=end)
        return f"{dollar_c}{col}{dollar_r}{new}"

    def range(self, ref: str, own: tuple[int, int] | None = None) -> str:
        if ":" in ref:
            a, b = ref.split(":", 1)
            return f"{self.ref(a, own=own)}:{self.ref(b, end=True, own=own)}"
        return self.ref(ref, own=own)


_REF_PARTS = re.compile(r"^(\$?)([A-Z]{1,3})(\$?)(\d+)$")
# A cell or range reference in a formula, not preceded by a sheet name, a letter or a quote.
_FORMULA_REF = re.compile(
    r"(?<![A-Za-z0-9_.!$'\"])(\$?[A-Z]{1,3}\$?\d+)(?::(\$?[A-Z]{1,3}\$?\d+))?(?![A-Za-z0-9_(!])"
)
_STRING_LIT = re.compile(r'"(?:[^"]|"")*"')


def shift_formula(formula: str, rows: RowMap, own: tuple[int, int] | None) -> str:
    """Re-point the same-sheet references of ``formula`` (string literals left alone)."""

    def refs(part: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(2):
                return f"{rows.ref(m.group(1), own=own)}:{rows.ref(m.group(2), end=True, own=own)}"
            return rows.ref(m.group(1), own=own)

        return _FORMULA_REF.sub(sub, part)

    out: list[str] = []
    pos = 0
    for lit in _STRING_LIT.finditer(formula):
        out.append(refs(formula[pos : lit.start()]))
        out.append(lit.group(0))
        pos = lit.end()
    out.append(refs(formula[pos:]))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Compile


@attrs.frozen
class _Sheet:
    path: str
    name: str
    part: CompiledPart | None
    present: tuple[int, ...]


@attrs.frozen
class _CompiledXlsx:
    members: tuple[Member, ...]
    sheets: tuple[_Sheet, ...]
    #: numFmtId per cellXfs index, and which custom numFmt ids show dates.
    xf_formats: tuple[int, ...]
    date_fmt_ids: frozenset[int]


def _shared_strings(files: dict[str, bytes], path: str | None) -> list[str]:
    if not path or path not in files:
        return []
    root = parse_xml(files[path], part=path)
    out = []
    for si in root.iter(_m("si")):
        out.append("".join(t.text or "" for t in si.iter(_m("t")) if _not_phonetic(t)))
    return out


def _not_phonetic(t: etree._Element) -> bool:
    parent = t.getparent()
    return parent is None or parent.tag != _m("rPh")


def _cell_text(c: etree._Element, shared: list[str]) -> str | None:
    t = c.get("t")
    if t == "s":
        v = c.find(_m("v"))
        try:
            return shared[int(v.text or "")] if v is not None else None
        except (ValueError, IndexError):
            return None
    if t == "inlineStr":
        is_ = c.find(_m("is"))
        if is_ is None:
            return None
        return "".join(x.text or "" for x in is_.iter(_m("t")) if _not_phonetic(x))
    if t == "str":
        v = c.find(_m("v"))
        return v.text if v is not None and c.find(_m("f")) is None else None
    return None


def _cell_source(text: str, place: str, built: SourceBuilder) -> None:
    """A text cell's content as Jinja source: literal parts escaped, each tag on its line."""
    pos = 0
    for m in scan_tags(text):
        built.literal(escape_plain(text[pos : m.start]))
        built.tag(normalize_tag(m.text), TagInfo(place, normalize_tag(m.text)))
        pos = m.end
    built.literal(escape_plain(text[pos:]))


def _is_template(text: str | None) -> bool:
    return text is not None and "{" in text and bool(scan_tags(text))


_XMLNS = re.compile(r' xmlns(?::([\w.-]+))?="([^"]*)"')


def _fragment(el: etree._Element, root_ns: set[tuple[str | None, str]]) -> str:
    """``el`` serialized without the namespace declarations its document root already has."""
    xml = etree.tostring(el, encoding="unicode", with_tail=False)
    return _XMLNS.sub(lambda m: "" if (m.group(1), m.group(2)) in root_ns else m.group(0), xml)


def _compile_sheet(
    env: jinja2.Environment,
    template: Template,
    path: str,
    name: str,
    xml: bytes,
    shared: list[str],
) -> _Sheet:
    root = parse_xml(xml, part=path)
    data = root.find(_m("sheetData"))
    if data is None:
        return _Sheet(path, name, None, ())
    rows = [r for r in data if r.tag == _m("row")]
    present: list[int] = []
    for i, row in enumerate(rows):
        try:
            present.append(int(row.get("r") or 0) or (present[-1] + 1 if present else i + 1))
        except ValueError:
            present.append(present[-1] + 1 if present else i + 1)
        row.set("r", str(present[-1]))
    if not any(_is_template(_cell_text(c, shared)) for row in rows for c in row):
        return _Sheet(path, name, None, tuple(present))
    # A root that also declares the marker namespace the rendered cells use.
    root = with_namespaces(root, {"ck": CK})
    built = SourceBuilder()
    built.literal('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>')
    for rnum, row in zip(present, rows, strict=True):
        row.set(f"{{{CK}}}src", str(rnum))
        data.remove(row)
    data.text = "\ue0ff"
    head, tail = etree.tostring(root, encoding="unicode").split("\ue0ff")
    built.literal(head)
    for rnum, row in zip(present, rows, strict=True):
        _row_source(row, rnum, root, shared, built)
    built.literal(tail)
    part = built.compile(env, template, path, f"sheet {name!r}")
    return _Sheet(path, name, part, tuple(present))


def _row_source(
    row: etree._Element,
    rnum: int,
    root: etree._Element,
    shared: list[str],
    built: SourceBuilder,
) -> None:
    """One row as Jinja source: a row holding a ``{%tr %}`` tag becomes that tag (plain), any
    other row keeps its XML with its template cells rendered."""
    cells = [(c, _cell_text(c, shared)) for c in row if c.tag == _m("c")]
    for c, text in cells:
        for m in scan_tags(text or ""):
            tag = parse_tag(normalize_tag(m.text))
            if tag.family == "tr":
                built.tag(tag.plain(), TagInfo(f"cell {c.get('r') or '?'}", normalize_tag(m.text)))
                return
    # The row element with its cells rendered one by one.
    root_ns = {(p, u) for p, u in root.nsmap.items()}
    shell = etree.Element(row.tag, attrib=dict(row.attrib), nsmap=root.nsmap)
    shell.text = "\ue0ff"
    open_tag, close_tag = _fragment(shell, root_ns).split("\ue0ff")
    built.literal(open_tag)
    for child in row:
        text = _cell_text(child, shared) if child.tag == _m("c") else None
        if not _is_template(text):
            built.literal(_fragment(child, root_ns))
            continue
        assert text is not None
        ref = child.get("r") or f"?{rnum}"
        attrs_ = "".join(
            f' {k}="{escape_plain(v)}"' for k, v in child.attrib.items() if k in ("r", "s")
        )
        place = f"cell {ref}"
        built.literal(f"<c{attrs_}>")
        found = scan_tags(text)
        only = parse_tag(normalize_tag(found[0].text)) if len(found) == 1 else None
        if only is not None and only.kind == "{" and not text.replace(found[0].text, "").strip():
            # Exactly one {{ expr }}: a typed cell.
            typed = "{{" + only.open_ws + f"\n ck_value(({only.body})) " + only.close_ws + "}}"
            built.jinja(typed, TagInfo(place, normalize_tag(found[0].text)))
        else:
            built.literal("<ck:s>")
            _cell_source(text, place, built)
            built.literal("</ck:s>")
        built.literal("</c>")
    built.literal(close_tag)


def _is_date_format(code: str) -> bool:
    code = re.sub(r'"[^"]*"|\\.|\[[^\]]*\]', "", code).lower()
    return any(ch in code for ch in "dmyh") and "general" not in code


# --------------------------------------------------------------------------------------------------
# Post-process one rendered sheet


@attrs.define
class _Styles:
    """Cell styles added during one render (date formats for date values)."""

    xf_formats: tuple[int, ...]
    date_fmt_ids: frozenset[int]
    added: dict[tuple[int, bool], int] = attrs.field(factory=dict)

    def date_style(self, base: int, time: bool) -> int:
        fmt = self.xf_formats[base] if 0 <= base < len(self.xf_formats) else 0
        if fmt in _DATE_FMT_IDS or fmt in self.date_fmt_ids:
            return base
        key = (base, time)
        if key not in self.added:
            self.added[key] = len(self.xf_formats) + len(self.added)
        return self.added[key]


def _post_sheet(
    rendered: bytes, template: Template, sheet: _Sheet, styles: _Styles
) -> tuple[bytes, RowMap]:
    try:
        root = etree.fromstring(rendered, parser=_OUT_PARSER)
    except etree.XMLSyntaxError as exc:
        raise TemplateError(
            f"{where(template, f'sheet {sheet.name!r}')}: the rendered sheet is not "
            f"well-formed ({exc}); block tags spanning rows need the {{%tr %}} form"
        ) from exc
    data = root.find(_m("sheetData"))
    assert data is not None
    rows = RowMap(list(sheet.present))
    last_src = 0
    last_new = 0
    src_attr = f"{{{CK}}}src"
    for row in data.iter(_m("row")):
        check_deadline()
        src = int(row.get(src_attr) or 0)
        if src == last_src:
            new = last_new + 1
        else:
            new = last_new + 1 + rows._implicit_between(last_src, src)
            if src < last_src:
                new = last_new + 1
        if src not in rows.first:
            rows.first[src] = new
            rows.emitted.append(src)
        rows.last[src] = new
        last_src, last_new = src, new
        row.attrib.pop(src_attr)
        row.set("r", str(new))
        for c in row.iter(_m("c")):
            _fix_cell(c, src, new, styles)
    rows.emitted.sort()
    # Formulas need the full map: a second pass.
    for row in data.iter(_m("row")):
        new = int(row.get("r") or 0)
        for f in row.iter(_m("f")):
            src = _src_of(rows, new)
            if f.text:
                f.text = shift_formula(f.text, rows, (src, new))
            if f.get("ref"):
                f.set("ref", _map_sqref(f.get("ref") or "", rows))
    _fix_sheet_refs(root, rows)
    # Drop the marker namespace's declaration only (no marker is left; other unused
    # declarations may be named by mc:Ignorable, so no cleanup_namespaces).
    return xml_bytes(root).replace(f' xmlns:ck="{CK}"'.encode(), b"", 1), rows


def _src_of(rows: RowMap, new: int) -> int:
    for src in rows.emitted:
        if rows.first[src] <= new <= rows.last[src]:
            return src
    return -1


def _fix_cell(c: etree._Element, src: int, new: int, styles: _Styles) -> None:
    ref = c.get("r")
    if ref:
        m = _CELL_REF.match(ref)
        if m:
            c.set("r", f"{m.group(1)}{new}")
    for v in c.findall(_m("v")) if c.find(_m("f")) is not None else ():
        c.remove(v)  # stale cached formula result: recalculated on load
    marker = next(
        (ch for ch in c if isinstance(ch.tag, str) and ch.tag.startswith(f"{{{CK}}}")), None
    )
    if marker is None:
        return
    kind = marker.tag.split("}", 1)[1]
    text = marker.text or ""
    c.remove(marker)
    for attr in ("t",):
        c.attrib.pop(attr, None)
    if kind == "s":
        c.set("t", "inlineStr")
        is_ = etree.SubElement(c, _m("is"))
        t = etree.SubElement(is_, _m("t"))
        t.text = text
        if text != text.strip() or "\n" in text:
            t.set(f"{{{XML_NS}}}space", "preserve")
    elif kind == "n":
        etree.SubElement(c, _m("v")).text = text
    elif kind == "b":
        c.set("t", "b")
        etree.SubElement(c, _m("v")).text = text
    elif kind == "d":
        base = int(c.get("s") or 0)
        c.set("s", str(styles.date_style(base, marker.get("time") == "1")))
        etree.SubElement(c, _m("v")).text = text


def _map_sqref(sqref: str, rows: RowMap) -> str:
    return " ".join(rows.range(ref) for ref in sqref.split())


def _expand(ref: str, rows: RowMap) -> list[str]:
    """A range on one template row that was repeated: one range per copy."""
    parts = ref.split(":")
    m1 = _REF_PARTS.match(parts[0])
    m2 = _REF_PARTS.match(parts[-1])
    if not (m1 and m2) or m1.group(4) != m2.group(4):
        return [rows.range(ref)]
    src = int(m1.group(4))
    if src not in rows.first:
        return [] if src in rows.present else [rows.range(ref)]
    out = []
    for new in range(rows.first[src], rows.last[src] + 1):
        out.append(
            f"{m1.group(1)}{m1.group(2)}{m1.group(3)}{new}"
            + (f":{m2.group(1)}{m2.group(2)}{m2.group(3)}{new}" if len(parts) > 1 else "")
        )
    return out


def _fix_sheet_refs(root: etree._Element, rows: RowMap) -> None:
    merges = root.find(_m("mergeCells"))
    if merges is not None:
        for mc in list(merges):
            ref = mc.get("ref") or ""
            new_refs = _expand(ref, rows)
            if not new_refs:
                merges.remove(mc)
                continue
            mc.set("ref", new_refs[0])
            anchor = mc
            for extra in new_refs[1:]:
                clone = copy.copy(mc)
                clone.set("ref", extra)
                anchor.addnext(clone)
                anchor = clone
        count = len(merges)
        if count:
            merges.set("count", str(count))
        else:
            root.remove(merges)
    for tag in ("conditionalFormatting", "dataValidation", "hyperlink", "selection"):
        for el in root.iter(_m(tag)):
            for attr in ("sqref", "ref"):
                if el.get(attr):
                    el.set(attr, _map_sqref(el.get(attr) or "", rows))
    for f in root.iter(_m("formula")):  # conditional formats and validations
        if f.text:
            f.text = shift_formula(f.text, rows, None)
    dim = root.find(_m("dimension"))
    data = root.find(_m("sheetData"))
    if dim is not None and data is not None:
        max_row, max_col, min_col = 1, 1, None
        for row in data.iter(_m("row")):
            max_row = max(max_row, int(row.get("r") or 1))
            for c in row.iter(_m("c")):
                m = _CELL_REF.match(c.get("r") or "")
                if m:
                    ci = col_index(m.group(1))
                    max_col = max(max_col, ci)
                    min_col = ci if min_col is None else min(min_col, ci)
        start = (dim.get("ref") or "A1").split(":")[0]
        dim.set("ref", f"{start}:{col_name(max_col)}{max_row}")


_OUT_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
)


# --------------------------------------------------------------------------------------------------
# The engine


class XlsxEngine(OfficeEngine[_CompiledXlsx]):
    """Renders ``.xlsx`` workbooks with Jinja2 in their cells (see the module docstring).

    Options and parameters: :class:`convkit.office.engine.OfficeEngine`.
    """

    name = "xlsx"
    suffixes = {".xlsx": "xlsx"}

    def _environment(self, strict: bool) -> jinja2.Environment:
        env = super()._environment(strict)
        env.finalize = _finalize
        env.globals["ck_value"] = _value_markup
        return env

    def _build(self, template: Template, env: jinja2.Environment) -> _CompiledXlsx:
        members = read_package(template.source, limits=self.zip_limits)
        files = {name: data for name, data, _ in members}
        workbook_path = "xl/workbook.xml"
        if workbook_path not in files:
            raise UnsafeDocument(f"{where(template)}: not an XLSX workbook (no {workbook_path})")
        wb = parse_xml(files[workbook_path], part=workbook_path)
        rels = relationships(files, workbook_path)
        shared_path = next((p for t, p in rels.values() if t.endswith("/sharedStrings")), None)
        styles_path = next((p for t, p in rels.values() if t.endswith("/styles")), None)
        shared = _shared_strings(files, shared_path)
        sheets = []
        for sheet_el in wb.iter(_m("sheet")):
            rid = sheet_el.get(qn("r:id")) or ""
            name = sheet_el.get("name") or "?"
            if rid not in rels or rels[rid][1] not in files:
                continue
            path = rels[rid][1]
            sheets.append(_compile_sheet(env, template, path, name, files[path], shared))
        xf_formats: list[int] = []
        date_ids: set[int] = set()
        if styles_path and styles_path in files:
            st = parse_xml(files[styles_path], part=styles_path)
            for nf in st.iter(_m("numFmt")):
                if _is_date_format(nf.get("formatCode") or ""):
                    date_ids.add(int(nf.get("numFmtId") or -1))
            xfs = st.find(_m("cellXfs"))
            if xfs is not None:
                xf_formats = [int(xf.get("numFmtId") or 0) for xf in xfs]
        return _CompiledXlsx(tuple(members), tuple(sheets), tuple(xf_formats), frozenset(date_ids))

    def _parts(self, compiled: _CompiledXlsx) -> Iterable[CompiledPart]:
        return (sheet.part for sheet in compiled.sheets if sheet.part is not None)

    def _render(
        self,
        compiled: _CompiledXlsx,
        template: Template,
        data: dict[str, Any],
        budget: OutputBudget,
    ) -> bytes:
        styles = _Styles(compiled.xf_formats, compiled.date_fmt_ids)
        outputs: dict[str, bytes] = {}
        maps: dict[str, RowMap] = {}
        for sheet in compiled.sheets:
            if sheet.part is None:
                continue
            rendered = b"".join(sheet.part.render(template, data, budget))
            check_deadline()
            outputs[sheet.path], maps[sheet.name] = _post_sheet(rendered, template, sheet, styles)
        return self._package(compiled, outputs, maps, styles)

    def _package(
        self,
        compiled: _CompiledXlsx,
        outputs: dict[str, bytes],
        maps: dict[str, RowMap],
        styles: _Styles,
    ) -> bytes:
        files = {name: data for name, data, _ in compiled.members}
        drop = {n for n in files if n.endswith("calcChain.xml")}
        if outputs:
            files["xl/workbook.xml"] = _fix_workbook(files["xl/workbook.xml"], maps)
            for name in list(files):
                is_index = name.endswith(".rels") or name == "[Content_Types].xml"
                if is_index and drop and b"calcChain" in files[name]:
                    files[name] = _drop_calc_chain(files[name], name)
        if styles.added:
            for name in files:
                if name.endswith("styles.xml") and name.startswith("xl/"):
                    files[name] = _add_date_styles(files[name], styles)
        return write_package(
            (name, outputs.get(name, files[name]), True)
            for name, _, _ in compiled.members
            if not (name in drop and outputs)
        )


def _fix_workbook(xml: bytes, maps: dict[str, RowMap]) -> bytes:
    root = parse_xml(xml, part="xl/workbook.xml")
    for dn in root.iter(_m("definedName")):
        text = dn.text or ""

        def sub(m: re.Match[str]) -> str:
            sheet = m.group(1) or m.group(2)
            if sheet is not None and sheet.replace("''", "'") in maps:
                rows = maps[sheet.replace("''", "'")]
                return m.group(0)[: m.start(3) - m.start(0)] + rows.range(m.group(3))
            return m.group(0)

        dn.text = re.sub(
            r"(?:'((?:[^']|'')+)'|([A-Za-z0-9_.]+))!(\$?[A-Z]{1,3}\$?\d+(?::\$?[A-Z]{1,3}\$?\d+)?)",
            sub,
            text,
        )
    calc = root.find(_m("calcPr"))
    if calc is None:
        calc = etree.SubElement(root, _m("calcPr"))
        # calcPr belongs after definedNames; most readers do not mind, but keep the order.
        anchor = root.find(_m("definedNames"))
        if anchor is None:
            anchor = root.find(_m("sheets"))
        if anchor is not None:
            anchor.addnext(calc)
    calc.set("fullCalcOnLoad", "1")
    return xml_bytes(root)


def _drop_calc_chain(xml: bytes, name: str) -> bytes:
    root = parse_xml(xml, part=name)
    for el in list(root):
        target = el.get("Target") or el.get("PartName") or ""
        if target.endswith("calcChain.xml"):
            root.remove(el)
    return xml_bytes(root)


def _add_date_styles(xml: bytes, styles: _Styles) -> bytes:
    root = parse_xml(xml, part="xl/styles.xml")
    xfs = root.find(_m("cellXfs"))
    if xfs is None:
        return xml
    existing = list(xfs)
    for (base, time), _index in sorted(styles.added.items(), key=lambda kv: kv[1]):
        src = existing[base] if 0 <= base < len(existing) else etree.Element(_m("xf"))
        clone = copy.deepcopy(src)
        clone.set("numFmtId", "22" if time else "14")
        clone.set("applyNumberFormat", "1")
        xfs.append(clone)
    xfs.set("count", str(len(xfs)))
    return xml_bytes(root)
