"""The engine, and the one dialect-aware statement (``insert_ignore``).

SQLite gets WAL, ``synchronous=NORMAL`` and ``BEGIN IMMEDIATE``.

``synchronous=NORMAL`` is safe here because the storage root, whose files are fsynced before the
index row is written, can always rebuild the index (``dicom_node.storage.recovery``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from dicom_node.db.models import Base

SQLITE_BUSY_TIMEOUT_MS = 30_000


def database_exists(url: str) -> bool:
    """Whether ``url`` names an index a node has made: an SQLite file that is there, or a
    server database with the migrations table. Read commands use it so that a wrong data
    directory is an error, not a new empty index."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return (
            not parsed.database or parsed.database == ":memory:" or Path(parsed.database).exists()
        )
    engine = create_engine(url)
    try:
        return sa_inspect(engine).has_table("alembic_version")
    finally:
        engine.dispose()


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin_immediate(conn: Connection) -> None:
        # Take the write lock up front: no deadlock when a reader later wants to write.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def insert_ignore(conn: Connection, model: type[Base], values: dict[str, Any]) -> bool:
    """``INSERT … ON CONFLICT DO NOTHING``; ``True`` if a row was inserted.

    ``RETURNING`` tells, on both dialects (PostgreSQL reports no rowcount for this statement).
    """
    stmt: Insert
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(model).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(model).on_conflict_do_nothing()
    key = sa_inspect(model).primary_key[0]
    return conn.execute(stmt.returning(key), values).first() is not None
