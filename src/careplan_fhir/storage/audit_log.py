"""The audit trail's own storage: AuditEvents in an append-only table of their own.

Every request writes one AuditEvent (careplan_fhir/audit/), so the trail is by far the most
written "resource type", and its events are immutable: never updated, never deleted
(``SYSTEM_ONLY_TYPES`` in careplan_fhir/auth/access.py). Stored like any other type, each event
cost a ``resource`` row, a ``resource_version`` row holding the same bytes again, and a dozen
generic index rows found by walking every AuditEvent search path; the audit writer spent more
time on that than the server spent answering the request being audited. Here an event is:

* one ``audit_event`` row: its bytes as served, its id, when it was stored, and the values of
  its single-valued search parameters (``date``, ``type``, ``action``, ``outcome``) as columns;
* a few ``audit_event_key`` rows, one per value of its repeating ones (``subtype``, ``agent``,
  ``altid``, ``entity``, ``patient``, ``address``), extracted by hand from the known shape of an
  AuditEvent instead of by the generic path walker.

The FHIR API is unchanged for the interactions the trail allows: create (system clients may
record their own events), read, vread (version 1 is the only one), search by the parameters in
:data:`careplan_fhir.fhir.search_parameters` for AuditEvent, and instance and type history.
AuditEvents are not part of system-wide history (``GET [base]/_history``) and cannot be
``_include``\\ d or ``_revinclude``\\ d; docs/audit.md says so.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from careplan_fhir.errors import ResourceConflict
from careplan_fhir.fhir.dates import DateFormatError, parse_range

from .indexing import normalise_string, parse_reference
from .tables import AuditEventKeyRow, AuditEventRow

AUDIT_TYPE = "AuditEvent"

_event = AuditEventRow.__table__  # type: ignore[attr-defined]
_key = AuditEventKeyRow.__table__  # type: ignore[attr-defined]

_INSERT_EVENT = insert(_event).returning(_event.c.pk)
_EVENT_COLUMNS = (
    "res_id",
    "last_updated",
    "recorded_low",
    "recorded_high",
    "type_system",
    "type_code",
    "action",
    "outcome",
    "raw",
)
_KEY_COLUMNS = ("event_pk", "name", "system", "value", "exact")

#: A reference outside this server (an absolute URL) is kept whole, under this "type".
URL_SYSTEM = "#url"

Key = tuple[str, str | None, str, str | None]


def event_table() -> Any:
    """The ``audit_event`` table (for authorization and search code outside this module)."""
    return _event


def key_table() -> Any:
    """The ``audit_event_key`` table (for the search in storage/audit_search.py)."""
    return _key


# -- extraction ------------------------------------------------------------------------------


def _text(value: Any, length: int = 255) -> str | None:
    return value[:length] if isinstance(value, str) and value else None


def _reference_keys(name: str, value: Any) -> list[Key]:
    """``name`` keys of a Reference: ``(Type, id)``, plus ``patient`` when it is a Patient."""
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return []
    target_type, target_id, url, _ = parse_reference(reference)
    if url is not None:
        return [(name, URL_SYSTEM, url[:255], None)]
    if target_type is None or target_id is None:
        return []
    keys: list[Key] = [(name, target_type, target_id, None)]
    if target_type == "Patient":
        keys.append(("patient", "Patient", target_id, None))
    return keys


def search_values(document: dict[str, Any]) -> tuple[dict[str, Any], list[Key]]:
    """The column values and key rows of an AuditEvent's search parameters.

    The same values the generic indexer took from the paths of
    https://hl7.org/fhir/R4/auditevent.html#search for the parameters this server supports.
    """
    columns: dict[str, Any] = {"recorded_low": None, "recorded_high": None}
    event_type = document.get("type")
    if isinstance(event_type, dict):
        columns["type_system"] = _text(event_type.get("system"))
        columns["type_code"] = _text(event_type.get("code"))
    else:
        columns["type_system"] = columns["type_code"] = None
    columns["action"] = _text(document.get("action"), 8)
    columns["outcome"] = _text(document.get("outcome"), 8)
    recorded = document.get("recorded")
    if isinstance(recorded, str):
        with contextlib.suppress(DateFormatError):  # unparsable: found by no date search
            columns["recorded_low"], columns["recorded_high"] = parse_range(recorded)
    keys: list[Key] = []
    for coding in document.get("subtype") or ():
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            keys.append(("subtype", _text(coding.get("system")), coding["code"][:255], None))
    for agent in document.get("agent") or ():
        if not isinstance(agent, dict):
            continue
        keys.extend(_reference_keys("agent", agent.get("who")))
        alt_id = _text(agent.get("altId"))
        if alt_id:
            keys.append(("altid", None, alt_id, None))
        network = agent.get("network")
        address = network.get("address") if isinstance(network, dict) else None
        if isinstance(address, str) and address:
            keys.append(("address", None, _folded_address(address), address[:1000]))
    for entity in document.get("entity") or ():
        if isinstance(entity, dict):
            keys.extend(_reference_keys("entity", entity.get("what")))
    return columns, list(dict.fromkeys(keys))


@functools.lru_cache(maxsize=4096)
def _folded_address(address: str) -> str:
    # Folded once per address (the same few clients make most requests).
    return normalise_string(address)


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedEvent:
    """An event ready to insert: its ``audit_event`` row and its key rows."""

    row: tuple[Any, ...]
    keys: list[Key]


def prepare_event(
    resource_id: str, moment: datetime, raw: bytes, document: dict[str, Any]
) -> PreparedEvent:
    """The rows of one event: ``raw`` already stamped with id and meta, ``moment`` naive UTC."""
    columns, keys = search_values(document)
    return PreparedEvent(
        (resource_id, moment, raw, *(columns[c] for c in _EVENT_COLUMNS[2:-1])), keys
    )


class AuditLog:
    """AuditEvents over one connection (the caller owns the transaction)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def insert(
        self, resource_id: str, moment: datetime, raw: bytes, document: dict[str, Any]
    ) -> int:
        """Store one event (``raw`` already stamped with id and meta); its primary key."""
        columns, keys = search_values(document)
        values = {"res_id": resource_id, "last_updated": moment, "raw": raw, **columns}
        try:
            with self.connection.begin_nested():
                pk = int(self.connection.execute(_INSERT_EVENT, values).scalar_one())
        except IntegrityError:
            raise ResourceConflict(f"{AUDIT_TYPE}/{resource_id} already exists") from None
        self._insert_keys([(pk, keys)])
        return pk

    def insert_many(
        self, events: Sequence[tuple[str, datetime, bytes, dict[str, Any]]]
    ) -> list[int]:
        """Store many events with one statement per table where the driver allows it."""
        return self.insert_prepared([prepare_event(*event) for event in events])

    def insert_prepared(self, events: Sequence[PreparedEvent]) -> list[int]:
        """Store events :func:`prepare_event` made (the audit sink prepares them before it
        takes the write turn); their primary keys."""
        if not events:
            return []
        pks = self._insert_events([event.row for event in events])
        self._insert_keys([(pk, event.keys) for pk, event in zip(pks, events, strict=True)])
        return pks

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> list[int]:
        if self.connection.dialect.name == "postgresql":
            return self._postgres_copy(rows)
        return self._sqlite_insert(rows)

    def _sqlite_insert(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """SQLite: multi-row INSERTs through the DB-API cursor, keys numbered here.

        The write transaction (BEGIN IMMEDIATE) holds the only write turn on the file, so the
        keys after the largest one are free; numbering them spares a RETURNING per row.
        Timestamps go through the dialect's own processor, so they are stored exactly as
        SQLAlchemy stores (and reads back) every other DateTime column.
        """
        connection = self.connection
        if not connection.in_transaction():
            connection.begin()
        stamp = _datetime_processor(connection)
        # The sink stores a batch with one moment: converted once, not once a row.
        stored_at = {id(moment): stamp(moment) for _, moment, *_ in rows}
        cursor = connection.connection.cursor()
        try:
            cursor.execute("SELECT coalesce(max(pk), 0) FROM audit_event")
            first = int(cursor.fetchone()[0]) + 1  # type: ignore[index]
            pks = list(range(first, first + len(rows)))
            values = [
                (pk, resource_id, stored_at[id(moment)], raw, stamp(low), stamp(high), *rest)
                for pk, (resource_id, moment, raw, low, high, *rest) in zip(pks, rows, strict=True)
            ]
            _insert_multirow(cursor, _EVENT_INSERT, values)
            return pks
        finally:
            cursor.close()

    def _postgres_copy(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """PostgreSQL: keys drawn from the sequence at once, the rows sent with one ``COPY``."""
        connection = self.connection
        if not connection.in_transaction():
            connection.begin()
        cursor = connection.connection.cursor()
        try:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('audit_event', 'pk'))"
                " FROM generate_series(1, %s)",
                (len(rows),),
            )
            pks = [int(row[0]) for row in cursor.fetchall()]
            columns = (
                "pk, res_id, last_updated, raw, recorded_low, recorded_high, type_system,"
                " type_code, action, outcome"
            )
            with cursor.copy(f"COPY audit_event ({columns}) FROM STDIN") as copy:
                for pk, row in zip(pks, rows, strict=True):
                    copy.write_row((pk, *row))
            return pks
        finally:
            cursor.close()

    def _insert_keys(self, keyed: list[tuple[int, list[Key]]]) -> None:
        rows = [(pk, *key) for pk, keys in keyed for key in keys]
        if not rows:
            return
        connection = self.connection
        if connection.dialect.name == "postgresql":
            cursor = connection.connection.cursor()
            try:
                with cursor.copy(
                    f"COPY audit_event_key ({', '.join(_KEY_COLUMNS)}) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
            finally:
                cursor.close()
            return
        cursor = connection.connection.cursor()
        try:
            _insert_multirow(cursor, _KEY_INSERT, rows)
        finally:
            cursor.close()

    # -- reading -----------------------------------------------------------------------------

    def find(self, resource_id: str) -> tuple[int, datetime, bytes] | None:
        """``(pk, last_updated, raw)`` of the event, or None."""
        row = self.connection.execute(
            select(_event.c.pk, _event.c.last_updated, _event.c.raw).where(
                _event.c.res_id == resource_id
            )
        ).first()
        return None if row is None else (row.pk, row.last_updated, bytes(row.raw))

    def history(
        self,
        resource_id: str | None,
        *,
        since: datetime | None,
        at: datetime | None,
        count: int,
        offset: int,
        upto_pk: int | None,
    ) -> tuple[list[tuple[int, str, datetime, bytes]], int, int]:
        """Events newest first (each its one version): ``(page, total, snapshot_pk)``."""
        conditions: list[ColumnElement[bool]] = []
        if resource_id is not None:
            conditions.append(_event.c.res_id == resource_id)
        if since is not None:
            conditions.append(_event.c.last_updated >= since)
        if at is not None:
            conditions.append(_event.c.last_updated <= at)
        if upto_pk is None:
            upto_pk = (
                self.connection.execute(select(func.max(_event.c.pk)).where(*conditions)).scalar()
                or 0
            )
        conditions.append(_event.c.pk <= upto_pk)
        total = self.connection.execute(
            select(func.count()).select_from(_event).where(*conditions)
        ).scalar_one()
        rows = self.connection.execute(
            select(_event.c.pk, _event.c.res_id, _event.c.last_updated, _event.c.raw)
            .where(*conditions)
            .order_by(_event.c.pk.desc())
            .limit(count)
            .offset(offset)
        ).all()
        return [(r.pk, r.res_id, r.last_updated, bytes(r.raw)) for r in rows], int(total), upto_pk


_EVENT_INSERT = (
    "INSERT INTO audit_event (pk, res_id, last_updated, raw, recorded_low, recorded_high,"
    " type_system, type_code, action, outcome) VALUES "
)
_KEY_INSERT = "INSERT INTO audit_event_key (event_pk, name, system, value, exact) VALUES "
#: Rows per multi-row INSERT: far below SQLite's limit of 32,766 bound values (3.32+).
_ROWS_PER_INSERT = 500


def _insert_multirow(cursor: Any, head: str, rows: list[tuple[Any, ...]]) -> None:
    """SQLite: ``rows`` with a few multi-row INSERTs instead of ``executemany``.

    The sqlite3 module gives the GIL away around every row's step and must win it back from the
    event loop thread each time (up to a switch interval per row): under load the audit writer
    spent its time waiting for the GIL, not writing, and fell ever further behind. One
    statement of 500 rows gives the GIL away once.
    """
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        cursor.execute(
            _multirow_sql(head, len(chunk[0]), len(chunk)), [v for r in chunk for v in r]
        )


@functools.lru_cache(maxsize=64)
def _multirow_sql(head: str, width: int, count: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return head + ", ".join([one] * count)


def _datetime_processor(connection: Connection) -> Callable[[Any], Any]:
    from sqlalchemy import DateTime

    dialect = connection.dialect
    process = DateTime().dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return lambda value: value
    return lambda value: None if value is None else process(value)
