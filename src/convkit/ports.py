"""The interfaces every backend implements.

Each port is an abstract base class with a handful of primitives. Where a port needs the same checks
for every backend (storage keys, for instance) the base class owns them once and backends implement
the underscore primitives (fsspec's ``AbstractFileSystem`` habit).
"""

from __future__ import annotations

import abc
import builtins
import hashlib
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import attrs

from convkit.errors import ConfigError, ConvKitError, InvalidStorageKey
from convkit.job import Job, JobError, JobResult, JobState

if TYPE_CHECKING:
    from convkit.service import ConvKit

__all__ = [
    "Clock",
    "Converter",
    "DoctorCheck",
    "JobPage",
    "JobStore",
    "Queue",
    "RenderedDocument",
    "Storage",
    "Template",
    "TemplateEngine",
    "TemplateSource",
    "utcnow",
    "validate_key",
]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The default clock: an aware UTC datetime (tests inject their own)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# Checks


@attrs.frozen
class DoctorCheck:
    """One line of ``convkit doctor``; with ``readiness``, also one entry of ``GET /ready``.

    Plugins return these from the ``doctor_checks`` hook; the ports' own ``check()`` methods
    become the readiness checks ``database``, ``queue``, ``storage`` and ``converter``.
    """

    #: Short, unique name (``"libreoffice"``, ``"fonts"``, ``"redis"``).
    name: str
    #: Returns a one-line detail when healthy ("LibreOffice 7.4.7"); raises when the check fails,
    #: and the exception's message is the detail. Must not take long (a probe, not a job).
    run: Callable[[], str] = attrs.field(repr=False)
    #: Part of readiness: a failing one makes ``GET /ready`` answer 503.
    readiness: bool = False
    #: Only a process that runs jobs needs it (the converter): an API-only process
    #: (``ConvKit.runs_jobs`` False) leaves it out of its readiness.
    jobs_only: bool = False

    def result(self) -> tuple[bool, str]:
        """``(healthy, detail)``; never raises."""
        try:
            return True, self.run()
        except Exception as exc:
            message = exc.message if isinstance(exc, ConvKitError) else str(exc)
            return False, message or type(exc).__name__

    def status(self) -> str:
        """``"ok"`` when healthy, else the failure's message (the shape of ``/ready``)."""
        healthy, detail = self.result()
        return "ok" if healthy else detail


# --------------------------------------------------------------------------------------------------
# Templates


