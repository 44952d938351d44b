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

from careplan_fhir.app import audit_engine_for, create_app
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
    # Under an id of the client's own (create-on-update), committed in the trail's database.
    put = client.put(
        "/fhir/AuditEvent/partner-1",
        json={**_audit_event(pid), "id": "partner-1"},
        headers={**system, **FHIR_JSON},
    )
    assert put.status_code == 201, put.text
    assert client.get("/fhir/AuditEvent/partner-1", headers=system).status_code == 200
    again = client.put(
        "/fhir/AuditEvent/partner-1",
        json={**_audit_event(pid), "id": "partner-1"},
        headers={**system, **FHIR_JSON},
    )
    assert again.status_code in (403, 405), again.text
    found = server.search("/fhir/AuditEvent?type=110110")
    assert len(found) == 3
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


@pytest.mark.parametrize(
    ("database_url", "audit_database_url", "expected"),
    [
        # The default: a SQLite file gets a sibling file, query string kept.
        ("sqlite:///./careplan.db", "", "sqlite:///./careplan-audit.db"),
        ("sqlite:////srv/fhir/main.sqlite3", "", "sqlite:////srv/fhir/main-audit.sqlite3"),
        ("sqlite:///data/careplan", "", "sqlite:///data/careplan-audit"),
        (
            "sqlite+pysqlite:////data/c.db?timeout=5&cached_statements=50",
            "",
            "sqlite+pysqlite:////data/c-audit.db?timeout=5&cached_statements=50",
        ),
        # In memory, a file: URI, PostgreSQL: the main database.
        ("sqlite://", "", "sqlite://"),
        ("sqlite:///:memory:", "", "sqlite:///:memory:"),
        ("sqlite:///file:c.db?mode=ro&uri=true", "", "sqlite:///file:c.db?mode=ro&uri=true"),
        ("postgresql://u:secret@db/careplan", "", "postgresql://u:secret@db/careplan"),
        # ``main``: the main database always; a URL: that database.
        ("sqlite:///./careplan.db", "main", "sqlite:///./careplan.db"),
        ("postgresql://db/careplan", "main", "postgresql://db/careplan"),
        ("sqlite:///./careplan.db", "sqlite:///elsewhere.db", "sqlite:///elsewhere.db"),
        ("postgresql://db/careplan", "postgresql://db/trail", "postgresql://db/trail"),
    ],
)
def test_where_the_trail_is_by_default_and_when_set(
    database_url: str, audit_database_url: str, expected: str
) -> None:
    settings = Settings(database_url=database_url, audit_database_url=audit_database_url)
    assert settings.audit_url == expected
    own = audit_engine_for(settings)
    try:
        assert (own is None) == (expected == database_url)
    finally:
        if own is not None:
            own.dispose()


def test_the_default_sibling_follows_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of ``serve`` get the main URL only (``CAREPLAN_DATABASE_URL``): the trail's
    file is found from it."""
    monkeypatch.delenv("CAREPLAN_AUDIT_DATABASE_URL", raising=False)
    monkeypatch.delenv("CAREPLAN_DATABASE_URL", raising=False)
    assert Settings().audit_url == "sqlite:///./careplan-audit.db"
    monkeypatch.setenv("CAREPLAN_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert Settings().audit_url == f"sqlite:///{tmp_path / 'other-audit.db'}"
    result = CliRunner().invoke(cli_app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"audit database at head: sqlite:///{tmp_path / 'other-audit.db'}" in result.output
    assert _events(tmp_path / "other-audit.db") == 0
