"""The worker: consume the queue, run each job, sweep now and then. The policies (retries,
leases, time limits) live in :mod:`convkit.runner` and the job store; this loop stays short."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

import attrs

from convkit.service import ConvKit

__all__ = ["Worker"]

log = logging.getLogger("convkit.worker")


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
        while True:
            try:
                self.kit.runner.sweep()
            except Exception:  # database or queue down: try again next round
                log.warning("sweep failed", exc_info=True)
            if self._stop.wait(self.kit.settings.sweep_interval_seconds):
                return

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        # A warm-up still starting processes would start them after the kit closed its
        # converters; let it finish (it is bounded by the converter's start timeout).
        for thread in self._warmups:
            thread.join(timeout)
        self.kit.queue.stop(timeout)
        if self._sweeper is not None:
            self._sweeper.join(timeout)

    def run_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM; stop gracefully."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("worker started", extra={"queue": self.kit.queue.name})
        done.wait()
        log.info("worker stopping")
        self.stop()


def _warm_up(start: Callable[[], object]) -> None:
    try:
        start()
    except Exception as exc:  # the first job reports it properly; readiness shows it too
        log.warning("converter warm-up failed: %s", exc)
