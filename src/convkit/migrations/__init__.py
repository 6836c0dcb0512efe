"""Alembic migrations of the job store schema (run by ``convkit.backends.sqlstore.migrate``)."""
