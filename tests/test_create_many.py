"""``Repository.create_many`` (the audit sink's batch write: COPY on PostgreSQL, the DB-API cursor
on SQLite) stores exactly the rows ``Repository.create`` stores, apart from keys and ids: in the
generic tables for most types, in the audit trail's own tables for AuditEvents."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from careplan_fhir.audit.events import Caller, build_audit_event, classify
from careplan_fhir.storage.db import begin_write, make_engine
from careplan_fhir.storage.repository import Repository
from tests.factories import observation, patient

COLUMNS = {
    "resource": "res_type, version, last_updated, deleted, raw, content",
    "resource_version": "res_type, version, last_updated, method, raw",
    "idx_token": "res_type, param, system, code",
    "idx_string": "res_type, param, value_norm, value_exact",
    "idx_reference": "res_type, param, target_type, target_id, target_url, target_version",
    "idx_date": "res_type, param, low, high",
    "idx_uri": "res_type, param, uri",
    "idx_quantity": "res_type, param, value, system, code, unit",
}


def documents() -> list[dict[str, Any]]:
    interaction = classify("GET", "/fhir/CarePlan/cp1")
    assert interaction is not None
    event = build_audit_event(
        interaction,
        Caller("patient", client_id="portal", fhir_user="Patient/p1", patient="p1"),
        status=200,
        recorded="2026-03-01T09:00:00.000Z",
        query="_format=json",
        address="127.0.0.1",
        etag_version="2",
    )
    reading = observation(
        "p1", valueQuantity={"value": 37.5, "unit": "C", "system": "http://unitsofmeasure.org"}
    )
    return [event, patient(identifier=[{"system": "urn:mrn", "value": "7"}]), reading]


AUDIT_COLUMNS = {
    "audit_event": "last_updated, recorded_low, recorded_high, type_system, type_code, action,"
    " outcome, raw",
    "audit_event_key": "name, system, value, exact",
}


def stored_rows(connection: Any, pk: int, audit: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    for table, columns in (AUDIT_COLUMNS if audit else COLUMNS).items():
        if audit:
            key = "pk" if table == "audit_event" else "event_pk"
            rows = connection.execute(
                text(f"SELECT {columns} FROM {table} WHERE {key} = :pk"), {"pk": pk}
            ).all()
            found[table] = sorted(tuple(str(v) for v in row) for row in rows)
            continue
        key = "pk" if table == "resource" else "resource_pk"
        rows = connection.execute(
            text(f"SELECT {columns} FROM {table} WHERE {key} = :pk"), {"pk": pk}
        ).all()
        found[table] = sorted(tuple(str(v) for v in row) for row in rows)
    return found


def test_create_many_stores_the_rows_create_stores(database_url: str) -> None:
    engine = make_engine(database_url)
    moment = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    try:
        with engine.connect() as connection:
            begin_write(connection)
            # The same clock reading for both: every row must then be equal, stamps included.
            one = Repository(connection, now=lambda: moment, new_id=lambda: "same-id")
            singles = [one.create(document) for document in documents()]
            connection.commit()
        with engine.connect() as connection:
            begin_write(connection)
            ids = (f"batch-{n}" for n in itertools.count())
            many = Repository(connection, now=lambda: moment, new_id=lambda: next(ids))
            # create() would refuse the same id twice; create_many uses fresh ones.
            batch = many.create_many(documents())
            connection.commit()
        assert [s.version for s in batch] == [1, 1, 1]
        assert [s.resource_type for s in batch] == [s.resource_type for s in singles]
        with engine.connect() as connection:
            for single, batched in zip(singles, batch, strict=True):
                audit = single.resource_type == "AuditEvent"
                expected = stored_rows(connection, single.pk, audit)
                actual = stored_rows(connection, batched.pk, audit)
                for table in AUDIT_COLUMNS if audit else COLUMNS:
                    if table in ("resource", "resource_version", "audit_event"):
                        # raw and content differ by the id only
                        expected[table] = [
                            tuple(v.replace("same-id", "ID") for v in row)
                            for row in expected[table]
                        ]
                        actual[table] = [
                            tuple(v.replace(batched.id, "ID") for v in row) for row in actual[table]
                        ]
                    assert actual[table] == expected[table], table
                assert expected["audit_event" if audit else "resource"], "nothing stored"
            keys = stored_rows(connection, batch[0].pk, audit=True)["audit_event_key"]
            assert ("patient", "Patient", "p1", "None") in keys, "AuditEvent not indexed"
            assert ("entity", "CarePlan", "cp1", "None") in keys
            assert stored_rows(connection, batch[2].pk)["idx_quantity"], "quantity not indexed"
    finally:
        engine.dispose()


def test_create_many_of_nothing_writes_nothing(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            repository = Repository(connection, now=lambda: datetime.now(UTC), new_id=lambda: "x")
            assert repository.create_many([]) == []
    finally:
        engine.dispose()
