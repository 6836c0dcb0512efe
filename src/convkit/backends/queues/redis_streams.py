"""The Redis Streams queue (``CONVKIT_QUEUE=redis``): job ids in a stream read by one consumer
group, delayed ids in a sorted set. Needs Redis 6.2 or later (``XAUTOCLAIM``).

Delivery is at-least-once and the job store decides what runs: a consumer acknowledges an entry
(``XACK``, then ``XDEL``) only after the handler returned, that is after the job's outcome is
committed. While a handler runs, its entry's idle time is refreshed every third of the lease; an
entry idle for longer than the lease plus one refresh period (its consumer died) goes back into
the stream as a new entry, so another consumer runs it. The job row's attempt count, never the
delivery count, decides retries. Ordering is not promised.

Acknowledged entries are deleted (``XDEL`` after ``XACK``) rather than trimmed with ``MAXLEN``:
an acknowledged entry is worth nothing (the database is the truth), and a length cap would also
drop entries nobody has read yet when the backlog outgrows it. The stream holds exactly the
backlog plus the entries being worked on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from convkit.errors import ConfigError, ServiceUnavailable
from convkit.ports import Queue
from convkit.settings import Settings

__all__ = ["RedisKeys", "RedisStreamsQueue", "create_redis_streams_queue"]

log = logging.getLogger("convkit.queue")


@attrs.frozen
class RedisKeys:
    """Every Redis name the queue uses, derived from ``REDIS_QUEUE_PREFIX``.

    The prefix is a hash tag (``{convkit}``) so that both keys live in one Redis Cluster slot,
    which the queue's Lua scripts need.
    """

    prefix: str = "convkit"
    #: The consumer group every worker reads through (it lives inside the stream key).
    group: ClassVar[str] = "workers"

    @property
    def stream(self) -> str:
        """The stream of job ids ready to run: entries ``{"job": <job id>}``."""
        return f"{{{self.prefix}}}:jobs"

    @property
    def delayed(self) -> str:
        """Sorted set of delayed job ids, scored by due time (Redis server time, ms)."""
        return f"{{{self.prefix}}}:delayed"

    def all(self) -> tuple[str, ...]:
        """Every key, e.g. for cleaning up after a test."""
        return (self.stream, self.delayed)


# Both scripts read the due time from the Redis server's clock, so producers and consumers on
# machines whose clocks disagree still agree on when a delayed id is due. Rounding up when
# scheduling and down when promoting keeps an id from ever arriving before its delay.
_SCHEDULE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.ceil(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# Moves due ids (at most ARGV[1]) from the sorted set to the stream in one step, so an id is in
# exactly one of them. Returns {moved, ms until the next due id or -1}.
_PROMOTE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', id)
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return {#due, math.max(0, tonumber(nxt[2]) - now)} end
return {#due, -1}
"""

# Entries idle past ARGV[3] ms go back into the stream as new entries; the old ones are
# acknowledged and deleted in the same step. Returns {next cursor, count}.
_REQUEUE = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
for _, e in ipairs(r[2]) do
  if e[2] then redis.call('XADD', KEYS[1], '*', unpack(e[2])) end
  redis.call('XACK', KEYS[1], ARGV[1], e[1])
  redis.call('XDEL', KEYS[1], e[1])
