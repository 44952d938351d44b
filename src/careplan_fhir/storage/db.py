"""Engine creation for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from careplan_fhir.fhir import jsonio

logger = logging.getLogger(__name__)


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


def display_url(url: str) -> str:
    """The database URL with its password masked, for logs and messages."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, echo: bool = False, background_checkpoints: bool = False) -> Engine:
    """Create the engine; SQLite gets WAL, foreign keys and a busy timeout.

    With ``background_checkpoints`` (the server), SQLite connections never checkpoint the WAL
    themselves: a :class:`WalCheckpointer` thread does, so no request pays for copying the WAL
    into the database.
    """
    url = normalise_url(url)
    # Statement parameters hold resource content: never in a log line or an error message.
    kwargs: dict[str, Any] = {
        "echo": echo,
        "json_serializer": _serialise_json,
        "hide_parameters": True,
    }
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            # As many pooled connections as the thread pool has threads (40), so that busy
            # moments reuse connections instead of opening new ones.
            kwargs["pool_size"] = 40
            kwargs["max_overflow"] = 10
            # The connection given back last is handed out next. Each SQLite connection has a
            # page cache of its own, valid only until another connection writes: handed out
            # in turn (FIFO), every write met a cold cache and read its index pages again.
            kwargs["pool_use_lifo"] = True
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if background_checkpoints:
            event.listen(engine, "connect", _no_autocheckpoint)
        _SqliteWriterLock(engine)
        return engine
    # The server's plain reads, searches and creates go over the event loop's own connections
    # (make_loop_engine, rest/loop_database.py: 10 + 10); this pool serves the rest, in the
    # thread pool. A server holds up to 50 connections (30 here): PostgreSQL's
    # max_connections must allow that for every server process.
    kwargs["pool_size"] = 20
    kwargs["max_overflow"] = 10
    # No pre-ping (a round trip per checkout); recycle instead, and a broken connection
    # fails its request, which the client may retry.
    kwargs["pool_recycle"] = 1800
    return create_engine(url, **kwargs)


#: Connections of the event loop's engine (:func:`make_loop_engine`). Eight clients reading or
#: creating kept about five busy; more only mean more PostgreSQL backends contending for the
#: cores. A request that finds them all busy waits for one, on the loop.
LOOP_POOL_SIZE = 10
#: How its connections show in ``pg_stat_activity``.
LOOP_APPLICATION_NAME = "careplan-fhir loop"


