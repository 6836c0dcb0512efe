"""The built-in Jinja engine: ``.html``/``.htm`` and ``.txt`` templates, rendered in a sandbox.

Templates come from users, so they run in Jinja's immutable sandbox and every failure (syntax,
undefined name under strict mode, sandbox violation, any other exception) becomes a
:class:`~convkit.errors.TemplateError` naming the template and the line: a 422, never a 500.
"""

from __future__ import annotations

from typing import Any

import jinja2

from convkit.errors import TemplateError
from convkit.ports import RenderedDocument, Template, TemplateEngine
from convkit.templating.cache import LRU, CacheStats
from convkit.templating.errors import as_template_error, where
from convkit.templating.sandbox import (
    MAX_OUTPUT_BYTES,
    TEMPLATE_FILENAME,
    make_environment,
    template_line,
    undeclared_variables,
)
from convkit.templating.scope import check_deadline, render_scope

__all__ = ["JinjaTextEngine"]


def _where(template: Template, line: int | None) -> str:
    return where(template, f"line {line}" if line else None)


class JinjaTextEngine(CacheStats, TemplateEngine):
    """Renders ``.html``/``.htm`` (autoescaped) and ``.txt`` Jinja2 templates to UTF-8.

    Options: ``strict`` (bool) makes an undefined name a TemplateError. ``locale`` is accepted
    for the port's sake and not used yet.
    """

    name = "jinja"
    suffixes = {".html": "html", ".htm": "html", ".txt": "txt"}

    def __init__(self, *, cache_size: int = 128, max_output_bytes: int = MAX_OUTPUT_BYTES) -> None:
        self.max_output_bytes = max_output_bytes
        self._cache: LRU[tuple[str, bool, bool], jinja2.Template] = LRU(cache_size)
        # Environments are cheap but compiled templates belong to one, so keep one per flavour.
        self._envs = {
            (autoescape, strict): make_environment(autoescape=autoescape, strict=strict)
            for autoescape in (False, True)
            for strict in (False, True)
        }

    def _compile(self, template: Template, *, strict: bool) -> jinja2.Template:
        autoescape = template.format == "html"
        key = (template.content_hash, autoescape, strict)
        compiled = self._cache.get(key)
        if compiled is not None:
            return compiled
        env = self._envs[autoescape, strict]
        try:
            text = template.source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateError(
                f"{_where(template, None)}: not valid UTF-8 (byte {exc.start})"
            ) from exc
        try:
            code = env.compile(text, name=template.name, filename=TEMPLATE_FILENAME)
            compiled = env.template_class.from_code(env, code, env.make_globals(None))
        except jinja2.TemplateSyntaxError as exc:
            raise as_template_error(exc, _where(template, exc.lineno)) from exc
        except Exception as exc:  # e.g. RecursionError on absurd nesting
            raise as_template_error(exc, _where(template, None)) from exc
        self._cache.put(key, compiled)
        return compiled

    def check(self, template: Template) -> None:
        """Compile ``template`` (filling the cache) without rendering it."""
        self._compile(template, strict=False)

    def variables(self, template: Template) -> frozenset[str]:
        """Top-level data names the template reads."""
        self.check(template)  # a syntax error is a TemplateError here too
        env = self._envs[template.format == "html", False]
        return frozenset(undeclared_variables(env, template.source.decode("utf-8")))

    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        """Render ``template`` with ``data`` into UTF-8 bytes of the template's format."""
        strict = bool((options or {}).get("strict"))
        compiled = self._compile(template, strict=strict)
        chunks: list[bytes] = []
        size = 0
        try:
            with render_scope(locale):
                # generate() yields as it goes, so a runaway loop is stopped at the limit
                # instead of after it has built the whole string in memory.
                for piece in compiled.generate(data):
                    check_deadline()
                    chunk = piece.encode("utf-8")
                    size += len(chunk)
                    if size > self.max_output_bytes:
                        raise TemplateError(
                            f"output exceeds {self.max_output_bytes} bytes",
                            code="template_limit_exceeded",
                        )
                    chunks.append(chunk)
        except Exception as exc:
            line = template_line(exc.__traceback__)
            raise as_template_error(exc, _where(template, line)) from exc
        return RenderedDocument(b"".join(chunks), template.format)
