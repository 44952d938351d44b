"""PostgreSQL work awaited on the event loop instead of run in the thread pool.

A read, a search or a create on PostgreSQL spends most of its time waiting for the database's
answers: one round trip for a read, about a dozen for a create. In the thread pool each wait
ends with the thread queueing for the GIL behind the event loop and every other thread (with
eight clients creating, the server's process was busy all the time while PostgreSQL sat
mostly idle), and each request pays two thread hand-offs. On the loop a wait costs nothing:
other requests run meanwhile.

:class:`LoopDatabase` holds a SQLAlchemy asyncio engine over psycopg's asynchronous connections
(``create_async_engine``), made when the app's lifespan starts and disposed when it ends, and
offers three things to :mod:`careplan_fhir.rest.fast_paths` and
:mod:`careplan_fhir.rest.group_commit`:

* :meth:`LoopDatabase.lookup`: the plain read, one prepared statement over a small pool of
  psycopg's own (``psycopg_pool.AsyncConnectionPool``, which replaces a connection that broke
  or came back in the middle of a query), without SQLAlchemy's statement machinery;
* :meth:`LoopDatabase.fetch`: the rows of one statement the caller compiled (a search's,
  planned by :func:`careplan_fhir.storage.search.plan_search`), on the same pool;
* :meth:`LoopDatabase.run`: any of the server's ordinary (synchronous) interaction functions,
  run by ``AsyncConnection.run_sync`` in a greenlet on the loop: the same code as in a worker
  thread, whose every statement is awaited on the loop instead of blocking.

The CPU work of such a request (parsing, validation, building the answer) runs on the loop, as
it does on SQLite; only the waits change place.

Only the loop the lifespan started on may use it (:meth:`usable`): a test's second event loop,
or an app whose lifespan never ran, takes the thread pool. Any failure here is the caller's cue
to take the ordinary path, which reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from careplan_fhir.storage.db import make_loop_engine

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The plain read's own pool: its connections (autocommit, the read statement prepared) and
#: how long a read waits for one before it takes the ordinary path. psycopg's pool hands a
#: returned connection to the reader that has waited longest: with 64 clients and SQLAlchemy's
#: pool, whose waiters may be overtaken, the slowest reads waited 6.7 times the median.
READ_POOL_SIZE = 10
READ_WAIT_SECONDS = 5.0
#: How the reads' connections show in ``pg_stat_activity``.
READS_APPLICATION_NAME = "careplan-fhir reads"


def current_row_sql(marker: str) -> str:
    """The plain read's statement: ``(version, last_updated, raw, deleted)`` of one resource,
    with ``marker`` (the driver's placeholder) for its type and id."""
    return (
        "SELECT version, last_updated, raw, deleted FROM resource"
        f" WHERE res_type = {marker} AND res_id = {marker}"
    )


_SQL = current_row_sql("%s")


def conninfo_of(url: str) -> str:
    """The libpq connection string of a ``postgresql+psycopg://`` SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _autocommit(connection: AsyncConnection[Any]) -> None:
    await connection.set_autocommit(True)


class LoopDatabase:
    """PostgreSQL connections awaited on one event loop; open and close on that loop."""

    def __init__(self, engine: Engine) -> None:
        #: The synchronous engine's URL and echo setting are this one's.
        self.url = engine.url.render_as_string(hide_password=False)
        self.echo = bool(engine.echo)
        self._engine: AsyncEngine | None = None
        self._reads: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Reads looked up, statements fetched and interactions run here (tests, benchmarks).
        self.reads = 0
        self.fetches = 0
        self.runs = 0

    async def open(self) -> None:
        """Make the engine and the reads' pool on the running loop. Connections are opened
        in the background or as they are needed: a database that is down does not stop the
        app from starting."""
        reads: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo_of(self.url),
            min_size=READ_POOL_SIZE,
            max_size=READ_POOL_SIZE,
            open=False,
            kwargs={"application_name": READS_APPLICATION_NAME},
            configure=_autocommit,
            timeout=READ_WAIT_SECONDS,
            name="careplan-reads",
        )
        await reads.open(wait=False)
        self._reads = reads
        self._engine = make_loop_engine(self.url, echo=self.echo)
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        engine, self._engine, self._loop = self._engine, None, None
        reads, self._reads = self._reads, None
        if reads is not None:
            await reads.close()
        if engine is not None:
            await engine.dispose()

    def usable(self) -> bool:
        """Whether work may be awaited here: the engine is made and this is its loop."""
        if self._engine is None:
            return False
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _active(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the loop database is not open")
        return self._engine

    async def lookup(
        self, resource_type: str, resource_id: str
    ) -> tuple[int, datetime, bytes | None, bool] | None:
        """``(version, last_updated, raw, deleted)`` of the current row, or None if none.

        One prepared statement on a connection of the reads' own pool, in autocommit mode (no
        BEGIN and ROLLBACK round trips). Raises whatever psycopg or the pool raise (the caller
        falls back).
        """
        pool = self._reads
        if pool is None:
            raise RuntimeError("the loop database is not open")
        async with pool.connection() as connection:
            cursor = await connection.execute(_SQL, (resource_type, resource_id), prepare=True)
            row = await cursor.fetchone()
        self.reads += 1
        if row is None:
            return None
        return row[0], row[1], row[2], row[3]

    async def fetch(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        """The rows (named tuples) of one read-only statement, on a connection of the reads'
        pool (autocommit, as :meth:`lookup`): a search planned by
        :func:`careplan_fhir.storage.search.plan_search`, without SQLAlchemy's execution
        and its greenlet. Raises whatever psycopg or the pool raise (the caller falls back)."""
        pool = self._reads
        if pool is None:
            raise RuntimeError("the loop database is not open")
        async with pool.connection() as connection:
            cursor = connection.cursor(row_factory=namedtuple_row)
            await cursor.execute(sql, parameters)
            rows = await cursor.fetchall()
        self.fetches += 1
        return rows

    async def run(
        self,
        function: Callable[..., T],
        *args: Any,
        read_only: bool = False,
    ) -> T:
        """``function(connection, *args)`` on a connection of this engine, in a greenlet on
        the loop (its statements are awaited). The function owns the transaction: it commits
        what it wants kept; the rest is rolled back when the connection goes back to the pool.
        ``read_only`` runs each statement on its own (autocommit: no BEGIN and ROLLBACK)."""
        async with self._active().connect() as connection:
            if read_only:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            result = await connection.run_sync(function, *args)
        self.runs += 1
        return result


__all__ = ["READ_POOL_SIZE", "READS_APPLICATION_NAME", "LoopDatabase", "conninfo_of"]
