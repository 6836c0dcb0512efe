"""The contract every office template engine (DOCX, ODT, XLSX, and a plugin's own) must pass:
one behaviour for the same tag, whatever the format.

Subclass :class:`OfficeEngineContract` and provide a ``kit`` fixture: an :class:`OfficeKit` that
builds documents of the format (tags split over runs, as the office suite writes them) and reads
rendered ones back. The built-in kits are :data:`DOCX_KIT`, :data:`ODT_KIT` and :data:`XLSX_KIT`::

    class TestDocxOffice(OfficeEngineContract):
        @pytest.fixture
        def kit(self) -> OfficeKit:
            return DOCX_KIT

What it checks: values are escaped (``<&>``), split tags are joined, typographic quotes and
Jinja's full expression syntax work inside tags, the docxtpl families the format has repeat rows,
cells and paragraphs and declared table columns follow the widest row, undefined names under
``strict``, the output limit (UTF-8 bytes), the sandbox's size guards and the render deadline
(``template_limit_exceeded``), and the one error shape
``template 't', <part>, <place>: tag "<tag>": <message>`` with no server path.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from lxml import etree

from convkit.errors import TemplateError
from convkit.ports import Template, TemplateEngine
from convkit.testing.builders import docx as docx_builder
from convkit.testing.builders import odf as odf_builder
from convkit.testing.builders import xlsx as xlsx_builder

__all__ = ["DOCX_KIT", "ODT_KIT", "XLSX_KIT", "OfficeEngineContract", "OfficeKit"]

Rows = list[list[str]]


@attrs.frozen
class OfficeKit:
    """How the contract builds and reads documents of one office format."""

    #: The engine under test, built with keyword options (``max_output_bytes``, ``time_limit_s``).
    engine: Callable[..., TemplateEngine]
    format: str
    #: How error messages name the part the contract's text is in.
    part: str
    #: How error messages name the n-th paragraph (1-based) or cell of :attr:`document`.
    place: Callable[[int], str]
    #: A document with one paragraph (XLSX: one cell down column A) per text, tags split.
    document: Callable[[list[str]], bytes]
    #: The text of each paragraph (cell) of a rendered :attr:`document`.
    texts: Callable[[bytes], list[str]]
    #: A document holding one table, rows of cell texts, tags split.
    table: Callable[[Rows], bytes]
    #: The cell texts of each row of the rendered table.
    table_cells: Callable[[bytes], Rows]
    #: The table's declared columns (None: the format declares none).
    declared_columns: Callable[[bytes], int] | None = None
    #: docxtpl's families the format has (``p``, ``tr``, ``tc``, ``r``).
    families: frozenset[str] = frozenset({"p", "tr", "tc", "r"})


# --------------------------------------------------------------------------------------------------
# DOCX

_W = "{" + docx_builder.W_NS + "}"


def _docx_para(text: str) -> str:
    return docx_builder.p(docx_builder.word_split(text)) if text else docx_builder.p()


def _docx_text(el: etree._Element) -> str:
    return "".join(t.text or "" for t in el.iter(_W + "t"))


def _docx_body(content: bytes) -> etree._Element:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return etree.fromstring(zf.read("word/document.xml"))


def _docx_table(rows: Rows) -> bytes:
    body = docx_builder.tbl(
        *(docx_builder.tr(*(docx_builder.tc(_docx_para(c)) for c in row)) for row in rows),
        cols=max(len(row) for row in rows),
    )
    return docx_builder.docx(body)


def _docx_engine(**options: Any) -> TemplateEngine:
    from convkit.backends.engines.docx import DocxEngine

    return DocxEngine(**options)


DOCX_KIT = OfficeKit(
    engine=_docx_engine,
    format="docx",
    part="word/document.xml",
    place=lambda n: f"paragraph {n}",
    document=lambda texts: docx_builder.docx("".join(_docx_para(t) for t in texts)),
    texts=lambda content: [_docx_text(p) for p in _docx_body(content).iter(_W + "p")],
    table=_docx_table,
    table_cells=lambda content: [
        [_docx_text(tc) for tc in tr.iter(_W + "tc")] for tr in _docx_body(content).iter(_W + "tr")
    ],
    declared_columns=lambda content: len(list(_docx_body(content).iter(_W + "gridCol"))),
)

# --------------------------------------------------------------------------------------------------
# ODT


def _odt_para(text: str) -> str:
    return odf_builder.p(odf_builder.split(text) if "{" in text else odf_builder.t(text))


def _odt_engine(**options: Any) -> TemplateEngine:
    from convkit.backends.engines.odt import OdtEngine

    return OdtEngine(**options)


def _odt_cells(content: bytes) -> Rows:
    xml = odf_builder.read_odt(content)["content.xml"]
    return [
        [" ".join(odf_builder.inline_text(p) for p in cell.iter(_ODF_P)) for cell in row]
        for row in odf_builder.table_rows(xml)
    ]


_ODF_P = "{" + odf_builder.NS["text"] + "}p"

ODT_KIT = OfficeKit(
    engine=_odt_engine,
    format="odt",
    part="content.xml",
    place=lambda n: f"paragraph {n}",
    document=lambda texts: odf_builder.odt("".join(_odt_para(t) for t in texts)),
    texts=odf_builder.odt_text,
    table=lambda rows: odf_builder.odt(
        odf_builder.table([[_odt_para(c) for c in r] for r in rows])
    ),
    table_cells=_odt_cells,
    declared_columns=lambda content: odf_builder.declared_columns(
        odf_builder.read_odt(content)["content.xml"]
    ),
)

# --------------------------------------------------------------------------------------------------
# XLSX


def _xlsx_runs(text: str) -> list[str] | None:
    """``text`` over rich-text runs, as Excel stores a partly formatted cell."""
    if "{" not in text or len(text) < 6:
        return None
    cuts = (0, 3, len(text) // 2, len(text) - 2, len(text))
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def _xlsx_sheet(cells: dict[str, str]) -> bytes:
    runs = {ref: r for ref, text in cells.items() if (r := _xlsx_runs(text)) is not None}
    return xlsx_builder.xlsx([xlsx_builder.Sheet("Sheet1", dict(cells), runs=runs)])


def _xlsx_engine(**options: Any) -> TemplateEngine:
    from convkit.backends.engines.xlsx import XlsxEngine

    return XlsxEngine(**options)


def _xlsx_rows(content: bytes) -> Rows:
    """The text of each cell of the first sheet, row by row (shared strings, inline strings,
    numbers and booleans as written)."""
    main = "{" + xlsx_builder.MAIN + "}"
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        sheet = etree.fromstring(zf.read("xl/worksheets/sheet1.xml"))
        names = set(zf.namelist())
        shared = (
            [
                "".join(t.text or "" for t in si.iter(main + "t"))
                for si in etree.fromstring(zf.read("xl/sharedStrings.xml")).iter(main + "si")
            ]
            if "xl/sharedStrings.xml" in names
            else []
        )
    rows = []
    for row in sheet.iter(main + "row"):
        cells = []
        for c in row.iter(main + "c"):
            v = c.findtext(main + "v") or ""
            if c.get("t") == "inlineStr":
                cells.append("".join(t.text or "" for t in c.iter(main + "t")))
            elif c.get("t") == "s":
                cells.append(shared[int(v)])
            else:
                cells.append(v)
        rows.append(cells)
    return rows


XLSX_KIT = OfficeKit(
    engine=_xlsx_engine,
    format="xlsx",
    part="sheet 'Sheet1'",
    place=lambda n: f"cell A{n}",
    document=lambda texts: _xlsx_sheet({f"A{n}": t for n, t in enumerate(texts, start=1) if t}),
    texts=lambda content: [row[0] if row else "" for row in _xlsx_rows(content)],
    table=lambda rows: _xlsx_sheet(
        {
            f"{chr(65 + c)}{r}": text
            for r, row in enumerate(rows, start=1)
            for c, text in enumerate(row)
            if text
        }
    ),
    table_cells=_xlsx_rows,
    families=frozenset({"tr"}),
)

# --------------------------------------------------------------------------------------------------
# The contract


class OfficeEngineContract:
    """Base class of an office engine's contract tests (fixture ``kit``)."""

    @pytest.fixture
    def kit(self) -> OfficeKit:
        raise NotImplementedError("provide a `kit` fixture: an OfficeKit for the format")

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def template(kit: OfficeKit, source: bytes, name: str = "t") -> Template:
        # An origin that is a server path: no message may show it.
        return Template(name, kit.format, kit.format, source, origin=f"/srv/tpl/{name}.x")

    def render_texts(
        self, kit: OfficeKit, texts: list[str], data: dict[str, Any], **options: Any
    ) -> list[str]:
        engine = kit.engine()
        doc = engine.render(self.template(kit, kit.document(texts)), data, options=options)
        return kit.texts(doc.content)

    def error(
        self,
        kit: OfficeKit,
        source: bytes,
        data: dict[str, Any] | None = None,
        *,
        strict: bool = False,
        **engine_options: Any,
    ) -> TemplateError:
        engine = kit.engine(**engine_options)
        with pytest.raises(TemplateError) as info:
            engine.render(self.template(kit, source), data or {}, options={"strict": strict})
        assert "/srv/" not in info.value.message
        return info.value

    # -- values and tags -------------------------------------------------------------------------
    def test_values_are_escaped(self, kit: OfficeKit) -> None:
        texts = self.render_texts(kit, ["Hello {{ name }}!"], {"name": "<Ada & Bob>"})
        assert texts[0] == "Hello <Ada & Bob>!"

    def test_split_tags_are_joined(self, kit: OfficeKit) -> None:
        data = {"customer": {"name": "Ada"}, "total": 12}
        texts = ["Dear {{ customer.name }}, total {{ total }}", "{% if total %}yes{% endif %}"]
        assert self.render_texts(kit, texts, data)[:2] == ["Dear Ada, total 12", "yes"]

    @pytest.mark.parametrize(
        ("tag", "expected"),
        [
            ("{{ \u201aab\u2018 }}", "ab"),  # German low-9 and left quotes
            ("{{ \u201cab\u201d }}", "ab"),
            ("{{ \u2018a\u2019 ~ \u201eb\u201c }}", "ab"),
            ('{{ {"a": {"b": 7}}["a"]["b"] }}', "7"),
            ("{% set d = {'k': {'v': 'x'}} %}{{ d.k.v }}", "x"),
            ("{{ '}}' }}", "}}"),
        ],
    )
    def test_any_jinja_expression_in_a_tag(self, kit: OfficeKit, tag: str, expected: str) -> None:
        assert self.render_texts(kit, [tag], {})[0] == expected

    # -- families --------------------------------------------------------------------------------
    def test_row_loop(self, kit: OfficeKit) -> None:
        if "tr" not in kit.families:
            pytest.skip(f"{kit.format} has no {{%tr %}}")
        rows = [
            ["H1", "H2"],
            ["{%tr for r in rows %}"],
            ["{{ r.a }}", "{{ r.b }}"],
            ["{%tr endfor %}"],
        ]
        data = {"rows": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}
        doc = kit.engine().render(self.template(kit, kit.table(rows)), data)
        assert kit.table_cells(doc.content) == [["H1", "H2"], ["1", "x"], ["2", "y"]]

    def test_cell_loop_and_declared_columns(self, kit: OfficeKit) -> None:
        if "tc" not in kit.families:
            pytest.skip(f"{kit.format} has no {{%tc %}}")
        rows = [["{%tc for c in cols %}", "{{ c }}", "{%tc endfor %}"]]
        for cols in (["a", "b", "c", "d", "e"], ["a"]):
            doc = kit.engine().render(self.template(kit, kit.table(rows)), {"cols": cols})
            assert kit.table_cells(doc.content) == [cols]
            assert kit.declared_columns is not None
            assert kit.declared_columns(doc.content) == len(cols)

    def test_paragraph_loop(self, kit: OfficeKit) -> None:
        if "p" not in kit.families:
            pytest.skip(f"{kit.format} has no {{%p %}}")
        texts = ["{%p for x in xs %}", "* {{ x }}", "{%p endfor %}", "end"]
        got = [t for t in self.render_texts(kit, texts, {"xs": ["a", "b"]}) if t]
        assert got == ["* a", "* b", "end"]

    def test_cell_tag_values_are_checked(self, kit: OfficeKit) -> None:
        if "tc" not in kit.families:
            pytest.skip(f"{kit.format} has no cell tags")
        source = kit.table([["x{% colspan n %}", "y"]])
        err = self.error(kit, source, {"n": "two"})
        assert err.code == "template_error"
        assert 'tag "{% colspan n %}": colspan:' in err.message

    # -- errors ----------------------------------------------------------------------------------
    def test_strict_undefined_and_the_error_shape(self, kit: OfficeKit) -> None:
        assert self.render_texts(kit, ["intro", "[{{ nope }}]"], {})[1] == "[]"  # lenient
        err = self.error(kit, kit.document(["intro", "{{ nope.attr }}"]), strict=True)
        assert err.code == "template_error"
        assert err.message == (
            f"template 't', {kit.part}, {kit.place(2)}: tag \"{{{{ nope.attr }}}}\": "
            "'nope' is undefined"
        )

    def test_syntax_error_shape(self, kit: OfficeKit) -> None:
        engine = kit.engine()
        with pytest.raises(TemplateError) as info:
            engine.check(self.template(kit, kit.document(["a", "b", "{{ total | }}"])))
        assert info.value.code == "template_error"
        assert info.value.message.startswith(
            f"template 't', {kit.part}, {kit.place(3)}: tag \"{{{{ total | }}}}\": "
        )

    def test_sandbox_escape_is_a_template_error(self, kit: OfficeKit) -> None:
        err = self.error(kit, kit.document(["{{ ''.__class__.__mro__ }}"]))
        assert err.code == "template_error"
        assert "sandbox" in err.message

    # -- limits ----------------------------------------------------------------------------------
    def test_huge_repetition_is_a_limit(self, kit: OfficeKit) -> None:
        err = self.error(kit, kit.document(["{{ 'x' * 10**9 }}"]))
        assert err.code == "template_limit_exceeded"

    def test_output_limit_counts_utf8_bytes(self, kit: OfficeKit) -> None:
        source = kit.document(["{{ v }}"])
        limit = 200_000
        # 150,000 characters: under the limit as ASCII, over it as two-byte UTF-8.
        doc = kit.engine(max_output_bytes=limit).render(
            self.template(kit, source), {"v": "e" * 150_000}
        )
        assert kit.texts(doc.content)[0] == "e" * 150_000
        err = self.error(kit, source, {"v": "\u00e9" * 150_000}, max_output_bytes=limit)
        assert err.code == "template_limit_exceeded"
        loop = kit.document(["{% for i in range(100000) %}xxxxxxxxxx{% endfor %}"])
        assert self.error(kit, loop, max_output_bytes=limit).code == "template_limit_exceeded"

    def test_render_deadline(self, kit: OfficeKit) -> None:
        slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        err = self.error(kit, kit.document([slow]), time_limit_s=0.2)
        assert err.code == "template_limit_exceeded"
