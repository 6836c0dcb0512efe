"""The queue contract over the inline and Redis Streams queues; the inline queue's dedupe and
join, the plugin hook. Redis faults (restarts, outages) are in test_redis_queue.py."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import convkit
from convkit.backends.queues.inline import InlineQueue, create_inline_queue
from convkit.backends.queues.redis_streams import RedisStreamsQueue, create_redis_streams_queue
from convkit.errors import BackendUnavailable, ConfigError, ServiceUnavailable
from convkit.plugins import DEFAULT_PLUGINS
from convkit.ports import Queue
from convkit.registry import Registry
from convkit.testing.queue import DEADLINE_S, QueueContract, Recorder, wait_until
from convkit.testing.services import service_url


class TestInlineQueue(QueueContract):
    @pytest.fixture
    def queue(self) -> Iterator[Queue]:
        q = InlineQueue(threads=2)
        yield q
        q.stop(timeout=DEADLINE_S)


@pytest.fixture
def redis_queues() -> Iterator[Callable[..., RedisStreamsQueue]]:
    """Build Redis Streams queues on the shared Redis, all under one fresh prefix with a short
    lease; stop and close them afterwards and delete the prefix's keys (never FLUSHALL)."""
    url = service_url("TEST_REDIS_URL", "redis://127.0.0.1:6379/0", default_port=6379)
    prefix = f"convkit-test-{uuid.uuid4().hex[:12]}"
    made: list[RedisStreamsQueue] = []

    def build(**overrides: Any) -> RedisStreamsQueue:
        options: dict[str, Any] = {"threads": 2, "lease_s": 1.0, "block_s": 0.2, **overrides}
        q = RedisStreamsQueue(url, prefix=prefix, **options)
        made.append(q)
        return q

    yield build
    for q in made:
        q.stop(timeout=DEADLINE_S)
    if made:
        made[0]._redis.delete(*made[0].keys.all())
    for q in made:
        q.close()


class TestRedisStreamsQueue(QueueContract):
    @pytest.fixture
    def queue(self, redis_queues: Callable[..., RedisStreamsQueue]) -> Queue:
        return redis_queues()

    @pytest.fixture
    def queue_factory(
        self, redis_queues: Callable[..., RedisStreamsQueue]
    ) -> Callable[..., RedisStreamsQueue]:
        return redis_queues


@pytest.mark.slow
def test_redis_long_job_is_not_handed_to_another_consumer(
    redis_queues: Callable[..., RedisStreamsQueue],
) -> None:
    """A handler running for several leases keeps its entry (its idle time is refreshed): no
    other consumer gets it, and once acknowledged it is deleted from the stream."""
    lease = 0.5
    busy, other = Recorder(), Recorder()

    def slow(job_id: str) -> None:
        busy(job_id)
        time.sleep(lease * 6)

    first = redis_queues(lease_s=lease)
    first.start(slow)
    first.enqueue("long")
    busy.wait_for({"long"})
    redis_queues(lease_s=lease).start(other)
    wait_until(lambda: first._redis.xlen(first.keys.stream) == 0, what="the entry to go")
    time.sleep(lease * 3)  # a stale entry would have been handed out again by now
    assert busy.count("long") == 1
    assert other.seen == set()
    assert first._redis.xpending(first.keys.stream, first.keys.group)["pending"] == 0


@pytest.fixture
def inline() -> Iterator[InlineQueue]:
    q = InlineQueue(threads=1)
    yield q
    q.stop(timeout=DEADLINE_S)


def test_same_id_enqueued_twice_before_taken_runs_once(inline: InlineQueue) -> None:
    calls: list[str] = []
    inline.enqueue("a")
    inline.enqueue("a")
    inline.enqueue("b")
    inline.start(calls.append)
    assert inline.join(DEADLINE_S)
    assert sorted(calls) == ["a", "b"]


def test_same_id_enqueued_while_running_runs_again(inline: InlineQueue) -> None:
    running, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def handler(job_id: str) -> None:
        calls.append(job_id)
        running.set()
        release.wait(DEADLINE_S)

    inline.start(handler)
    inline.enqueue("a")
    wait_until(running.is_set, what="the first run")
    inline.enqueue("a")  # taken already: this is a new message
    release.set()
    assert inline.join(DEADLINE_S)
    assert calls == ["a", "a"]


