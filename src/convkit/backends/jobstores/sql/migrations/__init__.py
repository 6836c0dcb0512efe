"""Alembic migrations of the job store schema (run by its ``store.migrate``)."""
