"""Moving the audit trail out of the main database (storage/audit_move.py, ``db upgrade``,
``db move-audit``) and the start-up warning while events are left behind.

SQLite files in ``tmp_path``, through the CLI and the app over HTTP; the move itself also from
a PostgreSQL main database when ``CAREPLAN_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from careplan_fhir.app import create_app
from careplan_fhir.cli import app as cli_app
from careplan_fhir.settings import Settings
from careplan_fhir.storage import audit_move
from careplan_fhir.storage.audit_log import AuditLog, event_table, key_table
from careplan_fhir.storage.audit_move import move_audit_events
from careplan_fhir.storage.db import begin_write, make_engine
from careplan_fhir.storage.migrate import upgrade
from tests.audit_setup import audited_server
from tests.factories import patient
from tests.tokens import TEST_BASE

FHIR_JSON = {"content-type": "application/fhir+json"}
_EVENT_COLUMNS = (
    "res_id, last_updated, recorded_low, recorded_high, type_system, type_code, action,"
    " outcome, raw"
)


@pytest.fixture(autouse=True)
def _no_audit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads its settings from the environment: the default, unless a test says not.
    monkeypatch.delenv("CAREPLAN_AUDIT_DATABASE_URL", raising=False)


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(cli_app, list(args))
    return result


def _events(path: Path) -> list[tuple[Any, ...]]:
    """Every event of a SQLite file, oldest key first, as stored (timestamps as text)."""
    with sqlite3.connect(path) as connection:
        return connection.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_event ORDER BY pk"
        ).fetchall()


def _keys(path: Path) -> set[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return set(
            connection.execute(
                "SELECT e.res_id, k.name, k.system, k.value, k.exact FROM audit_event_key k"
                " JOIN audit_event e ON e.pk = k.event_pk"
            ).fetchall()
        )


def _settings(main: Path, key_file: Path, audit: str = "") -> Settings:
    return Settings(
        database_url=f"sqlite:///{main}",
        audit_database_url=audit,
        base_url=TEST_BASE,
        auth_signing_key_file=str(key_file),
    )


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


def _history_ids(client: TestClient, headers: dict[str, str]) -> list[str]:
    history = client.get("/fhir/AuditEvent/_history?_count=1000", headers=headers).json()
    return [entry["resource"]["id"] for entry in history.get("entry", [])]


@pytest.fixture
def old_layout(tmp_path: Path, signing_key_file: Path) -> tuple[Path, str]:
    """``careplan.db`` migrated and used with the trail in it (``main``), the old layout: a
    patient created, read and searched, a client's AuditEvent; the patient's id."""
    main = tmp_path / "careplan.db"
    result = CliRunner().invoke(
        cli_app,
        ["db", "upgrade", "--database-url", f"sqlite:///{main}"],
        env={"CAREPLAN_AUDIT_DATABASE_URL": "main"},
    )
    assert result.exit_code == 0, result.output
    assert "audit database" not in result.output
    settings = _settings(main, signing_key_file, audit="main")
    with audited_server(settings, signing_key_file) as server:
        client, system = server.client, server.system
        created = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON})
        assert created.status_code == 201
        pid = created.json()["id"]
        assert client.get(f"/fhir/Patient/{pid}", headers=system).status_code == 200
        posted = client.post(
            "/fhir/AuditEvent", json=_audit_event(pid), headers={**system, **FHIR_JSON}
        )
        assert posted.status_code == 201, posted.text
        assert len(server.search(f"/fhir/AuditEvent?entity=Patient/{pid}")) == 3
    assert not (tmp_path / "careplan-audit.db").exists()
    return main, pid


def test_db_upgrade_moves_the_old_layout_s_events_into_the_sibling_file(
    old_layout: tuple[Path, str], signing_key_file: Path
) -> None:
    main, pid = old_layout
    audit = main.with_name("careplan-audit.db")
    # The history the old layout served, newest first.
    with audited_server(_settings(main, signing_key_file, audit="main"), signing_key_file) as old:
        old_history = _history_ids(old.client, old.system)
    before, keys_before = _events(main), _keys(main)
    # create, read, client event, two searches; the history request's event came after it.
    assert len(before) == len(old_history) + 1 >= 6

    result = _cli("db", "upgrade", "--database-url", f"sqlite:///{main}")
    assert result.exit_code == 0, result.output
    assert f"audit database at head: sqlite:///{audit}" in result.output
    assert (
        f"audit trail: moved {len(before)} events from sqlite:///{main} to sqlite:///{audit}"
        in result.output
    )
    assert _events(main) == [] and _keys(main) == set()
    # Exactly as stored: ids, times, search columns, bytes, keys; and in the same order.
    assert _events(audit) == before
    assert _keys(audit) == keys_before
    again = _cli("db", "upgrade", "--database-url", f"sqlite:///{main}")
    assert again.exit_code == 0 and "moved" not in again.output

    # The default settings find them there, by read and by search, byte for byte.
    raw = {row[0]: bytes(row[-1]) for row in before}
    with audited_server(_settings(main, signing_key_file), signing_key_file) as server:
        client, system = server.client, server.system
        for event_id, stored in raw.items():
            read = client.get(f"/fhir/AuditEvent/{event_id}", headers=system)
            assert read.status_code == 200
            assert read.content == stored
        found = server.search(f"/fhir/AuditEvent?entity=Patient/{pid}&_count=100")
        assert len(found) == 3
        assert all(orjson.loads(raw[event["id"]]) == event for event in found)
        partner = server.search("/fhir/AuditEvent?type=110110")
        assert [e["source"]["observer"]["display"] for e in partner] == ["a partner system"]
        # History: the new server's own events first, then the moved ones as before.
        server.sink.flush()
        history = _history_ids(client, system)
        moved = [i for i in history if i in raw]
        assert moved == [row[0] for row in reversed(before)]
        assert moved[1:] == old_history
        assert history[: len(history) - len(moved)] == [i for i in history if i not in raw]
        # An instance history pins a key at or below 0 in its links, which work.
        oldest = before[0][0]
        instance = client.get(f"/fhir/AuditEvent/{oldest}/_history", headers=system).json()
        self_link = next(link["url"] for link in instance["link"] if link["relation"] == "self")
        assert "_snapshot=-" in self_link
        link = urlsplit(self_link)
        again_page = client.get(f"{link.path}?{link.query}", headers=system)
        assert again_page.status_code == 200, again_page.text
        assert [e["resource"]["id"] for e in again_page.json()["entry"]] == [oldest]


def test_db_move_audit_moves_into_a_database_set_by_hand(
    old_layout: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main, _ = old_layout
    count = len(_events(main))
    elsewhere = tmp_path / "trail" / "audit.db"
    elsewhere.parent.mkdir()
    monkeypatch.setenv("CAREPLAN_AUDIT_DATABASE_URL", "main")
    same = _cli("db", "move-audit", "--database-url", f"sqlite:///{main}")
    assert same.exit_code == 0 and "nothing to move" in same.output
    monkeypatch.setenv("CAREPLAN_AUDIT_DATABASE_URL", f"sqlite:///{elsewhere}")
    unmigrated = _cli("db", "move-audit", "--database-url", f"sqlite:///{main}")
    assert unmigrated.exit_code == 1
    assert "db upgrade" in unmigrated.output
    assert len(_events(main)) == count  # nothing lost
    upgrade(f"sqlite:///{elsewhere}")
    moved = _cli("db", "move-audit", "--database-url", f"sqlite:///{main}")
    assert moved.exit_code == 0, moved.output
    assert f"audit trail: moved {count} events" in moved.output
    assert len(_events(elsewhere)) == count and _events(main) == []
    nothing = _cli("db", "move-audit", "--database-url", f"sqlite:///{main}")
    assert nothing.exit_code == 0 and "no events to move" in nothing.output


def _store(engine: Engine, ids: list[str]) -> None:
    moment = datetime(2026, 3, 1, 9, 0, 0, 123456)
    events = []
    for n, event_id in enumerate(ids):
        document = {"id": event_id, **_audit_event(f"p{n}")}
        document["recorded"] = f"2026-03-01T09:{n // 60:02d}:{n % 60:02d}.5+01:00"
        events.append((event_id, moment, orjson.dumps(document), document))
    with engine.connect() as connection:
        begin_write(connection)
        AuditLog(connection).insert_many(events)
        connection.commit()


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    """Every event with its keys, oldest key first."""
    event, key = event_table(), key_table()
    with engine.connect() as connection:
        rows = connection.execute(select(event).order_by(event.c.pk)).all()
        keys = connection.execute(select(key)).all()
    by_event: dict[int, list[tuple[Any, ...]]] = {}
    for row in keys:
        by_event.setdefault(row.event_pk, []).append((row.name, row.system, row.value, row.exact))
    return [
        (
            r.res_id,
            r.last_updated,
            r.recorded_low,
            r.recorded_high,
            r.type_system,
            r.type_code,
            r.action,
            r.outcome,
            bytes(r.raw),
            sorted(by_event.get(r.pk, []), key=repr),
        )
        for r in rows
    ]


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(event_table())).scalar())


def test_a_move_that_stopped_half_way_finishes_without_duplicates(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From either backend's main database into a SQLite file that already holds events the
    new layout wrote; a crash after a batch was committed there but before it was deleted
    from the main database."""
    audit_url = f"sqlite:///{tmp_path / 'trail.db'}"
    upgrade(audit_url)
    main, audit = make_engine(database_url), make_engine(audit_url)
    try:
        _store(main, [f"old-{n:02d}" for n in range(25)])
        _store(audit, ["new-1", "new-2"])
        expected = _stored(main) + _stored(audit)
        deletes = 0
        delete_batch = audit_move._delete_batch

        def crash_on_the_second(connection: Any, pks: list[int]) -> None:
            nonlocal deletes
            deletes += 1
            if deletes == 2:
                raise RuntimeError("killed")
            delete_batch(connection, pks)

        monkeypatch.setattr(audit_move, "_delete_batch", crash_on_the_second)
        with pytest.raises(RuntimeError, match="killed"):
            move_audit_events(database_url, audit_url, batch=10)
        assert _count(main) == 15  # the newest ten moved; the next ten copied, not deleted
        assert _count(audit) == 2 + 20
        monkeypatch.setattr(audit_move, "_delete_batch", delete_batch)
        assert move_audit_events(database_url, audit_url, batch=10) == 15
        assert _count(main) == 0
        # Once each, exactly as stored, the moved ones in their order before the newer ones.
        assert _stored(audit) == expected
        assert move_audit_events(database_url, audit_url, batch=10) == 0
        with audit.connect() as connection:
            begin_write(connection)
            AuditLog(connection).insert_many(
                [("newest", datetime(2026, 3, 2), b"{}", {"resourceType": "AuditEvent"})]
            )
            connection.commit()
        assert [row[0] for row in _stored(audit)][-3:] == ["new-1", "new-2", "newest"]
    finally:
        main.dispose()
        audit.dispose()


