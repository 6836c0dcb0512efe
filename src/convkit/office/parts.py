"""Compiled parts: one XML part of an office document as a Jinja template, the map from its
source lines back to the tags the author typed, and the render loop with its output budget.

An engine builds a part's Jinja source with a :class:`SourceBuilder` (literal XML and tags, in
order), compiles it with :meth:`SourceBuilder.compile`, and renders it with
:meth:`CompiledPart.render`, which yields UTF-8 in batches, counting every byte against one
:class:`OutputBudget` for the whole document and checking the render deadline between batches.
Every failure, at compile or render time, becomes one TemplateError shape
(:mod:`convkit.templating.errors`) naming the part, the place (``paragraph 3``, ``cell B7``) and
the tag.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from typing import Any

import attrs
import jinja2

from convkit.errors import TemplateError
from convkit.ports import Template
from convkit.templating.errors import as_template_error, where
from convkit.templating.sandbox import TEMPLATE_FILENAME, template_line
from convkit.templating.scope import check_deadline

__all__ = [
    "CompiledPart",
    "OutputBudget",
    "SourceBuilder",
    "TagInfo",
]

# Pieces of Jinja output joined per batch: one C-level join and encode, then the checks.
_BATCH = 2048


@attrs.frozen
class TagInfo:
    """A tag as the author typed it, and where: ``place`` is ``"paragraph 12"``, ``"cell B7"``
    or empty (a property part)."""

    place: str
    text: str


class SourceBuilder:
    """The Jinja source of one part, built from literal XML and tags, recording the line each
    tag's expression is on (a line break follows every opening delimiter, so no two tags share
    a line and an error's line names its tag)."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._line = 1
        self.lines: list[int] = []
        self.tags: list[TagInfo] = []

    def literal(self, text: str) -> None:
        self._out.append(text)
        self._line += text.count("\n")

    def jinja(self, jinja: str, info: TagInfo) -> None:
        """Emit ``jinja`` for the tag ``info``; a line break right after its opening delimiter
        puts the tag on a line of its own."""
        self.lines.append(self._line + (1 if "\n" in jinja else 0))
        self.tags.append(info)
        self._out.append(jinja)
        self._line += jinja.count("\n")

    def tag(self, text: str, info: TagInfo) -> None:
        """Emit the tag ``text`` as it is (a line break inserted after its opening delimiter)."""
        head = 3 if text[2:3] in ("-", "+") else 2
        self.jinja(text[:head] + "\n" + text[head:], info)

    def source(self) -> str:
        return "".join(self._out)

    def compile(
        self, env: jinja2.Environment, template: Template, name: str, place: str
    ) -> CompiledPart:
        """Compile the source as part ``name`` (named ``place`` in messages); a syntax error
        names the part, the place and the tag.

        :raises TemplateError: ``template_error``.
        """
        source = self.source()
        lines, tags = tuple(self.lines), tuple(self.tags)
        try:
            code = env.compile(source, name=template.name, filename=TEMPLATE_FILENAME)
            compiled = env.template_class.from_code(env, code, env.make_globals(None))
        except jinja2.TemplateSyntaxError as exc:
            part = CompiledPart(name, place, jinja2.Template(""), source, lines, tags)
            raise as_template_error(exc, part.where(template, exc.lineno)) from exc
        except Exception as exc:  # RecursionError on absurd nesting, and the like
            raise as_template_error(exc, where(template, place)) from exc
        return CompiledPart(name, place, compiled, source, lines, tags)


@attrs.frozen
class CompiledPart:
    """One XML part compiled: ``name`` is its archive member, ``place`` how messages name it
    (``"word/document.xml"``, ``"sheet 'Sheet1'"``)."""

    name: str
    place: str
    template: jinja2.Template
    source: str = attrs.field(repr=False)
    lines: tuple[int, ...] = attrs.field(repr=False)
    tags: tuple[TagInfo, ...] = attrs.field(repr=False)

    def tag_for_line(self, line: int | None) -> TagInfo | None:
        if line is None:
            return None
        index = bisect.bisect_right(self.lines, line) - 1
        return self.tags[index] if index >= 0 else None

    def where(self, template: Template, line: int | None = None) -> str:
        """``template 't', word/document.xml, paragraph 3: tag "{{ x }}"`` for a source line."""
        tag = self.tag_for_line(line)
        if tag is None:
            return where(template, self.place)
        return where(template, self.place, tag.place, tag=tag.text)

    def render(
        self, template: Template, data: dict[str, Any], budget: OutputBudget
    ) -> Iterator[bytes]:
        """Run the part on ``data``, yielding its UTF-8 output in batches as it is produced, so
        a large table streams instead of sitting in memory whole; every batch is counted against
        ``budget`` and the render deadline is checked between batches.

        :raises TemplateError: anything the template does wrong, named by part, place and tag,
            with the code of :func:`convkit.templating.errors.as_template_error`.
        """
        generator = self.template.generate(data)
        try:
            while batch := list(itertools.islice(generator, _BATCH)):
                blob = "".join(batch).encode("utf-8")
                budget.add(len(blob))
                check_deadline()
                yield blob
        except Exception as exc:
            line = template_line(exc.__traceback__)
            raise as_template_error(exc, self.where(template, line)) from exc


class OutputBudget:
    """The bytes (UTF-8) a render may still produce, over every part and embedded file."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def add(self, n: int) -> None:
        """Count ``n`` more bytes.

        :raises TemplateError: ``template_limit_exceeded`` past the limit.
        """
        self.used += n
        if self.used > self.limit:
            raise TemplateError(
                f"output exceeds {self.limit} bytes", code="template_limit_exceeded"
            )
