"""Artifacts in memory, per instance: the stub storage for tests and embedding apps."""

from __future__ import annotations

import io
import threading
from typing import IO

from convkit.errors import StorageError
from convkit.ports import Storage
from convkit.settings import Settings

__all__ = ["MemoryStorage", "create_memory_storage"]


class MemoryStorage(Storage):
    """Artifacts in a dict owned by this instance (thread-safe); for tests and embedding."""

    name = "memory"

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _put(self, key: str, src: IO[bytes]) -> int:
        try:
            # Read everything before touching the dict: a failing stream stores nothing.
            data = src.read()
        except Exception as exc:
            raise StorageError(f"storage put of {key!r} failed: {exc}") from exc
        with self._lock:
            self._data[key] = bytes(data)
        return len(data)

    def _open(self, key: str) -> IO[bytes]:
        with self._lock:
            try:
                return io.BytesIO(self._data[key])
            except KeyError:
                raise FileNotFoundError(key) from None

    def _exists(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def _delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def _list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix + "/"))

    def _delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith(prefix + "/")]
            for k in doomed:
                del self._data[k]
        return len(doomed)


def create_memory_storage(url: str, settings: Settings | None = None) -> MemoryStorage:
    """Factory for ``memory://``: a new, empty :class:`MemoryStorage` on every call."""
    return MemoryStorage()
