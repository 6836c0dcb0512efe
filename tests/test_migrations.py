"""convkit's migrations beside a host app's own Alembic history in one database (SQLite and
PostgreSQL): separate version tables in both orders, adoption of an older convkit's
``alembic_version``, every downgrade, and `convkit migrate`'s one-line failure."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from convkit.backends.jobstores.sql.store import (
    VERSION_TABLE,
    SqlJobStore,
    _alembic_config,
    create_job_store,
)
from convkit.testing import FakeClock
from convkit.testing.jobstore import make_job
from tests.test_restart import _free_port

HOST_ENV = """
from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""

# The host's revision id is "0001" like convkit's first one, on purpose: ids alone never decide.
HOST_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("host_orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("host_orders")
"""


#: Alembic's default version table, as Alembic creates it.
LEGACY_TABLE = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[SqlJobStore]:
    s = create_job_store(db_url)
    yield s
    s.close()


@pytest.fixture
def host(tmp_path: Path) -> Config:
    """A host app's Alembic script directory (one revision, table host_orders); it runs on
    the store's engine (see :func:`run_host`)."""
    scripts = tmp_path / "host_migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(HOST_ENV)
    (scripts / "versions" / "0001_orders.py").write_text(HOST_REVISION)
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    return cfg


def run_host(store: SqlJobStore, cfg: Config) -> None:
    """``alembic upgrade head`` of the host app."""
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def rows(store: SqlJobStore, table: str) -> list[str] | None:
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(table):
            return None
        query = sa.text(f"SELECT version_num FROM {table}")  # noqa: S608  # our constants
        return sorted(conn.execute(query).scalars())


def tables(store: SqlJobStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


def test_host_first_then_convkit(store: SqlJobStore, host: Config) -> None:
    """convkit migrates a database whose alembic_version is a host app's (revision "0001",
    like convkit's): the host's table and revision stay untouched."""
    run_host(store, host)
    assert store.needs_migration() and store.is_empty()
    store.migrate()
    assert rows(store, "alembic_version") == ["0001"]
    assert rows(store, VERSION_TABLE) == ["0003"]
    assert {"host_orders", "convkit_jobs"} <= tables(store)
    run_host(store, host)  # the host's next deploy: still at its head, nothing to do
    assert not store.needs_migration()


def test_convkit_first_then_host(store: SqlJobStore, host: Config) -> None:
    """A host app migrating after convkit finds no foreign revision in its alembic_version."""
    store.migrate()
    assert rows(store, "alembic_version") is None
    run_host(store, host)
    assert rows(store, "alembic_version") == ["0001"]
    assert rows(store, VERSION_TABLE) == ["0003"]
    store.migrate()
    assert rows(store, "alembic_version") == ["0001"]


def test_older_convkit_version_table_is_adopted_once(store: SqlJobStore) -> None:
    """A database made by an older convkit (its revision in alembic_version): readable as
    current, and the next migrate moves the revision to convkit's table and drops the old one,
    keeping the jobs."""
    store.migrate()
    job, _ = store.create(make_job(FakeClock()))
    with store.engine.begin() as conn:  # what convkit 0.2 left behind
        conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(sa.text(LEGACY_TABLE))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0003')"))
    assert not store.needs_migration() and not store.is_empty()
    store.migrate()
    assert rows(store, "alembic_version") is None
    assert rows(store, VERSION_TABLE) == ["0003"]
    assert store.get(job.id) == job


def test_alembic_version_naming_convkit_revisions_without_convkit_tables_is_left_alone(
    store: SqlJobStore, host: Config
) -> None:
    """A host's history at "0001" with no convkit_jobs table is not an older convkit's."""
    run_host(store, host)
    store.migrate()
    assert rows(store, "alembic_version") == ["0001"]


def test_every_migration_downgrades(store: SqlJobStore, host: Config) -> None:
    """up -> down to base -> up: convkit's tables come and go, the host's stay."""
    run_host(store, host)
    store.migrate()
    with store.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "base")
    assert "convkit_jobs" not in tables(store)
    assert rows(store, VERSION_TABLE) == []
    assert store.needs_migration()
    store.migrate()
    store.create(make_job(FakeClock()))
    assert rows(store, VERSION_TABLE) == ["0003"]
    assert rows(store, "alembic_version") == ["0001"]
    assert "host_orders" in tables(store)


def _migrate_cli(db_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "STARTUP_WAIT_SECONDS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "convkit.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_cli_migrate_beside_a_foreign_history(
    db_url: str, store: SqlJobStore, tmp_path: Path
) -> None:
    """`convkit migrate` on a database whose alembic_version holds a revision convkit does not
    know: it migrates its own schema, exit 0, and leaves that table alone."""
    with store.engine.begin() as conn:
        conn.execute(sa.text(LEGACY_TABLE))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('a1b2c3d4e5f6')"))
    done = _migrate_cli(db_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "database is up to date" in done.stdout
    assert rows(store, "alembic_version") == ["a1b2c3d4e5f6"]


def test_cli_migrate_failure_is_one_line(db_url: str, store: SqlJobStore, tmp_path: Path) -> None:
    """A convkit table at a revision this convkit does not know (a newer release ran): one
    line, exit 2, no traceback."""
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))  # noqa: S608
    done = _migrate_cli(db_url, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convkit: error: database migration failed")
    assert "9999" in lines[0]


# --------------------------------------------------------------------------------------------------
# Waiting for the database at start-up


class _Proxy(socketserver.ThreadingTCPServer):
    """A TCP proxy to ``upstream``, on a port the test chose (so it can open it late)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        super().__init__(("127.0.0.1", port), _Pipe)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


class _Pipe(socketserver.BaseRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        with socket.create_connection(self.server.upstream) as up:

            def pump(src: socket.socket, dst: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while data := src.recv(65536):
                        dst.sendall(data)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

            back = threading.Thread(target=pump, args=(up, self.request), daemon=True)
            back.start()
            pump(self.request, up)
            back.join()


@pytest.mark.postgres
def test_migrate_waits_for_the_database(pg_url: str, tmp_path: Path) -> None:
    """`convkit migrate` started while nothing listens on the database's port logs a retry,
    keeps waiting, and migrates once the port opens (a proxy in front of PostgreSQL)."""
    real = sa.make_url(pg_url)
    port = _free_port()
    url = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url, "STARTUP_WAIT_SECONDS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convkit.cli", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    proxy = None
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "database not reachable yet (attempt 1" in first, first
        proxy = _Proxy(port, (real.host or "127.0.0.1", real.port or 5432))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if proxy is not None:
            proxy.close()
    assert proc.returncode == 0, err
    assert "database is up to date" in out
    store = create_job_store(pg_url)
    try:
        assert not store.needs_migration()
    finally:
        store.close()


def test_worker_gives_up_after_the_wait_in_one_line(tmp_path: Path) -> None:
    """`convkit worker` on a database that never comes up: retries are logged, then one
    error line naming STARTUP_WAIT_SECONDS, exit 2, no traceback."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/test"
    env = {**os.environ, "DATABASE_URL": url, "STARTUP_WAIT_SECONDS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "convkit.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert any("database not reachable yet" in line for line in lines[:-1]), lines
    assert lines[-1].startswith("convkit: error: database unreachable")
    assert "STARTUP_WAIT_SECONDS=1" in lines[-1]
