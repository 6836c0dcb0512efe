"""The Redis Streams queue under faults: a private ``redis-server`` (no persistence) killed by PID
and started again empty, while consumers run and while a ConvKit submits jobs.

The shared Redis of the machine is never touched here; the queue contract runs against it in
test_queue.py.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from convkit.backends.jobstores.sql.store import create_job_store
from convkit.backends.queues.redis_streams import RedisStreamsQueue
from convkit.backends.storages.fsspec import FsspecStorage
from convkit.errors import ServiceUnavailable
from convkit.job import JobSpec, JobState
from convkit.service import ConvKit
from convkit.settings import Settings, Tenant
from convkit.testing.queue import DEADLINE_S, Recorder, wait_until
from convkit.worker import Worker

TEMPLATES = Path(__file__).parent / "templates"
TENANT = Tenant("acme")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test alone, without persistence: a restart starts it empty."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            wait_until(self._pings(client), what=f"redis-server on port {self.port}")
        finally:
            client.close()

    def _pings(self, client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        return ping

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown save, no goodbye to clients."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(DEADLINE_S)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (./dev installs the redis-server package)")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def make_queue(private_redis: PrivateRedis) -> Iterator[Callable[..., RedisStreamsQueue]]:
    """Queues on the private Redis with a short lease, block and backoff; stopped afterwards."""
    made: list[RedisStreamsQueue] = []

    def build(**overrides: object) -> RedisStreamsQueue:
        options: dict[str, object] = {
            "prefix": "fault",
            "threads": 2,
            "lease_s": 1.0,
            "block_s": 0.2,
            "backoff_s": (0.05, 0.5),
            **overrides,
        }
        q = RedisStreamsQueue(private_redis.url, **options)  # type: ignore[arg-type]
        made.append(q)
        return q

    yield build
    for q in made:
        q.stop(timeout=DEADLINE_S)
        q.close()


def test_enqueue_and_check_while_redis_is_down_raise_service_unavailable(
    private_redis: PrivateRedis, make_queue: Callable[..., RedisStreamsQueue]
) -> None:
    """With the broker gone, enqueue (immediate and delayed) and check raise ServiceUnavailable
    instead of hanging (each wait is bounded by the broker timeout)."""
    q = make_queue(broker_timeout_s=0.5)
    q.enqueue("while-up")
    private_redis.kill()
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        q.enqueue("while-down")
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        q.enqueue("while-down", delay_s=5)
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        q.check()


@pytest.mark.slow
def test_consumers_survive_a_restart_without_persistence(
    private_redis: PrivateRedis,
    make_queue: Callable[..., RedisStreamsQueue],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis killed while a handler runs and started again empty: the consumers reconnect on
    their own, the group is created again, ids enqueued after the restart are delivered, and
    the outage is logged once, not once per retry."""
    running, release = threading.Event(), threading.Event()
    rec = Recorder()

    def handler(job_id: str) -> None:
        rec(job_id)
        if job_id == "in-flight":
            running.set()
            release.wait(DEADLINE_S)

    q = make_queue()
    q.start(handler)
    q.enqueue("before")
    rec.wait_for({"before"})
    q.enqueue("in-flight")
    wait_until(running.is_set, what="the in-flight handler")
    with caplog.at_level(logging.WARNING, logger="convkit.queue"):
        private_redis.kill()
        # Long enough for several reconnection attempts of every thread.
        time.sleep(1.0)
        private_redis.start()
        release.set()  # its acknowledgement meets an empty Redis: harmless
        after = {f"after-{i}" for i in range(10)}
        for job_id in sorted(after):
            q.enqueue(job_id)
        rec.wait_for(after)
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        groups = client.xinfo_groups(q.keys.stream)
    finally:
        client.close()
    assert [g["name"] for g in groups] == [q.keys.group]
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in caplog.records]
    assert any("reachable again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_consumers_started_while_redis_is_down_connect_when_it_comes_up(
    private_redis: PrivateRedis, make_queue: Callable[..., RedisStreamsQueue]
) -> None:
    """A worker may start before its broker: start() does not fail, and delivery begins once
    Redis answers."""
    private_redis.kill()
    q = make_queue()
    rec = Recorder()
    q.start(rec)
    time.sleep(0.3)  # the consumers are retrying now
    private_redis.start()
    q.enqueue("late-broker")
    rec.wait_for({"late-broker"})


@pytest.fixture
def kit(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[ConvKit]:
    """A ConvKit on SQLite, local storage and the Redis Streams queue on the private Redis; the
    sweeper effectively off, so every delivery comes through the stream."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        storage_url=str(tmp_path / "storage"),
        templates_dir=str(TEMPLATES),
        redis_url=private_redis.url,
        queue="redis",
        redis_queue_prefix="kit",
        worker_threads=1,
        sweep_interval_seconds=3600,
        office_pool_size=1,
    )
    store = create_job_store(settings.database_url, settings)
    store.migrate()
    kit = ConvKit.from_settings(settings, store=store, storage=FsspecStorage(settings.storage_url))
    yield kit
    kit.close()


PAGE = JobSpec("page", "html", data={"title": "After the outage", "items": []})


@pytest.mark.slow
def test_submit_while_redis_is_down_then_the_same_key_runs_to_succeeded(
    kit: ConvKit, private_redis: PrivateRedis
) -> None:
    """Redis down: a submit (template or upload) raises ServiceUnavailable (the API's 503) and
    leaves no row and no upload. After the restart, the same Idempotency-Key creates the job and
    a Worker runs it to succeeded."""
    assert isinstance(kit.queue, RedisStreamsQueue)
    private_redis.kill()
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        kit.submit(TENANT, PAGE, idempotency_key="retry-me")
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        kit.submit_upload(TENANT, io.BytesIO(b"<p>hi</p>"), filename="a.html", format="pdf")
    assert kit.list(TENANT).jobs == []
    assert kit.storage.list(TENANT.name) == []

    private_redis.start()
    worker = Worker(kit)
    worker.start()
    try:
        job, created = kit.submit(TENANT, PAGE, idempotency_key="retry-me")
        assert created
        wait_until(
            lambda: (
                (got := kit.get(TENANT, job.id)) is not None and got.status is JobState.SUCCEEDED
            ),
            what="the job to succeed",
        )
    finally:
        worker.stop(grace_s=DEADLINE_S)
    with kit.storage.open(f"{TENANT.name}/{job.id}/page.html") as fh:
        assert b"After the outage" in fh.read()


def test_enqueue_failing_after_the_check_leaves_no_row(
    kit: ConvKit, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies between the submit's readiness check and its enqueue: the row already written
    is deleted before the 503."""
    killed = False
    check = kit.queue.check

    def check_then_die() -> None:
        nonlocal killed
        check()
        private_redis.kill()  # the injected fault: the broker goes away right after the check
        killed = True

    monkeypatch.setattr(kit.queue, "check", check_then_die)
    with pytest.raises(ServiceUnavailable, match="queue unavailable"):
        kit.submit(TENANT, PAGE)
    assert killed
    assert kit.list(TENANT).jobs == []
