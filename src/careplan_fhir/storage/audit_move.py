"""Moving the audit trail out of the main database into a database of its own.

Until the trail had a database of its own by default (``Settings.audit_database_url``,
docs/audit.md "Where the trail is stored"), a deployment's AuditEvents were stored in the main
database, where reads and searches no longer look once the trail lives elsewhere.
:func:`move_audit_events` moves them, in batches; ``careplan-fhir db upgrade`` runs it after
migrating both databases, ``careplan-fhir db move-audit`` on its own.

Nothing is lost and nothing is doubled, whenever it stops: each batch is first committed in the
trail's database, skipping the events (by ``res_id``, unique there) a run that stopped earlier
already copied, and only then deleted from the main database. A run after a crash finds what
is left in the main database and finishes the job.

Order: AuditEvent history lists events newest first by primary key, and searches break ties by
it (storage/audit_log.py, storage/audit_search.py). The events being moved are older than any
the server already wrote to the trail's database (the layout changed after them), so they are
numbered below every event there: batches are taken newest first and each is given the keys
just below the smallest one present (0 and below when the trail's database is empty), in its
own order. Moved events keep their relative order and sort before the newer ones; a newly
written event still gets the key after the largest one. Keys of moved events may therefore be
0 or negative; nothing gives them a meaning beyond their order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, inspect, literal, select
from sqlalchemy.exc import SQLAlchemyError

from .audit_log import event_table, key_table
from .db import begin_write, make_engine, normalise_url

_event = event_table()
_key = key_table()

#: Events per batch: each is one transaction in either database.
BATCH = 500


def move_audit_events(main_url: str, audit_url: str, *, batch: int = BATCH) -> int:
    """Move every AuditEvent (with its search keys) from the database at ``main_url`` into
    the one at ``audit_url`` (both migrated); how many left the main database."""
    if normalise_url(main_url) == normalise_url(audit_url):
        raise ValueError("the audit trail's database is the main database: nothing to move")
    main, audit = make_engine(main_url), make_engine(audit_url)
    try:
        return move_audit_events_between(main, audit, batch=batch)
    finally:
        main.dispose()
        audit.dispose()


def move_audit_events_between(main: Engine, audit: Engine, *, batch: int = BATCH) -> int:
    """:func:`move_audit_events` over engines of both databases."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if not inspect(main).has_table(_event.name):
        return 0  # a main database migrated before the trail had a table of its own
    moved = 0
    while True:
        with main.connect() as connection:
            newest = connection.execute(
                select(_event).order_by(_event.c.pk.desc()).limit(batch)
            ).all()
            if not newest:
                return moved
            events = list(reversed(newest))  # oldest first: the order they are numbered in
            pks = [event.pk for event in events]
            keys = list(
                connection.execute(
                    select(_key).where(_key.c.event_pk.in_(pks)).order_by(_key.c.pk)
                ).all()
            )
        with audit.connect() as connection:
            begin_write(connection)
            _copy_batch(connection, events, keys)
            connection.commit()
        with main.connect() as connection:
            begin_write(connection)
            _delete_batch(connection, pks)
            connection.commit()
        moved += len(events)


def _copy_batch(connection: Connection, events: list[Any], keys: list[Any]) -> None:
    """Insert into the trail's database the events of ``events`` it does not hold yet, below
    its smallest key, with their ``keys`` (the caller commits)."""
    present = set(
        connection.execute(
            select(_event.c.res_id).where(_event.c.res_id.in_([e.res_id for e in events]))
        ).scalars()
    )
    missing = [event for event in events if event.res_id not in present]
    if not missing:
        return  # copied by a run that stopped before deleting them from the main database
    lowest = connection.execute(select(func.min(_event.c.pk))).scalar()
    ceiling = 1 if lowest is None else min(int(lowest), 1)
    first = ceiling - len(missing)
    new_pk = {event.pk: first + n for n, event in enumerate(missing)}
    columns = [column.name for column in _event.columns if column.name not in ("pk", "raw")]
    connection.execute(
        insert(_event),
        [
            {
                **{name: getattr(event, name) for name in columns},
                "pk": new_pk[event.pk],
                "raw": bytes(event.raw),  # the bytes as served, whatever the driver gave
            }
            for event in missing
        ],
    )
    key_columns = [column.name for column in _key.columns if column.name != "pk"]
    rows = [
        {**{name: getattr(key, name) for name in key_columns}, "event_pk": new_pk[key.event_pk]}
        for key in keys
        if key.event_pk in new_pk
    ]
    if rows:
        connection.execute(insert(_key), rows)


def _delete_batch(connection: Connection, pks: list[int]) -> None:
    """Delete the events ``pks`` and their keys from the main database (the caller commits)."""
    connection.execute(delete(_key).where(_key.c.event_pk.in_(pks)))
    connection.execute(delete(_event).where(_event.c.pk.in_(pks)))


def holds_audit_events(engine: Engine) -> bool:
    """Whether the database has an AuditEvent in its ``audit_event`` table (one indexed
    probe; False when it has no such table or cannot be asked)."""
    try:
        with engine.connect() as connection:
            found = connection.execute(select(literal(1)).select_from(_event).limit(1)).first()
    except SQLAlchemyError:
        return False
    return found is not None
