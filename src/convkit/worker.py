"""The worker: consume the queue, run each job, sweep now and then. The policies (retries,
leases, time limits) live in :mod:`convkit.runner` and the job store; this loop stays short."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import attrs

from convkit.service import ConvKit

__all__ = ["Worker"]

log = logging.getLogger("convkit.worker")

#: After the grace, how long handed-back jobs' threads may take to unwind (temp folders).
_UNWIND_S = 5.0


@attrs.define
class Worker:
    """Runs ``kit``'s jobs from its queue in threads, with a sweeper thread beside them."""

    kit: ConvKit
    #: Start the converters' processes at once (False: on the first conversion; a Celery
    #: worker consuming only render jobs never needs them).
    warm_up: bool = attrs.field(default=True, kw_only=True)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _sweeper: threading.Thread | None = None
    _warmups: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> None:
        # Converters with a warm-up (the LibreOffice pool) start their processes now, in the
        # background, so the first job does not pay for it.
        for converter in self.kit.converters if self.warm_up else ():
            thread = threading.Thread(
                target=_warm_up, args=(converter.start,), name="convkit-warmup", daemon=True
            )
            thread.start()
            self._warmups.append(thread)
        if self.kit.queue.consumes_in_process:
            self.kit.queue.start(self._handle)
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="convkit-sweeper", daemon=True
        )
        self._sweeper.start()

    def _handle(self, job_id: str) -> None:
        self.kit.runner.run_job(job_id)

    def _sweep_loop(self) -> None:
        # The first sweep runs at once: after a restart, queued jobs and jobs whose worker
        # died are picked up again without anyone resubmitting.
        failing = False
        while True:
            try:
                self.kit.runner.sweep()
            except Exception as exc:  # database or queue down: try again next round
                # One line with the traceback when the outage starts, one line per round after.
                log.warning("sweep failed: %s", exc, exc_info=not failing)
                failing = True
            else:
                if failing:
                    log.info("sweep works again")
                failing = False
            if self._stop.wait(self.kit.settings.sweep_interval_seconds):
                return

    def stop(self, grace_s: float | None = None) -> list[str]:
        """Stop gracefully; returns the ids of the jobs handed back. In order:

        1. stop taking jobs: the sweeper ends, the queue stops consuming;
        2. let running jobs finish, for at most ``grace_s`` seconds (default
           ``SHUTDOWN_GRACE_SECONDS``);
        3. hand back those still running (:meth:`convkit.runner.Runner.release_running`:
           queued again, the attempt not counted, claimable at once; never reported as failed
           or timed out) and stop their work: the converters shut down, which kills LibreOffice
           and removes its folders; their threads get a few seconds to unwind.

        The kit runs no job afterwards (a job claimed later is handed straight back); close it.
        A process whose queue is consumed by another program (Celery) does steps 2-3 itself
        at the end of its own warm shutdown: ``kit.runner.wait_idle(grace)``, then
        ``kit.runner.release_running()`` and ``kit.converters.shutdown()``.
        """
        grace = self.kit.settings.shutdown_grace_seconds if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        self._stop.set()
        # The queue's stop waits for its handlers (the inline queue's threads); the runner's
        # wait covers jobs run by any other caller in this process.
        self.kit.queue.stop(grace)
        self.kit.runner.wait_idle(deadline - time.monotonic())
        released = self.kit.runner.release_running()
        if released:
            log.warning("jobs handed back at the end of the grace", extra={"job_ids": released})
            self.kit.converters.shutdown()
        # Handlers end quickly now (done, or their work killed): their temporary folders go.
        self.kit.queue.stop(max(deadline - time.monotonic(), _UNWIND_S))
        # A warm-up or sweep in flight ends soon: a sweep is short, and converters refuse to
        # start once shut down (here, or by kit.close() after this).
        for thread in [*self._warmups, *([self._sweeper] if self._sweeper else [])]:
            thread.join(max(deadline - time.monotonic(), _UNWIND_S))
        return released

    def run_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM; stop gracefully (:meth:`stop`)."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("worker started", extra={"queue": self.kit.queue.name})
        # NOTE: a bounded wait in a loop, not wait(): the kernel may deliver SIGTERM to any of
        # the process's threads, and then an untimed lock wait in the main thread is never
        # interrupted, so Python never runs the handler (seen as a worker ignoring SIGTERM).
        while not done.wait(0.5):
            pass
        log.info("worker stopping")
        self.stop()


def _warm_up(start: Callable[[], object]) -> None:
    try:
        start()
    except Exception as exc:  # the first job reports it properly; readiness shows it too
        log.warning("converter warm-up failed: %s", exc)
