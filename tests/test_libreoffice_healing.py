"""Self-healing of the LibreOffice pool, each behaviour against a real soffice.

Faults are injected through ``OfficePool.on_dispatch`` (called right after a request reached a
process): SIGSTOP for a timeout, SIGKILL for a crash. Pools here have one process, so each test
knows which process it hurts.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from convkit import get_plugin_manager
from convkit.backends.converters.libreoffice import LibreOfficeConverter
from convkit.backends.converters.libreoffice.process import OfficeProcess
from convkit.errors import ConversionCrashed, ConversionTimeout
from convkit.job import JobState, RetryPolicy
from convkit.service import ConvKit
from convkit.testing.http import CONTRACT_KEYS
from tests.fixtures.office.support import Recorder, leftover_soffice, require_soffice

pytestmark = [pytest.mark.libreoffice, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _no_soffice_left() -> Iterator[None]:
    yield
    assert leftover_soffice() == []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in {"Z", "X"}


@attrs.define
class Pool:
    converter: LibreOfficeConverter
    events: Recorder
    tmp: Path

    def txt(self, text: str = "hello\n", name: str = "in") -> Path:
        src = self.tmp / f"{name}.txt"
        src.write_text(text)
        return src

    def convert(self, src: Path) -> Path:
        dst = src.with_suffix(".pdf")
        self.converter.convert(src, dst, source_format="txt", target_format="pdf")
        return dst

    def on_dispatch(self, fn: Callable[[OfficeProcess, dict[str, Any]], None] | None) -> None:
        self.converter.pool.on_dispatch = fn


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[Callable[..., Pool]]:
    require_soffice()
    made: list[LibreOfficeConverter] = []

    def make(**kw: Any) -> Pool:
        pm = get_plugin_manager(load_entry_points=False)
        rec = Recorder()
        pm.register(rec)
        converter = LibreOfficeConverter(pool_size=1, hook=pm.hook, **kw)
        made.append(converter)
        converter.start()
        return Pool(converter, rec, tmp_path)

    yield make
    for c in made:
        c.close()


def test_timeout_kills_restarts_and_raises(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(timeout_s=3)
    stopped: list[int] = []

    def stop(proc: OfficeProcess, request: dict[str, Any]) -> None:
        if "stop-me" in Path(request["src"]).read_text():
            stopped.append(proc.soffice_pid)
            os.kill(proc.soffice_pid, signal.SIGSTOP)

    pool.on_dispatch(stop)
    with pytest.raises(ConversionTimeout, match=r"longer than 3s"):
        pool.convert(pool.txt("stop-me\n"))
    assert not _alive(stopped[0])  # the stopped office was killed, not left frozen
    assert pool.events.of("converter_process_restarted") == [
        {"converter": "libreoffice", "reason": "timeout"}
    ]
    assert pool.events.of("conversion_finished")[-1]["outcome"] == "timeout"
    assert b"%PDF" in pool.convert(pool.txt("fine\n", "next")).read_bytes()[:8]


def test_crash_is_detected_restarted_and_retried(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    killed: list[int] = []

    def kill_once(proc: OfficeProcess, request: dict[str, Any]) -> None:
        if not killed:
            killed.append(proc.soffice_pid)
            os.kill(proc.soffice_pid, signal.SIGKILL)

    pool.on_dispatch(kill_once)
    out = pool.convert(pool.txt("survives a crash\n"))
    assert out.read_bytes().startswith(b"%PDF")
    assert pool.events.of("converter_process_restarted") == [
        {"converter": "libreoffice", "reason": "crash"}
    ]
    assert [e["outcome"] for e in pool.events.of("conversion_finished")] == ["crash", "ok"]
    assert pool.converter.pool.process_info()[0]["soffice_pid"] != killed[0]


def test_document_that_always_crashes(make_pool: Callable[..., Pool]) -> None:
    """A document that kills LibreOffice each time: ConversionCrashed after one in-pool retry,
    no endless loop, and the next document converts."""
    pool = make_pool()

    def kill_on_marker(proc: OfficeProcess, request: dict[str, Any]) -> None:
        if "CRASH-ME" in Path(request["src"]).read_text():
            os.kill(proc.soffice_pid, signal.SIGKILL)

    pool.on_dispatch(kill_on_marker)
    with pytest.raises(ConversionCrashed) as exc:
        pool.convert(pool.txt("CRASH-ME\n", "poison"))
    assert exc.value.code == "conversion_crashed"
    assert exc.value.retryable
    reasons = [e["reason"] for e in pool.events.of("converter_process_restarted")]
    assert reasons == ["crash", "crash"]
    assert pool.convert(pool.txt("other jobs keep flowing\n", "ok")).read_bytes()[:4] == b"%PDF"


def test_crashing_job_ends_failed_with_conversion_crashed(
    make_pool: Callable[..., Pool], kit_factory: Callable[..., ConvKit]
) -> None:
    """Through the service: each attempt crashes, the job is retried, then ends failed."""
    pool = make_pool()
    pool.on_dispatch(
        lambda proc, request: (
            os.kill(proc.soffice_pid, signal.SIGKILL)
            if b"CRASH-ME" in Path(request["src"]).read_bytes()
            else None
        )
    )
    kit = kit_factory()
    kit.converters.converters[:] = [pool.converter]
    kit.retry = RetryPolicy(max_attempts=2, backoff_base_s=0, jitter=False)
    tenant = next(iter(CONTRACT_KEYS.values()))
    job, _ = kit.submit_upload(tenant, io.BytesIO(b"CRASH-ME\n"), filename="bad.txt", format="pdf")
    good, _ = kit.submit_upload(tenant, io.BytesIO(b"fine\n"), filename="ok.txt", format="pdf")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kit.run_job(job.id)
        current = kit.store.get(job.id)
        assert current is not None
        if current.status is JobState.FAILED:
            break
        time.sleep(0.1)
    assert current.status is JobState.FAILED
    assert current.attempts == 2
    assert current.error is not None and current.error.code == "conversion_crashed"
    done = kit.run_job(good.id)
    assert done is not None and done.status is JobState.SUCCEEDED


def test_wedged_process_is_found_by_a_real_probe(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool()
    office = pool.converter.pool
    office.probe_timeout_s = 2
    [info] = office.process_info()
    assert office.probe_idle() == 0  # healthy: nothing restarted
    os.kill(info["soffice_pid"], signal.SIGSTOP)  # wedged: alive, listening, answering nothing
    assert office.probe_idle() == 1
    assert pool.events.of("converter_process_restarted") == [
        {"converter": "libreoffice", "reason": "unhealthy"}
    ]
    assert not _alive(info["soffice_pid"])
    assert pool.convert(pool.txt("after the probe\n")).read_bytes()[:4] == b"%PDF"


def test_recycled_above_max_rss(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(max_rss_mb=1)  # every real soffice is above 1 MiB
    first = pool.converter.pool.process_info()[0]["soffice_pid"]
    assert pool.convert(pool.txt()).read_bytes()[:4] == b"%PDF"  # the conversion is kept
    assert pool.events.of("converter_process_restarted") == [
        {"converter": "libreoffice", "reason": "max_rss"}
    ]
    assert pool.convert(pool.txt("second\n", "b")).read_bytes()[:4] == b"%PDF"
    assert not _alive(first)


def test_close_leaves_no_process_and_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_soffice()
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    converter = LibreOfficeConverter(pool_size=2)
    converter.start()
    pool = converter.pool
    src = tmp_path / "a.txt"
    src.write_text("x\n")
    converter.convert(src, tmp_path / "a.pdf", source_format="txt", target_format="pdf")
    pids = [i["soffice_pid"] for i in pool.process_info()] + [
        i["helper_pid"] for i in pool.process_info()
    ]
    pipes = [s.process.pipe for s in pool.slots if s.process is not None]
    assert pipes  # at least the process that converted
    converter.close()
    assert [p for p in pids if _alive(p)] == []
    assert leftover_soffice(pool.root) == []
    assert list(tmp.iterdir()) == []
    # LibreOffice's UNO pipe sockets live in /tmp whatever TMPDIR says: gone too.
    assert [p for p in pipes if list(Path("/tmp").glob(f"OSL_PIPE_*_{p}"))] == []


OWNER = """
import json, sys, time
from convkit.backends.converters.libreoffice import LibreOfficeConverter
c = LibreOfficeConverter(pool_size=2)
c.start()
pool = c.pool
deadline = time.monotonic() + 60
while time.monotonic() < deadline and any(s.state != "idle" for s in pool.slots):
    time.sleep(0.1)
print(json.dumps({"root": str(pool.root), "info": pool.process_info()}), flush=True)
time.sleep(600)
"""


def test_no_office_outlives_a_sigkilled_owner(tmp_path: Path) -> None:
    require_soffice()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdout=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert owner.stdout is not None
        state = json.loads(owner.stdout.readline())
        root = Path(state["root"])
        pids = [i["soffice_pid"] for i in state["info"]] + [i["helper_pid"] for i in state["info"]]
        assert len(leftover_soffice(root)) >= 2
        assert all(_alive(p) for p in pids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        if owner.stdout is not None:
            owner.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (leftover_soffice(root) or any(map(_alive, pids))):
        time.sleep(0.1)
    assert leftover_soffice(root) == []
    assert [p for p in pids if _alive(p)] == []
