"""Create, read, vread, update, delete and history of stored resources.

Every write stores the resource row, a new version row and the search-index rows of the new
version in the caller's transaction: callers commit once, so a write is all or nothing.
Stored bytes are served as they are: reads never re-validate or re-serialise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from careplan_fhir.errors import (
    InvalidRequest,
    MethodNotAllowed,
    PreconditionFailed,
    ResourceConflict,
    ResourceGone,
    ResourceNotFound,
)
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant

from .audit_log import AUDIT_TYPE, AuditLog
from .indexing import IndexEntries, extract_index_entries
from .pending_creates import INDEX_COLUMNS, PendingCreates, column_type
from .tables import (
    INDEX_TABLE_BY_KIND,
    ResourceRow,
    ResourceVersionRow,
)

_resource = ResourceRow.__table__  # type: ignore[attr-defined]
_version = ResourceVersionRow.__table__  # type: ignore[attr-defined]

# Statements built once, with bound parameters: building and cache-keying a new statement per
# write cost more than running it.
_INSERT_RESOURCE = insert(_resource).returning(_resource.c.pk)
_INSERT_VERSION = insert(_version)
_BUMP_RESOURCE = (
    update(_resource)
    .where(_resource.c.pk == bindparam("b_pk"), _resource.c.version == bindparam("b_version"))
    .values(
        version=bindparam("b_new_version"),
        last_updated=bindparam("b_last_updated"),
        raw=bindparam("b_raw"),
        content=bindparam("b_content"),
        deleted=bindparam("b_deleted"),
    )
)
_FIND = select(
    _resource.c.pk,
    _resource.c.version,
    _resource.c.last_updated,
    _resource.c.raw,
    _resource.c.deleted,
).where(_resource.c.res_type == bindparam("b_type"), _resource.c.res_id == bindparam("b_id"))
_INSERT_INDEX = {
    kind: insert(table.__table__)  # type: ignore[attr-defined]
    for kind, table in INDEX_TABLE_BY_KIND.items()
}
_CLEAR_INDEX = [
    delete(table.__table__).where(  # type: ignore[attr-defined]
        table.__table__.c.resource_pk == bindparam("b_pk")  # type: ignore[attr-defined]
    )
    for table in INDEX_TABLE_BY_KIND.values()
]


@dataclass(frozen=True)
class StoredResource:
    """A version of a resource as stored: its identity, version and exact JSON bytes."""

    pk: int
    resource_type: str
    id: str
    version: int
    last_updated: datetime
    raw: bytes | None
    deleted: bool = False
    method: str = "PUT"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_updated_aware(self) -> datetime:
        return self.last_updated.replace(tzinfo=UTC)


def stamp(document: dict[str, Any], resource_id: str, version: int, moment: datetime) -> bytes:
    """Set ``id`` and ``meta.versionId``/``meta.lastUpdated``; keep everything else as sent."""
    meta = dict(document.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(moment)
    ordered: dict[str, Any] = {
        "resourceType": document["resourceType"],
        "id": resource_id,
        "meta": meta,
    }
    for key, value in document.items():
        if key not in ordered:
            ordered[key] = value
    return jsonio.dumps(ordered)


class Repository:
    """Resource persistence over one database connection (the caller owns the transaction).

    A Core ``Connection`` rather than an ORM ``Session``: every statement here is Core SQL,
    and the ORM's execution path costs several times the query itself on a read.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        now: Callable[[], datetime],
        new_id: Callable[[], str],
        audit_connection: Callable[[], Connection] | None = None,
        pending: PendingCreates | None = None,
    ) -> None:
        """``audit_connection`` gives the connection of the audit trail's database, when it
        is not ``connection``'s (``Settings.audit_database_url``); asked for on first use.
        ``pending`` (PostgreSQL): server-id creates are held there, to be written with the
        other creates of a group by one statement (storage/pending_creates.py)."""
        self.connection = connection
        self._audit_connection = audit_connection
        # The JSON(B) copy serves SQL-side inspection on PostgreSQL; on SQLite it would only
        # triple the bytes every write puts through the WAL.
        self._keep_content = connection.dialect.name == "postgresql"
        self._sqlite = (
            _sqlite_writer(connection.dialect) if connection.dialect.name == "sqlite" else None
        )
        self._postgres = _POSTGRES_CREATE if connection.dialect.name == "postgresql" else None
        self._pending = pending if self._postgres is not None else None
        self.now = now
        self.new_id = new_id
        self._audit_log: AuditLog | None = None

    @property
    def audit_connection(self) -> Connection:
        """The connection of the audit trail's database (``connection`` unless it has one of
        its own)."""
        if self._audit_connection is None:
            return self.connection
        return self._audit_connection()

    @property
    def audit_log(self) -> AuditLog:
        if self._audit_log is None:
            self._audit_log = AuditLog(self.audit_connection)
        return self._audit_log

    # -- reads -----------------------------------------------------------------------------

    def find(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """The current version (deleted ones included), or None if the id never existed."""
        if resource_type == AUDIT_TYPE:
            event = self.audit_log.find(resource_id)
            if event is None:
                return None
            pk, last_updated, raw = event
            return StoredResource(pk, AUDIT_TYPE, resource_id, 1, last_updated, raw, False, "POST")
        row = self.connection.execute(_FIND, {"b_type": resource_type, "b_id": resource_id}).first()
        if row is None:
            return None
        return StoredResource(
            row.pk, resource_type, resource_id, row.version, row.last_updated, row.raw, row.deleted
        )

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        """The current version; 404 if unknown, 410 if deleted."""
        found = self.find(resource_type, resource_id)
        if found is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if found.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted")
        return found

    def vread(self, resource_type: str, resource_id: str, version: str) -> StoredResource:
        """One version; 404 if it never existed, 410 if that version is a delete."""
        if not version.isdigit():
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version!r}")
        if resource_type == AUDIT_TYPE:
            # An AuditEvent never changes: version 1 is its only one.
            event = self.find(resource_type, resource_id) if int(version) == 1 else None
            if event is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version}")
            return event
        row = self.connection.execute(
            select(_version).where(
                _version.c.res_type == resource_type,
                _version.c.res_id == resource_id,
                _version.c.version == int(version),
            )
        ).first()
        if row is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version {version}")
        stored = _from_version_row(row)
        if stored.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} version {version} is a delete")
        return stored

    def load_many(self, pks: list[int]) -> list[StoredResource]:
        """Current versions by primary key, in the order given (missing ones skipped)."""
        if not pks:
            return []
        rows = self.connection.execute(
            select(
                _resource.c.pk,
                _resource.c.res_type,
                _resource.c.res_id,
                _resource.c.version,
                _resource.c.last_updated,
                _resource.c.raw,
                _resource.c.deleted,
            ).where(_resource.c.pk.in_(pks))
        ).all()
        by_pk = {
            row.pk: StoredResource(
                row.pk,
                row.res_type,
                row.res_id,
                row.version,
                row.last_updated,
                row.raw,
                row.deleted,
            )
            for row in rows
        }
        return [by_pk[pk] for pk in pks if pk in by_pk]

    # -- writes ----------------------------------------------------------------------------

    def create(self, document: dict[str, Any], *, resource_id: str | None = None) -> StoredResource:
        """Store a new resource (server-assigned id unless ``resource_id`` is given)."""
        resource_type = document["resourceType"]
        client_id = resource_id is not None
        resource_id = resource_id or self.new_id()
        moment = self.now()
        raw = stamp(document, resource_id, 1, moment)
        stored_moment = _naive(moment)
        if resource_type == AUDIT_TYPE:
            pk = self.audit_log.insert(resource_id, stored_moment, raw, document)
            return StoredResource(
                pk, resource_type, resource_id, 1, stored_moment, raw, False, "POST"
            )
        values = {
            "res_type": resource_type,
            "res_id": resource_id,
            "version": 1,
            "last_updated": stored_moment,
            "deleted": False,
            "content": raw if self._keep_content else None,
            "raw": raw,
        }
        if client_id:
            # A client-chosen id may clash with a concurrent create: a savepoint keeps the
            # outer transaction usable so the clash can be reported as a conflict.
            try:
                with self.connection.begin_nested():
                    pk = self.connection.execute(_INSERT_RESOURCE, values).scalar_one()
            except IntegrityError:
                raise ResourceConflict(f"{resource_type}/{resource_id} already exists") from None
        elif self._sqlite is not None:
            pk = self._sqlite.create(self.connection, values, document)
            return StoredResource(
                pk, resource_type, resource_id, 1, stored_moment, raw, False, "POST"
            )
        elif self._pending is not None:
            pk = self._pending.add(self.connection, values, extract_index_entries(document))
            return StoredResource(
                pk, resource_type, resource_id, 1, stored_moment, raw, False, "POST"
            )
        elif self._postgres is not None:
            pk = self._postgres.create(self.connection, values, document)
            return StoredResource(
                pk, resource_type, resource_id, 1, stored_moment, raw, False, "POST"
            )
        else:
            pk = self.connection.execute(_INSERT_RESOURCE, values).scalar_one()
        self._insert_version(pk, resource_type, resource_id, 1, stored_moment, "POST", raw)
        self._write_index(pk, resource_type, document, replace=False)
        return StoredResource(pk, resource_type, resource_id, 1, stored_moment, raw, False, "POST")

    def create_many(self, documents: list[dict[str, Any]]) -> list[StoredResource]:
        """Store many new resources (server-assigned ids) with a few statements per table.

        The rows are exactly those :meth:`create` writes. On SQLite they go through the DB-API
        cursor (one INSERT per resource row, one batch per other table); on PostgreSQL the keys
        are drawn from the sequence at once and every table is filled with one ``COPY``, so a
        batch of audit events costs a handful of round trips instead of several per event.
        """
        if not documents:
            return []
        if any(document["resourceType"] == AUDIT_TYPE for document in documents):
            return self._create_many_mixed(documents)
        if self._sqlite is None and self.connection.dialect.name != "postgresql":
            return [self.create(document) for document in documents]
        prepared: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for document in documents:
            resource_id = self.new_id()
            moment = self.now()
            raw = stamp(document, resource_id, 1, moment)
            values = {
                "res_type": document["resourceType"],
                "res_id": resource_id,
                "version": 1,
                "last_updated": _naive(moment),
                "deleted": False,
                "content": raw if self._keep_content else None,
                "raw": raw,
            }
            prepared.append((document, values))
        if self._sqlite is not None:
            pks = self._sqlite.create_many(self.connection, prepared)
        else:
            pks = _copy_many(self.connection, prepared)
        return [
            StoredResource(
                pk,
                values["res_type"],
                values["res_id"],
                1,
                values["last_updated"],
                values["raw"],
                False,
                "POST",
            )
            for pk, (_, values) in zip(pks, prepared, strict=True)
        ]

    def _create_many_mixed(self, documents: list[dict[str, Any]]) -> list[StoredResource]:
        """:meth:`create_many` when AuditEvents are among the documents (the audit sink's
        batches are nothing else): those go to the audit trail's table, the rest as usual."""
        events = [d for d in documents if d["resourceType"] == AUDIT_TYPE]
        others = [d for d in documents if d["resourceType"] != AUDIT_TYPE]
        stored_others = iter(self.create_many(others))
        prepared = []
        for document in events:
            resource_id = self.new_id()
            moment = self.now()
            prepared.append(
                (resource_id, _naive(moment), stamp(document, resource_id, 1, moment), document)
            )
        pks = iter(self.audit_log.insert_many(prepared))
        stored_events = iter(
            StoredResource(next(pks), AUDIT_TYPE, resource_id, 1, moment, raw, False, "POST")
            for resource_id, moment, raw, _ in prepared
        )
        return [
            next(stored_events) if d["resourceType"] == AUDIT_TYPE else next(stored_others)
            for d in documents
        ]

    def update(
        self,
        document: dict[str, Any],
        resource_id: str,
        *,
        if_match: int | None = None,
        method: str = "PUT",
    ) -> tuple[StoredResource, bool]:
        """Update (or create with the client's id); returns the new version and ``created``."""
        resource_type = document["resourceType"]
        current = self.find(resource_type, resource_id)
        if current is not None:
            # Recording an AuditEvent under the client's id is a create; changing one is not.
            _refuse_audit_change(resource_type, "update")
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"If-Match names version {if_match} of {resource_type}/{resource_id},"
                    " which does not exist"
                )
            return self.create(document, resource_id=resource_id), True
        if if_match is not None and if_match != current.version:
            raise PreconditionFailed(
                f"{resource_type}/{resource_id} is at version {current.version},"
                f" not {if_match} (If-Match)"
            )
        version = current.version + 1
        moment = self.now()
        stored_moment = _naive(moment)
        raw = stamp(document, resource_id, version, moment)
        self._bump(current, version, stored_moment, raw, deleted=False)
        self._insert_version(
            current.pk, resource_type, resource_id, version, stored_moment, method, raw
        )
        self._write_index(current.pk, resource_type, document, replace=not current.deleted)
        return (
            StoredResource(
                current.pk, resource_type, resource_id, version, stored_moment, raw, False, method
            ),
            current.deleted,
        )

    def delete(
        self, resource_type: str, resource_id: str, *, if_match: int | None = None
    ) -> StoredResource | None:
        """Delete (a new version without content); None when there was nothing to delete."""
        _refuse_audit_change(resource_type, "delete")
        current = self.find(resource_type, resource_id)
        if current is None or current.deleted:
            if if_match is not None:
                raise PreconditionFailed(f"{resource_type}/{resource_id} does not exist")
            return None
        if if_match is not None and if_match != current.version:
            raise PreconditionFailed(
                f"{resource_type}/{resource_id} is at version {current.version}, not {if_match}"
            )
        version = current.version + 1
        stored_moment = _naive(self.now())
        self._bump(current, version, stored_moment, None, deleted=True)
        self._insert_version(
            current.pk, resource_type, resource_id, version, stored_moment, "DELETE", None
        )
        self._clear_index(current.pk)
        return StoredResource(
            current.pk, resource_type, resource_id, version, stored_moment, None, True, "DELETE"
        )

    # -- history ---------------------------------------------------------------------------

    def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        *,
        since: datetime | None,
        at: datetime | None = None,
        count: int,
        offset: int,
        upto_pk: int | None = None,
    ) -> tuple[list[StoredResource], int, int]:
        """Versions newest first: ``(page, total, snapshot_pk)``.

        ``upto_pk`` pins the history to the versions that existed when the first page was read,
        so later pages neither repeat nor skip entries while others write.
        """
        if resource_type == AUDIT_TYPE:
            events, total, snapshot = self.audit_log.history(
                resource_id,
                since=_naive(since) if since is not None else None,
                at=_naive(at) if at is not None else None,
                count=count,
                offset=offset,
                upto_pk=upto_pk,
            )
            page = [
                StoredResource(pk, AUDIT_TYPE, event_id, 1, moment, raw, False, "POST")
                for pk, event_id, moment, raw in events
            ]
            return page, total, snapshot
        conditions = []
        if resource_type:
            conditions.append(_version.c.res_type == resource_type)
        if resource_id:
            conditions.append(_version.c.res_id == resource_id)
        if since is not None:
            conditions.append(_version.c.last_updated >= _naive(since))
        if at is not None:
            conditions.append(_version.c.last_updated <= _naive(at))
        if upto_pk is None:
            upto_pk = (
                self.connection.execute(select(func.max(_version.c.pk)).where(*conditions)).scalar()
                or 0
            )
        conditions.append(_version.c.pk <= upto_pk)
        total = self.connection.execute(
            select(func.count()).select_from(_version).where(*conditions)
        ).scalar_one()
        rows = self.connection.execute(
            select(_version)
            .where(*conditions)
            .order_by(_version.c.pk.desc())
            .limit(count)
            .offset(offset)
        ).all()
        return [_from_version_row(row) for row in rows], total, upto_pk

    # -- internals -------------------------------------------------------------------------

    def _bump(
        self,
        current: StoredResource,
        version: int,
        moment: datetime,
        raw: bytes | None,
        *,
        deleted: bool,
    ) -> None:
        result = self.connection.execute(
            _BUMP_RESOURCE,
            {
                "b_pk": current.pk,
                "b_version": current.version,
                "b_new_version": version,
                "b_last_updated": moment,
                "b_raw": raw,
                "b_content": raw if self._keep_content else None,
                "b_deleted": deleted,
            },
        )
        if result.rowcount != 1:
            raise ResourceConflict(
                f"{current.resource_type}/{current.id} was changed by another request; retry"
            )

    def _insert_version(
        self,
        pk: int,
        resource_type: str,
        resource_id: str,
        version: int,
        moment: datetime,
        method: str,
        raw: bytes | None,
    ) -> None:
        self.connection.execute(
            _INSERT_VERSION,
            {
                "resource_pk": pk,
                "res_type": resource_type,
                "res_id": resource_id,
                "version": version,
                "last_updated": moment,
                "method": method,
                "raw": raw,
            },
        )

    def _clear_index(self, pk: int) -> None:
        for statement in _CLEAR_INDEX:
            self.connection.execute(statement, {"b_pk": pk})

    def _write_index(
        self, pk: int, resource_type: str, document: dict[str, Any], *, replace: bool
    ) -> None:
        if replace:
            self._clear_index(pk)
        entries: IndexEntries = extract_index_entries(document)
        for kind, statement in _INSERT_INDEX.items():
            rows = getattr(entries, kind)
            if rows:
                for row in rows:
                    row["resource_pk"] = pk
                    row["res_type"] = resource_type
                self.connection.execute(statement, rows)


