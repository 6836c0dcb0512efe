"""Durability: a serving process killed with SIGKILL mid-work loses no job.

The real `convkit serve` runs in a subprocess with the in-process queue, SQLite and a local
storage folder; jobs convert HTML to PDF through a real LibreOffice, so they take long enough to
be caught in flight.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.libreoffice]

KEY = "restart-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `convkit serve` process whose JSON logs go to a file."""

    def __init__(self, tmp: Path, env: dict[str, str], run: int) -> None:
        self.port = _free_port()
        self.log = tmp / f"serve-{run}.log"
        self._fh = open(self.log, "wb")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convkit.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("GET", "/health")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start: {self.log.read_text()}") from None
                time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310  # our own server
            return json.loads(resp.read() or b"null")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._fh.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if not self._fh.closed:
            self._fh.close()


def _succeeded_lines(logs: list[Path]) -> Counter[str]:
    count: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "job succeeded":
                count[record["job_id"]] += 1
    return count


def test_sigkill_mid_work_loses_nothing(tmp_path: Path) -> None:
    """Submit jobs, SIGKILL the server while they run, restart it: every job reaches
    succeeded, and each succeeds exactly once."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "page.html").write_text("<h1>Page {{ n }}</h1><p>{{ text }}</p>")
    env = {
        **os.environ,
        "API_KEY": KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "STORAGE_URL": str(tmp_path / "storage"),
        "TEMPLATES_DIR": str(templates),
        "WORKER_THREADS": "1",
        "JOB_LEASE_SECONDS": "2",
        "SWEEP_INTERVAL_SECONDS": "0.5",
        # SIGKILL skips clean-up: keep the killed server's work dirs inside tmp_path.
        "TMPDIR": str(tmp_path),
    }
    first = Server(tmp_path, env, 1)
    try:
        ids = [
            first.call(
                "POST",
                "/jobs",
                {"template": "page", "format": "pdf", "data": {"n": n, "text": "restart"}},
            )["id"]
            for n in range(4)
        ]
        deadline = time.monotonic() + 120
        while not any(first.call("GET", f"/jobs/{i}")["status"] == "running" for i in ids):
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.05)
    finally:
        first.kill()

    second = Server(tmp_path, env, 2)
    try:
        deadline = time.monotonic() + 180
        while True:
            states = [second.call("GET", f"/jobs/{i}") for i in ids]
            if all(s["status"] in ("succeeded", "failed") for s in states):
                break
            assert time.monotonic() < deadline, f"jobs did not finish: {states}"
            time.sleep(0.2)
    finally:
        second.stop()
    assert [s["status"] for s in states] == ["succeeded"] * 4, states
    counts = _succeeded_lines([first.log, second.log])
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    for i in ids:
        artifacts = list((tmp_path / "storage" / "default" / i).iterdir())
        assert [a.name for a in artifacts] == ["page.pdf"]
        assert artifacts[0].read_bytes().startswith(b"%PDF")
