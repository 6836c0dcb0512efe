"""The behaviour every :class:`convkit.ports.Queue` backend must show.

Subclass :class:`QueueContract` in a ``Test*`` class and provide a ``queue`` fixture giving a
fresh, not-started queue (and stopping it on teardown; ``stop`` must be safe to call twice)::

    class TestMyQueue(QueueContract):
        @pytest.fixture
        def queue(self) -> Iterator[Queue]:
            q = MyQueue(...)
            yield q
            q.stop()

Queues that declare ``durable_delay`` or ``redelivers`` also need a ``queue_factory`` fixture: a
callable returning another fresh, not-started queue on the same broker and names as ``queue``
(the fixture stops and closes what it made). It stands for a new worker process: the tests stop
``queue`` and check that the one built next still delivers. Give these queues a short lease
(``JOB_LEASE_SECONDS``); redelivery waits for it. Queues without the capability skip those tests
with the reason.

Delivery is at-least-once, so the tests check that every id arrives, never that it arrives once
(the job store's fencing keeps one outcome). Ordering is not promised: the tests compare sets.
They wait for conditions with a deadline and never assert an upper bound on how long anything
took (a delay's lower bound is the contract, so that one is checked).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from convkit.errors import ServiceUnavailable
from convkit.ports import Queue

__all__ = ["DEADLINE_S", "OutageQueue", "QueueContract", "Recorder", "wait_until"]

#: How long a contract test waits for a condition before failing.
DEADLINE_S = 30.0


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE_S, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
        time.sleep(0.005)


class Recorder:
    """A handler that records the ids it receives (thread-safe)."""

    def __init__(self, fail_on: frozenset[str] = frozenset()) -> None:
        self._lock = threading.Lock()
        self._seen: list[str] = []
        self._fail_on = fail_on

    def __call__(self, job_id: str) -> None:
        with self._lock:
            self._seen.append(job_id)
        if job_id in self._fail_on:
            raise RuntimeError(f"handler failure injected for {job_id}")

    def count(self, job_id: str) -> int:
        """How many times ``job_id`` was received."""
        with self._lock:
            return self._seen.count(job_id)

    @property
    def seen(self) -> set[str]:
        """Distinct ids received so far."""
        with self._lock:
            return set(self._seen)

    def wait_for(self, ids: set[str], timeout: float = DEADLINE_S) -> None:
        """Wait until every id in ``ids`` was received."""
        wait_until(lambda: ids <= self.seen, timeout, f"ids {sorted(ids - self.seen)[:5]}")


class OutageQueue(Queue):
    """A queue whose broker is down while :attr:`down` is true, for tests of the 503 path
    through any kit: ``enqueue`` raises ServiceUnavailable, and so does ``check`` unless
    ``check_passes`` (the broker went away between the readiness check and the enqueue). While
    up, it hands every call to ``inner``."""

    name = "outage"

    def __init__(self, inner: Queue, *, check_passes: bool = False) -> None:
        self.inner = inner
        self.check_passes = check_passes
        self.down = True

    def _fail(self) -> None:
        if self.down:
            raise ServiceUnavailable("queue unavailable: the broker is down (injected)")

    def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
        self._fail()
        self.inner.enqueue(job_id, delay_s=delay_s)

    def check(self) -> None:
        if not self.check_passes:
            self._fail()
        self.inner.check()


class QueueContract:
    """Mix-in of contract tests; needs a ``queue`` fixture (a fresh, not-started Queue)."""

    def test_handler_gets_every_id(self, queue: Queue) -> None:
        """Every enqueued id reaches the handler."""
        rec = Recorder()
        queue.start(rec)
        ids = {f"job-{i}" for i in range(20)}
        for job_id in sorted(ids):
            queue.enqueue(job_id)
        rec.wait_for(ids)

    def test_enqueue_before_start_is_delivered_after_start(self, queue: Queue) -> None:
        """An id enqueued before start is kept and delivered once the queue starts."""
        queue.enqueue("early")
        rec = Recorder()
        queue.start(rec)
        rec.wait_for({"early"})

    def test_handler_exception_does_not_stop_delivery(self, queue: Queue) -> None:
        """After a handler raises, later ids are still delivered."""
        rec = Recorder(fail_on=frozenset({"boom-0", "boom-1", "boom-2"}))
        queue.start(rec)
        for i in range(3):
            queue.enqueue(f"boom-{i}")
        rec.wait_for({"boom-0", "boom-1", "boom-2"})
        later = {f"ok-{i}" for i in range(10)}
        for job_id in sorted(later):
            queue.enqueue(job_id)
        rec.wait_for(later)

    def test_stop_waits_for_running_handler(self, queue: Queue) -> None:
        """stop returns only after a handler that is running has finished."""
        running, release, finished = threading.Event(), threading.Event(), threading.Event()

        def handler(job_id: str) -> None:
            running.set()
            release.wait(DEADLINE_S)
            finished.set()

        queue.start(handler)
        queue.enqueue("slow")
        wait_until(running.is_set, what="the handler to start")
        # Released only after stop() was entered: if stop did not wait, it would return
        # before the handler could finish.
        timer = threading.Timer(0.2, release.set)
        timer.start()
        try:
            queue.stop(timeout=DEADLINE_S)
            assert finished.is_set()
        finally:
            timer.cancel()
            release.set()

    def test_concurrent_enqueues_all_delivered(self, queue: Queue) -> None:
        """Ids enqueued from many threads at once are all delivered."""
        rec = Recorder()
        queue.start(rec)
        n_threads, per_thread = 8, 25
        barrier = threading.Barrier(n_threads)
        errors: list[BaseException] = []

        def producer(t: int) -> None:
            try:
                barrier.wait(DEADLINE_S)
                for i in range(per_thread):
                    queue.enqueue(f"job-{t}-{i}")
            except BaseException as exc:
                errors.append(exc)

        producers = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for p in producers:
            p.start()
        for p in producers:
            p.join()
        assert not errors
        rec.wait_for({f"job-{t}-{i}" for t in range(n_threads) for i in range(per_thread)})

    def test_delayed_id_is_delivered(self, queue: Queue) -> None:
        """An id enqueued with a delay arrives (after the delay; no upper bound is asserted),
        and a later immediate id is not held back by it."""
        rec = Recorder()
        queue.start(rec)
        queue.enqueue("later", delay_s=0.5)
        queue.enqueue("now")
        rec.wait_for({"now"})
        rec.wait_for({"later"})

    def test_delayed_id_waits_for_its_delay(self, queue: Queue) -> None:
        """An id is not delivered before its delay has passed (a retry's backoff holds)."""
        rec = Recorder()
        queue.start(rec)
        enqueued = time.monotonic()
        queue.enqueue("backoff", delay_s=1.0)
        rec.wait_for({"backoff"})
        assert time.monotonic() - enqueued >= 1.0

    def test_capabilities_are_declared(self, queue: Queue) -> None:
        """A queue says what it can do as booleans, so callers never probe for methods."""
        for flag in (queue.consumes_in_process, queue.durable_delay, queue.redelivers):
            assert isinstance(flag, bool)
        assert isinstance(queue.name, str) and queue.name

    def test_check_passes_while_running(self, queue: Queue) -> None:
        """A started queue reports itself ready."""
        queue.start(Recorder())
        queue.check()

    def test_id_enqueued_again_after_delivery_is_delivered_again(self, queue: Queue) -> None:
        """At-least-once: a queue may merge duplicates that wait, never an enqueue made after
        the id was handed out (a retry would be lost)."""
        rec = Recorder()
        queue.start(rec)
        queue.enqueue("again")
        rec.wait_for({"again"})
        queue.enqueue("again")
        wait_until(lambda: rec.count("again") >= 2, what="the second delivery")

    def test_delay_survives_its_consumer(
        self, queue: Queue, request: pytest.FixtureRequest
    ) -> None:
        """``durable_delay``: an id delayed on a queue that then stops still arrives at a new
        queue instance, not before its delay, with no sweeper running."""
        if not queue.durable_delay:
            pytest.skip(
                f"the {queue.name} queue keeps delays in memory: the job row's not-before time "
                "and the sweeper are the durable record"
            )
        make: Callable[[], Queue] = request.getfixturevalue("queue_factory")
        first = Recorder()
        queue.start(first)
        enqueued = time.monotonic()
        queue.enqueue("durable", delay_s=1.5)
        queue.stop(timeout=DEADLINE_S)
        later = Recorder()
        make().start(later)
        later.wait_for({"durable"})
        assert time.monotonic() - enqueued >= 1.5
        assert "durable" not in first.seen

    def test_redelivered_after_its_consumer_dies(
        self, queue: Queue, request: pytest.FixtureRequest
    ) -> None:
        """``redelivers``: an id whose handler never returned (its consumer stopped without
        acknowledging it) reaches another consumer after the lease."""
        if not queue.redelivers:
            pytest.skip(
                f"the {queue.name} queue does not redeliver: the sweeper re-enqueues a job "
                "whose lease expired"
            )
        make: Callable[[], Queue] = request.getfixturevalue("queue_factory")
        taken, release = threading.Event(), threading.Event()

        def stuck(job_id: str) -> None:
            taken.set()
            release.wait(DEADLINE_S)

        queue.start(stuck)
        try:
            queue.enqueue("orphan")
            wait_until(taken.is_set, what="the first consumer to take the id")
            queue.stop(timeout=0)  # gone without acknowledging: its handler never returns
            rescuer = Recorder()
            make().start(rescuer)
            rescuer.wait_for({"orphan"})
        finally:
            release.set()