class _SqliteCreate:
    """The rows of a create written with the DB-API cursor, on SQLite.

    A create is three to six INSERTs; through SQLAlchemy's execution path each costs several
    times what SQLite takes to run it, and creates are the write the server does most. Same
    tables, same values, same transaction (the connection's, begun by SQLAlchemy so that the
    write turn and BEGIN IMMEDIATE apply); values go through the dialect's own processors so
    timestamps are stored exactly as SQLAlchemy stores them.
    """

    def __init__(self, dialect: Any) -> None:
        self._datetime = DateTime().dialect_impl(dialect).bind_processor(dialect)
        self._resource_sql = (
            "INSERT INTO resource (res_type, res_id, version, last_updated, deleted, content,"
            " raw) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING pk"
        )
        self._version_sql = (
            "INSERT INTO resource_version (resource_pk, res_type, res_id, version,"
            " last_updated, method, raw) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self._index: dict[str, tuple[str, tuple[str, ...]]] = {}
        for kind, table in INDEX_TABLE_BY_KIND.items():
            sql_table = table.__table__  # type: ignore[attr-defined]
            columns = tuple(c.name for c in sql_table.columns if c.name != "pk")
            sql = (
                f"INSERT INTO {sql_table.name} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' for _ in columns)})"
            )
            self._index[kind] = (sql, columns)
        self._date_columns = {"low", "high"}

    def _stamp(self, moment: datetime) -> Any:
        return self._datetime(moment) if self._datetime else moment

    def create(
        self, connection: Connection, values: dict[str, Any], document: dict[str, Any]
    ) -> int:
        if not connection.in_transaction():
            connection.begin()
        cursor = connection.connection.cursor()
        try:
            updated = self._stamp(values["last_updated"])
            cursor.execute(
                self._resource_sql,
                (values["res_type"], values["res_id"], 1, updated, 0, None, values["raw"]),
            )
            inserted = cursor.fetchone()
            assert inserted is not None
            pk = int(inserted[0])
            cursor.execute(
                self._version_sql,
                (pk, values["res_type"], values["res_id"], 1, updated, "POST", values["raw"]),
            )
            entries = extract_index_entries(document)
            for kind, (sql, columns) in self._index.items():
                rows = getattr(entries, kind)
                if not rows:
                    continue
                batch = []
                for row in rows:
                    row["resource_pk"] = pk
                    row["res_type"] = values["res_type"]
                    batch.append(
                        tuple(
                            self._stamp(row[c]) if c in self._date_columns else row[c]
                            for c in columns
                        )
                    )
                cursor.executemany(sql, batch)
        finally:
            cursor.close()
        return pk

    def create_many(
        self, connection: Connection, prepared: list[tuple[dict[str, Any], dict[str, Any]]]
    ) -> list[int]:
        """:meth:`create` for many ``(document, values)``: one statement per table after the
        resource rows (whose keys SQLite hands back one row at a time).

        The index entries are worked out before the transaction begins, so the write turn
        (BEGIN IMMEDIATE) is held only while the rows go in.
        """
        indexed = [extract_index_entries(document) for document, _ in prepared]
        if not connection.in_transaction():
            connection.begin()
        cursor = connection.connection.cursor()
        pks: list[int] = []
        try:
            versions = []
            by_kind: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in self._index}
            for (_, values), entries in zip(prepared, indexed, strict=True):
                updated = self._stamp(values["last_updated"])
                res_type, res_id, raw = values["res_type"], values["res_id"], values["raw"]
                cursor.execute(self._resource_sql, (res_type, res_id, 1, updated, 0, None, raw))
                inserted = cursor.fetchone()
                assert inserted is not None
                pk = int(inserted[0])
                pks.append(pk)
                versions.append((pk, res_type, res_id, 1, updated, "POST", raw))
                for kind, (_, columns) in self._index.items():
                    for row in getattr(entries, kind):
                        row["resource_pk"] = pk
                        row["res_type"] = res_type
                        by_kind[kind].append(
                            tuple(
                                self._stamp(row[c]) if c in self._date_columns else row[c]
                                for c in columns
                            )
                        )
            cursor.executemany(self._version_sql, versions)
            for kind, rows in by_kind.items():
                if rows:
                    cursor.executemany(self._index[kind][0], rows)
        finally:
            cursor.close()
        return pks