@attrs.frozen
class Template:
    """A template as loaded from its source: bytes plus what is needed to render it."""

    name: str
    #: Name of the :class:`TemplateEngine` that renders it.
    engine: str
    #: Format the engine produces from this template ("html", "txt", "docx", ...).
    format: str
    source: bytes = attrs.field(repr=False)
    #: Where it came from, for error messages (a path, or "<memory>").
    origin: str = "<memory>"
    content_hash: str = attrs.field()

    @content_hash.default
    def _hash(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


@attrs.frozen
class RenderedDocument:
    """What a template engine produced."""

    content: bytes = attrs.field(repr=False)
    format: str


class TemplateEngine(abc.ABC):
    """Renders a template with JSON data into a document of the template's own format."""

    #: Unique engine name ("jinja", "docx", ...).
    name: str
    #: File suffixes this engine handles, mapped to the format it renders them into.
    suffixes: dict[str, str]

    @abc.abstractmethod
    def render(
        self,
        template: Template,
        data: dict[str, Any],
        *,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> RenderedDocument:
        """Render ``template`` with ``data``; raise :class:`convkit.errors.TemplateError` on a
        template problem (syntax, undefined name under strict mode, sandbox violation)."""

    def check(self, template: Template) -> None:  # noqa: B027  # optional hook, no-op by default
        """Compile ``template`` without rendering; raise TemplateError if it cannot compile."""

    def variables(self, template: Template) -> frozenset[str]:
        """Top-level data names the template reads (for introspection; empty if unknown)."""
        return frozenset()


class TemplateSource(abc.ABC):
    """Finds templates by name."""

    @abc.abstractmethod
    def load(self, name: str) -> Template:
        """Return the template called ``name``; raise TemplateNotFound if there is none."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every template name this source can load, sorted."""

    def schema(self, name: str) -> dict[str, Any] | None:
        """The JSON Schema (draft 2020-12) job data for template ``name`` must match, or None
        when the template has none (the default). Raise TemplateError for a malformed schema."""
        return None


# --------------------------------------------------------------------------------------------------
# Converters


class Converter(abc.ABC):
    """Turns a document of one format into another (LibreOffice, for the built-in one)."""

    name: str

    @abc.abstractmethod
    def targets(self, source_format: str) -> frozenset[str]:
        """Formats this converter can produce from ``source_format`` (empty if none)."""

    @abc.abstractmethod
    def convert(
        self,
        src: Path,
        dst: Path,
        *,
        source_format: str,
        target_format: str,
        options: dict[str, Any] | None = None,
        locale: str | None = None,
    ) -> None:
        """Convert the file ``src`` into ``dst``. Raise ConversionError (retryable) on failure,
        ConversionTimeout when it took too long."""

    def validate_options(  # noqa: B027  # optional hook
        self, source_format: str, target_format: str, options: dict[str, Any]
    ) -> None:
        """Raise ValidationError (422) for options this converter cannot honour for this pair.
        Called at submission, so a bad option never reaches a worker. Default: accept all."""

    def check(self) -> None:  # noqa: B027  # optional hook
        """Raise ServiceUnavailable if the converter cannot work right now (readiness)."""

    def start(self) -> None:  # noqa: B027  # optional capability
        """Warm up (start worker processes) before the first conversion. Called once by a
        worker at start-up, in a background thread; the default does nothing."""

    def close(self) -> None:  # noqa: B027  # optional hook
        """Release processes and temporary files; the converter may start again when used."""

    def shutdown(self) -> None:
        """Release everything for good (the instance is closing); default: :meth:`close`."""
        self.close()


# --------------------------------------------------------------------------------------------------
# Storage

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key, else raise InvalidStorageKey.

    A key is 1..8 ``/``-separated segments of letters, digits and ``._@+=-``, none empty, none
    starting with a dot (so no ``..``), no absolute path, no backslash, no NUL.
    """
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise InvalidStorageKey(f"invalid storage key {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidStorageKey(f"invalid storage key {key!r}")
    parts = key.split("/")
    if len(parts) > 8 or any(not _SEGMENT.match(p) for p in parts):
        raise InvalidStorageKey(f"invalid storage key {key!r}")
    if posixpath.normpath(key) != key:
        raise InvalidStorageKey(f"invalid storage key {key!r}")
    return key


class Storage(abc.ABC):
    """Where artifacts live. Keys are ``<tenant>/<job-id>/<filename>``, written once.

    Backends implement the ``_`` primitives; the public methods validate keys first.
    ``put`` must be atomic: a reader sees the whole artifact or nothing.
    """

    name: str = "storage"
    #: Capability: :meth:`signed_url` hands out time-limited URLs clients fetch directly
    #: (S3's presigned URLs); False for a local folder.
    signed_urls: ClassVar[bool] = False
    #: Capability: a stored key can be renamed atomically (a local folder's rename(2)); False
    #: where a move is copy + delete (S3).
    atomic_move: ClassVar[bool] = False

    # -- primitives ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _put(self, key: str, src: IO[bytes]) -> int:
        """Store the stream ``src`` under ``key`` atomically; return the byte count."""

    @abc.abstractmethod
    def _open(self, key: str) -> IO[bytes]:
        """Open ``key`` for binary reading; raise FileNotFoundError if absent."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> bool:
        """Delete the one key ``key``; return False if it was absent."""

    @abc.abstractmethod
    def _delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix/``; return how many were deleted (absent: 0)."""

    @abc.abstractmethod
    def _list(self, prefix: str) -> list[str]:
        """Keys under ``prefix/``, sorted."""

    def check(self) -> None:  # noqa: B027  # optional hook
        """Raise ServiceUnavailable if the storage cannot be reached (readiness)."""

    def _signed_url(self, key: str, expires_s: float) -> str:
        raise ConfigError(f"the {self.name} storage cannot hand out signed URLs")

    # -- derived ------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | IO[bytes]) -> int:
        import io

        validate_key(key)
        stream: IO[bytes] = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        return self._put(key, stream)

    def put_file(self, key: str, path: Path) -> int:
        validate_key(key)
        with open(path, "rb") as fh:
            return self._put(key, fh)

    def open(self, key: str) -> IO[bytes]:
        return self._open(validate_key(key))

    def read(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def iter_chunks(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Open ``key`` now (so a missing key fails early) and yield its bytes in chunks."""
        fh = self.open(key)

        def gen() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(chunk_size):
                    yield chunk

        return gen()

    def exists(self, key: str) -> bool:
        return self._exists(validate_key(key))

    def delete(self, key: str) -> bool:
        """Delete ``key`` (not what is under it); False if it was absent."""
        return self._delete(validate_key(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._delete_prefix(validate_key(prefix))

    def list(self, prefix: str) -> list[str]:
        return self._list(validate_key(prefix))

    def signed_url(self, key: str, *, expires_s: float) -> str:
        """A URL that reads ``key`` without credentials for ``expires_s`` seconds; only for
        storages that declare :attr:`signed_urls` (others raise ConfigError)."""
        return self._signed_url(validate_key(key), expires_s)


# --------------------------------------------------------------------------------------------------
# Job store


@attrs.frozen
class JobPage:
    jobs: list[Job]
    #: Opaque cursor for the next page, None on the last page.
    next_cursor: str | None


class JobStore(abc.ABC):
    """The source of truth for jobs. Every transition is one conditional update."""

    clock: Clock

    @abc.abstractmethod
    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``. If ``job.idempotency_key`` is set and the tenant already has a job with
        that key, insert nothing and return ``(existing, False)``; else ``(job, True)``."""

    @abc.abstractmethod
    def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        """The job, or None if absent (or owned by another tenant when ``tenant`` is given)."""

    @abc.abstractmethod
    def list(
        self,
        tenant: str | None,
        *,
        status: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """The tenant's jobs (every tenant's with None, for operators), only those in
        ``status`` if given, newest first; raise ValidationError for a malformed cursor."""

    @abc.abstractmethod
    def claim(self, job_id: str, *, lease_s: float) -> Job | None:
        """queued (and past any retry delay), or running with an expired lease, and
        attempts < max_attempts -> running,
        attempts + 1, lease = now + lease_s. Return the claimed job, or None if not claimable."""

    @abc.abstractmethod
    def heartbeat(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        """Extend the lease of a running job held at ``attempt``; False if the lease was lost."""

    @abc.abstractmethod
    def succeed(self, job_id: str, attempt: int, result: JobResult) -> bool:
        """running at ``attempt`` -> succeeded with ``result``; False if fenced out."""

    @abc.abstractmethod
    def fail(
        self, job_id: str, attempt: int | None, error: JobError, *, lease_expired: bool = False
    ) -> bool:
        """running at ``attempt`` (or, with attempt None, any non-terminal state) -> failed.
        With ``lease_expired``, only if the lease is still expired in the same statement (the
        sweeper's fence: a worker that renewed its lease meanwhile keeps its job)."""

    @abc.abstractmethod
    def requeue(self, job_id: str, attempt: int, error: JobError, *, delay_s: float = 0) -> bool:
        """running at ``attempt`` -> queued (a retry), keeping ``error`` as the last error.
        The job is not claimable (nor in ``claimable()``) before ``delay_s`` seconds passed."""

    @abc.abstractmethod
    def release(self, job_id: str, attempt: int) -> bool:
        """running at ``attempt`` -> queued, the attempt not counted (``attempts - 1``), lease
        cleared: a worker that stops gracefully hands its job back and the next worker runs it
        at once. False if fenced out (finished, deleted, or taken over)."""

    @abc.abstractmethod
    def retry(self, job_id: str) -> bool:
        """failed -> queued with fresh attempts (``attempts`` 0), no lease, no start or finish
        time, the error kept as the last error: an operator's requeue. False if the job is
        absent or not failed."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Delete the row; False if it was absent."""

    @abc.abstractmethod
    def claimable(
        self, *, limit: int = 100, due_before: datetime | None = None
    ) -> builtins.list[str]:
        """Ids of jobs a worker may claim now (queued, or running with an expired lease and
        attempts left), oldest first. With ``due_before``, a queued job only if it has been
        due since before that time (due: its retry delay's end, else its creation), so a
        sweeper in front of a broker that keeps its messages re-enqueues only jobs whose
        message was likely lost, not every job waiting in the broker."""

    @abc.abstractmethod
    def exhausted(self, *, limit: int = 100) -> builtins.list[Job]:
        """Running jobs whose lease expired and that have no attempts left (their worker died
        on the last attempt)."""

    @abc.abstractmethod
    def expired(self, before: datetime, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs created before ``before`` (for TTL cleanup), oldest first."""

    def queue_stats(self) -> tuple[int, float]:
        """``(depth, oldest_age_s)``: how many jobs a worker may claim now (:meth:`claimable`)
        and the age in seconds, by creation time, of the oldest of them (``(0, 0.0)`` when none).

        For the queue metrics, read every few seconds. The default lists at most 10,000 ids
        and reads the oldest job; a store with a query language overrides it with one query.
        """
        ids = self.claimable(limit=10_000)
        oldest = self.get(ids[0]) if ids else None
        if oldest is None:
            return len(ids), 0.0
        return len(ids), max(0.0, (self.clock() - oldest.created_at).total_seconds())

    def check(self) -> None:  # noqa: B027  # optional hook
        """Raise ServiceUnavailable if the database cannot be reached (readiness)."""

    def close(self) -> None:  # noqa: B027  # optional hook
        """Release connections."""

    # -- schema (stores without one keep the defaults) ------------------------------------------
    def migrate(self) -> None:  # noqa: B027  # optional capability
        """Create or upgrade the schema to the newest version (``convkit migrate``)."""

    def needs_migration(self) -> bool:
        """True if :meth:`migrate` has work to do (a fresh or an outdated database)."""
        return False

    def is_empty(self) -> bool:
        """True if the database holds no convkit schema at all: ``serve`` and ``worker`` then
        migrate on their own, while an outdated schema waits for ``convkit migrate``."""
        return False


# --------------------------------------------------------------------------------------------------
# Queue


class Queue(abc.ABC):
    """Carries job ids from the API to workers. Losing a message delays a job, never loses it:
    the database is the source of truth and the sweeper re-enqueues what nobody holds.

    A queue carries job ids only, never job data. Its capabilities are class attributes, so
    callers never probe for methods:
    """

    name: str
    #: :meth:`start` consumes in this process (inline, Redis Streams). False where another
    #: program consumes (Celery's ``celery worker``); then ``start`` raises ConfigError.
    consumes_in_process: ClassVar[bool] = True
    #: ``enqueue(..., delay_s=...)`` is kept by the broker and survives a restart of this
    #: process. False: kept in memory only, and the job row's not-before time plus the sweeper
    #: are the durable record.
    durable_delay: ClassVar[bool] = False
    #: A message whose consumer died before finishing is delivered again by the broker
    #: (acknowledged only after the job's outcome is committed). False: the sweeper recovers it.
    redelivers: ClassVar[bool] = False

    #: ``enqueue`` runs the job before it returns (Celery's eager mode, for tests): the service
    #: then answers a submit with the finished job.
    completes_on_enqueue: bool = False

    def attach(self, kit: ConvKit) -> None:  # noqa: B027  # optional capability
        """Called once by :class:`convkit.ConvKit` with itself, before any enqueue: a queue that
        routes by job kind reads rows through ``kit.store``, an eager one runs jobs on
        ``kit.runner``. The default keeps nothing."""

    @abc.abstractmethod
    def enqueue(self, job_id: str, *, delay_s: float = 0.0) -> None:
        """Hand ``job_id`` to a worker, not before ``delay_s`` seconds from now (a retry's
        backoff); raise ServiceUnavailable if the queue is down. Must return promptly (bounded
        by the broker timeout), never hang."""

    def start(self, handler: Callable[[str], None]) -> None:
        """Start consuming: call ``handler(job_id)`` for each message, from worker threads.
        A message is acknowledged once the handler returns (the job's outcome is committed)."""
        raise ConfigError(
            f"the {self.name} queue is consumed by its own worker program, not in this process"
        )

    def stop(self, timeout: float = 10.0) -> None:  # noqa: B027  # optional capability
        """Stop consuming; wait up to ``timeout`` seconds for running handlers."""

    def run_worker(
        self,
        kit: ConvKit,
        *,
        queues: Sequence[str] = (),
        concurrency: int = 0,
        pool: str | None = None,
    ) -> int:
        """Run this queue's own consumer program in this process (``convkit worker`` for a queue
        that does not consume in process, e.g. a Celery worker) until SIGTERM or SIGINT, and
        return its exit code. ``queues``, ``concurrency`` and ``pool`` are the consumer's own
        options (0/None/empty: its defaults). Default: ConfigError."""
        raise ConfigError(f"the {self.name} queue has no worker program of its own")

    def check(self) -> None:  # noqa: B027  # optional hook
        """Raise ServiceUnavailable if the queue cannot be reached (readiness)."""

    def close(self) -> None:  # noqa: B027  # optional hook
        """Release connections (after :meth:`stop`)."""
