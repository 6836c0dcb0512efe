"""The built-in job store: SQLAlchemy Core on SQLite or PostgreSQL.

Every state transition is one conditional ``UPDATE`` whose ``WHERE`` clause states the only state
it may start from, so two workers racing for a job are decided by the database, not by a lock in
Python: the loser's statement matches no row. The schema is owned by the Alembic migrations in
``convkit/migrations``; a store never creates tables on its own.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, RowMapping

from convkit.errors import BackendUnavailable, ConfigError, ServiceUnavailable, ValidationError
from convkit.job import Job, JobError, JobResult, JobSource, JobSpec, JobState
from convkit.ports import Clock, JobPage, JobStore, utcnow

if TYPE_CHECKING:
    from alembic.config import Config

    from convkit.settings import Settings

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "SqlJobStore",
    "UtcDateTime",
    "create_job_store",
    "jobs_table",
    "metadata",
    "migrate",
]

#: The Alembic script directory shipped inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: convkit's own Alembic version table, so a host app's ``alembic_version`` in the same database
#: is never read nor written by convkit's migrations.
VERSION_TABLE = "convkit_alembic_version"
#: Where convkit before 0.3 kept its revision (Alembic's default name).
_LEGACY_VERSION_TABLE = "alembic_version"

#: How long an SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 15.0

_QUEUED = JobState.QUEUED.value
_RUNNING = JobState.RUNNING.value
_SUCCEEDED = JobState.SUCCEEDED.value
_FAILED = JobState.FAILED.value

_MAX_PAGE = 200


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC.

    SQLite has no time zones and PostgreSQL's ``timestamptz`` round-trips in the session zone;
    naive UTC in a plain ``TIMESTAMP`` behaves the same on both and compares correctly (SQLite
    stores a fixed-width ISO string, so string order is time order).
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime is ambiguous; refusing it catches a clock bug at the source.
            raise ValueError(f"convkit stores aware datetimes only, got naive {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = sa.MetaData()

#: Mirrors ``migrations/versions``; a test compares the two so they cannot drift.
jobs_table = sa.Table(
    "convkit_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("template", sa.String(255), nullable=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("locale", sa.String(35), nullable=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("lease_expires_at", UtcDateTime, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("result_key", sa.String(1024), nullable=True),
    sa.Column("result_filename", sa.String(255), nullable=True),
    sa.Column("result_media_type", sa.String(255), nullable=True),
    sa.Column("result_size", sa.BigInteger, nullable=True),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    # An upload conversion job's source document (revision 0002); NULL for template jobs.
    sa.Column("source_key", sa.String(1024), nullable=True),
    sa.Column("source_format", sa.String(32), nullable=True),
    sa.Column("source_filename", sa.String(255), nullable=True),
    # The submit request's X-Request-ID and W3C traceparent (revision 0003).
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("traceparent", sa.String(64), nullable=True),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_convkit_jobs_tenant_idempotency"),
    sa.Index("ix_convkit_jobs_tenant_created", "tenant", "created_at", "id"),
    sa.Index("ix_convkit_jobs_status_lease", "status", "lease_expires_at"),
)

_c = jobs_table.c

# Errors meaning "the database cannot serve us right now" (down, locked, pool exhausted).
_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _unavailable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"database unreachable: {_first_line(exc)}")


# --------------------------------------------------------------------------------------------------
# Row <-> Job


def _to_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant": job.tenant,
        "template": job.spec.template,
        "format": job.spec.format,
        "locale": job.spec.locale,
        # ASCII escapes keep NUL and lone surrogates out of the column: PostgreSQL text rejects NUL.
        "data": json.dumps(job.spec.data),
        "options": json.dumps(job.spec.options),
        "status": JobState(job.status).value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "lease_expires_at": job.lease_expires_at,
        "error_code": job.error.code if job.error else None,
        "error_message": job.error.message if job.error else None,
        "result_key": job.result.key if job.result else None,
        "result_filename": job.result.filename if job.result else None,
        "result_media_type": job.result.media_type if job.result else None,
        "result_size": job.result.size if job.result else None,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "source_key": job.spec.source.key if job.spec.source else None,
        "source_format": job.spec.source.format if job.spec.source else None,
        "source_filename": job.spec.source.filename if job.spec.source else None,
        "request_id": job.request_id,
        "traceparent": job.traceparent,
    }


def _to_job(row: RowMapping) -> Job:
    error = None
    if row["error_code"] is not None:
        error = JobError(row["error_code"], row["error_message"] or "")
    result = None
    if row["result_key"] is not None:
        result = JobResult(
            key=row["result_key"],
            filename=row["result_filename"],
            media_type=row["result_media_type"],
            size=row["result_size"],
        )
    source = None
    if row["source_key"] is not None:
        source = JobSource(
            key=row["source_key"], format=row["source_format"], filename=row["source_filename"]
        )
    spec = JobSpec(
        template=row["template"],
        format=row["format"],
        data=json.loads(row["data"]),
        locale=row["locale"],
        options=json.loads(row["options"]),
        source=source,
    )
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        spec=spec,
        status=JobState(row["status"]),
        created_at=row["created_at"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lease_expires_at=row["lease_expires_at"],
        error=error,
        result=result,
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        request_id=row["request_id"],
        traceparent=row["traceparent"],
    )


# --------------------------------------------------------------------------------------------------
# Cursors: opaque to clients, (created_at, id) of the last row of the previous page.


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.astimezone(UTC).isoformat(), job.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    invalid = ValidationError("malformed pagination cursor", code="invalid_cursor")
    if not isinstance(cursor, str) or not cursor or len(cursor) > 512:
        raise invalid
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        # validate=True: the lenient default silently drops characters outside the alphabet.
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        created_s, job_id = json.loads(raw)
        if not isinstance(created_s, str) or not isinstance(job_id, str):
            raise invalid
        created_at = datetime.fromisoformat(created_s)
        if created_at.tzinfo is None:
            raise invalid
        # Converted here, not in the query: an offset at the edge of the calendar overflows.
        created_at = created_at.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:  # JSON errors too
        raise invalid from exc
    return created_at, job_id


# --------------------------------------------------------------------------------------------------
# The store


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    # On a queued job, lease_expires_at is "not before": a retry's backoff, kept in the
    # database so that neither the sweeper nor a restart runs the retry early.
    return sa.and_(
        _c.attempts < _c.max_attempts,
        sa.or_(
            sa.and_(
                _c.status == _QUEUED,
                sa.or_(_c.lease_expires_at.is_(None), _c.lease_expires_at <= now),
            ),
            sa.and_(_c.status == _RUNNING, _c.lease_expires_at < now),
        ),
    )


def _held(attempt: int) -> sa.ColumnElement[bool]:
    """The fence of every finishing transition: still running, still at our attempt."""
    return sa.and_(_c.status == _RUNNING, _c.attempts == attempt)


class SqlJobStore(JobStore):
    """A :class:`convkit.ports.JobStore` on an SQLAlchemy engine (SQLite or PostgreSQL).

    Build one with :func:`create_job_store`; call :meth:`migrate` once before use.
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    # -- plumbing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction, committed on success; database outages become ServiceUnavailable."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    def _update(self, job_id: str, fence: sa.ColumnElement[bool], **values: Any) -> bool:
        stmt = sa.update(jobs_table).where(_c.id == job_id, fence).values(**values)
        with self._begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def _select(self, stmt: sa.Select[Any]) -> builtins.list[Job]:
        with self._begin() as conn:
            return [_to_job(r) for r in conn.execute(stmt).mappings()]

    # -- JobStore -----------------------------------------------------------------------------
    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``, or return the tenant's job with the same idempotency key."""
        if job.idempotency_key is not None:
            # A cheap look first, so a replayed request does not log a constraint violation.
            existing = self._by_key(job.tenant, job.idempotency_key)
            if existing is not None:
                return existing, False
        try:
            with self._begin() as conn:
                conn.execute(sa.insert(jobs_table).values(**_to_row(job)))
        except sa_exc.IntegrityError:
            # Lost a race with a concurrent submit of the same key: its row is committed now.
            if job.idempotency_key is not None:
                existing = self._by_key(job.tenant, job.idempotency_key)
                if existing is not None:
                    return existing, False
            raise
        return job, True

    def _by_key(self, tenant: str, key: str) -> Job | None:
        stmt = sa.select(jobs_table).where(_c.tenant == tenant, _c.idempotency_key == key)
        found = self._select(stmt)
        return found[0] if found else None

    def get(self, job_id: str, *, tenant: str | None = None) -> Job | None:
        """The job, or None if absent or owned by another tenant."""
        stmt = sa.select(jobs_table).where(_c.id == job_id)
        if tenant is not None:
            stmt = stmt.where(_c.tenant == tenant)
        found = self._select(stmt)
        return found[0] if found else None

    def list(
        self,
        tenant: str | None,
        *,
        status: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """The tenant's (None: every tenant's) jobs, of ``status`` if given, newest first
        (keyset pagination on ``(created_at, id)``)."""
        limit = max(1, min(_MAX_PAGE, limit))
        stmt = sa.select(jobs_table)
        if tenant is not None:
            stmt = stmt.where(_c.tenant == tenant)
        if status is not None:
            stmt = stmt.where(_c.status == JobState(status).value)
        if cursor is not None:
            after_at, after_id = _decode_cursor(cursor)
            stmt = stmt.where(
                sa.or_(
                    _c.created_at < after_at,
                    sa.and_(_c.created_at == after_at, _c.id < after_id),
                )
            )
        # One extra row tells whether a next page exists without a COUNT.
        stmt = stmt.order_by(_c.created_at.desc(), _c.id.desc()).limit(limit + 1)
        rows = self._select(stmt)
        page = rows[:limit]
        next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
        return JobPage(jobs=page, next_cursor=next_cursor)

    def claim(self, job_id: str, *, lease_s: float) -> Job | None:
        """Claim a queued job, or take over one whose lease expired; None if not claimable."""
        now = self.clock()
        stmt = (
            sa.update(jobs_table)
            .where(_c.id == job_id, _claimable(now))
            .values(
                status=_RUNNING,
                attempts=_c.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=now,
                finished_at=None,
            )
        )
        with self._begin() as conn:
            if conn.execute(stmt).rowcount != 1:
                return None
            # Same transaction: nobody can have moved the row between our update and this read.
            row = conn.execute(sa.select(jobs_table).where(_c.id == job_id)).mappings().one()
        return _to_job(row)

    def heartbeat(self, job_id: str, attempt: int, *, lease_s: float) -> bool:
        """Extend the lease of the job held at ``attempt``; False if it was taken over."""
        lease = self.clock() + timedelta(seconds=lease_s)
        return self._update(job_id, _held(attempt), lease_expires_at=lease)

    def succeed(self, job_id: str, attempt: int, result: JobResult) -> bool:
        """running at ``attempt`` -> succeeded; False if fenced out."""
        return self._update(
            job_id,
            _held(attempt),
            status=_SUCCEEDED,
            finished_at=self.clock(),
            lease_expires_at=None,
            error_code=None,
            error_message=None,
            result_key=result.key,
            result_filename=result.filename,
            result_media_type=result.media_type,
            result_size=result.size,
        )

    def fail(
        self, job_id: str, attempt: int | None, error: JobError, *, lease_expired: bool = False
    ) -> bool:
        """running at ``attempt`` (any non-terminal state if None) -> failed; with
        ``lease_expired``, only while the lease is still expired."""
        fence = _c.status.in_((_QUEUED, _RUNNING)) if attempt is None else _held(attempt)
        if lease_expired:
            fence = sa.and_(fence, _c.lease_expires_at < self.clock())
        return self._update(
            job_id,
            fence,
            status=_FAILED,
            finished_at=self.clock(),
            lease_expires_at=None,
            error_code=error.code,
            error_message=error.message,
        )

    def requeue(self, job_id: str, attempt: int, error: JobError, *, delay_s: float = 0) -> bool:
        """running at ``attempt`` -> queued, remembering ``error`` as the last error; not
        claimable before ``delay_s`` seconds have passed."""
        not_before = self.clock() + timedelta(seconds=delay_s) if delay_s > 0 else None
        return self._update(
            job_id,
            _held(attempt),
            status=_QUEUED,
            lease_expires_at=not_before,
            error_code=error.code,
            error_message=error.message,
        )

    def release(self, job_id: str, attempt: int) -> bool:
        """running at ``attempt`` -> queued with the attempt given back and no not-before time,
        so the next worker claims it at once; False if fenced out."""
        return self._update(
            job_id,
            _held(attempt),
            status=_QUEUED,
            attempts=_c.attempts - 1,
            lease_expires_at=None,
            started_at=None,
        )

    def retry(self, job_id: str) -> bool:
        """failed -> queued with attempts 0 and the error kept; False if not failed."""
        return self._update(
            job_id,
            _c.status == _FAILED,
            status=_QUEUED,
            attempts=0,
            lease_expires_at=None,
            started_at=None,
            finished_at=None,
        )

    def delete(self, job_id: str) -> bool:
        """Delete the row; False if it was absent."""
        with self._begin() as conn:
            return conn.execute(sa.delete(jobs_table).where(_c.id == job_id)).rowcount == 1

    def claimable(
        self, *, limit: int = 100, due_before: datetime | None = None
    ) -> builtins.list[str]:
        """Ids a worker may claim now, oldest first; with ``due_before``, queued jobs only
        when due since before it (see the port).

        On PostgreSQL the selection is ``FOR UPDATE SKIP LOCKED`` (SQLite has no row locks and
        SQLAlchemy leaves the clause out): a row another transaction holds at this moment (a
        worker's claim or finish in flight) is left out instead of waited for or enqueued
        again. The locks last only this short transaction; the claim's conditional update
        stays what decides who runs a job.
        """
        condition = _claimable(self.clock())
        if due_before is not None:
            # On a queued job lease_expires_at is "not before"; a job without one was due
            # when it was created (or released, or retried: those re-enqueue at the next sweep).
            due_since = sa.func.coalesce(_c.lease_expires_at, _c.created_at)
            condition = sa.and_(condition, sa.or_(_c.status == _RUNNING, due_since <= due_before))
        stmt = (
            sa.select(_c.id)
            .where(condition)
            .order_by(_c.created_at, _c.id)
            .limit(max(1, limit))
            .with_for_update(skip_locked=True)
        )
        with self._begin() as conn:
            return [str(i) for i in conn.execute(stmt).scalars()]

    def exhausted(self, *, limit: int = 100) -> builtins.list[Job]:
        """Running jobs with an expired lease and no attempts left, oldest first."""
        stmt = (
            sa.select(jobs_table)
            .where(
                _c.status == _RUNNING,
                _c.lease_expires_at < self.clock(),
                _c.attempts >= _c.max_attempts,
            )
            .order_by(_c.created_at, _c.id)
            .limit(max(1, limit))
        )
        return self._select(stmt)

    def expired(self, before: datetime, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs (any state) created before ``before``, oldest first; rows another transaction
        holds right now are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, see
        :meth:`claimable`)."""
        stmt = (
            sa.select(jobs_table)
            .where(_c.created_at < before)
            .order_by(_c.created_at, _c.id)
            .limit(max(1, limit))
            .with_for_update(skip_locked=True)
        )
        return self._select(stmt)

    def queue_stats(self) -> tuple[int, float]:
        """``(depth, oldest_age_s)`` of the claimable jobs, in one query."""
        now = self.clock()
        stmt = sa.select(sa.func.count(), sa.func.min(_c.created_at)).where(_claimable(now))
        with self._begin() as conn:
            depth, oldest = conn.execute(stmt).one()
        if oldest is None:
            return int(depth), 0.0
        # min() skips the column type on some dialects: SQLite hands back the stored text.
        if not isinstance(oldest, datetime):
            oldest = datetime.fromisoformat(str(oldest))
        oldest = oldest.replace(tzinfo=UTC)
        return int(depth), max(0.0, (now - oldest).total_seconds())

    def check(self) -> None:
        """``SELECT 1``; raise ServiceUnavailable if the database cannot be reached."""
        with self._begin() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Upgrade the schema to the newest migration (a no-op when it is current).

        A database made by an older convkit keeps its revision in ``alembic_version``: that row
        moves to ``convkit_alembic_version`` once and the old table is dropped (see
        :func:`_legacy_heads` for when a table counts as convkit's).

        :raises ConfigError: the migration failed (one line: an unknown revision, a permission).
        :raises ServiceUnavailable: the database cannot be reached.
        """
        from alembic import command
        from alembic.util import CommandError

        try:
            with self._begin() as conn:
                cfg = _alembic_config(conn)
                legacy = _legacy_heads(conn, cfg)
                if legacy:
                    command.stamp(cfg, sorted(legacy))
                    conn.execute(sa.text(f"DROP TABLE {_LEGACY_VERSION_TABLE}"))
                command.upgrade(cfg, "head")
        except (CommandError, sa_exc.SQLAlchemyError) as exc:
            raise ConfigError(f"database migration failed: {_first_line(exc)}") from exc

    def needs_migration(self) -> bool:
        """True if the database is not at the newest migration (empty, or older)."""
        from alembic.script import ScriptDirectory

        with self._begin() as conn:
            cfg = _alembic_config(conn)
            current = _current_heads(conn, cfg)
        return current != set(ScriptDirectory.from_config(cfg).get_heads())

    def is_empty(self) -> bool:
        """True if the database holds no convkit schema at all (never migrated).

        Lets a caller migrate a fresh database automatically but refuse to touch an outdated one.
        """
        with self._begin() as conn:
            if _current_heads(conn, _alembic_config(conn)):
                return False
            return not sa.inspect(conn).has_table(jobs_table.name)


def _versions(conn: Connection, table: str) -> set[str] | None:
    """The revisions in an Alembic version table, or None if there is no such table."""
    if not sa.inspect(conn).has_table(table):
        return None
    stmt: sa.Select[tuple[Any]] = sa.select(sa.column("version_num")).select_from(sa.table(table))
    return {str(v) for v in conn.execute(stmt).scalars()}


def _legacy_heads(conn: Connection, cfg: Config) -> set[str]:
    """The revisions an older convkit left in ``alembic_version``, if that table is convkit's:
    convkit's own table does not exist yet, ``convkit_jobs`` does, and every row names a
    convkit revision. Anything else there (a host app's history, even one whose revision ids
    look like ours) is left alone."""
    from alembic.script import ScriptDirectory

    if _versions(conn, VERSION_TABLE) is not None:
        return set()
    legacy = _versions(conn, _LEGACY_VERSION_TABLE)
    if not legacy or not sa.inspect(conn).has_table(jobs_table.name):
        return set()
    ours = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    return legacy if legacy <= ours else set()


def _current_heads(conn: Connection, cfg: Config) -> set[str]:
    """convkit's current revisions: its own table's, else those it would adopt."""
    return _versions(conn, VERSION_TABLE) or _legacy_heads(conn, cfg)


def _alembic_config(conn: Connection) -> Config:
    """Alembic configured in code: no alembic.ini at runtime, our connection passed through."""
    from alembic.config import Config

    cfg = Config()
    # configparser interpolates "%": escape it in case the install path contains one.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["connection"] = conn
    return cfg


# --------------------------------------------------------------------------------------------------
# Factory and plugin hook


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock that another new connection may hold.
        cur.execute("PRAGMA busy_timeout = 15000")
        # WAL lets readers run while one writer commits; NORMAL sync is durable enough under WAL.
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def _make_engine(url: str) -> Engine:
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if parsed.drivername.split("+")[0] == "postgres":  # Heroku-style alias SQLAlchemy refuses
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            db = parsed.database
            if not db or db == ":memory:" or parsed.query.get("mode") == "memory":
                # Each pooled connection would get its own empty in-memory database.
                raise ConfigError("DATABASE_URL: in-memory SQLite is not supported; use a file")
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                parsed,
                # Pooled connections move between threads; SQLite itself serializes writers.
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            )
            sa.event.listen(engine, "connect", _sqlite_on_connect)
            return engine
        if backend == "postgresql":
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            # pre_ping: a connection pooled before a database restart is replaced, not reused.
            return sa.create_engine(parsed, pool_pre_ping=True)
    except ImportError as exc:
        raise BackendUnavailable(
            f"job store {backend!r} needs a driver that is not installed ({exc.name}): "
            "pip install 'convkit[postgres]'"
        ) from exc
    raise ConfigError(f"DATABASE_URL: unsupported database {backend!r}; use sqlite or postgresql")


def create_job_store(
    url: str, settings: Settings | None = None, *, clock: Clock = utcnow
) -> SqlJobStore:
    """Build a :class:`SqlJobStore` for ``url`` (``sqlite:///path.db``,
    ``postgresql[+psycopg]://...``). The schema is not touched: call :meth:`SqlJobStore.migrate`.

    ``settings`` is accepted for the job-store factory protocol; nothing in it is needed here.
    """
    return SqlJobStore(_make_engine(url), clock=clock)


def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema."""
    store = create_job_store(url)
    try:
        store.migrate()
    finally:
        store.close()
