"""On PostgreSQL a server-id create writes its rows in one statement: alone
(storage/repository.py ``_PostgresCreate``), or held with the other creates of a fast-path
group and written with them (storage/pending_creates.py); a client-id create goes through
SQLAlchemy. All three must leave the same rows (apart from keys and ids)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from careplan_fhir.settings import Settings
from tests.test_group_commit import group_commit_of

TABLE_COLUMNS = {
    "resource": "res_type, version, deleted, raw IS NULL, content - 'id' - 'meta',"
    " last_updated IS NULL",
    "resource_version": "res_type, version, method, raw IS NULL",
    "idx_token": "res_type, param, system, code",
    "idx_string": "res_type, param, value_norm, value_exact",
    "idx_reference": "res_type, param, target_type, target_id, target_url, target_version",
    "idx_date": "res_type, param, low, high",
    "idx_uri": "res_type, param, uri",
    "idx_quantity": "res_type, param, value, system, code, unit",
}

OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "8310-5"}],
        "text": "Body temperature",
    },
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2024-06-01T09:30:00Z", "end": "2024-06-02"},
    "valueQuantity": {
        "value": 38.5,
        "unit": "C",
        "system": "http://unitsofmeasure.org",
        "code": "Cel",
    },
    "note": [{"text": "After the walk"}],
}


def test_held_one_statement_and_sqlalchemy_creates_store_the_same_rows(
    client: TestClient, settings: Settings
) -> None:
    url = settings.database_url
    if not url.startswith("postgresql"):
        pytest.skip("the one-statement create paths are PostgreSQL's")
    # The fast path: held by the group commit, written by storage/pending_creates.py.
    held = client.post("/fhir/Observation", json=OBSERVATION)
    assert held.status_code == 201
    keys = group_commit_of(client.app).keys  # type: ignore[arg-type]
    assert keys is not None and keys.draws == 1  # its key came from a block drawn for it
    # If-None-Exist keeps it off the fast path: the framework's create, _PostgresCreate.
    alone = client.post(
        "/fhir/Observation", json=OBSERVATION, headers={"If-None-Exist": "_id=nothing-such"}
    )
    assert alone.status_code == 201
    chosen = dict(OBSERVATION, id="chosen")
    assert client.put("/fhir/Observation/chosen", json=chosen).status_code == 201
    engine = create_engine(url)
    with engine.connect() as connection:
        pks = dict(
            connection.execute(
                text("SELECT res_id, pk FROM resource WHERE res_type = 'Observation'")
            ).all()
        )
        held_pk, alone_pk = pks[held.json()["id"]], pks[alone.json()["id"]]
        orm_pk = pks["chosen"]
        kinds_seen = 0
        for table, columns in TABLE_COLUMNS.items():
            pk_column = "pk" if table == "resource" else "resource_pk"
            query = text(
                f"SELECT {columns} FROM {table} WHERE {pk_column} = :pk ORDER BY {columns}"
            )
            first = connection.execute(query, {"pk": held_pk}).all()
            second = connection.execute(query, {"pk": alone_pk}).all()
            third = connection.execute(query, {"pk": orm_pk}).all()
            assert first == second == third, table
            kinds_seen += bool(first)
        for pk in (held_pk, alone_pk):
            same = connection.execute(
                text(
                    "SELECT r.raw = v.raw AND r.content = convert_from(r.raw, 'UTF8')::jsonb"
                    " FROM resource r JOIN resource_version v ON v.resource_pk = r.pk"
                    " WHERE r.pk = :pk"
                ),
                {"pk": pk},
            ).scalar_one()
            assert same is True
        stored = connection.execute(
            text("SELECT raw FROM resource WHERE pk = :pk"), {"pk": held_pk}
        ).scalar_one()
    engine.dispose()
    # The bytes served are the bytes stored, decimals as sent.
    assert client.get(f"/fhir/Observation/{held.json()['id']}").content == bytes(stored)
    assert b'"value":38.5' in bytes(stored)
    # resource, version, token, reference, date, quantity at least
    assert kinds_seen >= 6
