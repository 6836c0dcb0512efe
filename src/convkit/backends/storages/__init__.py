"""Built-in storages: any fsspec URL (local folder, ``s3://`` ...) and per-instance memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convkit.hookspecs import hookimpl
from convkit.registry import BackendSpec

if TYPE_CHECKING:
    from convkit.ports import Storage
    from convkit.settings import Settings

_FSSPEC = "convkit.backends.storages.fsspec:create_fsspec_storage"


@hookimpl
def register_storages() -> list[BackendSpec]:
    """Offer ``memory``, ``s3`` and the ``*`` fallback (fsspec) storage backends."""
    return [
        BackendSpec("memory", "convkit.backends.storages.memory:create_memory_storage"),
        BackendSpec("*", _FSSPEC),
        BackendSpec("s3", _FSSPEC, extra="s3"),
    ]


def create_storage(url: str, settings: Settings | None = None) -> Storage:
    """The built-in storage ``url`` names: ``memory://`` (or ``memory:``) is a new
    :class:`~convkit.backends.storages.memory.MemoryStorage`, anything else (a plain path,
    ``file://``, ``s3://`` ...) an :class:`~convkit.backends.storages.fsspec.FsspecStorage`."""
    if url == "memory:" or url.startswith("memory://"):
        from convkit.backends.storages.memory import create_memory_storage

        return create_memory_storage(url, settings)
    from convkit.backends.storages.fsspec import create_fsspec_storage

    return create_fsspec_storage(url, settings)
