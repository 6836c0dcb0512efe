"""The worker: consume the queue, run each job, sweep now and then. The policies (retries,
leases, time limits) live in the service and the job store; this loop stays short."""

from __future__ import annotations

import logging
import signal
import threading

import attrs

from convkit.service import ConvKit

__all__ = ["Worker"]

log = logging.getLogger("convkit.worker")


@attrs.define
class Worker:
    """Runs ``kit``'s jobs from its queue in threads, with a sweeper thread beside them."""

    kit: ConvKit
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _sweeper: threading.Thread | None = None

    def start(self) -> None:
        self.kit.queue.start(self._handle)
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="convkit-sweeper", daemon=True
        )
        self._sweeper.start()

    def _handle(self, job_id: str) -> None:
        self.kit.run_job(job_id)

    def _sweep_loop(self) -> None:
        # The first sweep runs at once: after a restart, queued jobs and jobs whose worker
        # died are picked up again without anyone resubmitting.
        while True:
            try:
                self.kit.sweep()
            except Exception:  # database or queue down: try again next round
                log.warning("sweep failed", exc_info=True)
            if self._stop.wait(self.kit.settings.sweep_interval_seconds):
                return

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
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
