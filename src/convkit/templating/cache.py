"""The compiled-template cache every engine keeps its compiled templates in."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

__all__ = ["LRU", "CacheStats"]

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


class CacheStats:
    """An engine's ``cache_hits`` and ``cache_misses``, read from its ``_cache`` (an LRU)."""

    _cache: LRU[Any, Any]

    @property
    def cache_hits(self) -> int:
        """How many renders/checks found their compiled template in the cache."""
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        """How many renders/checks had to compile."""
        return self._cache.misses
