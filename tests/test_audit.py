"""Every access decision, allowed or refused, is an AuditEvent (https://hl7.org/fhir/R4/auditevent.html).

Through HTTP on both backends: reads, searches, creates and refused requests each leave one
AuditEvent with the right subtype, action, outcome, agent and entity; the events are ordinary
resources a system client can search by date, agent, patient and outcome; nothing queued is
lost when the server stops; no token reaches an AuditEvent or the log.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from sqlalchemy import text

from careplan_fhir.app import create_app
from careplan_fhir.audit.events import (
    ANONYMOUS_DISPLAY,
    CLIENT_KEY,
    CLIENT_SYSTEM,
    UNRESTRICTED_DISPLAY,
    Caller,
    Interaction,
    build_audit_event,
    classify,
)
from careplan_fhir.audit.middleware import audit_event_for
from careplan_fhir.audit.sink import AuditSink
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.settings import Settings
from careplan_fhir.storage.db import make_engine
from tests.audit_setup import AuditedServer, audited_server, audited_settings
from tests.factories import observation, patient
from tests.tokens import bearer, mint_token

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def server(database_url: str, signing_key_file: Path) -> Iterator[AuditedServer]:
    with audited_server(audited_settings(database_url, signing_key_file), signing_key_file) as s:
        yield s


def subtype(event: dict[str, Any]) -> str | None:
    return event["subtype"][0]["code"] if event.get("subtype") else None


def what(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]


def recorded_query(event: dict[str, Any]) -> str:
    (query,) = [e["query"] for e in event["entity"] if "query" in e]
    return base64.b64decode(query).decode()


def test_reads_searches_and_creates_each_leave_one_audit_event(server: AuditedServer) -> None:
    client, system = server.client, server.system
    created = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers=system).status_code == 200
    assert client.get("/fhir/Patient?family=Rivera", headers=system).status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/1", headers=system).status_code == 200
    updated = client.put(
        f"/fhir/Patient/{pid}", json={**patient(), "id": pid}, headers={**system, **FHIR_JSON}
    )
    assert updated.status_code == 200, updated.text

    events = server.search("/fhir/AuditEvent?_count=100&_sort=date")

    assert [(subtype(e), e["action"], e["outcome"]) for e in events] == [
        ("create", "C", "0"),
        ("read", "R", "0"),
        ("search-type", "E", "0"),
        ("vread", "R", "0"),
        ("update", "U", "0"),
    ]
    create, read, search, vread, update = events
    assert what(create) == [f"Patient/{pid}/_history/1"]
    assert what(read) == [f"Patient/{pid}/_history/1"]
    assert what(search) == []
    assert recorded_query(search) == "Patient?family=Rivera"
    assert what(vread) == [f"Patient/{pid}/_history/1"]
    assert what(update) == [f"Patient/{pid}/_history/2"]
    for event in events:
        assert event["type"]["code"] == "rest"
        assert event["source"]["observer"] == {"display": "careplan-fhir"}
        assert event["agent"] == [
            {
                "who": {"identifier": {"system": CLIENT_SYSTEM, "value": "ehr-system"}},
                "requestor": True,
                "network": {"address": "testclient", "type": "1"},
            }
        ]
        assert "outcomeDesc" not in event
        validate_resource(event)


def test_refused_requests_are_audited_as_minor_failures(server: AuditedServer) -> None:
    client = server.client
    portal = server.headers("patient/*.rs", patient="p1", client_id="portal")
    assert client.get("/fhir/Patient/p2").status_code == 401
    assert client.get("/fhir/AuditEvent?outcome=0", headers=portal).status_code == 403
    assert client.get("/fhir/Observation/none", headers=server.system).status_code == 404

    refused = server.search("/fhir/AuditEvent?outcome=4&_sort=date")

    unauthenticated, forbidden, missing = refused
    assert [subtype(e) for e in refused] == ["read", "search-type", "read"]
    assert unauthenticated["agent"][0]["who"] == {"display": ANONYMOUS_DISPLAY}
    assert "401" in unauthenticated["outcomeDesc"]
    assert what(unauthenticated) == ["Patient/p2"]
    assert forbidden["agent"][0]["who"]["identifier"]["value"] == "portal"
    assert "403" in forbidden["outcomeDesc"]
    # The patient the portal is confined to is an entity, so the patient finds its own trail.
    assert what(forbidden) == ["Patient/p1"]
    assert recorded_query(forbidden) == "AuditEvent?outcome=0"
    assert "404" in missing["outcomeDesc"]
    for event in refused:
        validate_resource(event)
    assert [e["id"] for e in server.search("/fhir/AuditEvent?patient=Patient/p1")] == [
        forbidden["id"]
    ]
    assert server.search("/fhir/AuditEvent?outcome=8") == []


def test_a_user_is_the_requesting_agent_and_the_app_the_other(server: AuditedServer) -> None:
    client = server.client
    created = client.post(
        "/fhir/Patient", json=patient(), headers={**server.system, **FHIR_JSON}
    ).json()
    clinician = server.headers("user/*.rs", fhir_user="Practitioner/dr1", client_id="ehr-app")
    assert client.get(f"/fhir/Patient/{created['id']}", headers=clinician).status_code == 200

    (event,) = server.search("/fhir/AuditEvent?agent=Practitioner/dr1")

    assert subtype(event) == "read"
    user, app = event["agent"]
    assert user["who"] == {"reference": "Practitioner/dr1"}
    assert user["requestor"] is True
    assert user["altId"] == "ehr-app"
    assert app == {
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": "ehr-app"}},
        "requestor": False,
    }
    assert server.search("/fhir/AuditEvent?agent=Practitioner/other") == []


def test_audit_events_are_searchable_by_date_outcome_and_patient(server: AuditedServer) -> None:
    client = server.client
    own = server.headers("patient/*.rs", patient="p7", client_id="portal")
    client.put("/fhir/Patient/p7", json={**patient(), "id": "p7"}, headers=server.system)
    assert client.get("/fhir/Patient/p7", headers=own).status_code == 200
    assert client.get("/fhir/Observation?code=72514-3", headers=own).status_code == 200

    on_the_day = server.search("/fhir/AuditEvent?date=2026-03-01")
    assert len(on_the_day) == 3
    assert server.search("/fhir/AuditEvent?date=lt2026-03-01") == []
    assert len(server.search("/fhir/AuditEvent?date=ge2026-03-01T09:00:00Z&outcome=0")) >= 3
    mine = server.search("/fhir/AuditEvent?patient=p7&_sort=date")
    assert [subtype(e) for e in mine] == ["update", "read", "search-type"]
    # The read of the patient's own record names the patient once, not twice ...
    assert what(mine[1]) == ["Patient/p7/_history/1"]
    # ... and the search names the patient the portal is confined to.
    assert what(mine[2]) == ["Patient/p7"]


def test_transaction_and_batch_are_told_apart(server: AuditedServer) -> None:
    for kind in ("transaction", "batch"):
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"request": {"method": "POST", "url": "Observation"}, "resource": observation("p1")}
            ],
        }
        response = server.client.post("/fhir", json=bundle, headers=server.system)
        assert response.status_code == 200, response.text
    events = server.search("/fhir/AuditEvent?subtype=transaction,batch&_sort=date")
    assert [(subtype(e), e["action"]) for e in events] == [("transaction", "E"), ("batch", "E")]


def test_no_token_reaches_an_audit_event_or_the_log(
    server: AuditedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mint_token(server.key_file, "system/*.rs", subject="ehr-system")
    forged = token[: token.rindex(".")] + ".c2lnbmF0dXJl"
    client = server.client
    assert (
        client.get(
            f"/fhir/Patient?family=Rivera&access_token={token}", headers=bearer(token)
        ).status_code
        == 200
    )
    assert client.get("/fhir/Patient", headers=bearer(forged)).status_code == 401
    assert (
        client.get("/fhir/Patient", headers={"Authorization": "Basic c2VjcmV0"}).status_code == 401
    )

    events = server.search("/fhir/AuditEvent?_sort=date")

    assert len(events) == 3
    assert recorded_query(events[0]) == "Patient?family=Rivera"
    stored = json.dumps(events)
    # What the server logged (the test's own HTTP client logs its request lines).
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith("httpx")
    )
    assert "bearer token refused" in logged
    for secret in (token, forged, token.split(".")[2], "c2VjcmV0"):
        assert secret not in stored
        assert secret not in logged


def test_stopping_the_server_stores_every_queued_event(
    database_url: str, signing_key_file: Path
) -> None:
    settings = audited_settings(database_url, signing_key_file)
    with audited_server(settings, signing_key_file) as s:
        for _ in range(40):
            assert s.client.get("/fhir/metadata").status_code == 200
    engine = make_engine(settings.audit_url)
    try:
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
    finally:
        engine.dispose()
    assert count == 40


def stall_writer(sink: AuditSink) -> tuple[threading.Event, threading.Event]:
    """Make ``sink``'s writer stop at its next batch: ``(writing, release)``, set when it
    stops there, and to be set to let it write."""
    writing, release = threading.Event(), threading.Event()
    write = sink._write

    def stalled_write(batch: list[dict[str, object]]) -> None:
        writing.set()
        release.wait(30)
        write(batch)

    sink._write = stalled_write  # type: ignore[method-assign]
    return writing, release


def test_a_full_queue_makes_the_next_request_wait_before_it_runs(database_url: str) -> None:
    engine = make_engine(database_url)
    sink = AuditSink(engine, now=lambda: datetime(2026, 3, 1, tzinfo=UTC), capacity=2)
    event = build_audit_event(
        Interaction("capabilities", "R"),
        Caller("unrestricted"),
        status=200,
        recorded="2026-03-01T09:00:00Z",
    )
    writing, release = stall_writer(sink)
    sink.start()
    sink.submit(event)
    assert writing.wait(10)  # the writer holds that one, stalled
    sink.submit(event)
    sink.submit(event)  # two waiting: the queue is at capacity

    async def admitted_within(seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await sink.admit()
            return True
        return False

    assert anyio.run(admitted_within, 0.3) is False  # a new request waits: nothing dropped
    release.set()
    assert anyio.run(admitted_within, 30) is True
    sink.stop()
    assert sink.written == 3
    assert sink.pending == 0
    engine.dispose()


def test_requests_wait_before_running_so_in_flight_stays_bounded(
    database_url: str, signing_key_file: Path
) -> None:
    """The middleware admits before the request: a stalled trail holds requests back, it does
    not pile up finished ones (which made the load shedder answer 503 to everyone)."""
    settings = audited_settings(database_url, signing_key_file)
    with audited_server(settings, signing_key_file) as s:
        sink = s.sink
        sink.capacity = 1
        writing, release = stall_writer(sink)
        statuses: list[int] = []

        def call() -> None:
            statuses.append(s.client.get("/fhir/metadata").status_code)

        first = threading.Thread(target=call)
        first.start()
        first.join(10)
        assert writing.wait(10)
        # The writer has taken the first event and stalls; the next fills the queue.
        second = threading.Thread(target=call)
        second.start()
        second.join(10)
        third = threading.Thread(target=call)
        third.start()
        third.join(0.5)
        assert third.is_alive()  # held before it runs
        release.set()
        third.join(30)
        assert statuses == [200, 200, 200]
        sink.flush()
        assert sink.written == 3


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/fhir/metadata", Interaction("capabilities", "R")),
        ("GET", "/fhir/CarePlan/1", Interaction("read", "R", "CarePlan", "1")),
        ("HEAD", "/fhir/CarePlan/1", Interaction("read", "R", "CarePlan", "1")),
        ("GET", "/fhir/CarePlan/1/_history/2", Interaction("vread", "R", "CarePlan", "1", "2")),
        ("GET", "/fhir/CarePlan/1/_history", Interaction("history-instance", "R", "CarePlan", "1")),
        ("GET", "/fhir/CarePlan/_history", Interaction("history-type", "R", "CarePlan")),
        ("GET", "/fhir/_history", Interaction("history-system", "R")),
        ("GET", "/fhir/CarePlan", Interaction("search-type", "E", "CarePlan")),
        ("POST", "/fhir/CarePlan/_search", Interaction("search-type", "E", "CarePlan")),
        ("GET", "/fhir", Interaction("search-system", "E")),
        ("POST", "/fhir/CarePlan", Interaction("create", "C", "CarePlan")),
        ("PUT", "/fhir/CarePlan/1", Interaction("update", "U", "CarePlan", "1")),
        ("PUT", "/fhir/CarePlan", Interaction("update", "U", "CarePlan")),
        ("PATCH", "/fhir/CarePlan/1", Interaction("patch", "U", "CarePlan", "1")),
        ("DELETE", "/fhir/CarePlan/1", Interaction("delete", "D", "CarePlan", "1")),
        ("DELETE", "/fhir/CarePlan", Interaction("delete", "D", "CarePlan")),
        ("POST", "/fhir", Interaction("transaction", "E")),
        ("POST", "/fhir/", Interaction("transaction", "E")),
        (
            "POST",
            "/fhir/PlanDefinition/pd1/$apply",
            Interaction("operation", "E", "PlanDefinition", "pd1", operation="apply"),
        ),
        (
            "POST",
            "/fhir/PlanDefinition/$import",
            Interaction("operation", "E", "PlanDefinition", operation="import"),
        ),
        ("POST", "/auth/token", Interaction("token", "E")),
        ("POST", "/auth/introspect", Interaction("introspect", "E")),
        ("POST", "/fhir/CarePlan/1", Interaction(None, "C", "CarePlan", "1")),
        ("GET", "/fhir/.well-known/smart-configuration", None),
        ("GET", "/docs", None),
        ("GET", "/fhirish", None),
    ],
)
def test_classify(method: str, path: str, expected: Interaction | None) -> None:
    assert classify(method, path) == expected


def test_authorization_disabled_is_recorded_as_such() -> None:
    event = build_audit_event(
        Interaction("read", "R", "CarePlan", "1"),
        Caller("unrestricted"),
        status=200,
        recorded="2026-03-01T09:00:00Z",
        address="127.0.0.1",
        etag_version="3",
    )
    assert event["agent"] == [
        {
            "who": {"display": UNRESTRICTED_DISPLAY},
            "requestor": True,
            "network": {"address": "127.0.0.1", "type": "2"},
        }
    ]
    assert what(event) == ["CarePlan/1/_history/3"]
    validate_resource(event)


def test_an_update_that_creates_is_a_create_and_a_crash_a_serious_failure() -> None:
    created = build_audit_event(
        Interaction("update", "U", "CarePlan", "9"),
        Caller("system", client_id="ehr"),
        status=201,
        recorded="2026-03-01T09:00:00Z",
        location="http://testserver/fhir/CarePlan/9/_history/1",
    )
    assert (created["action"], what(created)) == ("C", ["CarePlan/9/_history/1"])
    crashed = build_audit_event(
        Interaction("read", "R", "CarePlan", "9"),
        Caller("system", client_id="ehr"),
        status=500,
        recorded="2026-03-01T09:00:00Z",
    )
    assert crashed["outcome"] == "8"
    assert crashed["outcomeDesc"].startswith("Server error")
    validate_resource(crashed)


def test_the_access_log_holds_no_query_and_no_client_address(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A real uvicorn serving the app: its access record keeps method, path and status only."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=True
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        response = httpx.get(
            f"http://127.0.0.1:{port}/fhir/metadata?identifier=123-45-6789&access_token=abc.def"
        )
        assert response.status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
    (record,) = [r for r in caplog.records if r.name == "uvicorn.access"]
    line = record.getMessage()
    assert "GET /fhir/metadata HTTP/1.1" in line
    assert "200" in line
    for secret in ("123-45-6789", "abc.def", "identifier", "127.0.0.1"):
        assert secret not in line


def test_database_errors_carry_no_statement_parameters(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with (
            engine.connect() as connection,
            pytest.raises(Exception) as failure,  # noqa: PT011 - any driver error
        ):
            connection.execute(
                text("INSERT INTO resource (pk, res_type) VALUES (:pk, :secret)"),
                {"pk": "not-a-number", "secret": "Rivera 123-45-6789"},
            )
    finally:
        engine.dispose()
    assert "123-45-6789" not in str(failure.value)


def test_the_token_endpoint_is_audited_as_authentication(server: AuditedServer) -> None:
    response = server.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_assertion": "not-a-jwt"},
    )
    assert 400 <= response.status_code < 500, response.text

    (event,) = server.search("/fhir/AuditEvent?type=110114")

    assert event["type"]["display"] == "User Authentication"
    assert event["subtype"] == [
        {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110122",
            "display": "Login",
        }
    ]
    assert (event["action"], event["outcome"]) == ("E", "4")
    assert event["agent"][0]["who"] == {"display": ANONYMOUS_DISPLAY}
    assert "entity" not in event
    assert "not-a-jwt" not in json.dumps(event)
    validate_resource(event)


def test_the_client_a_token_endpoint_authenticated_is_the_agent() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/auth/token",
        "query_string": b"",
        "client": ("10.0.0.7", 40000),
        CLIENT_KEY: "ehr-backend",
    }
    interaction = classify("POST", "/auth/token")
    assert interaction is not None
    event = audit_event_for(scope, interaction, 200, datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    assert event["agent"] == [
        {
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": "ehr-backend"}},
            "requestor": True,
            "network": {"address": "10.0.0.7", "type": "2"},
        }
    ]
    assert event["outcome"] == "0"


def test_audit_event_ids_are_version_7_uuids_in_time_order() -> None:
    import re
    import uuid

    from careplan_fhir.fhir.ids import time_ordered_id

    ids = []
    for _ in range(5):
        ids.append(time_ordered_id())
        time.sleep(0.002)
    assert ids == sorted(ids)  # later events sort after earlier ones
    assert len({time_ordered_id() for _ in range(1000)}) == 1000
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", value)  # a FHIR id
        milliseconds = parsed.int >> 80
        assert abs(milliseconds / 1000 - time.time()) < 60
