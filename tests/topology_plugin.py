"""A plugin the topology tests load into their processes (CONVKIT_PLUGINS=tests.topology_plugin).

- Each job event is appended to the file ``$TOPOLOGY_EVENTS`` as one line,
  ``<event> <job-id> <attempt> <pid>`` (one ``O_APPEND`` write per line, so lines from several
  processes never interleave): the test counts how often each job started and succeeded.
- A document whose bytes contain ``CRASH-ME`` kills its soffice process once it reached it: the
  always-crashing document of ``tests/test_libreoffice_healing.py``, in a worker process.
- A document containing ``SLOW-ME <seconds> <token>`` holds its conversion that long after it
  reached soffice, having appended ``dispatch <token> <attempt=0> <pid>``: a conversion longer
  than the lease, or one to kill a worker in the middle of.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from convkit import hookimpl
from convkit.job import Job, JobError

_SLOW = re.compile(rb"SLOW-ME (\d+(?:\.\d+)?) (\S+)")


def record(event: str, key: str, attempt: int) -> None:
    path = os.environ.get("TOPOLOGY_EVENTS")
    if not path:
        return
    line = f"{event} {key} {attempt} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(path: Path) -> list[tuple[str, str, int, int]]:
    """The lines :func:`record` wrote: ``(event, key, attempt, pid)``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        event, key, attempt, pid = line.split()
        out.append((event, key, int(attempt), int(pid)))
    return out


@hookimpl
def job_started(job: Job) -> None:
    record("started", job.id, job.attempts)


@hookimpl
def job_succeeded(job: Job, duration_s: float) -> None:
    record("succeeded", job.id, job.attempts)


@hookimpl
def job_failed(job: Job, error: JobError, will_retry: bool) -> None:
    record("retrying" if will_retry else "failed", job.id, job.attempts)


def _on_dispatch(proc: Any, request: dict[str, Any]) -> None:
    content = Path(request["src"]).read_bytes()
    if b"CRASH-ME" in content:
        os.kill(proc.soffice_pid, signal.SIGKILL)
    slow = _SLOW.search(content)
    if slow:
        record("dispatch", slow.group(2).decode(), 0)
        time.sleep(float(slow.group(1)))


@hookimpl(wrapper=True)
def register_converters(settings: Any, hook: Any) -> Generator[None, list[list[Any]], Any]:
    """Let LibreOffice misbehave on the marked documents (every other plugin's converters are
    returned unchanged)."""
    from convkit.backends.converters.libreoffice import LibreOfficeConverter

    results = yield
    for converters in results:
        for converter in converters:
            if isinstance(converter, LibreOfficeConverter):
                _misbehave(converter)
    return results


def _misbehave(converter: Any) -> None:
    convert = converter.convert

    def patched(*args: Any, **kwargs: Any) -> None:
        # The pool is made on first use (and again after a close): arm it each time.
        converter.pool.on_dispatch = _on_dispatch
        convert(*args, **kwargs)

    converter.convert = patched
