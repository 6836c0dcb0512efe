"""The one sandboxed Jinja environment every template engine renders in.

Templates come from users, so they run in Jinja's immutable sandbox, made stricter (see
:class:`_Sandbox`), with the locale filters of :mod:`convkit.templating.filters` and a ``range``
that honours the render deadline of :mod:`convkit.templating.scope`.
"""

from __future__ import annotations

import operator
import types
from collections.abc import Iterator
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from convkit.templating.filters import FILTERS
from convkit.templating.scope import check_deadline

__all__ = [
    "MAX_OUTPUT_BYTES",
    "TEMPLATE_FILENAME",
    "TemplateLimitError",
    "make_environment",
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


class TemplateLimitError(SecurityError):
    """The sandbox refused to build a value far beyond the output limit (``'x' * 10**9``,
    ``10 ** 10 ** 10``): a limit (``template_limit_exceeded``), not an escape attempt."""


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
                raise TemplateLimitError("sequence repetition would exceed the output size limit")
            return operator.mul(left, right)
        if operator_ == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and right > 0
                and abs(left).bit_length() * right > _MAX_POW_BITS
            ):
                raise TemplateLimitError("power result would be too large")
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
