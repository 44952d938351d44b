"""On PostgreSQL a server-id create writes its rows in one statement (storage/repository.py
``_PostgresCreate``); a client-id create goes through SQLAlchemy. Both must leave the same rows
(apart from keys and ids)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from careplan_fhir.settings import Settings

TABLE_COLUMNS = {
    "resource": "res_type, version, deleted, raw IS NULL, content IS NULL, last_updated IS NULL",
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


def test_one_statement_and_sqlalchemy_creates_store_the_same_rows(
    client: TestClient, settings: Settings
) -> None:
    url = settings.database_url
    if not url.startswith("postgresql"):
        pytest.skip("the one-statement create path is PostgreSQL's")
    assert client.post("/fhir/Observation", json=OBSERVATION).status_code == 201
    chosen = dict(OBSERVATION, id="chosen")
    assert client.put("/fhir/Observation/chosen", json=chosen).status_code == 201
    engine = create_engine(url)
    with engine.connect() as connection:
        pks = dict(
            connection.execute(
                text("SELECT res_id, pk FROM resource WHERE res_type = 'Observation'")
            ).all()
        )
        fast_pk, orm_pk = next(pk for rid, pk in pks.items() if rid != "chosen"), pks["chosen"]
        kinds_seen = 0
        for table, columns in TABLE_COLUMNS.items():
            pk_column = "pk" if table == "resource" else "resource_pk"
            query = text(
                f"SELECT {columns} FROM {table} WHERE {pk_column} = :pk ORDER BY {columns}"
            )
            first = connection.execute(query, {"pk": fast_pk}).all()
            second = connection.execute(query, {"pk": orm_pk}).all()
            assert first == second, table
            kinds_seen += bool(first)
        raw = connection.execute(
            text(
                "SELECT r.raw = v.raw FROM resource r JOIN resource_version v ON v.resource_pk"
                " = r.pk WHERE r.pk = :pk"
            ),
            {"pk": fast_pk},
        ).scalar_one()
    engine.dispose()
    assert raw is True
    # resource, version, token, reference, date, quantity at least
    assert kinds_seen >= 6