class _PostgresCreate:
    """The rows of a create in one statement, on PostgreSQL.

    Through SQLAlchemy a create was an INSERT of the resource (its key returned), one of the
    version and one batch per kind of index row: five to eight statements, each a round trip
    and, in the server process, most of a create's Python. Here one statement with data-
    modifying CTEs inserts them all: the resource row, its version and every index row (each
    kind's columns sent as arrays and unnested). Its text is the same for every create (a kind
    with no rows sends empty arrays), so PostgreSQL prepares it once per connection. Same
    tables, same values, same transaction (the connection's, begun by SQLAlchemy).
    """

    def __init__(self) -> None:
        parts = [
            "WITH r AS (INSERT INTO resource (res_type, res_id, version, last_updated, deleted,"
            " content, raw) VALUES (%(t)s, %(i)s, 1, %(u)s, false, %(c)s::jsonb, %(raw)s)"
            " RETURNING pk),",
            " v AS (INSERT INTO resource_version (resource_pk, res_type, res_id, version,"
            " last_updated, method, raw) SELECT pk, %(t)s, %(i)s, 1, %(u)s, 'POST', %(raw)s"
            " FROM r)",
        ]
        self._columns = INDEX_COLUMNS
        for kind, columns in INDEX_COLUMNS.items():
            sql_table = INDEX_TABLE_BY_KIND[kind].__table__  # type: ignore[attr-defined]
            arrays = ", ".join(f"%({kind}_{c})s::{column_type(c)}[]" for c in columns)
            parts.append(
                f", x_{kind} AS (INSERT INTO {sql_table.name} (resource_pk, res_type,"
                f" {', '.join(columns)}) SELECT r.pk, %(t)s, u.* FROM r,"
                f" unnest({arrays}) AS u)"
            )
        parts.append(" SELECT pk FROM r")
        self._sql = "".join(parts)

    def create(
        self, connection: Connection, values: dict[str, Any], document: dict[str, Any]
    ) -> int:
        entries = extract_index_entries(document)
        raw = values["raw"]
        content = values["content"]
        parameters: dict[str, Any] = {
            "t": values["res_type"],
            "i": values["res_id"],
            "u": values["last_updated"],
            "c": content.decode("utf-8") if content is not None else None,
            "raw": raw,
        }
        for kind, columns in self._columns.items():
            rows = getattr(entries, kind)
            for column in columns:
                parameters[f"{kind}_{column}"] = [row[column] for row in rows]
        if not connection.in_transaction():
            connection.begin()
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self._sql, parameters)
            inserted = cursor.fetchone()
        finally:
            cursor.close()
        assert inserted is not None
        return int(inserted[0])


