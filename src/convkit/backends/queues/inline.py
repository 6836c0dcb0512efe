"""The inline queue: job ids handed to worker threads of this process.

Nothing survives a restart, delays included, which is fine: the job store is the source of truth
(a retry's not-before time is on the row) and the sweeper re-enqueues every job nobody holds.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable

from convkit.errors import ServiceUnavailable
from convkit.ports import Queue
from convkit.settings import Settings

__all__ = ["InlineQueue", "create_inline_queue"]

log = logging.getLogger("convkit.queue")


class InlineQueue(Queue):
    """In-process queue served by ``threads`` daemon threads.

    An id enqueued again while still waiting runs once. Ids enqueued before :meth:`start` wait
    for it. A delayed id waits in memory (a heap the worker threads watch, no timer threads).
    :meth:`join` waits until everything enqueued has been handled, delayed ids included (tests).
    """

    name = "inline"

    def __init__(self, threads: int = 2) -> None:
        if threads < 1:
            raise ValueError(f"InlineQueue needs at least one thread, not {threads}")
        self.threads = threads
        # A deque under a condition rather than queue.Queue: stop() must wake idle workers at
        # once and have them leave waiting messages behind, which queue.Queue cannot do
        # without polling.
        self._items: collections.deque[str] = collections.deque()
        self._pending: set[str] = set()
        self._delayed: list[tuple[float, str]] = []  # heap of (due, job_id), monotonic time
        self._active = 0
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._started = False
        self._stopping = False

    def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
        """Hand ``job_id`` to a worker after ``delay_s`` seconds, unless it is already waiting to
        run now; raise ServiceUnavailable after :meth:`stop`."""
        with self._cond:
            if self._stopping:
                raise ServiceUnavailable("inline queue is stopped")
            if delay_s > 0:
                heapq.heappush(self._delayed, (time.monotonic() + delay_s, job_id))
                # Every idle worker may be sleeping until a later due time: wake them all.
                self._cond.notify_all()
            else:
                self._ready(job_id)
                self._cond.notify()

    def _ready(self, job_id: str) -> None:
        # Called with the lock held.
        if job_id not in self._pending:
            self._pending.add(job_id)
            self._items.append(job_id)

    def _next_wait(self) -> float | None:
        """Move due delayed ids to the ready list; return seconds until the next one is due
        (None: nothing delayed). Called with the lock held."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._ready(heapq.heappop(self._delayed)[1])
        return self._delayed[0][0] - now if self._delayed else None

    def start(self, handler: Callable[[str], None]) -> None:
        """Start the worker threads; each calls ``handler(job_id)`` per message."""
        with self._cond:
            if self._stopping:
                raise ServiceUnavailable("inline queue is stopped")
            if self._started:
                raise RuntimeError("inline queue already started")
            self._started = True
            for i in range(self.threads):
                t = threading.Thread(
                    target=self._work, args=(handler,), name=f"convkit-inline-{i}", daemon=True
                )
                self._workers.append(t)
                t.start()

    def _work(self, handler: Callable[[str], None]) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    wait = self._next_wait()
                    if self._items:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                job_id = self._items.popleft()
                # Taken: from now on the same id enqueued again is a new message.
                self._pending.discard(job_id)
                self._active += 1
            try:
                handler(job_id)
            except Exception:
                # The job store records the failure; one bad job must not kill a worker.
                log.exception("inline queue handler failed for job %s", job_id)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages (waiting and delayed ones are dropped) and wait up to
        ``timeout`` seconds for running handlers. Calling it again is harmless."""
        with self._cond:
            self._stopping = True
            self._delayed.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            if t is threading.current_thread():  # stop() called from a handler
                continue
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._workers if t.is_alive()]
        if alive:
            log.warning("inline queue stopped with handlers still running in %s", alive)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no message waits and no handler runs; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._items and not self._delayed and self._active == 0, timeout
            )

    def check(self) -> None:
        """Raise ServiceUnavailable once the queue was stopped."""
        with self._cond:
            if self._stopping:
                raise ServiceUnavailable("inline queue is stopped")


def create_inline_queue(settings: Settings) -> InlineQueue:
    """Factory for ``CONVKIT_QUEUE=inline``: ``settings.worker_threads`` threads (at least 1)."""
    return InlineQueue(threads=max(1, settings.worker_threads))
