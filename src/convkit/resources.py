"""What a render may read besides its template and data: stored images, scoped to one job.

The service sets the scope around each render (limited to the job's tenant); engines reach it
through :func:`current_image_loader` and need no access to storage themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

__all__ = ["MAX_IMAGE_BYTES", "ImageLoader", "current_image_loader", "image_loader_scope"]

#: Largest image a template may embed, in bytes (decoded, or read from storage).
MAX_IMAGE_BYTES = 20 * 1024 * 1024

#: Reads the bytes of a stored image by storage key; raises FileNotFoundError if absent.
ImageLoader = Callable[[str], bytes]

_SCOPED_LOADER: contextvars.ContextVar[ImageLoader | None] = contextvars.ContextVar(
    "convkit_image_loader", default=None
)


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