_POSTGRES_CREATE = _PostgresCreate()


_COLUMNS = {
    name: tuple(c.name for c in table.columns if c.name != "pk")
    for name, table in [
        ("resource_version", _version),
        *[
            (t.__table__.name, t.__table__)  # type: ignore[attr-defined]
            for t in INDEX_TABLE_BY_KIND.values()
        ],
    ]
}
_TABLE_OF_KIND = {
    kind: table.__table__.name  # type: ignore[attr-defined]
    for kind, table in INDEX_TABLE_BY_KIND.items()
}


def _copy_many(
    connection: Connection, prepared: list[tuple[dict[str, Any], dict[str, Any]]]
) -> list[int]:
    """PostgreSQL: the rows of many creates with ``COPY``, keys drawn from the sequence first.

    COPY's text format: every value is sent as text and read by the server as the column's
    type (``content`` as ``jsonb``, ``raw`` as ``bytea``), exactly as an INSERT would store it.
    """
    if not connection.in_transaction():
        connection.begin()
    cursor = connection.connection.cursor()
    try:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('resource', 'pk')) FROM generate_series(1, %s)",
            (len(prepared),),
        )
        pks = [int(row[0]) for row in cursor.fetchall()]
        resources = []
        versions = []
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for pk, (document, values) in zip(pks, prepared, strict=True):
            res_type, res_id, raw = values["res_type"], values["res_id"], values["raw"]
            moment = values["last_updated"]
            content = raw.decode("utf-8") if values["content"] is not None else None
            resources.append((pk, res_type, res_id, 1, moment, False, content, raw))
            versions.append((pk, res_type, res_id, 1, moment, "POST", raw))
            entries = extract_index_entries(document)
            for kind, table in _TABLE_OF_KIND.items():
                rows = getattr(entries, kind)
                if rows:
                    columns = _COLUMNS[table]
                    bucket = by_table.setdefault(table, [])
                    for row in rows:
                        row["resource_pk"] = pk
                        row["res_type"] = res_type
                        bucket.append(tuple(row[c] for c in columns))
        _copy(
            cursor,
            "resource",
            ("pk", "res_type", "res_id", "version", "last_updated", "deleted", "content", "raw"),
            resources,
        )
        _copy(cursor, "resource_version", _COLUMNS["resource_version"], versions)
        for table, rows in by_table.items():
            _copy(cursor, table, _COLUMNS[table], rows)
    finally:
        cursor.close()
    return pks


def _copy(cursor: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


@functools.cache
def _sqlite_writer(dialect: Any) -> _SqliteCreate:
    return _SqliteCreate(dialect)


def _refuse_audit_change(resource_type: str, interaction: str) -> None:
    """The audit trail is append-only (authorization refuses first; this is the backstop)."""
    if resource_type == AUDIT_TYPE:
        raise MethodNotAllowed(f"The audit trail is append-only: no {interaction} on AuditEvent")


def _naive(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _from_version_row(row: Any) -> StoredResource:
    return StoredResource(
        row.resource_pk,
        row.res_type,
        row.res_id,
        row.version,
        row.last_updated,
        row.raw,
        row.method == "DELETE",
        row.method,
    )


def parse_version_tag(etag: str) -> int:
    """Read the version number out of an ``If-Match`` value such as ``W/"3"``."""
    text = etag.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise InvalidRequest(f'If-Match {etag!r} is not a version tag such as W/"3"')
    return int(text)
