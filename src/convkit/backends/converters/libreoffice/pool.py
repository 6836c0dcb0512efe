"""A pool of warm LibreOffice processes: one document per process at a time, self-healing.

Each slot owns one :class:`OfficeProcess` and a long-lived thread that (re)starts it; the
parent-death signal the helper arms follows the thread that spawned it, so spawning from a
short-lived request thread would kill the helper when that thread ends.

Healing, by cause (the reason is what ``converter_process_restarted`` reports):

- ``timeout``: no answer within ``timeout_s`` -> the process is killed, the slot restarts,
  the caller gets ConversionTimeout (the job's retry counts the attempt);
- ``crash``: the process died mid-conversion -> restart, and the conversion is retried once
  on a fresh process; a second crash is ConversionCrashed;
- ``unhealthy``: an idle process failed its probe, a real tiny conversion (a TCP connect or
  a UNO ping would not see a wedged office);
- ``max_tasks`` / ``max_rss``: recycled after a finished conversion, never during one.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from convkit.errors import ConversionCrashed, ConversionError, ConversionTimeout, ServiceUnavailable
from convkit.tempdirs import make_owned_dir

from .process import OfficeProcess, ProcessDied, ProcessTimeout

__all__ = ["Events", "OfficePool", "Slot"]

log = logging.getLogger("convkit.libreoffice")

#: (event name, keyword arguments) -> None; the converter relays them to the plugin hooks.
Events = Callable[[str, dict[str, Any]], None]

_STARTING, _IDLE, _BUSY, _FAILED, _CLOSED = "starting", "idle", "busy", "failed", "closed"


class Slot:
    """One place in the pool: its current process, its state and its restart thread."""

    def __init__(self, pool: OfficePool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.generation = 0
        self.process: OfficeProcess | None = None
        self.state = _STARTING
        self.error: str | None = None
        self.failures = 0
        self._wake = threading.Event()
        self._wake.set()  # start at once
        self.thread = threading.Thread(
            target=self._run, daemon=True, name=f"convkit-lo-slot-{index}"
        )

    def restart(self) -> None:
        """Ask the slot's thread for a fresh process (the caller killed the old one)."""
        self._wake.set()

    def _run(self) -> None:
        pool = self.pool
        while True:
            self._wake.wait()
            self._wake.clear()
            if pool.closed:
                return
            self.generation += 1
            directory = pool.root / f"p{self.index}-{self.generation}"
            proc = OfficeProcess(
                python=pool.python,
                soffice=pool.soffice,
                directory=directory,
                start_timeout_s=pool.start_timeout_s,
            )
            try:
                proc.start()
                pool.warm_up(proc)
            except (ServiceUnavailable, ProcessDied, ProcessTimeout, ConversionError) as exc:
                proc.kill()
                self.failures += 1
                self.error = str(getattr(exc, "message", exc))
                log.warning("LibreOffice process failed to start: %s", self.error)
                if self.failures >= pool.max_start_failures:
                    pool.set_state(self, _FAILED)
                    # Try again later: a missing font cache or a full disk may be fixed.
                    pool.closing.wait(min(30.0, pool.start_timeout_s))
                else:
                    pool.closing.wait(0.2 * self.failures)
                if not pool.closed:
                    self._wake.set()
                continue
            if pool.closed:
                proc.kill()
                return
            self.failures = 0
            self.error = None
            self.process = proc
            pool.set_state(self, _IDLE)


