"""The SQLAlchemy job store and its Alembic migrations (``migrations/``, own version table)."""
