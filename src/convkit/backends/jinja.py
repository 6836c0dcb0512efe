"""The built-in Jinja2 engine: ``.html``/``.htm`` and ``.txt`` templates, rendered in a sandbox.

Templates come from users, so they run in Jinja's immutable sandbox and every failure (syntax,
undefined name under strict mode, sandbox violation, any other exception) becomes a
:class:`~convkit.errors.TemplateError` naming the template and the line: a 422, never a 500.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from convkit.errors import TemplateError
from convkit.hookspecs import hookimpl
from convkit.ports import RenderedDocument, Template, TemplateEngine

__all__ = [
    "LRU",
    "MAX_OUTPUT_BYTES",
    "MAX_RENDER_SECONDS",
    "TEMPLATE_FILENAME",
    "JinjaTextEngine",
    "check_deadline",
    "make_environment",
    "register_template_engines",
    "render_scope",
    "template_line",
    "undeclared_variables",
]

#: Largest rendered document, in bytes of UTF-8 (50 MiB).
MAX_OUTPUT_BYTES = 50 * 1024 * 1024

# Every compiled template gets this file name, so its frames can be found in a traceback whatever
# template name the cache entry was first compiled for (the cache is keyed by content, not name).
TEMPLATE_FILENAME = "<convkit-template>"

# `**` with a huge result hangs the worker in a single bytecode, so no output guard can stop it.
_MAX_POW_BITS = 1_000_000

#: Longest a single render may run, in seconds of wall time.
MAX_RENDER_SECONDS = 30.0

# The job's locale and the render's deadline, set by render_scope() around one render. Context
# variables (not environment globals) because compiled templates and environments are shared by
# every thread, while locale and deadline belong to one job.
_LOCALE: contextvars.ContextVar[str] = contextvars.ContextVar("convkit_locale", default="en_US")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "convkit_deadline", default=None
)


@contextlib.contextmanager
def render_scope(locale: str | None, *, time_limit_s: float = MAX_RENDER_SECONDS) -> Iterator[None]:
    """Run one render with ``locale`` for the locale filters and a wall-time deadline.

    Every engine wraps its render in this, so the filters and limits behave the same in HTML,
    DOCX, ODT and XLSX.
    """
    tok_locale = _LOCALE.set(locale or "en_US")
    tok_deadline = _DEADLINE.set(time.monotonic() + time_limit_s)
    try:
        yield
    finally:
        _LOCALE.reset(tok_locale)
        _DEADLINE.reset(tok_deadline)


def check_deadline() -> None:
    """Raise TemplateError(template_limit_exceeded) once the current render's time is up."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateError(
            "the template took longer than its render time limit", code="template_limit_exceeded"
        )


class _Range:
    """``range()`` for templates: a real range (len, indexing) whose iteration checks the render
    deadline, so nested ``range(100000)`` loops that print nothing still stop."""

    def __init__(self, *args: int) -> None:
        from jinja2.sandbox import safe_range

        self._range: range = safe_range(*args)

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        for n, value in enumerate(self._range):
            if n % 1024 == 0:
                check_deadline()
            yield value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, made stricter in two places.

    * An unsafe attribute raises at once. Jinja's default returns an Undefined that only fails
      when used further, so ``{{ ''.__class__ }}`` would render as an empty string and hide the
      attempt.
    * ``*`` and ``**`` cannot build values far larger than the output limit (``'x' * 10**10``,
      ``10 ** 10 ** 10``) before the output guard gets a chance to count them.
    """

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(n, int)
                and len(seq) * n > MAX_OUTPUT_BYTES
            ):
                raise SecurityError("sequence repetition would exceed the output size limit")
            return operator.mul(left, right)
        if operator_ == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and right > 0
                and abs(left).bit_length() * right > _MAX_POW_BITS
            ):
                raise SecurityError("power result would be too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


def make_environment(*, autoescape: bool, strict: bool) -> ImmutableSandboxedEnvironment:
    """The one place a Jinja environment is built.

    :param autoescape: escape ``{{ }}`` output for HTML (on for html templates, off for txt).
    :param strict: use :class:`jinja2.StrictUndefined`, so an undefined name is an error instead
        of an empty string.
    """
    env = _Sandbox(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    from convkit.backends.localefilters import FILTERS

    env.filters.update(FILTERS)
    env.globals["range"] = _Range
    # lipsum() can build large text in one call and has no business in a business document.
    env.globals.pop("lipsum", None)
    return env


def undeclared_variables(env: jinja2.Environment, source: str) -> set[str]:
    """Top-level names a template reads from its data (for introspection and forms)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(env.parse(source))) - set(env.globals)


def template_line(tb: types.TracebackType | None, filename: str | None = None) -> int | None:
    """The template line of the innermost frame of ``tb`` compiled under ``filename`` (default:
    this engine's); Jinja rewrites tracebacks so template frames carry template line numbers."""
    filename = filename or TEMPLATE_FILENAME
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _where(template: Template, line: int | None) -> str:
    where = f"template {template.name!r}"
    if template.origin != "<memory>":
        where += f" ({template.origin})"
    return f"{where}, line {line}" if line else where


K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe LRU; every engine caches its compiled templates in one, keyed by the
    template's content hash and flavour, so repeated jobs only render."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class JinjaTextEngine(TemplateEngine):
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

    @property
    def cache_hits(self) -> int:
        """How many renders/checks found their compiled template in the cache."""
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        """How many renders/checks had to compile."""
        return self._cache.misses

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
            raise TemplateError(f"{_where(template, exc.lineno)}: {exc.message}") from exc
        except Exception as exc:  # e.g. RecursionError on absurd nesting
            raise TemplateError(f"{_where(template, None)}: cannot compile: {exc}") from exc
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
        except TemplateError as exc:
            line = template_line(exc.__traceback__)
            raise TemplateError(f"{_where(template, line)}: {exc.message}", code=exc.code) from exc
        except jinja2.UndefinedError as exc:
            line = template_line(exc.__traceback__)
            raise TemplateError(f"{_where(template, line)}: {exc.message}") from exc
        except SecurityError as exc:
            line = template_line(exc.__traceback__)
            raise TemplateError(f"{_where(template, line)}: sandbox: {exc}") from exc
        except Exception as exc:
            line = template_line(exc.__traceback__)
            raise TemplateError(f"{_where(template, line)}: {type(exc).__name__}: {exc}") from exc
        return RenderedDocument(b"".join(chunks), template.format)


@hookimpl
def register_template_engines() -> list[TemplateEngine]:
    """Register the built-in Jinja engine."""
    return [JinjaTextEngine()]
