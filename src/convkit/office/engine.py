"""The base of the office template engines: one compile cache, one sandbox per strictness, one
render scope and output budget per render, the same options (``strict``) and introspection.

A format subclasses :class:`OfficeEngine` and fills in three methods: :meth:`_build` (a template
-> its compiled form, parts made with :mod:`convkit.office.parts`), :meth:`_parts` (the compiled
parts, for introspection) and :meth:`_render` (compiled form and data -> document bytes).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import jinja2

from convkit.office.parts import CompiledPart, OutputBudget
from convkit.office.safezip import DEFAULT_LIMITS, ZipLimits
from convkit.ports import RenderedDocument, Template, TemplateEngine
from convkit.templating.cache import LRU, CacheStats
from convkit.templating.sandbox import MAX_OUTPUT_BYTES, make_environment, undeclared_variables
from convkit.templating.scope import MAX_RENDER_SECONDS, render_scope

__all__ = ["OfficeEngine"]

C = TypeVar("C")


class OfficeEngine(CacheStats, TemplateEngine, Generic[C]):
    """An office template engine. Options: ``strict`` (bool) makes an undefined name a
    TemplateError.

    :param cache_size: compiled templates kept, keyed by content hash and strictness.
    :param max_output_bytes: bound on the UTF-8 bytes of the rendered parts plus embedded files,
        counted as they are produced (``template_limit_exceeded`` beyond it).
    :param time_limit_s: wall time one render may take (``template_limit_exceeded`` beyond it).
    :param zip_limits: bounds on the template archive (:mod:`convkit.office.safezip`).
    """

    def __init__(
        self,
        *,
        cache_size: int = 64,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        time_limit_s: float = MAX_RENDER_SECONDS,
        zip_limits: ZipLimits = DEFAULT_LIMITS,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.time_limit_s = time_limit_s
        self.zip_limits = zip_limits
        self._cache: LRU[tuple[str, bool], C] = LRU(cache_size)
        self._envs = {strict: self._environment(strict) for strict in (False, True)}

    # -- what a format provides ----------------------------------------------------------------
    def _environment(self, strict: bool) -> jinja2.Environment:
        """The sandbox the format's parts compile in; formats add their output helpers."""
        return make_environment(autoescape=True, strict=strict)

    @abstractmethod
    def _build(self, template: Template, env: jinja2.Environment) -> C:
        """Read, preprocess and compile ``template``."""

    @abstractmethod
    def _parts(self, compiled: C) -> Iterable[CompiledPart]:
        """The compiled parts of a compiled template."""

    @abstractmethod
    def _render(
        self, compiled: C, template: Template, data: dict[str, Any], budget: OutputBudget
    ) -> bytes:
        """Render inside the render scope; return the document's bytes."""

    # -- the port --------------------------------------------------------------------------------
    def _compiled(self, template: Template, *, strict: bool) -> C:
        key = (template.content_hash, strict)
        found = self._cache.get(key)
        if found is None:
            found = self._build(template, self._envs[strict])
            self._cache.put(key, found)
        return found

    def check(self, template: Template) -> None:
        """Compile ``template`` (filling the cache) without rendering it."""
        self._compiled(template, strict=False)

    def variables(self, template: Template) -> frozenset[str]:
        """Undeclared top-level names over every compiled part."""
        env = self._envs[False]
        names: set[str] = set()
        for part in self._parts(self._compiled(template, strict=False)):
            names |= undeclared_variables(env, part.source)
        names.discard("loop")  # docxtpl's cell tags read the enclosing loop
        return frozenset(names)

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        compiled = self._compiled(template, strict=bool((options or {}).get("strict")))
        budget = OutputBudget(self.max_output_bytes)
        with render_scope(locale, time_limit_s=self.time_limit_s):
            content = self._render(compiled, template, data, budget)
        return RenderedDocument(content, template.format)
