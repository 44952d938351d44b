"""Concurrent writers: no lost update, no duplicate, nothing half-written; overload sheds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings
from tests.factories import patient


def test_concurrent_if_match_updates_one_wins(client: TestClient) -> None:
    client.put("/fhir/Patient/shared", json=patient(id="shared"))

    def update(gender: str) -> int:
        response = client.put(
            "/fhir/Patient/shared",
            json=patient(id="shared", gender=gender),
            headers={"If-Match": 'W/"1"'},
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(update, ["male", "female", "other", "unknown"] * 2))
    assert statuses.count(200) == 1
    assert all(s in (409, 412) for s in statuses if s != 200)
    history = client.get("/fhir/Patient/shared/_history").json()
    assert history["total"] == 2


def test_concurrent_updates_without_if_match_lose_nothing(client: TestClient) -> None:
    client.put("/fhir/Patient/busy", json=patient(id="busy"))

    def update(n: int) -> int:
        body = patient(id="busy", name=[{"family": f"F{n}"}])
        return client.put("/fhir/Patient/busy", json=body).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(update, range(12)))
    succeeded = statuses.count(200)
    assert succeeded >= 1
    assert all(s in (200, 409) for s in statuses)
    history = client.get("/fhir/Patient/busy/_history?_count=100").json()
    # Every acknowledged update is a version: none was silently overwritten.
    assert history["total"] == 1 + succeeded
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"])
    assert versions == list(range(1, succeeded + 2))


def test_concurrent_create_with_same_client_id_makes_one(client: TestClient) -> None:
    def put(_: int) -> int:
        return client.put("/fhir/Patient/race", json=patient(id="race")).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(put, range(6)))
    assert statuses.count(201) == 1
    assert all(s in (200, 201, 409) for s in statuses)
    assert client.get("/fhir/Patient?_id=race").json()["total"] == 1


def test_overload_is_shed_with_503_outcome(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_in_flight": 0}))
    with TestClient(app) as shedding:
        response = shedding.get("/fhir/metadata")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "transient"


def test_inline_create_waits_for_a_busy_writer_in_a_thread(
    database_url: str, settings: Settings, system_headers: dict[str, str]
) -> None:
    """A create on the event loop never blocks it on another writer's turn (SQLite)."""
    import threading

    import pytest

    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL writers take no turns: there is nothing to wait for")

    from sqlalchemy import text

    from careplan_fhir.storage.db import begin_write

    app = create_app(settings)
    engine = app.state.services.engine
    with TestClient(app, headers=system_headers) as live, engine.connect() as holder:
        begin_write(holder)
        holder.execute(text("SELECT 1"))  # this connection now holds the write turn
        results: list[int] = []
        worker = threading.Thread(
            target=lambda: results.append(live.post("/fhir/Patient", json=patient()).status_code)
        )
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive()  # waiting for the turn, in a worker thread
        assert live.get("/fhir/metadata").status_code == 200  # the event loop still serves
        holder.commit()
        worker.join(timeout=10.0)
        assert results == [201]
        assert live.get("/fhir/Patient").json()["total"] == 1


def test_the_server_checkpoints_the_wal_in_the_background(
    database_url: str, settings: Settings, system_headers: dict[str, str]
) -> None:
    import time

    import pytest

    if not database_url.startswith("sqlite"):
        pytest.skip("the write-ahead log is SQLite's")
    app = create_app(settings.model_copy(update={"wal_checkpoint_seconds": 0.05}))
    with TestClient(app, headers=system_headers) as live:
        for _ in range(20):
            assert live.post("/fhir/Patient", json=patient()).status_code == 201
        deadline = time.monotonic() + 5
        while app.state.wal_checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.wal_checkpointer.checkpoints > 0
        with app.state.services.engine.connect() as connection:
            setting = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert setting == 0  # requests never checkpoint themselves
