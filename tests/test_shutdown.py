"""Graceful stops: SIGTERM to `convkit serve` (each framework) and `convkit worker` during a
conversion exits 0, finishes or hands back the job (never fails it), and leaves no convkit
folder in the temp dir; start-up removes what a killed predecessor left; the worker's probe
server; the hand-back fence in the runner.

The processes run the real CLI in subprocesses on SQLite and a local storage folder (the
Celery workers on the shared Redis too, under queue names of their test's own). The
conversion is a test plugin's text -> PDF converter that takes SLOW_CONVERT_SECONDS (a real
LibreOffice conversion cannot be made reliably slow); LibreOffice's pool still starts in every
process (the workers warm it up), so its folder and its shutdown are part of each run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from convkit.backends.jobstores.sql.store import create_job_store
from convkit.health import HealthServer
from convkit.job import Job, JobSpec, JobState
from convkit.ports import JobStore
from convkit.service import ConvKit
from convkit.settings import Settings
from convkit.tempdirs import OWNER_FILE, PREFIXES, make_owned_dir, remove_orphans
from convkit.testing.http import ALICE_KEY
from convkit.testing.services import service_url

ROOT = Path(__file__).resolve().parent.parent
KEY = "shutdown-test-key"
#: Generous: a stop must end within the grace plus this (LibreOffice's kill, slow CI machines).
MARGIN_S = 30.0
DEADLINE_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _convkit_folders(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(PREFIXES))


class Deployment:
    """One database, storage and temp folder shared by the processes a test starts in turn."""

    def __init__(self, tmp_path: Path) -> None:
        templates = tmp_path / "templates"
        templates.mkdir()
        (templates / "note.txt").write_text("Note {{ n }}\n")
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.root = tmp_path
        self.db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "API_KEY": KEY,
            "DATABASE_URL": self.db_url,
            "STORAGE_URL": str(tmp_path / "storage"),
            "TEMPLATES_DIR": str(templates),
            "CONVKIT_PLUGINS": "tests.slow_converter",
            "WORKER_THREADS": "1",
            "OFFICE_POOL_SIZE": "1",
            "SWEEP_INTERVAL_SECONDS": "0.2",
            # Far longer than any wait here: a handed-back job must not wait for its lease.
            "JOB_LEASE_SECONDS": "600",
            "TMPDIR": str(self.tmp),
        }
        self._store: JobStore | None = None
        self.runs = 0

    @property
    def store(self) -> JobStore:
        """The job store, read from the test process (opened once the schema exists)."""
        if self._store is None:
            self._store = create_job_store(self.db_url, Settings(database_url=self.db_url))
        return self._store

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def start(self, command: list[str], **env: str) -> Process:
        self.runs += 1
        return Process(self, command, {**self.env, **env})

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class Process:
    """A `convkit` subprocess with its output in a log file."""

    def __init__(self, dep: Deployment, command: list[str], env: dict[str, str]) -> None:
        self.log = dep.root / f"run-{dep.runs}.log"
        self._fh = open(self.log, "wb")  # noqa: SIM115  # closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convkit.cli", *command],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=dep.root,
        )

    def wait_until(self, what: str, predicate: Callable[[], bool]) -> None:
        def check() -> bool:
            assert self.proc.poll() is None, f"exited early:\n{self.log.read_text()}"
            return predicate()

        _wait_for(what, check)

    def terminate(self, timeout: float, sig: signal.Signals = signal.SIGTERM) -> int:
        """SIGTERM (or ``sig``), then the exit status (within ``timeout`` seconds, else the test
        fails)."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"no exit within {timeout:g}s:\n{self.log.read_text()}") from None
        finally:
            self._fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._fh.close()

    def messages(self) -> list[str]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line).get("message", ""))
            except ValueError:
                continue
        return out


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(tmp_path)
    yield dep
    dep.close()


