"""On SQLite a server-id create writes its rows with the DB-API cursor; a client-id create goes
through SQLAlchemy. Both must leave byte-identical rows (apart from keys and ids)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from careplan_fhir.settings import Settings
from tests.factories import patient

TABLE_COLUMNS = {
    "resource": "res_type, version, typeof(last_updated), length(last_updated), deleted,"
    " raw IS NULL",
    "resource_version": "res_type, version, typeof(last_updated), length(last_updated), method",
    "idx_token": "res_type, param, system, code",
    "idx_string": "res_type, param, value_norm, value_exact",
    "idx_date": "res_type, param, low, high, typeof(low)",
}


def rows(url: str, table: str, columns: str, pk_column: str, pk: int) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(
            text(f"SELECT {columns} FROM {table} WHERE {pk_column} = :pk ORDER BY {columns}"),
            {"pk": pk},
        ).all()
    engine.dispose()
    return [tuple(row) for row in found]


def test_raw_and_sqlalchemy_creates_store_the_same_rows(
    client: TestClient, settings: Settings
) -> None:
    url = settings.database_url
    if not url.startswith("sqlite"):
        pytest.skip("the DB-API create path is SQLite's")
    body = patient(identifier=[{"system": "urn:mrn", "value": "7"}], birthDate="1961-04-12")
    assert client.post("/fhir/Patient", json=body).status_code == 201  # DB-API path
    assert client.put("/fhir/Patient/chosen", json=dict(body, id="chosen")).status_code == 201
    engine = create_engine(url)
    with engine.connect() as connection:
        pks = dict(connection.execute(text("SELECT res_id, pk FROM resource")).all())
    engine.dispose()
    raw_pk, orm_pk = pks["id1"], pks["chosen"]
    for table, columns in TABLE_COLUMNS.items():
        pk_column = "pk" if table == "resource" else "resource_pk"
        first = rows(url, table, columns, pk_column, raw_pk)
        second = rows(url, table, columns, pk_column, orm_pk)
        assert first, table
        assert first == second, table
    stamps = rows(url, "resource", "last_updated", "pk", raw_pk)
    assert str(stamps[0][0]).startswith("2026-03-01 09:00:00.")