def test_join_waits_for_queue_and_handlers(inline: InlineQueue) -> None:
    rec = Recorder()
    for i in range(50):
        inline.enqueue(f"job-{i}")
    inline.start(rec)
    assert inline.join(DEADLINE_S)
    assert rec.seen == {f"job-{i}" for i in range(50)}


def test_join_times_out_while_a_handler_runs(inline: InlineQueue) -> None:
    running, release = threading.Event(), threading.Event()

    def handler(job_id: str) -> None:
        running.set()
        release.wait(DEADLINE_S)

    inline.start(handler)
    inline.enqueue("a")
    wait_until(running.is_set)
    assert inline.join(0.01) is False
    release.set()
    assert inline.join(DEADLINE_S) is True


def test_single_thread_survives_handler_exception(
    inline: InlineQueue, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(fail_on=frozenset({"boom"}))
    inline.start(rec)
    with caplog.at_level(logging.ERROR, logger="convkit.queue"):
        inline.enqueue("boom")
        inline.enqueue("after")
        assert inline.join(DEADLINE_S)
    assert rec.seen == {"boom", "after"}
    assert any("boom" in r.getMessage() and r.exc_info for r in caplog.records)


def test_check_and_enqueue_fail_after_stop(inline: InlineQueue) -> None:
    inline.start(Recorder())
    inline.check()
    inline.stop()
    with pytest.raises(ServiceUnavailable):
        inline.check()
    with pytest.raises(ServiceUnavailable):
        inline.enqueue("late")
    inline.stop()  # again: harmless


def test_start_twice_is_an_error(inline: InlineQueue) -> None:
    inline.start(Recorder())
    with pytest.raises(RuntimeError, match="already started"):
        inline.start(Recorder())


def test_zero_threads_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        InlineQueue(threads=0)


@pytest.mark.parametrize(("configured", "expected"), [(0, 1), (1, 1), (4, 4)])
def test_create_inline_queue_uses_worker_threads(configured: int, expected: int) -> None:
    q = create_inline_queue(convkit.Settings(worker_threads=configured))
    assert q.threads == expected


def test_hook_register_queues() -> None:
    assert "convkit.backends.queues" in DEFAULT_PLUGINS
    pm = convkit.get_plugin_manager()
    registry = Registry.from_hook_results("queue", pm.hook.register_queues())
    assert {"inline", "redis", "celery"} <= set(registry.names())
    assert registry.get("inline").load() is create_inline_queue
    assert registry.get("redis").load() is create_redis_streams_queue


def test_create_redis_streams_queue_reads_its_settings() -> None:
    settings = convkit.Settings.from_env(
        {
            "CONVKIT_QUEUE": "redis",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "REDIS_QUEUE_PREFIX": "acme:prod",
            "BROKER_TIMEOUT_SECONDS": "0.5",
            "WORKER_THREADS": "0",
            "JOB_LEASE_SECONDS": "12",
        }
    )
    q = create_redis_streams_queue(settings)
    try:
        assert (q.keys.stream, q.keys.delayed) == ("{acme:prod}:jobs", "{acme:prod}:delayed")
        assert (q.threads, q.lease_s) == (1, 12.0)
        assert q._redis.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    finally:
        q.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_QUEUE_PREFIX": "{x}"}, "REDIS_QUEUE_PREFIX must be"),
        ({"REDIS_QUEUE_PREFIX": ""}, "REDIS_QUEUE_PREFIX must not be empty"),
        ({"BROKER_TIMEOUT_SECONDS": "0"}, "BROKER_TIMEOUT_SECONDS must be >= 0.01"),
    ],
)
def test_redis_queue_settings_are_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        convkit.Settings.from_env(env)


def test_redis_queue_needs_redis_url() -> None:
    with pytest.raises(ConfigError, match="CONVKIT_QUEUE=redis needs REDIS_URL"):
        create_redis_streams_queue(convkit.Settings(queue="redis"))


def test_redis_queue_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, choosing the queue says which extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)  # the injected fault: redis-py is missing
    monkeypatch.delitem(sys.modules, "convkit.backends.queues.redis_streams")
    pm = convkit.get_plugin_manager()
    registry = Registry.from_hook_results("queue", pm.hook.register_queues())
    with pytest.raises(BackendUnavailable, match=r"pip install 'convkit\[redis\]'"):
        registry.get("redis").load()