def _get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310  # our own server
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310  # our own server
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Server:
    """`convkit serve` on a free port."""

    def __init__(self, dep: Deployment, framework: str, **env: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.process = dep.start(
            ["serve", "--framework", framework, "--port", str(self.port)], **env
        )
        self.process.wait_until("the server", self._answers)

    def _answers(self) -> bool:
        try:
            return _get(f"{self.base}/health")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def submit(self) -> str:
        req = urllib.request.Request(  # noqa: S310  # our own server
            f"{self.base}/jobs",
            data=json.dumps({"template": "note", "format": "pdf", "data": {"n": 1}}).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310  # our own server
            job_id: str = json.loads(resp.read())["id"]
        return job_id


def _submit_directly(dep: Deployment) -> str:
    """Submit through a ConvKit of the test process: the worker's sweeper finds the row."""
    env = {k: v for k, v in dep.env.items() if k != "TMPDIR"}
    kit = ConvKit.from_settings(Settings.from_env(env), store=dep.store)
    try:
        job, _ = kit.submit(kit.settings.api_keys[KEY], JobSpec("note", "pdf", data={"n": 1}))
    finally:
        kit.queue.stop(0)
        kit.queue.close()
    return job.id


def _assert_stopped_cleanly(
    process: Process, dep: Deployment, grace: float, sig: signal.Signals = signal.SIGTERM
) -> None:
    assert process.terminate(grace + MARGIN_S, sig) == 0, process.log.read_text()
    assert _convkit_folders(dep.tmp) == [], process.log.read_text()
    messages = process.messages()
    assert "job failed" not in messages and "job attempt failed" not in messages, messages


# -- serve --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.libreoffice
@pytest.mark.parametrize("framework", ["fastapi", "flask", "django"])
def test_sigterm_to_serve_hands_back_a_long_job(deployment: Deployment, framework: str) -> None:
    """SIGTERM to `serve` while a conversion outlasts the grace: exit 0 soon after the grace,
    the job handed back (queued, attempt not counted, no folder left); the next start runs it
    at once (the lease would take 10 minutes) to succeeded at attempt 1."""
    grace = 1.0
    first = Server(
        deployment, framework, SHUTDOWN_GRACE_SECONDS=str(grace), SLOW_CONVERT_SECONDS="600"
    )
    job_id = first.submit()
    first.process.wait_until(
        "the job to run", lambda: deployment.job(job_id).status is JobState.RUNNING
    )
    _assert_stopped_cleanly(first.process, deployment, grace)
    handed_back = deployment.job(job_id)
    assert (handed_back.status, handed_back.attempts, handed_back.error) == (
        JobState.QUEUED,
        0,
        None,
    )
    assert "job handed back" in first.process.messages()

    second = Server(deployment, framework, SLOW_CONVERT_SECONDS="0")
    second.process.wait_until(
        "the job to succeed", lambda: deployment.job(job_id).status is JobState.SUCCEEDED
    )
    assert deployment.job(job_id).attempts == 1
    _assert_stopped_cleanly(second.process, deployment, 25)


@pytest.mark.slow
@pytest.mark.libreoffice
def test_sigterm_to_serve_lets_a_short_job_finish(deployment: Deployment) -> None:
    """SIGTERM to `serve` while a conversion that fits in the grace runs: the job succeeds
    before the process exits 0; an API-only replica's /ready leaves the converter out."""
    server = Server(deployment, "fastapi", SLOW_CONVERT_SECONDS="2")
    job_id = server.submit()
    server.process.wait_until(
        "the job to run", lambda: deployment.job(job_id).status is JobState.RUNNING
    )
    _assert_stopped_cleanly(server.process, deployment, 25)
    done = deployment.job(job_id)
    assert (done.status, done.attempts) == (JobState.SUCCEEDED, 1)

    api_only = Server(deployment, "fastapi", WORKER_THREADS="0", PATH="/nonexistent")
    try:
        status, body = _get(f"{api_only.base}/ready")
        assert status == 200, body
        assert body["checks"] == {"database": "ok", "queue": "ok", "storage": "ok"}
    finally:
        _assert_stopped_cleanly(api_only.process, deployment, 25)


# -- worker -------------------------------------------------------------------------------------


def _seed_leftovers(tmp: Path) -> tuple[Path, list[Path]]:
    """Folders as a killed predecessor (gone), a running process (this one) and an older
    convkit (no label) leave them: returns (the one to remove, those to keep)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp / "convkit-job-killed"
    alive = tmp / "convkit-lo-pool-running"
    unlabelled = tmp / "convkit-job-unlabelled"
    for folder in (gone, alive, unlabelled):
        folder.mkdir()
        (folder / "input.docx").write_bytes(b"a tenant's document")
    (gone / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    (alive / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": None}))
    return gone, [alive, unlabelled]


@pytest.mark.slow
@pytest.mark.libreoffice
def test_sigterm_to_worker_hands_back_then_restart_finishes(deployment: Deployment) -> None:
    """`convkit worker` (inline queue): at start it removes a killed predecessor's folder and
    nothing else; it serves /health and /ready on HEALTH_PORT; SIGTERM while a conversion
    outlasts the grace exits 0 with the job handed back; a restarted worker finishes it at
    attempt 1 at once."""
    gone, kept = _seed_leftovers(deployment.tmp)
    port = _free_port()
    grace = 1.0
    worker = deployment.start(
        ["worker"],
        SHUTDOWN_GRACE_SECONDS=str(grace),
        SLOW_CONVERT_SECONDS="600",
        HEALTH_PORT=str(port),
    )
    try:
        worker.wait_until("the probe server", lambda: _probe(port, "/health") == 200)
        assert not gone.exists()
        assert all(folder.is_dir() for folder in kept)
        status, ready = _get(f"http://127.0.0.1:{port}/ready")
        assert status == 200, ready
        assert ready["checks"] == {
            "database": "ok",
            "queue": "ok",
            "storage": "ok",
            "converter": "ok",
        }
        job_id = _submit_directly(deployment)
        worker.wait_until(
            "the job to run", lambda: deployment.job(job_id).status is JobState.RUNNING
        )
    except BaseException:
        worker.kill()
        raise
    for folder in kept:  # not ours to remove; out of the way of the no-folder check
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    _assert_stopped_cleanly(worker, deployment, grace)
    assert (deployment.job(job_id).status, deployment.job(job_id).attempts) == (
        JobState.QUEUED,
        0,
    )

    again = deployment.start(["worker"], SLOW_CONVERT_SECONDS="0")
    again.wait_until(
        "the job to succeed", lambda: deployment.job(job_id).status is JobState.SUCCEEDED
    )
    assert deployment.job(job_id).attempts == 1
    _assert_stopped_cleanly(again, deployment, 25)


def _probe(port: int, path: str) -> int | None:
    try:
        return _get(f"http://127.0.0.1:{port}{path}")[0]
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.mark.slow
@pytest.mark.libreoffice
def test_sigterm_to_worker_lets_a_short_job_finish(deployment: Deployment) -> None:
    """SIGTERM to `convkit worker` while a conversion that fits in the grace runs: it
    succeeds, then the worker exits 0 and leaves no folder."""
    port = _free_port()
    worker = deployment.start(["worker"], SLOW_CONVERT_SECONDS="2", HEALTH_PORT=str(port))
    try:
        worker.wait_until("the probe server", lambda: _probe(port, "/health") == 200)
        job_id = _submit_directly(deployment)
        worker.wait_until(
            "the job to run", lambda: deployment.job(job_id).status is JobState.RUNNING
        )
    except BaseException:
        worker.kill()
        raise
    _assert_stopped_cleanly(worker, deployment, 25)
    assert (deployment.job(job_id).status, deployment.job(job_id).attempts) == (
        JobState.SUCCEEDED,
        1,
    )


# -- worker, Celery -----------------------------------------------------------------------------


@pytest.fixture
def celery_deployment(deployment: Deployment) -> Iterator[tuple[Deployment, Any]]:
    """The deployment with CONVKIT_QUEUE=celery on the shared Redis, under queue names of this
    test's own (their keys are deleted afterwards); returns it and a Redis client."""
    redis = pytest.importorskip("redis")
    pytest.importorskip("celery")
    url = service_url("TEST_REDIS_URL", "redis://127.0.0.1:6379/0", default_port=6379)
    suffix = uuid.uuid4().hex[:10]
    deployment.env.update(
        CONVKIT_QUEUE="celery",
        REDIS_URL=url,
        CELERY_QUEUE_CONVERT=f"test-convert-{suffix}",
        CELERY_QUEUE_RENDER=f"test-render-{suffix}",
        # Deliveries come from the broker: a worker's sweeper runs once, at its start.
        SWEEP_INTERVAL_SECONDS="3600",
    )
    client = redis.Redis.from_url(url)
    try:
        yield deployment, client
    finally:
        for key in client.keys(f"*{suffix}*"):
            client.delete(key)
        client.close()


def _task_ids(client: Any, job_id: str, queue: str) -> tuple[set[str], set[str]]:
    """The Celery task ids of ``job_id``'s messages: (waiting in ``queue``, a Redis list; held
    in kombu's ``unacked`` hash: delivered, not acknowledged, so redelivered once the
    visibility timeout passes)."""
    waiting = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    unacked = [json.loads(m)[0] for m in client.hvals("unacked")]
    return (
        {m["headers"]["id"] for m in waiting if job_id in json.dumps(m)},
        {m["headers"]["id"] for m in unacked if job_id in json.dumps(m)},
    )


def _started_worker(dep: Deployment, *args: str, **env: str) -> Process:
    """`convkit worker`, once its probe server answers (the database is migrated by then)."""
    port = _free_port()
    worker = dep.start(["worker", *args], HEALTH_PORT=str(port), **env)
    try:
        worker.wait_until("the probe server", lambda: _probe(port, "/health") == 200)
    except BaseException:
        worker.kill()
        raise
    return worker


@pytest.mark.slow
@pytest.mark.libreoffice
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_sigterm_to_celery_worker_hands_back_to_another_worker(
    celery_deployment: tuple[Deployment, Any], pool: str
) -> None:
    """`convkit worker` (Celery, either pool): SIGTERM while a conversion outlasts the grace
    exits 0 soon after the grace with no folder left; the job is handed back (queued, attempt
    not counted), its Celery message acknowledged (nothing for Redis to redeliver later) and
    the job published again at once; a second worker runs it to succeeded at attempt 1 at
    once (the lease would take 10 minutes)."""
    dep, redis = celery_deployment
    convert_queue = dep.env["CELERY_QUEUE_CONVERT"]
    grace = 1.0
    first = _started_worker(
        dep, "--pool", pool, SHUTDOWN_GRACE_SECONDS=str(grace), SLOW_CONVERT_SECONDS="600"
    )
    try:
        job_id = _submit_directly(dep)
        first.wait_until("the job to run", lambda: dep.job(job_id).status is JobState.RUNNING)
    except BaseException:
        first.kill()
        raise
    # The running attempt's message, and any copy its start-up sweep published meanwhile.
    before, (running,) = _task_ids(redis, job_id, convert_queue)
    _assert_stopped_cleanly(first, dep, grace)
    handed_back = dep.job(job_id)
    assert (handed_back.status, handed_back.attempts, handed_back.error) == (
        JobState.QUEUED,
        0,
        None,
    )
    assert "job handed back" in first.messages()
    waiting, unacked = _task_ids(redis, job_id, convert_queue)
    assert unacked == set() and running not in waiting  # acknowledged, not given back
    assert waiting - before, "the handed-back job was not published again"

    second = dep.start(["worker"], SLOW_CONVERT_SECONDS="0")
    second.wait_until("the job to succeed", lambda: dep.job(job_id).status is JobState.SUCCEEDED)
    assert dep.job(job_id).attempts == 1
    _assert_stopped_cleanly(second, dep, 25)
    assert _task_ids(redis, job_id, convert_queue)[1] == set()


@pytest.mark.slow
@pytest.mark.libreoffice
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_celery_worker_lets_a_short_job_finish(
    celery_deployment: tuple[Deployment, Any], sig: signal.Signals
) -> None:
    """`convkit worker` (Celery): SIGTERM or SIGINT (Ctrl-C, after which Celery itself would
    exit 1) while a conversion that fits in the grace runs: it succeeds and its message is
    acknowledged, then the worker exits 0 and leaves no folder."""
    dep, redis = celery_deployment
    convert_queue = dep.env["CELERY_QUEUE_CONVERT"]
    worker = _started_worker(dep, SLOW_CONVERT_SECONDS="3")
    try:
        job_id = _submit_directly(dep)
        worker.wait_until("the job to run", lambda: dep.job(job_id).status is JobState.RUNNING)
    except BaseException:
        worker.kill()
        raise
    _, (running,) = _task_ids(redis, job_id, convert_queue)
    _assert_stopped_cleanly(worker, dep, 25, sig)
    assert (dep.job(job_id).status, dep.job(job_id).attempts) == (JobState.SUCCEEDED, 1)
    assert "job handed back" not in worker.messages()
    waiting, unacked = _task_ids(redis, job_id, convert_queue)
    assert unacked == set() and running not in waiting


# -- the hand-back, in process ------------------------------------------------------------------


def _status(kit: ConvKit, job_id: str) -> JobState | None:
    job = kit.store.get(job_id)
    return None if job is None else job.status


def test_a_handed_back_attempt_records_no_outcome(kit_factory: Callable[..., ConvKit]) -> None:
    """After release_running, the stopped attempt's late failure does not land, even on
    another worker that claimed the job at once (the same attempt number again); a job
    claimed afterwards is handed straight back."""
    kit = kit_factory(plugins=("tests.slow_converter",), values={"SLOW_CONVERT_SECONDS": 600.0})
    alice = kit.settings.api_keys[ALICE_KEY]
    job, _ = kit.submit(alice, JobSpec("greeting", "pdf", data={"name": "Ada"}))
    attempt = threading.Thread(target=kit.run_job, args=(job.id,))
    attempt.start()
    _wait_for("the attempt", lambda: _status(kit, job.id) is JobState.RUNNING)
    assert not kit.runner.wait_idle(0.1)
    assert kit.runner.release_running() == [job.id]
    other = kit.store.claim(job.id, lease_s=30)  # another worker, at once
    assert other is not None and other.attempts == 1
    kit.converters.shutdown()  # stops the conversion: the attempt ends with an error
    attempt.join(DEADLINE_S)
    assert not attempt.is_alive()
    assert kit.runner.wait_idle(0)
    now = kit.store.get(job.id)
    assert now is not None
    assert (now.status, now.attempts, now.error) == (JobState.RUNNING, 1, None)

    late, _ = kit.submit(alice, JobSpec("greeting", "txt", data={"name": "Bo"}))
    assert kit.run_job(late.id) is None
    after = kit.store.get(late.id)
    assert after is not None and (after.status, after.attempts) == (JobState.QUEUED, 0)


# -- start-up cleanup ---------------------------------------------------------------------------


def test_remove_orphans_removes_only_folders_of_gone_processes(tmp_path: Path) -> None:
    """A labelled folder whose process is gone (or whose pid now belongs to a newer process)
    is removed; a live owner's, an unlabelled one and other names stay."""
    gone, kept = _seed_leftovers(tmp_path)
    reused = tmp_path / "convkit-lo-job-reused"
    reused.mkdir()
    (reused / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": "0"}))
    other = tmp_path / "someone-else"
    other.mkdir()
    removed = remove_orphans(tmp_path)
    assert sorted(removed) == sorted([gone, reused])
    assert not gone.exists() and not reused.exists()
    assert all(p.is_dir() for p in [*kept, other])


def test_owned_folders_carry_their_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_owned_dir labels the folder with this process, so it survives remove_orphans."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = make_owned_dir("convkit-job-")
    assert folder.parent == tmp_path
    assert json.loads((folder / OWNER_FILE).read_text())["pid"] == os.getpid()
    assert remove_orphans(tmp_path) == []
    assert folder.is_dir()


# -- the probe server ---------------------------------------------------------------------------


def test_health_server_answers_probes_and_extra_routes(
    kit_factory: Callable[..., ConvKit], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health, /ready (names and ok/failing, never a message), extra routes, 404 otherwise."""
    from convkit.errors import ServiceUnavailable

    kit = kit_factory()
    server = HealthServer(
        kit,
        host="127.0.0.1",
        routes={"/metrics": lambda: (200, {"Content-Type": "text/plain"}, b"jobs_total 0\n")},
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(f"{base}/health") == (200, {"status": "ok"})
        status, ready = _get(f"{base}/ready")
        assert status == 200 and ready["status"] == "ready", ready
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:  # noqa: S310
            assert resp.read() == b"jobs_total 0\n"
        assert _get(f"{base}/nope")[0] == 404

        def down() -> None:
            raise ServiceUnavailable("bucket s3://secret-bucket unreachable")

        monkeypatch.setattr(kit.storage, "check", down)  # an injected fault
        status, ready = _get(f"{base}/ready")
        assert status == 503
        assert ready["checks"]["storage"] == "failing"
        assert "secret-bucket" not in json.dumps(ready)
    finally:
        server.stop()