end
return {r[1], #r[2]}
"""

# A consumer that stops holding nothing removes its name from the group (best effort).
_FORGET = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class _Outage:
    """Logs a broker outage once when it starts and once when it ends, not once per retry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first, self._since = self._since is None, self._since or time.monotonic()
        if first:
            log.warning("redis queue unreachable, reconnecting with backoff: %s", exc)

    def recovered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("redis queue reachable again after %.1f s", time.monotonic() - since)


class _Backoff:
    """Capped exponential waits between reconnection attempts of one thread."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s, self.cap_s, self.next_s = first_s, cap_s, first_s

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.next_s)
        self.next_s = min(self.next_s * 2, self.cap_s)

    def reset(self) -> None:
        self.next_s = self.first_s


class RedisStreamsQueue(Queue):
    """Job ids in a Redis stream, consumed by ``threads`` threads of this process.

    ``lease_s`` is ``JOB_LEASE_SECONDS``; ``broker_timeout_s`` bounds every network wait of
    :meth:`enqueue` and :meth:`check` (no retries: a broker that is down answers 503 at once);
    ``block_s`` is how long one ``XREADGROUP`` waits on the server, hence also how long
    :meth:`stop` may wait for an idle consumer; ``backoff_s`` is the (first, cap) wait between
    reconnection attempts. The consumers survive Redis restarts, a restart without persistence
    included (the group is created again).
    """

    name = "redis"
    consumes_in_process: ClassVar[bool] = True
    durable_delay: ClassVar[bool] = True
    redelivers: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "convkit",
        threads: int = 2,
        lease_s: float = 30.0,
        broker_timeout_s: float = 1.0,
        block_s: float = 1.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        if threads < 1:
            raise ValueError(f"RedisStreamsQueue needs at least one thread, not {threads}")
        self.keys = RedisKeys(prefix)
        self.threads = threads
        self.lease_s = lease_s
        self.block_s = block_s
        self.backoff_s = backoff_s
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": broker_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # our loops back off; a request must not wait
        }
        self._redis = redis.Redis.from_url(url, socket_timeout=broker_timeout_s, **common)
        # A blocking read waits up to block_s on the server: its socket waits that much longer.
        self._reader = redis.Redis.from_url(
            url, socket_timeout=block_s + broker_timeout_s, **common
        )
        self._schedule = self._redis.register_script(_SCHEDULE)
        self._promote = self._redis.register_script(_PROMOTE)
        self._requeue = self._redis.register_script(_REQUEUE)
        self._forget = self._redis.register_script(_FORGET)
        # Unique per instance: two processes (or two queues in one) never share a consumer.
        self._name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self._inflight: dict[str, str] = {}  # entry id -> consumer running it
        self._stopping = threading.Event()
        self._keeper_stop = threading.Event()
        self._wake = threading.Event()  # a delayed id was scheduled: promote sooner
        self._consumers: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None
        self._outage = _Outage()
        self._started = False
        self._closed = False

    # -- producing ---------------------------------------------------------------------------
    def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
        """Add ``job_id`` to the stream, or to the delayed set when ``delay_s`` > 0 (the same id
        delayed twice keeps the later due time). Raises ServiceUnavailable when Redis cannot be
        reached within the broker timeout."""
        if self._closed:
            raise ServiceUnavailable("redis queue is closed")
        try:
            if delay_s > 0:
                self._schedule(keys=[self.keys.delayed], args=[job_id, math.ceil(delay_s * 1000)])
                self._wake.set()
            else:
                self._redis.xadd(self.keys.stream, {"job": job_id})
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"queue unavailable: {exc}") from exc

    def check(self) -> None:
        """PING within the broker timeout; raise ServiceUnavailable if it fails."""
        if self._closed:
            raise ServiceUnavailable("redis queue is closed")
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"queue unavailable: {exc}") from exc

    # -- consuming ---------------------------------------------------------------------------
    def start(self, handler: Callable[[str], None]) -> None:
        """Start ``threads`` consumer threads calling ``handler(job_id)``, and one keeper thread
        (delayed ids, lease refresh, redelivery). Works while Redis is down: the threads
        connect when it comes back."""
        with self._lock:
            if self._stopping.is_set() or self._closed:
                raise ServiceUnavailable("redis queue is stopped")
            if self._started:
                raise RuntimeError("redis queue already started")
            self._started = True
        for i in range(self.threads):
            t = threading.Thread(
                target=self._consume,
                args=(handler, f"{self._name}:{i}"),
                name=f"convkit-redis-{i}",
                daemon=True,
            )
            self._consumers.append(t)
            t.start()
        self._keeper = threading.Thread(target=self._keep, name="convkit-redis-keeper", daemon=True)
        self._keeper.start()

    def _consume(self, handler: Callable[[str], None], consumer: str) -> None:
        backoff = _Backoff(*self.backoff_s)
        while not self._stopping.is_set():
            try:
                entry = self._read(consumer)
            except redis.RedisError as exc:
                self._outage.failed(exc)
                backoff.wait(self._stopping)
                continue
            self._outage.recovered()
            backoff.reset()
            if entry is not None:
                self._run(handler, consumer, *entry)
        self._forget_consumer(consumer)

    def _forget_consumer(self, consumer: str) -> None:
        with contextlib.suppress(redis.RedisError):  # a leftover name holding nothing is harmless
            self._forget(keys=[self.keys.stream], args=[self.keys.group, consumer])

    def _read(self, consumer: str) -> tuple[str, str | None] | None:
        """One ``XREADGROUP``: ``(entry id, job id)``, or None when nothing came."""
        try:
            # RESP2 reply: [[stream, [(entry id, {field: value})]]], or None after the block.
            reply: Any = self._reader.xreadgroup(
                self.keys.group,
                consumer,
                {self.keys.stream: ">"},
                count=1,
                block=max(1, int(self.block_s * 1000)),
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._create_group()
            return None
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                return entry_id, (fields or {}).get("job")
        return None

    def _run(
        self, handler: Callable[[str], None], consumer: str, entry_id: str, job_id: str | None
    ) -> None:
        if job_id is not None:
            with self._lock:
                self._inflight[entry_id] = consumer
            try:
                handler(job_id)
            except Exception:
                # Not acknowledged: the outcome may not be committed, so the entry goes to
                # another consumer after the lease (the job row's attempts bound the retries).
                log.exception("redis queue handler failed for job %s", job_id)
                return
            finally:
                with self._lock:
                    self._inflight.pop(entry_id, None)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.stream, self.keys.group, entry_id)
                pipe.xdel(self.keys.stream, entry_id)
                pipe.execute()
        except redis.ResponseError:
            pass  # the group is gone (Redis restarted empty): nothing left to acknowledge
        except redis.RedisError as exc:
            # The outcome is committed; a redelivered entry finds the job finished and is
            # acknowledged then.
            self._outage.failed(exc)

    def _create_group(self) -> None:
        # From id 0, not $: ids added after a restart and before the group existed are kept.
        try:
            self._redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
            log.info("redis queue consumer group created", extra={"stream": self.keys.stream})
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the keeper: delayed ids, lease refresh, redelivery -----------------------------------
    def _keep(self) -> None:
        backoff = _Backoff(*self.backoff_s)
        period = self.lease_s / 3
        next_lease_work = 0.0
        while not self._keeper_stop.is_set():
            sleep = 0.5
            try:
                if not self._stopping.is_set():  # a stopping queue takes on no new work
                    due_in_ms = self._promote(
                        keys=[self.keys.delayed, self.keys.stream], args=[100]
                    )[1]
                    if due_in_ms >= 0:
                        sleep = min(sleep, due_in_ms / 1000)
                if time.monotonic() >= next_lease_work:
                    self._refresh_inflight()
                    self._requeue_stale()
                    next_lease_work = time.monotonic() + period
            except redis.RedisError as exc:
                if isinstance(exc, redis.ResponseError) and _is_nogroup(exc):
                    self._create_group_quietly()
                    continue
                self._outage.failed(exc)
                backoff.wait(self._keeper_stop)
                continue
            self._outage.recovered()
            backoff.reset()
            sleep = min(sleep, max(0.0, next_lease_work - time.monotonic()))
            self._wake.wait(max(0.01, sleep))
            self._wake.clear()
        self._forget_consumer(f"{self._name}:keeper")

    def _create_group_quietly(self) -> None:
        try:
            self._create_group()
        except redis.RedisError as exc:
            self._outage.failed(exc)

    def _refresh_inflight(self) -> None:
        """Reset the idle time of the entries whose handlers still run (``XCLAIM ... JUSTID``
        by their own consumer), so they are not handed to another consumer."""
        with self._lock:
            inflight = list(self._inflight.items())
        if not inflight:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, consumer in inflight:
                pipe.xclaim(
                    self.keys.stream,
                    self.keys.group,
                    consumer,
                    min_idle_time=0,
                    message_ids=[entry_id],
                    justid=True,
                )
            pipe.execute()

    def _requeue_stale(self) -> None:
        """Give entries idle past the lease plus one refresh period back to the stream: their
        consumer died. The margin lets the job's own lease in the database expire first."""
        min_idle_ms = int(self.lease_s * 4 / 3 * 1000)
        cursor = "0-0"
        for _ in range(1000):  # bounded: the cursor walks the pending list once
            cursor, moved = self._requeue(
                keys=[self.keys.stream],
                args=[self.keys.group, f"{self._name}:keeper", min_idle_ms, cursor, 100],
            )
            if moved:
                log.info("redis queue redelivers %d stale entries", moved)
                self._wake.set()
            if cursor == "0-0":
                return

    # -- shutting down -----------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading and wait up to ``timeout`` seconds for running handlers; their entries'
        leases are refreshed until they finish or the time is up. Calling it again is harmless."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for t in self._consumers:
            if t is not threading.current_thread():  # stop() called from a handler
                t.join(max(0.0, deadline - time.monotonic()))
        self._keeper_stop.set()
        self._wake.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._consumers if t.is_alive()]
        if alive:
            log.warning("redis queue stopped with handlers still running in %s", alive)

    def close(self) -> None:
        """Close the connections (after :meth:`stop`); enqueue and check fail from now on."""
        self._closed = True
        self._redis.close()
        self._reader.close()


def _is_nogroup(exc: redis.ResponseError) -> bool:
    # The group is gone: Redis restarted without persistence, or someone deleted the stream.
    return "NOGROUP" in str(exc)


def create_redis_streams_queue(settings: Settings) -> RedisStreamsQueue:
    """Factory for ``CONVKIT_QUEUE=redis``: ``REDIS_URL``, ``REDIS_QUEUE_PREFIX``,
    ``WORKER_THREADS`` consumer threads (at least 1), ``JOB_LEASE_SECONDS`` and
    ``BROKER_TIMEOUT_SECONDS``.

    :raises ConfigError: ``REDIS_URL`` is not set.
    """
    if not settings.redis_url:
        raise ConfigError("CONVKIT_QUEUE=redis needs REDIS_URL, e.g. redis://localhost:6379/0")
    return RedisStreamsQueue(
        settings.redis_url,
        prefix=settings.redis_queue_prefix,
        threads=max(1, settings.worker_threads),
        lease_s=settings.job_lease_seconds,
        broker_timeout_s=settings.broker_timeout_seconds,
    )
