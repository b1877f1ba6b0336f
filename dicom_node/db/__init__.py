"""The index (SQLAlchemy 2) and its Alembic migrations."""