class OfficePool:
    """Warm LibreOffice processes behind one :meth:`convert` call.

    :param size: number of processes (each converts one document at a time).
    :param python: interpreter with ``uno`` that runs the helper.
    :param events: receives ``conversion_finished``, ``converter_process_restarted`` and
        ``converter_pool_changed`` with their keyword arguments (never raises into the pool).
    """

    #: Test seam: called right after a request was handed to a process, with the process and
    #: the request (fault-injection tests kill or stop soffice here, mid-conversion).
    on_dispatch: Callable[[OfficeProcess, dict[str, Any]], None] | None = None

    def __init__(
        self,
        *,
        size: int,
        python: str,
        soffice: str,
        timeout_s: float,
        max_tasks: int,
        max_rss_mb: float,
        events: Events,
        start_timeout_s: float = 60.0,
        probe_timeout_s: float = 20.0,
        probe_interval_s: float = 60.0,
        max_start_failures: int = 3,
    ) -> None:
        self.size = max(1, size)
        self.python = python
        self.soffice = soffice
        self.timeout_s = timeout_s
        self.max_tasks = max_tasks
        self.max_rss_mb = max_rss_mb
        self.start_timeout_s = start_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_interval_s = probe_interval_s
        self._last_probe = 0.0  # monotonic time of the last idle probe
        self.max_start_failures = max_start_failures
        self._events = events
        self.closed = False
        self.closing = threading.Event()
        # Labelled, so the next start removes it if this process is killed.
        self.root = make_owned_dir("convkit-lo-pool-")
        self._probe_src = self.root / "probe.txt"
        self._probe_src.write_text("convkit health probe\n", encoding="utf-8")
        self._cond = threading.Condition()
        self.slots = [Slot(self, i) for i in range(self.size)]
        for slot in self.slots:
            slot.thread.start()
        self._last_probe = 0.0  # monotonic time of the last idle probe: the first one is due
        self._prober = threading.Thread(
            target=self._probe_loop, daemon=True, name="convkit-lo-probe"
        )
        self._prober.start()

    # -- state ---------------------------------------------------------------------------------
    def _emit(self, name: str, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):  # a broken plugin never breaks a conversion
            self._events(name, kwargs)

    def counts(self) -> tuple[int, int]:
        """(busy, idle) processes now."""
        with self._cond:
            busy = sum(s.state == _BUSY for s in self.slots)
            idle = sum(s.state == _IDLE for s in self.slots)
        return busy, idle

    def set_state(self, slot: Slot, state: str) -> None:
        with self._cond:
            if self.closed and state != _CLOSED:
                return
            slot.state = state
            self._cond.notify_all()
        busy, idle = self.counts()
        self._emit("converter_pool_changed", busy=busy, idle=idle)

    def wait_ready(self, timeout: float) -> None:
        """Wait until at least one process is idle; ServiceUnavailable if none can start."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(s.state in (_IDLE, _BUSY) for s in self.slots):
                if all(s.state == _FAILED for s in self.slots):
                    raise ServiceUnavailable(self._start_error())
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise ServiceUnavailable(
                        f"no LibreOffice process became ready within {timeout:g}s"
                        + (f": {self._start_error()}" if self._start_error() else "")
                    )
                self._cond.wait(remaining)

    def _start_error(self) -> str:
        errors = [s.error for s in self.slots if s.error]
        return f"LibreOffice cannot start: {errors[0]}" if errors else ""

    def _acquire(self, timeout: float) -> Slot:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise ServiceUnavailable("the LibreOffice pool is closed")
                for slot in self.slots:
                    if slot.state == _IDLE:
                        slot.state = _BUSY
                        break
                else:
                    if all(s.state == _FAILED for s in self.slots):
                        raise ServiceUnavailable(self._start_error())
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ServiceUnavailable(f"no LibreOffice process free within {timeout:g}s")
                    self._cond.wait(min(remaining, 1.0))
                    continue
                break
        busy, idle = self.counts()
        self._emit("converter_pool_changed", busy=busy, idle=idle)
        return slot

    def _replace(self, slot: Slot, reason: str) -> None:
        """Kill the slot's process and have its thread start a new one."""
        proc, slot.process = slot.process, None
        if proc is not None:
            proc.kill()
        self.set_state(slot, _STARTING)
        log.warning("LibreOffice process restarted", extra={"reason": reason})
        self._emit("converter_process_restarted", reason=reason)
        slot.restart()

    def _release(self, slot: Slot) -> None:
        proc = slot.process
        assert proc is not None
        if proc.tasks >= self.max_tasks:
            self._replace(slot, "max_tasks")
        elif self.max_rss_mb and proc.rss_mb() > self.max_rss_mb:
            self._replace(slot, "max_rss")
        else:
            self.set_state(slot, _IDLE)

    # -- work ----------------------------------------------------------------------------------
    def _run(self, proc: OfficeProcess, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = proc.send(request)
        if self.on_dispatch is not None:
            self.on_dispatch(proc, request)
        return proc.receive(request_id, timeout)

    def warm_up(self, proc: OfficeProcess) -> None:
        """Convert the probe once with Writer (the first document of a kind is the slowest)."""
        self.probe(proc)

    def probe(self, proc: OfficeProcess) -> None:
        """A real tiny conversion; raises ProcessTimeout / ProcessDied / ConversionError."""
        dst = proc.directory / "probe.pdf"
        answer = self._run_plain(
            proc,
            {
                "src": str(self._probe_src),
                "dst": str(dst),
                "import_filter": "Text (encoded)",
                "import_options": "UTF8",
                "export_filter": "writer_pdf_Export",
            },
            self.probe_timeout_s,
        )
        ok = answer.get("ok") and dst.is_file() and dst.read_bytes()[:5] == b"%PDF-"
        with contextlib.suppress(OSError):
            dst.unlink()
        if not ok:
            raise ConversionError(f"health probe failed: {answer.get('error', 'no output')}")

    @staticmethod
    def _run_plain(proc: OfficeProcess, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        return proc.receive(proc.send(request), timeout)

    def probe_idle(self) -> int:
        """Probe every idle process now; restart those that fail. Returns how many failed."""
        failed = 0
        for slot in self.slots:
            with self._cond:
                if slot.state != _IDLE or slot.process is None:
                    continue
                slot.state = _BUSY  # nobody else may use it during the probe
            proc = slot.process
            try:
                self.probe(proc)
            except (ProcessTimeout, ProcessDied, ConversionError):
                failed += 1
                self._replace(slot, "unhealthy")
                continue
            self.set_state(slot, _IDLE)
        return failed

    def _probe_loop(self) -> None:
        while not self.closed:
            self.closing.wait(min(self.probe_interval_s, 1.0))
            if self.closed:
                return
            now = time.monotonic()
            if now - self._last_probe >= self.probe_interval_s:
                self._last_probe = now
                with contextlib.suppress(Exception):
                    self.probe_idle()

    def convert(self, request: dict[str, Any], *, source_format: str, target_format: str) -> None:
        """Run one conversion request on a free process.

        :raises ConversionTimeout: no answer within ``timeout_s`` (the process was restarted).
        :raises ConversionCrashed: LibreOffice died on it twice (restarted each time).
        :raises ConversionError: LibreOffice could not load or export the document.
        :raises ServiceUnavailable: no process can start.
        """
        crashes = 0
        while True:
            slot = self._acquire(timeout=max(self.start_timeout_s, self.timeout_s) * 4)
            proc = slot.process
            assert proc is not None
            started = time.monotonic()

            def finished(outcome: str, started: float = started) -> None:
                self._emit(
                    "conversion_finished",
                    source_format=source_format,
                    target_format=target_format,
                    duration_s=time.monotonic() - started,
                    outcome=outcome,
                )

            try:
                answer = self._run(proc, request, self.timeout_s)
            except ProcessTimeout:
                self._replace(slot, "timeout")
                finished("timeout")
                raise ConversionTimeout(
                    f"LibreOffice took longer than {self.timeout_s:g}s converting "
                    f"{source_format} to {target_format}; its process was restarted"
                ) from None
            except ProcessDied as exc:
                self._replace(slot, "crash")
                finished("crash")
                crashes += 1
                if crashes >= 2:
                    raise ConversionCrashed(
                        f"LibreOffice crashed converting {source_format} to {target_format} "
                        f"(twice; {exc})"
                    ) from None
                continue  # once more, on a fresh process
            except BaseException:
                # Interrupted between send and answer: the process state is unknown.
                self._replace(slot, "crash")
                raise
            proc.tasks += 1
            if not answer.get("ok"):
                if proc.alive():
                    self._release(slot)
                else:
                    self._replace(slot, "crash")
                finished("error")
                raise ConversionError(
                    f"LibreOffice could not convert {source_format} to {target_format}: "
                    f"{answer.get('error', 'unknown error')}"
                )
            self._release(slot)
            finished("ok")
            return

    def process_info(self) -> list[dict[str, Any]]:
        """Per slot: state, pids, tasks and RSS (for ``convkit doctor`` and tests)."""
        out = []
        for slot in self.slots:
            proc = slot.process
            out.append(
                {
                    "slot": slot.index,
                    "state": slot.state,
                    "generation": slot.generation,
                    "helper_pid": proc.helper.pid if proc and proc.helper else 0,
                    "soffice_pid": proc.soffice_pid if proc else 0,
                    "pgid": proc.pgid if proc else 0,
                    "tasks": proc.tasks if proc else 0,
                    "rss_mb": round(proc.rss_mb(), 1) if proc else 0.0,
                    "error": slot.error,
                }
            )
        return out

    def close(self) -> None:
        """Kill every process, stop the threads, remove the pool's directory. Idempotent."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self.closing.set()
            self._cond.notify_all()
        for slot in self.slots:
            slot.restart()  # wake the thread so it sees `closed` and ends
        for slot in self.slots:
            slot.thread.join(self.start_timeout_s + 15)
            proc, slot.process = slot.process, None
            if proc is not None:
                proc.kill()
            slot.state = _CLOSED
        shutil.rmtree(self.root, ignore_errors=True)
