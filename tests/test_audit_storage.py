"""The audit trail's own table (storage/audit_log.py, storage/audit_search.py), through HTTP.

AuditEvents left the generic resource and index tables; these tests hold the FHIR behaviour
of the type to what it was: create (POST, and PUT with a new id), read, vread, search by every
advertised parameter with its modifiers, paging, sorting, counts, history, the append-only
rule, granular scopes, and the migration that moved earlier events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from careplan_fhir.audit.events import Caller, build_audit_event, classify
from careplan_fhir.fhir.search_parameters import parameters_for
from careplan_fhir.storage.audit_log import search_values
from careplan_fhir.storage.db import make_engine
from careplan_fhir.storage.indexing import extract_index_entries
from careplan_fhir.storage.migrate import upgrade
from tests.tokens import bearer, mint_token

FHIR_JSON = "application/fhir+json"


def event(
    method: str,
    path: str,
    caller: Caller,
    *,
    status: int = 200,
    recorded: str = "2026-03-01T09:00:00.000Z",
    query: str = "",
    address: str | None = "10.0.0.7",
) -> dict[str, Any]:
    interaction = classify(method, path)
    assert interaction is not None
    return build_audit_event(
        interaction, caller, status=status, recorded=recorded, query=query, address=address
    )


SYSTEM = Caller("system", client_id="ehr", subject="ehr")
DOCTOR = Caller("user", client_id="chart", fhir_user="Practitioner/dr1", subject="u-dr1")
PATIENT = Caller("patient", client_id="portal", fhir_user="Patient/p7", patient="p7")

EVENTS = [
    event("GET", "/fhir/CarePlan/cp1", SYSTEM, recorded="2026-03-01T09:00:00Z"),
    event("GET", "/fhir/Patient/p7", DOCTOR, recorded="2026-03-01T10:00:00Z", address="ward-pc"),
    event(
        "GET",
        "/fhir/CarePlan",
        PATIENT,
        query="patient=p7",
        recorded="2026-03-02T08:30:00+02:00",
        address="192.168.1.20",
    ),
    event("DELETE", "/fhir/Goal/g1", DOCTOR, status=403, recorded="2026-03-03T12:00:00Z"),
    event("POST", "/fhir", SYSTEM, status=500, recorded="2026-03-04T00:00:00Z", address=None),
]


def store(client: TestClient) -> list[str]:
    ids = []
    for document in EVENTS:
        response = client.post(
            "/fhir/AuditEvent", content=orjson.dumps(document), headers={"content-type": FHIR_JSON}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def found(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/fhir/AuditEvent?{query}")
    assert response.status_code == 200, (query, response.text)
    bundle = response.json()
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [0, 1, 2, 3, 4]),
        ("type=rest", [0, 1, 2, 3, 4]),
        ("type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest", [0, 1, 2, 3, 4]),
        ("type=|rest", []),
        ("subtype=read", [0, 1]),
        ("subtype=http://hl7.org/fhir/restful-interaction|search-type", [2]),
        ("subtype=delete,batch", [3]),
        ("subtype:not=read", [2, 3, 4]),
        ("action=R", [0, 1]),
        ("action=E", [2, 4]),
        ("action:not=R", [2, 3, 4]),
        ("outcome=0", [0, 1, 2]),
        ("outcome=4,8", [3, 4]),
        ("agent=Practitioner/dr1", [1, 3]),
        ("agent=dr1", [1, 3]),
        ("agent:Practitioner=dr1", [1, 3]),
        ("agent:Patient=dr1", []),
        ("agent=Patient/p7", [2]),
        ("agent=http://testserver/fhir/Practitioner/dr1", [1, 3]),
        ("agent:missing=true", [0, 4]),
        ("altid=u-dr1", [1, 3]),
        ("entity=CarePlan/cp1", [0]),
        ("entity=Patient/p7", [1, 2]),
        ("entity:missing=true", [4]),
        ("patient=p7", [1, 2]),
        ("patient=Patient/p7", [1, 2]),
        ("patient=Practitioner/dr1", []),
        ("address=10.0.0", [0, 3]),
        ("address=WARD", [1]),
        ("address:exact=ward-pc", [1]),
        ("address:exact=WARD-PC", []),
        ("address:contains=168.1", [2]),
        ("address:missing=true", [4]),
        ("date=2026-03-01", [0, 1]),
        ("date=2026-03-02", [2]),
        ("date=lt2026-03-02", [0, 1]),
        ("date=ge2026-03-03", [3, 4]),
        ("date=gt2026-03-01T09:30:00Z&date=lt2026-03-03", [1, 2]),
        ("date=2026-03-02T06:30:00Z", [2]),
        ("outcome=0&agent=dr1", [1]),
    ],
)
def test_every_parameter_finds_what_it_names(
    client: TestClient, query: str, expected: list[int]
) -> None:
    ids = store(client)
    assert found(client, query) == [ids[n] for n in expected]


def test_id_last_updated_sorting_paging_and_counts(client: TestClient) -> None:
    ids = store(client)
    assert found(client, f"_id={ids[2]},{ids[4]}") == [ids[2], ids[4]]
    assert found(client, f"_id:not={ids[0]}") == ids[1:]
    assert found(client, "_lastUpdated=ge2026-01-01") == ids
    assert found(client, "_lastUpdated=lt2026-01-01") == []
    assert found(client, "_sort=-date") == list(reversed(ids))
    assert found(client, "_sort=outcome,-date") == [ids[2], ids[1], ids[0], ids[3], ids[4]]
    # Paging: two at a time, forwards and back, the same entries in the same order.
    first = client.get("/fhir/AuditEvent?_sort=-date&_count=2").json()
    assert first["total"] == 5
    pages = [[e["resource"]["id"] for e in first["entry"]]]
    bundle = first
    while (link := {k["relation"]: k["url"] for k in bundle["link"]}.get("next")) is not None:
        bundle = client.get(link.replace("http://testserver", "")).json()
        pages.append([e["resource"]["id"] for e in bundle["entry"]])
    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
    previous = {k["relation"]: k["url"] for k in bundle["link"]}["previous"]
    back = client.get(previous.replace("http://testserver", "")).json()
    assert [e["resource"]["id"] for e in back["entry"]] == [ids[2], ids[1]]
    count = client.get("/fhir/AuditEvent?outcome=0&_summary=count").json()
    assert (count["total"], count.get("entry")) == (3, None)
    assert client.get("/fhir/AuditEvent?_total=none").json().get("total") is None


def test_bad_values_and_unsupported_requests_are_refused(client: TestClient) -> None:
    store(client)
    for query in (
        "date=2026-13-45",
        "action:exact=R",
        "agent=Practitioner/",
        "outcome:missing=maybe",
        "_sort=agent",
        "_include=AuditEvent:agent",
        "_revinclude=Provenance:target",
        "subtype=",
    ):
        response = client.get(f"/fhir/AuditEvent?{query}")
        assert response.status_code == 400, (query, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    strict = client.get("/fhir/AuditEvent?entity-name=x", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    lenient = client.get("/fhir/AuditEvent?entity-name=x").json()
    assert lenient["total"] == 5
    assert lenient["entry"][-1]["search"]["mode"] == "outcome"


def test_read_vread_history_and_the_append_only_rule(client: TestClient) -> None:
    ids = store(client)
    read = client.get(f"/fhir/AuditEvent/{ids[1]}")
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"1"'
    body = read.json()
    assert body["meta"]["versionId"] == "1"
    assert {k: v for k, v in body.items() if k not in ("id", "meta")} == EVENTS[1]
    assert client.get(f"/fhir/AuditEvent/{ids[1]}/_history/1").json() == body
    assert client.get(f"/fhir/AuditEvent/{ids[1]}/_history/2").status_code == 404
    assert client.get("/fhir/AuditEvent/unknown").status_code == 404
    history = client.get(f"/fhir/AuditEvent/{ids[1]}/_history").json()
    assert [e["resource"]["id"] for e in history["entry"]] == [ids[1]]
    everything = client.get("/fhir/AuditEvent/_history?_count=2").json()
    assert everything["total"] == 5
    assert [e["resource"]["id"] for e in everything["entry"]] == [ids[4], ids[3]]
    # A client may record an event under its own id, once; nobody may change or delete one.
    own = orjson.dumps({**EVENTS[0], "id": "ehr-event-1"})
    put = client.put(
        "/fhir/AuditEvent/ehr-event-1", content=own, headers={"content-type": FHIR_JSON}
    )
    assert put.status_code == 201, put.text
    again = client.put(
        "/fhir/AuditEvent/ehr-event-1", content=own, headers={"content-type": FHIR_JSON}
    )
    assert again.status_code in (403, 405), again.text
    assert client.delete(f"/fhir/AuditEvent/{ids[0]}").status_code in (403, 405)
    assert client.get(f"/fhir/AuditEvent/{ids[0]}").status_code == 200
    # Conditional create finds events by search.
    conditional = client.post(
        "/fhir/AuditEvent",
        content=orjson.dumps(EVENTS[3]),
        headers={"content-type": FHIR_JSON, "If-None-Exist": "outcome=4&agent=dr1"},
    )
    assert conditional.status_code == 200
    assert conditional.json()["id"] == ids[3]


def test_a_granular_scope_sees_only_its_events(client: TestClient, signing_key_file: Path) -> None:
    ids = store(client)
    failures = bearer(mint_token(signing_key_file, "system/AuditEvent.rs?outcome=4,8"))
    response = client.get("/fhir/AuditEvent", headers=failures)
    assert response.status_code == 200, response.text
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [ids[3], ids[4]]
    assert client.get(f"/fhir/AuditEvent/{ids[3]}", headers=failures).status_code == 200
    assert client.get(f"/fhir/AuditEvent/{ids[0]}", headers=failures).status_code == 404
    patient = bearer(mint_token(signing_key_file, "patient/*.rs", patient="p7"))
    assert client.get("/fhir/AuditEvent", headers=patient).status_code == 403


def test_hand_extraction_matches_the_generic_indexer() -> None:
    """The key rows and columns hold what the generic indexer takes from the parameters' paths."""
    samples = [
        *EVENTS,
        {
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114"},
            "subtype": [{"code": "110122"}, {"system": "urn:x", "code": "y"}],
            "action": "E",
            "recorded": "2026-03-01T09:00:00.123+01:00",
            "outcome": "0",
            "agent": [
                {
                    "who": {"reference": "https://other.example/fhir/Practitioner/x"},
                    "requestor": True,
                },
                {"who": {"reference": "Patient/p1/_history/3"}, "altId": "a1", "requestor": False},
                {"who": {"display": "no reference"}, "network": {"address": "Ärzte-PC"}},
            ],
            "source": {"observer": {"display": "other system"}},
            "entity": [
                {"what": {"reference": "Patient/p1"}},
                {"what": {"reference": "#contained"}},
            ],
        },
    ]
    params = parameters_for("AuditEvent")
    for document in samples:
        columns, keys = search_values(document)
        generic = extract_index_entries(document)
        tokens = {(r["param"], r["system"], r["code"]) for r in generic.token}
        assert {(n, s, v) for n, s, v, _ in keys if params[n].type == "token"} == {
            t for t in tokens if t[0] in ("subtype", "altid")
        }
        assert {t for t in tokens if t[0] == "action"} == {("action", None, columns["action"])}
        assert {t for t in tokens if t[0] == "outcome"} == {("outcome", None, columns["outcome"])}
        assert {t for t in tokens if t[0] == "type"} == {
            ("type", columns["type_system"], columns["type_code"])
        }
        references = {
            (
                r["param"],
                "#url" if r["target_url"] else r["target_type"],
                r["target_url"] or r["target_id"],
            )
            for r in generic.reference
        }
        assert {(n, s, v) for n, s, v, _ in keys if params[n].type == "reference"} == references
        strings = {(r["param"], r["value_norm"], r["value_exact"]) for r in generic.string}
        assert {(n, v, e) for n, _, v, e in keys if n == "address"} == strings
        (date,) = generic.date
        assert (columns["recorded_low"], columns["recorded_high"]) == (date["low"], date["high"])


