"""Built-in job stores: SQLite and PostgreSQL through SQLAlchemy (``backends/jobstores/sql``)."""

from __future__ import annotations

from convkit.hookspecs import hookimpl
from convkit.registry import BackendSpec

_SQL = "convkit.backends.jobstores.sql.store:create_job_store"


@hookimpl
def register_job_stores() -> list[BackendSpec]:
    """The built-in job stores, by ``DATABASE_URL`` scheme."""
    return [
        BackendSpec("sqlite", _SQL, description="SQLite file database"),
        BackendSpec("postgresql", _SQL, extra="postgres", description="PostgreSQL (psycopg 3)"),
        BackendSpec("postgres", _SQL, extra="postgres", description="alias of postgresql"),
    ]