def make_loop_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """PostgreSQL: an engine whose connections are awaited on the running event loop
    (rest/loop_database.py); dispose of it on the same loop."""
    return create_async_engine(
        normalise_url(url),
        echo=echo,
        json_serializer=_serialise_json,
        hide_parameters=True,
        connect_args={"application_name": LOOP_APPLICATION_NAME},
        pool_size=LOOP_POOL_SIZE,
        max_overflow=0,
        pool_timeout=10,
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when a transaction begins (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Reads through a memory map share the operating system's page cache across connections
    # instead of copying pages into each connection's small private cache.
    cursor.execute("PRAGMA mmap_size=1073741824")
    cursor.execute("PRAGMA cache_size=-16384")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


WRITE_OPTIONS = {"careplan_write": True}


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class WalCheckpointer:
    """Checkpoints a SQLite WAL from a background thread every ``interval`` seconds.

    ``PASSIVE`` checkpoints copy what they can without waiting for readers or writers, so they
    never stall a request; with automatic checkpoints off, the writer that happened to cross
    the threshold used to pay for the whole copy (and its fsync) inside a request.
    """

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.checkpoint()

    def checkpoint(self) -> None:
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            row = cursor.fetchone()
            cursor.close()
        finally:
            connection.close()
        # (busy, frames in the WAL, frames copied)
        if row is not None and row[1] and row[1] > 0:
            self.checkpoints += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception:  # noqa: BLE001 - a failed checkpoint is retried next interval
                logger.warning("WAL checkpoint failed", exc_info=True)


def sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite engine's database; None for an in-memory one (or a ``file:`` URI,
    which may name one) and for other backends."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else database


class _SqliteWriterLock:
    """One writer at a time, queued in Python and in the kernel rather than in SQLite.

    A write transaction takes SQLite's write lock up front (BEGIN IMMEDIATE): two deferred
    transactions that both read and then write would otherwise fail with "database is
    locked". Waiting writers are queued on a process-wide lock first, because SQLite's own
    busy handler waits by sleeping in growing steps, which turned a burst of creates into a
    one-second tail. The turn passes on only after COMMIT or ROLLBACK has run (the dialect's
    ``do_commit``/``do_rollback`` are wrapped), so the next writer never meets a busy file.

    Other processes on the same file (the audit writer process, ``careplan-fhir
    load-examples`` beside a running server) queue the same way: the holder of the process's
    turn also takes an exclusive ``flock`` on ``<database>-writer`` beside the database, and a
    waiting process is woken by the kernel the moment it is released. (Not on the database file
    itself: closing any descriptor of that file would drop SQLite's own POSIX locks.)
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._holder: Any = None
        database = sqlite_file(engine)
        self._file_path = f"{database}-writer" if database else None
        self._file: int | None = None
        self._file_locked = False
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self._release(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self._release(dbapi_connection)

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        event.listen(engine, "begin", self.begin)
        event.listen(engine.pool, "checkin", self.checkin)

    def begin(self, connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get("careplan_write"):
            wait = not options.get("careplan_write_nowait")
            if not self._lock.acquire(blocking=wait):
                raise WriterBusy("another writer of this process holds the write turn")
            if not self._lock_file(wait):
                self._lock.release()
                raise WriterBusy("another process holds the write turn")
            # The pool's proxy: what the dialect's do_commit/do_rollback receive.
            self._holder = connection.connection
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                self._release(self._holder)
                raise
        else:
            connection.exec_driver_sql("BEGIN")

    def _lock_file(self, wait: bool) -> bool:
        """Take the cross-process turn (the caller holds the process's); False when busy."""
        if self._file_path is None:
            return True
        if self._file is None:
            try:
                self._file = os.open(self._file_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                logger.warning(
                    "cannot open %s: writers of other processes wait in SQLite's busy handler",
                    self._file_path,
                    exc_info=True,
                )
                self._file_path = None
                return True
            weakref.finalize(self, os.close, self._file)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._file_locked = True
        return True

    def checkin(self, dbapi_connection: Any, _record: Any) -> None:
        # A connection returned to the pool never keeps the writer's turn.
        self._release(dbapi_connection)

    def _release(self, connection: Any) -> None:
        # ``connection`` is the pool's proxy (commit, rollback) or the raw DB-API connection
        # (checkin); either identifies the holder.
        holder = self._holder
        if holder is None or connection is None:
            return
        if connection is holder or connection is getattr(holder, "dbapi_connection", None):
            self._holder = None
            if self._file_locked:
                self._file_locked = False
                assert self._file is not None
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._lock.release()


class WriterBusy(RuntimeError):
    """Another writer holds SQLite's write turn (only with ``wait=False``)."""


def begin_write(connection: Connection, *, wait: bool = True) -> None:
    """Make ``connection``'s next transaction a write transaction (call before any query).

    With ``wait=False`` the transaction does not wait for another writer of this process and
    raises :class:`WriterBusy` instead: code running on the event loop must never block on a
    turn that only the event loop can hand back.
    """
    connection.execution_options(**WRITE_OPTIONS, careplan_write_nowait=not wait)


def claim_row(
    connection: Connection,
    table: Any,
    values: dict[str, Any],
    *,
    unique: tuple[str, ...],
    winner: str,
) -> str | None:
    """Insert ``values`` into ``table`` in a savepoint, guarded by a unique constraint on
    ``unique``: None when this insert won, else the ``winner`` column of the row already there.

    The retry-safe "once per key" step of attaching a plan and of recording a check-in: two
    concurrent callers both insert, one commits, the other reads the winner's row.
    """
    try:
        with connection.begin_nested():
            connection.execute(insert(table).values(**values))
    except IntegrityError:
        found = connection.execute(
            select(table.c[winner]).where(*(table.c[name] == values[name] for name in unique))
        ).scalar_one()
        return str(found)
    return None
