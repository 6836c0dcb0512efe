"""A clock tests move by hand, so lease expiry and TTLs need no sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import attrs


@attrs.define
class FakeClock:
    """Callable like :func:`convkit.ports.utcnow`; starts at a fixed instant."""

    now: datetime = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now = self.now + timedelta(seconds=seconds)
