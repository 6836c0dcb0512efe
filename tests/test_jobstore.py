"""The SQL job store on real SQLite and PostgreSQL databases: the contract, migrations, wiring."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import convkit
from convkit.backends.jobstores.sql import store as sqlstore
from convkit.backends.jobstores.sql.store import SqlJobStore, _to_row, create_job_store, jobs_table
from convkit.errors import ConfigError, ServiceUnavailable
from convkit.job import JobSource, JobSpec
from convkit.plugins import DEFAULT_PLUGINS
from convkit.registry import Registry
from convkit.testing import FakeClock
from convkit.testing.jobstore import JobStoreContract, make_job


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/convkit.db"


class _SqlBackend:
    """Fixtures shared by both databases; subclasses provide ``db_url``."""

    @pytest.fixture
    def job_store_factory(self, db_url: str) -> Iterator[Callable[[FakeClock], SqlJobStore]]:
        stores: list[SqlJobStore] = []

        def make(clock: FakeClock) -> SqlJobStore:
            store = create_job_store(db_url, clock=clock)
            stores.append(store)
            store.migrate()
            return store

        yield make
        for store in stores:
            store.close()

    @pytest.fixture
    def fresh(self, db_url: str) -> Iterator[SqlJobStore]:
        """A store on a database that was never migrated."""
        store = create_job_store(db_url)
        yield store
        store.close()

    # -- migrations ---------------------------------------------------------------------------
    def test_store_does_not_create_tables(self, fresh: SqlJobStore) -> None:
        """Building a store and checking it leaves an empty database empty."""
        fresh.check()
        assert not sa.inspect(fresh.engine).has_table("convkit_jobs")
        assert fresh.is_empty()

    def test_migrate_creates_table(self, fresh: SqlJobStore) -> None:
        """migrate() on an empty database creates the jobs table and flips needs_migration()."""
        assert fresh.needs_migration()
        fresh.migrate()
        assert sa.inspect(fresh.engine).has_table("convkit_jobs")
        assert not fresh.needs_migration()
        assert not fresh.is_empty()

    def test_migrate_twice_is_a_noop(self, fresh: SqlJobStore) -> None:
        """A second migrate() changes nothing and keeps the rows."""
        fresh.migrate()
        job, _ = fresh.create(make_job(FakeClock()))
        fresh.migrate()
        assert fresh.get(job.id) == job
        with fresh.engine.connect() as conn:
            opts = {"version_table": sqlstore.VERSION_TABLE}
            assert MigrationContext.configure(conn, opts=opts).get_current_heads() == ("0003",)

    def test_upgrade_from_0001_keeps_jobs(self, fresh: SqlJobStore) -> None:
        """A database created by revision 0001 upgrades to upload jobs (nullable template,
        source columns) with its existing jobs intact."""
        from alembic import command

        from convkit.backends.jobstores.sql.store import _alembic_config

        with fresh.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")
        assert fresh.needs_migration() and not fresh.is_empty()
        # Written with 0001's columns only, as an old release would have.
        old = make_job(FakeClock())
        later = ("source_", "request_id", "traceparent")
        row = {k: v for k, v in _to_row(old).items() if not k.startswith(later)}
        with fresh.engine.begin() as conn:
            conn.execute(sa.insert(jobs_table).values(**row))
        fresh.migrate()
        assert fresh.get(old.id) == old
        upload = make_job(
            FakeClock(),
            spec=JobSpec(
                template=None,
                format="pdf",
                source=JobSource(key="acme/x/source.docx", format="docx", filename="a.docx"),
            ),
        )
        fresh.create(upload)
        assert fresh.get(upload.id) == upload

    def test_request_context_migration_upgrades_and_downgrades(self, fresh: SqlJobStore) -> None:
        """0003 adds request_id and traceparent to existing jobs (NULL); its downgrade drops
        them and keeps the jobs."""
        from alembic import command

        from convkit.backends.jobstores.sql.store import _alembic_config

        with fresh.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0002")
        old = make_job(FakeClock())
        row = {k: v for k, v in _to_row(old).items() if k not in ("request_id", "traceparent")}
        with fresh.engine.begin() as conn:
            conn.execute(sa.insert(jobs_table).values(**row))
        fresh.migrate()
        assert fresh.get(old.id) == old
        with fresh.engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0002")
            columns = {c["name"] for c in sa.inspect(conn).get_columns("convkit_jobs")}
            kept = conn.execute(sa.select(jobs_table.c.id)).scalars().all()
        assert not {"request_id", "traceparent"} & columns
        assert kept == [old.id]

    def test_default_queue_stats_agree_with_the_query(self, fresh: SqlJobStore) -> None:
        """JobStore's default queue_stats (claimable + get) gives what the SQL query gives."""
        from convkit.ports import JobStore

        clock = FakeClock()
        fresh.migrate()
        fresh.clock = clock
        assert JobStore.queue_stats(fresh) == fresh.queue_stats() == (0, 0.0)
        for _ in range(3):
            fresh.create(make_job(clock))
            clock.advance(2)
        assert JobStore.queue_stats(fresh) == fresh.queue_stats() == (3, 6.0)

    def test_module_migrate(self, db_url: str, fresh: SqlJobStore) -> None:
        """The module function migrate(url) upgrades the database at url."""
        sqlstore.migrate(db_url)
        assert not fresh.needs_migration()

    def test_migration_matches_table_metadata(self, fresh: SqlJobStore) -> None:
        """The schema the migrations build is the schema the store's queries assume."""
        fresh.migrate()
        with fresh.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(
                    conn, opts={"compare_type": True, "version_table": sqlstore.VERSION_TABLE}
                ),
                sqlstore.metadata,
            )
        assert diff == []