def test_moving_to_the_main_database_itself_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with pytest.raises(ValueError, match="main database"):
        move_audit_events(url, url)


def test_start_up_warns_while_the_main_database_holds_events(
    old_layout: tuple[Path, str], signing_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main, _ = old_layout
    audit = main.with_name("careplan-audit.db")
    upgrade(f"sqlite:///{audit}")

    def warnings(settings: Settings) -> list[str]:
        caplog.clear()
        app = create_app(settings, now=lambda: datetime(2026, 3, 1))
        with caplog.at_level(logging.WARNING, logger="careplan_fhir.app"), TestClient(app):
            pass
        return [r.getMessage() for r in caplog.records if r.name == "careplan_fhir.app"]

    settings = _settings(main, signing_key_file)
    (warned,) = [m for m in warnings(settings) if "AuditEvents" in m]
    assert "careplan-fhir db upgrade" in warned
    assert str(main) in warned and str(audit) in warned
    # The trail in the main database: nothing to warn of.
    assert not warnings(settings.model_copy(update={"audit_database_url": "main"}))
    move_audit_events(settings.database_url, settings.audit_url)
    assert not warnings(settings)
    # A main database without the table (never migrated) starts without a word.
    bare = main.with_name("bare.db")
    upgrade(f"sqlite:///{bare.with_name('bare-audit.db')}")
    assert not warnings(settings.model_copy(update={"database_url": f"sqlite:///{bare}"}))
