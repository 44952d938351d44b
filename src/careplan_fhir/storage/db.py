"""Engine creation for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import StaticPool

from careplan_fhir.fhir import jsonio


def _serialise_json(value: Any) -> str:
    # Resource content arrives already serialised (the exact bytes we serve): store it as is.
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return jsonio.dumps(value).decode("utf-8")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy's default would be psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine; SQLite gets WAL, foreign keys and a busy timeout."""
    url = normalise_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _serialise_json}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs["pool_size"] = 10
    kwargs["max_overflow"] = 20
    kwargs["pool_pre_ping"] = True
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when a transaction begins (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


WRITE_OPTIONS = {"careplan_write": True}


def _sqlite_begin(connection: Any) -> None:
    # A write transaction takes SQLite's write lock up front (BEGIN IMMEDIATE): two deferred
    # transactions that both read and then write would otherwise fail with "database is
    # locked" instead of waiting their turn.
    if connection.get_execution_options().get("careplan_write"):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


def begin_write(connection: Connection) -> None:
    """Make ``connection``'s next transaction a write transaction (call before any query)."""
    connection.execution_options(**WRITE_OPTIONS)