class TestSqliteJobStore(_SqlBackend, JobStoreContract):
    @pytest.fixture
    def db_url(self, sqlite_url: str) -> str:
        return sqlite_url


@pytest.mark.postgres
class TestPostgresJobStore(_SqlBackend, JobStoreContract):
    @pytest.fixture
    def db_url(self, pg_url: str) -> str:
        return pg_url


# --------------------------------------------------------------------------------------------------
# Engine set-up and wiring


def test_sqlite_creates_parent_folder_and_uses_wal(tmp_path: Path) -> None:
    """A missing parent folder is created and the database runs in WAL mode."""
    store = create_job_store(f"sqlite:///{tmp_path}/a/b/jobs.db")
    try:
        store.migrate()
        assert (tmp_path / "a" / "b" / "jobs.db").exists()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()


def test_plain_postgresql_url_uses_psycopg() -> None:
    """postgresql:// means psycopg 3 (SQLAlchemy's own default would be psycopg2)."""
    store = create_job_store("postgresql://postgres@127.0.0.1:5432/test")
    try:
        assert store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    """Unknown databases, in-memory SQLite and garbage are rejected with a ConfigError."""
    with pytest.raises(ConfigError):
        create_job_store(url)


def test_unreachable_database_is_service_unavailable() -> None:
    """A database that is down surfaces as ServiceUnavailable, never a SQLAlchemy error."""
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    store = create_job_store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(ServiceUnavailable, match="database unreachable"):
            store.check()
        with pytest.raises(ServiceUnavailable):
            store.get("x")
        with pytest.raises(ServiceUnavailable):
            store.claim("x", lease_s=1)
    finally:
        store.close()


def test_migrations_ship_inside_the_package() -> None:
    """The Alembic scripts are package files, found without an alembic.ini."""
    import convkit.backends.jobstores.sql.migrations

    folder = Path(convkit.backends.jobstores.sql.migrations.__file__).parent
    assert folder == sqlstore.MIGRATIONS_DIR
    assert (folder / "env.py").is_file()
    assert (folder / "versions" / "0001_create_jobs.py").is_file()


def test_hook_register_job_stores(tmp_path: Path) -> None:
    """The built-in plugin registers sqlite and postgresql, resolving to create_job_store."""
    assert "convkit.backends.jobstores" in DEFAULT_PLUGINS
    # Only this plugin: the other built-ins are not needed to resolve a job store.
    pm = convkit.get_plugin_manager(
        ["convkit.backends.jobstores"], defaults=False, load_entry_points=False
    )
    registry = Registry.from_hook_results("job store", pm.hook.register_job_stores())
    assert registry.names() == ["postgres", "postgresql", "sqlite"]
    assert registry.get("postgresql").extra == "postgres"
    factory = registry.get("sqlite").load()
    assert factory is create_job_store
    store = factory(f"sqlite:///{tmp_path}/hook.db", convkit.Settings())
    try:
        assert isinstance(store, SqlJobStore)
    finally:
        store.close()


@pytest.mark.postgres
def test_sweep_and_cleanup_skip_rows_another_transaction_holds(pg_url: str) -> None:
    """While another transaction holds a job's row (a claim in flight), claimable() and
    expired() leave that job out at once instead of waiting for it or offering it again."""
    clock = FakeClock()
    store = create_job_store(pg_url, clock=clock)
    try:
        store.migrate()
        held, _ = store.create(make_job(clock))
        clock.advance(1)
        free, _ = store.create(make_job(clock))
        clock.advance(3600)
        with store.engine.connect() as other, other.begin():
            other.execute(
                sa.select(jobs_table.c.id).where(jobs_table.c.id == held.id).with_for_update()
            )
            assert store.claimable() == [free.id]
            assert [j.id for j in store.expired(clock())] == [free.id]
        assert store.claimable() == [held.id, free.id]
    finally:
        store.close()


def test_sqlite_ignores_skip_locked(sqlite_url: str) -> None:
    """SQLite has no row locks: the same selections work and take no lock clause."""
    clock = FakeClock()
    store = create_job_store(sqlite_url, clock=clock)
    try:
        store.migrate()
        job, _ = store.create(make_job(clock))
        assert store.claimable() == [job.id]
        stmt = sa.select(jobs_table.c.id).with_for_update(skip_locked=True)
        assert "FOR UPDATE" not in str(stmt.compile(store.engine))
    finally:
        store.close()