def test_the_migration_moves_earlier_events_out_of_the_generic_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0004")
    engine = make_engine(url)
    raw = orjson.dumps(
        {"resourceType": "AuditEvent", "id": "old-1", "meta": {"versionId": "1"}, **EVENTS[1]}
    )
    with engine.begin() as connection:
        pk = connection.execute(
            text(
                "INSERT INTO resource (res_type, res_id, version, last_updated, deleted, raw)"
                " VALUES ('AuditEvent', 'old-1', 1, '2026-03-01 10:00:00.000000', 0, :raw)"
                " RETURNING pk"
            ),
            {"raw": raw},
        ).scalar_one()
        connection.execute(
            text(
                "INSERT INTO resource_version (resource_pk, res_type, res_id, version,"
                " last_updated, method, raw) VALUES (:pk, 'AuditEvent', 'old-1', 1,"
                " '2026-03-01 10:00:00.000000', 'POST', :raw)"
            ),
            {"pk": pk, "raw": raw},
        )
        connection.execute(
            text(
                "INSERT INTO idx_token (resource_pk, res_type, param, code)"
                " VALUES (:pk, 'AuditEvent', 'outcome', '0')"
            ),
            {"pk": pk},
        )
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        left = [
            connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("resource", "resource_version", "idx_token")
        ]
        moved = connection.execute(text("SELECT res_id, raw FROM audit_event")).all()
        keys = connection.execute(text("SELECT name, value FROM audit_event_key")).all()
    engine.dispose()
    assert left == [0, 0, 0]
    assert [(r.res_id, bytes(r.raw)) for r in moved] == [("old-1", raw)]
    assert ("patient", "p7") in [tuple(k) for k in keys]


def test_large_batches_are_stored_whole(database_url: str) -> None:
    """The sink's inserts go in multi-row statements of 500: a batch of 1,234 events (and
    their several thousand key rows) is stored completely and in order."""
    from datetime import datetime

    from careplan_fhir.storage.audit_log import AuditLog
    from careplan_fhir.storage.db import begin_write

    engine = make_engine(database_url)
    moment = datetime(2026, 3, 1, 9, 0)
    events = [
        (f"e{n:05d}", moment, orjson.dumps(EVENTS[n % len(EVENTS)]), EVENTS[n % len(EVENTS)])
        for n in range(1234)
    ]
    try:
        with engine.connect() as connection:
            begin_write(connection)
            pks = AuditLog(connection).insert_many(events)
            connection.commit()
            stored = connection.execute(
                text("SELECT pk, res_id FROM audit_event ORDER BY pk")
            ).all()
            keys = connection.execute(text("SELECT count(*) FROM audit_event_key")).scalar_one()
    finally:
        engine.dispose()
    assert [(r.pk, r.res_id) for r in stored] == list(zip(pks, (e[0] for e in events), strict=True))
    expected_keys = sum(len(search_values(document)[1]) for *_, document in events)
    assert keys == expected_keys > 2 * 500
