"""Alembic environment: runs on the connection :mod:`..sql.store` passes in.

There is no alembic.ini and no URL here on purpose; the store owns connections (and their
pooling, pragmas and search_path), so migrations run exactly where the store will read.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from convkit.backends.jobstores.sql.store import VERSION_TABLE

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection) or context.is_offline_mode():
    raise RuntimeError(
        "convkit migrations run online through convkit.backends.jobstores.sql.store.migrate(url)"
    )

# Our own version table: a host app's `alembic_version` in the same database stays its own.
context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
