"""PostgreSQL: the rows of server-id creates held back, then written by one statement.

A create on PostgreSQL waits on the network for each statement: the resource's, its
Provenance's, and the ``BEGIN`` and ``COMMIT`` around them, four round trips in all, each
also costing the server process a query's worth of driver work. The group commit of the fast
path (rest/group_commit.py) instead gives every create of a group one :class:`PendingCreates`:

* :meth:`PendingCreates.add` takes a create's rows (resource, version, index rows) and hands
  back the primary key it will have, drawn ahead of time from the ``resource`` sequence by
  :class:`PrimaryKeys` (a block at a time, one statement per :data:`BLOCK` creates);
* :meth:`PendingCreates.flush` writes every row held with **one** statement (data-modifying
  CTEs, the rows sent as JSON and read with ``json_to_recordset``; the raw bytes as one
  ``bytea[]`` array). Its text is the same for any number of creates, so PostgreSQL prepares
  it once per connection. When nothing else was sent in the transaction, the statement runs
  on its own in autocommit mode: a group of creates and their Provenances is stored by one
  round trip, and is as atomic as any single statement;
* :func:`hold_creates` makes any other statement on the connection flush first (a hook that
  reads, authorization checking a written version): every statement sees the creates before
  it, as if they had been written at once.

The rows are exactly those :meth:`Repository.create` writes (tests/test_postgres_create_path.py
compares every table).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
from sqlalchemy import Connection, event

from .tables import INDEX_TABLE_BY_KIND

#: Primary keys drawn from the sequence at a time (unused ones are gaps, as after a rollback).
BLOCK = 200

#: PostgreSQL type of each index column that is not text (the migrations' column types).
COLUMN_TYPES = {"value": "float8", "low": "timestamp", "high": "timestamp"}


def column_type(name: str) -> str:
    """The PostgreSQL type of the index column ``name`` (of :data:`INDEX_COLUMNS`)."""
    return COLUMN_TYPES.get(name, "varchar")


#: The value columns of each kind's index table: all but its key, resource key and type.
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    kind: tuple(
        c.name
        for c in table.__table__.columns  # type: ignore[attr-defined]
        if c.name not in ("pk", "resource_pk", "res_type")
    )
    for kind, table in INDEX_TABLE_BY_KIND.items()
}


def _statement(columns: dict[str, tuple[str, ...]]) -> str:
    """The one statement: resources, versions, then each kind of index row."""
    parts = [
        "WITH d AS (SELECT d.pk, d.t, d.i, d.u, b.raw FROM json_to_recordset(%(r)s::json)"
        " AS d(n int8, pk int8, t varchar, i varchar, u timestamp)"
        " JOIN unnest(%(raw)s::bytea[]) WITH ORDINALITY AS b(raw, n) ON b.n = d.n),"
        " r AS (INSERT INTO resource (pk, res_type, res_id, version, last_updated, deleted,"
        " content, raw) SELECT pk, t, i, 1, u, false, convert_from(raw, 'UTF8')::jsonb, raw"
        " FROM d),"
        " v AS (INSERT INTO resource_version (resource_pk, res_type, res_id, version,"
        " last_updated, method, raw) SELECT pk, t, i, 1, u, 'POST', raw FROM d)",
    ]
    for kind, names in columns.items():
        table = INDEX_TABLE_BY_KIND[kind].__table__.name  # type: ignore[attr-defined]
        declared = ", ".join(f"{c} {column_type(c)}" for c in names)
        parts.append(
            f", x_{kind} AS (INSERT INTO {table} (resource_pk, res_type, {', '.join(names)})"
            f" SELECT p, t, {', '.join(names)} FROM json_to_recordset(%({kind})s::json)"
            f" AS x(p int8, t varchar, {declared}))"
        )
    parts.append(" SELECT count(*) FROM d")
    return "".join(parts)


_SQL = _statement(INDEX_COLUMNS)
_DRAW = "SELECT nextval(pg_get_serial_sequence('resource', 'pk')) FROM generate_series(1, %s)"


def _outside_transaction(connection: Connection) -> bool:
    """Whether nothing has been sent in the connection's transaction yet (psycopg begins
    one with the first statement): a single statement may then run in autocommit mode."""
    driver: Any = connection.connection.driver_connection
    return bool(driver.info.transaction_status == 0)  # pq.TransactionStatus.IDLE


def _execute(
    connection: Connection, sql: str, parameters: Any, *, alone: bool
) -> tuple[list[Any], bool]:
    """Run ``sql`` on the connection's DB-API connection: its rows, and whether it ran on its
    own. With ``alone``, when the transaction has not started, it runs on its own in autocommit
    mode (no BEGIN, no COMMIT: it is committed when it returns)."""
    fairy = connection.connection
    dbapi: Any = fairy.dbapi_connection  # psycopg's, or SQLAlchemy's asyncio adapter of it
    alone = alone and _outside_transaction(connection)
    if alone:
        dbapi.autocommit = True
    try:
        cursor = fairy.cursor()
        try:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall()), alone
        finally:
            cursor.close()
    finally:
        if alone:
            dbapi.autocommit = False


class PrimaryKeys:
    """Keys of the ``resource`` table drawn from its sequence a block at a time.

    One per app (per database): a key drawn is never handed out twice. Keys are unique
    whoever draws them; like any key drawn from a sequence, one unused is a gap.
    """

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        # No lock: takers are greenlets of the event loop (a lock held across a statement's
        # wait would stop the loop) or threads; deque operations are atomic, and two takers
        # that find it empty both draw a block, which only leaves more keys.
        self._free: deque[int] = deque()
        #: Blocks drawn (tests, benchmarks).
        self.draws = 0

    def take(self, connection: Connection) -> int:
        """A key; draws a block on ``connection`` when none is left (nextval is outside any
        transaction: a rollback does not give keys back, so none is handed out twice)."""
        while True:
            try:
                return self._free.popleft()
            except IndexError:
                rows, _ = _execute(connection, _DRAW, (self.block,), alone=True)
                self._free.extend(int(row[0]) for row in rows)
                self.draws += 1

    def forget(self) -> None:
        """Drop the keys held (after a failed write, in case the sequence was reset)."""
        self._free.clear()


class PendingCreates:
    """The rows of creates on one connection, held until :meth:`flush`."""

    def __init__(self, keys: PrimaryKeys) -> None:
        self.keys = keys
        self._resources: list[dict[str, Any]] = []
        self._raws: list[bytes] = []
        self._index: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_COLUMNS}
        #: Statements sent (tests, benchmarks).
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._resources)

    def add(self, connection: Connection, values: dict[str, Any], entries: Any) -> int:
        """Hold one create's rows (``values`` as :meth:`Repository.create` makes them,
        ``entries`` its :class:`~careplan_fhir.storage.indexing.IndexEntries`); its key."""
        pk = self.keys.take(connection)
        res_type = values["res_type"]
        self._raws.append(values["raw"])
        self._resources.append(
            {
                "n": len(self._raws),
                "pk": pk,
                "t": res_type,
                "i": values["res_id"],
                "u": values["last_updated"],
            }
        )
        for kind, rows in self._index.items():
            for row in getattr(entries, kind):
                held = dict(row)
                held["p"] = pk
                held["t"] = res_type
                rows.append(held)
        return pk

    def flush(self, connection: Connection, *, last: bool = False) -> bool:
        """Write every row held with one statement (nothing if none is held); True when the
        rows are committed already.

        ``last``: nothing else will run before the commit, so when nothing was sent in the
        transaction yet, the statement runs on its own (autocommit): the rows are committed
        when it returns, and the commit after it has nothing left to do. Otherwise it runs in
        the transaction, which the caller commits or rolls back.
        """
        if not self._resources:
            return False
        parameters: dict[str, Any] = {
            "r": orjson.dumps(self._resources).decode(),
            "raw": self._raws,
        }
        for kind, rows in self._index.items():
            parameters[kind] = orjson.dumps(rows).decode()
        self._resources, self._raws = [], []
        self._index = {kind: [] for kind in INDEX_COLUMNS}
        self.flushes += 1
        try:
            _, committed = _execute(connection, _SQL, parameters, alone=last)
        except BaseException:
            self.keys.forget()
            raise
        return committed


def hold_creates(connection: Connection, pending: PendingCreates) -> None:
    """Make every statement SQLAlchemy runs on ``connection`` write ``pending`` first.

    The listener belongs to this ``Connection`` object alone (made for one group and thrown
    away after it), not to the engine: other connections pay nothing for it.
    """

    def flush_first(conn: Connection, *_: Any) -> None:
        if len(pending):
            pending.flush(conn)

    event.listen(connection, "before_cursor_execute", flush_first)


__all__ = ["BLOCK", "PendingCreates", "PrimaryKeys", "hold_creates"]
