"""The audit trail in a database of its own (``Settings.audit_database_url``), through HTTP.

SQLite files, migrated by the CLI: the server's own events, client-recorded AuditEvents, batch
and transaction Bundles holding AuditEvents, and the writer process all use the trail's
database, and the main database holds no AuditEvent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from careplan_fhir.app import create_app
from careplan_fhir.audit.process_sink import ProcessAuditSink
from careplan_fhir.cli import app as cli_app
from careplan_fhir.settings import Settings
from tests.audit_setup import AuditedServer, audited_server
from tests.factories import patient
from tests.tokens import SYSTEM_SCOPE, TEST_BASE, bearer, mint_token

FHIR_JSON = {"content-type": "application/fhir+json"}


def _events(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM audit_event").fetchone()[0])


@pytest.fixture
def databases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A main and an audit SQLite file, both migrated by ``careplan-fhir db upgrade``."""
    main, audit = tmp_path / "main.db", tmp_path / "audit.db"
    monkeypatch.setenv("CAREPLAN_AUDIT_DATABASE_URL", f"sqlite:///{audit}")
    result = CliRunner().invoke(cli_app, ["db", "upgrade", "--database-url", f"sqlite:///{main}"])
    assert result.exit_code == 0, result.output
    assert "audit database at head" in result.output
    for path in (main, audit):
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return main, audit


def _settings(databases: tuple[Path, Path], key_file: Path, **overrides: Any) -> Settings:
    main, audit = databases
    return Settings(
        database_url=f"sqlite:///{main}",
        audit_database_url=f"sqlite:///{audit}",
        base_url=TEST_BASE,
        auth_signing_key_file=str(key_file),
        **overrides,
    )


@pytest.fixture
def server(databases: tuple[Path, Path], signing_key_file: Path) -> Iterator[AuditedServer]:
    with audited_server(_settings(databases, signing_key_file), signing_key_file) as audited:
        yield audited


def _audit_event(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "action": "R",
        "recorded": "2026-03-01T09:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"reference": f"Patient/{patient_id}"}, "requestor": True}],
        "source": {"observer": {"display": "a partner system"}},
        "entity": [{"what": {"reference": f"Patient/{patient_id}"}}],
    }


def test_events_go_to_the_trail_s_database_and_are_served_from_it(
    server: AuditedServer, databases: tuple[Path, Path]
) -> None:
    main, audit = databases
    client, system = server.client, server.system
    created = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON})
    assert created.status_code == 201
    pid = created.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers=system).status_code == 200
    events = server.search(f"/fhir/AuditEvent?entity=Patient/{pid}&_sort=date")
    assert [e["action"] for e in events] == ["C", "R"]
    assert _events(main) == 0
    assert _events(audit) >= 2
    # Read, vread and type history of an event, from the trail's database.
    event_id = events[0]["id"]
    assert client.get(f"/fhir/AuditEvent/{event_id}", headers=system).json() == events[0]
    assert client.get(f"/fhir/AuditEvent/{event_id}/_history/1", headers=system).status_code == 200
    history = client.get("/fhir/AuditEvent/_history?_count=500", headers=system).json()
    assert event_id in {e["resource"]["id"] for e in history["entry"]}


def test_a_client_s_audit_event_is_stored_in_the_trail_s_database(
    server: AuditedServer, databases: tuple[Path, Path]
) -> None:
    main, audit = databases
    client, system = server.client, server.system
    pid = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON}).json()["id"]
    for content_type in ("application/fhir+json", "application/json"):  # framework, fast path
        posted = client.post(
            "/fhir/AuditEvent",
            json=_audit_event(pid),
            headers={**system, "content-type": content_type},
        )
        assert posted.status_code == 201, posted.text
        read = client.get(f"/fhir/AuditEvent/{posted.json()['id']}", headers=system)
        assert read.json()["source"]["observer"]["display"] == "a partner system"
    found = server.search("/fhir/AuditEvent?type=110110")
    assert len(found) == 2
    assert _events(main) == 0


def test_bundles_holding_audit_events_are_all_or_nothing_across_both_databases(
    server: AuditedServer, databases: tuple[Path, Path]
) -> None:
    main, _ = databases
    client, system = server.client, server.system
    pid = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON}).json()["id"]

    def bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                for r in resources
            ],
        }

    def partner_events() -> int:
        return len(server.search("/fhir/AuditEvent?type=110110"))

    ok = client.post(
        "/fhir", json=bundle("transaction", _audit_event(pid), patient()), headers=system
    )
    assert ok.status_code == 200, ok.text
    assert partner_events() == 1
    # A transaction whose second entry is invalid stores neither entry.
    bad = client.post(
        "/fhir",
        json=bundle("transaction", _audit_event(pid), {"resourceType": "Patient", "gender": 1}),
        headers=system,
    )
    assert bad.status_code in (400, 422), bad.text
    assert partner_events() == 1
    # A batch keeps the entries that worked, and only those.
    batch = client.post(
        "/fhir",
        json=bundle("batch", _audit_event(pid), {"resourceType": "AuditEvent", "action": "?"}),
        headers=system,
    )
    assert batch.status_code == 200
    statuses = [e["response"]["status"][:3] for e in batch.json()["entry"]]
    assert statuses[0] == "201" and statuses[1] != "201"
    assert partner_events() == 2
    assert _events(main) == 0


def test_the_writer_process_stores_in_the_trail_s_database_and_checkpoints_it(
    databases: tuple[Path, Path], signing_key_file: Path
) -> None:
    main, audit = databases
    settings = _settings(databases, signing_key_file, auto_provenance=False)
    app = create_app(settings)  # the real clock: the writer process
    headers = bearer(mint_token(signing_key_file, SYSTEM_SCOPE))
    with TestClient(app, headers=headers) as client:
        sink = app.state.audit_sink
        assert isinstance(sink, ProcessAuditSink)
        assert sink.database_url == settings.audit_database_url
        assert sink.checkpoints  # the server checkpoints only the main database
        pid = client.post("/fhir/Patient", json=patient()).json()["id"]
        for _ in range(300):
            assert client.get(f"/fhir/Patient/{pid}").status_code == 200
        sink.flush()
        found = client.get(f"/fhir/AuditEvent?entity=Patient/{pid}&_summary=count").json()
        assert found["total"] == 301
    assert _events(main) == 0
    assert _events(audit) >= 301


@pytest.mark.parametrize("checkpoints", [True, False])
def test_a_writer_with_a_database_of_its_own_checkpoints_it(
    tmp_path: Path, checkpoints: bool
) -> None:
    from careplan_fhir.storage.migrate import upgrade

    path = tmp_path / "audit.db"
    upgrade(f"sqlite:///{path}")
    sink = ProcessAuditSink(f"sqlite:///{path}", checkpoints=checkpoints)
    sink.start()
    try:
        for n in range(4000):
            sink.submit(_audit_event(f"p{n}"))
        sink.flush()
        with sqlite3.connect(path) as connection:
            busy, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        sink.stop()
    assert busy == 0
    assert _events(path) == 4000
    # SQLite's own checkpoints (after 1,000 pages) let the log start over; without them, as
    # beside a server that checkpoints the database itself, every page written is still in it.
    if checkpoints:
        assert frames < 1000
    else:
        assert frames > 1000


def test_the_trail_in_the_main_database_is_the_default(signing_key_file: Path) -> None:
    settings = Settings(auth_signing_key_file=str(signing_key_file))
    assert settings.audit_url == settings.database_url
    own = Settings(audit_database_url="sqlite:///elsewhere.db")
    assert own.audit_url == "sqlite:///elsewhere.db"
