"""What one render sees besides its template and data: the job's locale, a wall-time deadline
and stored images, scoped to one job.

The service (and :func:`convkit.render`) set the scope around each render; engines and filters
read it through :func:`current_locale`, :func:`check_deadline` and :func:`current_image_loader`.
Context variables, not environment globals: compiled templates and environments are shared by
every thread, while locale, deadline and images belong to one job. Importing this module imports
no template library.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator

from convkit.errors import TemplateError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_RENDER_SECONDS",
    "ImageLoader",
    "check_deadline",
    "current_image_loader",
    "current_locale",
    "image_loader_scope",
    "render_scope",
]

#: Longest a single render may run, in seconds of wall time.
MAX_RENDER_SECONDS = 30.0

#: Largest image a template may embed, in bytes (decoded, or read from storage).
MAX_IMAGE_BYTES = 20 * 1024 * 1024

#: Reads the bytes of a stored image by storage key; raises FileNotFoundError if absent.
ImageLoader = Callable[[str], bytes]

_LOCALE: contextvars.ContextVar[str] = contextvars.ContextVar("convkit_locale", default="en_US")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "convkit_deadline", default=None
)
_SCOPED_LOADER: contextvars.ContextVar[ImageLoader | None] = contextvars.ContextVar(
    "convkit_image_loader", default=None
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


def current_locale() -> str:
    """The locale of the render in progress (``en_US`` outside one)."""
    return _LOCALE.get()


@contextlib.contextmanager
def image_loader_scope(loader: ImageLoader | None) -> Iterator[None]:
    """Let every engine read ``storage_key`` images through ``loader`` during one render."""
    token = _SCOPED_LOADER.set(loader)
    try:
        yield
    finally:
        _SCOPED_LOADER.reset(token)


def current_image_loader() -> ImageLoader | None:
    """The loader of the render in progress, or None outside a job (``convkit.render``)."""
    return _SCOPED_LOADER.get()
