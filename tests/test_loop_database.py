"""PostgreSQL reads, searches and creates awaited on the event loop (rest/loop_database.py).

Through HTTP on a real PostgreSQL: each test checks that the work went the loop's way (the
loop database counts it) and that the answers are the framework's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from careplan_fhir.app import create_app
from careplan_fhir.rest.loop_database import (
    READ_POOL_SIZE,
    READS_APPLICATION_NAME,
    LoopDatabase,
    conninfo_of,
)
from careplan_fhir.settings import Settings
from careplan_fhir.storage.db import LOOP_APPLICATION_NAME
from tests.conftest import _truncate as truncate
from tests.factories import care_plan, patient, task

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url(postgres_engine: Engine, postgres_url: str) -> str:
    """These tests run on PostgreSQL only (the conftest fixture also gives SQLite)."""
    truncate(postgres_engine)
    return postgres_url


@pytest.fixture
def pg_app(
    settings: Settings, system_headers: dict[str, str]
) -> Iterator[tuple[FastAPI, TestClient]]:
    app = create_app(settings)
    with TestClient(app, headers=system_headers) as client:
        yield app, client


def _database(app: FastAPI) -> LoopDatabase:
    database = app.state.services.loop_database
    assert isinstance(database, LoopDatabase)
    return database


def _backends(engine: Engine, name: str) -> set[int]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": name},
        ).all()
    return {row[0] for row in rows}


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_reads_over_the_pool_answer_as_the_framework_does(
    pg_app: tuple[FastAPI, TestClient],
) -> None:
    app, client = pg_app
    database = _database(app)
    created = client.post("/fhir/Patient", json=patient()).json()
    url = f"/fhir/Patient/{created['id']}"
    client.put(url, json={**patient(gender="male"), "id": created["id"]})
    reads = database.reads
    fast = client.get(url)
    assert database.reads == reads + 1
    framework = client.get(f"{url}?_format=json")  # rest/read.py, not the pool
    assert database.reads == reads + 1
    assert fast.status_code == framework.status_code == 200
    assert fast.content == framework.content
    for header in ("etag", "last-modified", "content-type", "content-length"):
        assert fast.headers[header] == framework.headers[header]
    assert fast.headers["etag"] == 'W/"2"'
    assert fast.json()["gender"] == "male"
    # No row, and a deleted row: looked up over the pool, answered by the framework.
    missing = client.get("/fhir/Patient/no-such-patient")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    client.delete(url)
    reads = database.reads
    assert client.get(url).status_code == 410
    assert database.reads == reads + 1


def test_searches_and_creates_run_on_the_loop(pg_app: tuple[FastAPI, TestClient]) -> None:
    app, client = pg_app
    database = _database(app)
    patient_id = client.post("/fhir/Patient", json=patient()).json()["id"]
    runs = database.runs
    created = client.post("/fhir/CarePlan", json=care_plan(patient_id))
    assert created.status_code == 201
    assert database.runs == runs + 1
    plan = created.json()
    assert client.get(f"/fhir/CarePlan/{plan['id']}").json() == plan  # committed
    query = f"patient=Patient/{patient_id}&category=assess-plan&_include=CarePlan:subject"
    runs = database.runs
    fast = client.get(f"/fhir/CarePlan?{query}")
    assert database.runs == runs + 1
    framework = client.post(  # the framework's POST _search route, in a worker thread
        "/fhir/CarePlan/_search",
        content=query,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert fast.status_code == framework.status_code == 200
    assert fast.json()["total"] == 1
    assert fast.json()["entry"] == framework.json()["entry"]
    # Errors still come from the framework, and an invalid create stores nothing.
    assert client.get("/fhir/CarePlan?date=not-a-date").status_code == 400
    refused = client.post("/fhir/Task", json=task(patient_id, status="bogus"))
    assert refused.status_code == 422
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Task").json()["total"] == 0


def _framework_search(client: TestClient, url: str) -> httpx.Response:
    """The same search through the framework's POST _search route (a worker thread)."""
    path, _, query = url.partition("?")
    return client.post(
        f"{path}/_search",
        content=query,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def test_planned_searches_answer_as_the_framework_does(
    pg_app: tuple[FastAPI, TestClient],
) -> None:
    """Searches without included resources run as statements compiled by
    storage.search.plan_search and fetched over the reads' pool: same Bundles, page after
    page, as the framework's search (SQLAlchemy's execution in a worker thread)."""
    app, client = pg_app
    database = _database(app)
    patient_id = client.post("/fhir/Patient", json=patient()).json()["id"]
    other_id = client.post("/fhir/Patient", json=patient(gender="male")).json()["id"]
    for day in (3, 1, 5, 2, 4):
        plan = care_plan(patient_id, period={"start": f"2026-03-0{day}", "end": f"2026-04-0{day}"})
        assert client.post("/fhir/CarePlan", json=plan).status_code == 201
    client.post("/fhir/CarePlan", json=care_plan(other_id))
    client.post("/fhir/Task", json=task(patient_id))
    client.post("/fhir/Task", json=task(patient_id, status="completed"))
    mine = f"patient=Patient/{patient_id}&category=assess-plan"
    searches = [
        f"/fhir/CarePlan?{mine}",  # one page holds them all: no count
        f"/fhir/CarePlan?{mine}&_count=2",  # a full page: the count runs too
        f"/fhir/CarePlan?{mine}&_sort=-date&_count=2",
        f"/fhir/CarePlan?{mine}&_total=none&_count=2",
        f"/fhir/CarePlan?{mine}&_summary=true",
        "/fhir/CarePlan?_lastUpdated=gt2000-01-01&_sort=_lastUpdated",
        f"/fhir/CarePlan?patient={other_id}&date=ge2026-03-01",
        f"/fhir/Task?patient={patient_id}&status=requested",
        "/fhir/CarePlan?patient=Patient/no-such-patient",
    ]
    pages = 0
    for url in searches:
        while url:
            fetches, runs = database.fetches, database.runs
            fast = client.get(url)
            assert database.runs == runs, url  # not through SQLAlchemy's execution
            assert database.fetches > fetches, url
            framework = _framework_search(client, url)
            assert fast.status_code == framework.status_code == 200, url
            assert fast.json() == framework.json(), url
            pages += 1
            links = {link["relation"]: link["url"] for link in fast.json()["link"]}
            url = links.get("next", "").removeprefix("http://testserver")
            if "previous" in links:  # the way back pages the same way
                back = links["previous"].removeprefix("http://testserver")
                assert client.get(back).json() == _framework_search(client, back).json()
    assert pages > len(searches)  # the paged searches had more than one page
    bundle = client.get(f"/fhir/CarePlan?{mine}&_count=2").json()
    assert bundle["total"] == 5
    assert [e["resource"]["period"]["start"] for e in bundle["entry"]] == [
        "2026-03-03",
        "2026-03-01",
    ]
    by_date = client.get(f"/fhir/CarePlan?{mine}&_sort=-date&_count=2").json()
    assert [e["resource"]["period"]["start"] for e in by_date["entry"]] == [
        "2026-03-05",
        "2026-03-04",
    ]


def test_connections_killed_under_the_loop_cost_no_request(
    pg_app: tuple[FastAPI, TestClient], postgres_engine: Engine
) -> None:
    app, client = pg_app
    database = _database(app)
    patient_id = client.post("/fhir/Patient", json=patient()).json()["id"]
    url = f"/fhir/Patient/{patient_id}"
    assert client.get(url).status_code == 200
    assert client.get(f"/fhir/Patient?_id={patient_id}").status_code == 200
    _wait_for(lambda: len(_backends(postgres_engine, READS_APPLICATION_NAME)) == READ_POOL_SIZE)
    killed = _backends(postgres_engine, READS_APPLICATION_NAME)
    killed |= _backends(postgres_engine, LOOP_APPLICATION_NAME)
    assert len(killed) > READ_POOL_SIZE  # the reads' pool and the loop engine's connection
    with postgres_engine.connect() as connection:
        for pid in killed:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # Every request still answers: what meets a dead connection goes to the framework, and
    # the pools replace what they lost.
    for n in range(2 * READ_POOL_SIZE):
        assert client.get(url).json()["id"] == patient_id
        assert client.get(f"/fhir/Patient?_id={patient_id}").json()["total"] == 1
        assert client.post("/fhir/Task", json=task(patient_id)).status_code == 201, n
    assert client.get("/fhir/Task").json()["total"] == 2 * READ_POOL_SIZE  # each stored once
    _wait_for(
        lambda: len(_backends(postgres_engine, READS_APPLICATION_NAME) - killed) == READ_POOL_SIZE
    )
    assert not _backends(postgres_engine, READS_APPLICATION_NAME) & killed
    reads, fetches = database.reads, database.fetches
    assert client.get(url).status_code == 200
    assert client.get(f"/fhir/Patient?_id={patient_id}").status_code == 200
    assert (database.reads, database.fetches) == (reads + 1, fetches + 1)


def test_the_loop_database_opens_and_closes_with_the_app(
    settings: Settings, postgres_engine: Engine, system_headers: dict[str, str]
) -> None:
    app = create_app(settings)
    database = _database(app)
    assert not database.usable()
    with TestClient(app, headers=system_headers) as client:
        assert database.usable() is False  # this thread runs no event loop
        patient_id = client.post("/fhir/Patient", json=patient()).json()["id"]
        assert client.get(f"/fhir/Patient/{patient_id}").status_code == 200
        assert client.get(f"/fhir/Patient?_id={patient_id}").json()["total"] == 1
        assert (database.reads, database.fetches, database.runs) == (1, 1, 1)
    names = (READS_APPLICATION_NAME, LOOP_APPLICATION_NAME)
    _wait_for(lambda: not any(_backends(postgres_engine, name) for name in names))
    assert [_backends(postgres_engine, name) for name in names] == [set(), set()]
    # Without its lifespan the app has no loop database and reads through the thread pool.
    bare = create_app(settings)
    try:
        plain = TestClient(bare, headers=system_headers)
        assert plain.get(f"/fhir/Patient/{patient_id}").status_code == 200
        assert plain.get(f"/fhir/Patient?_id={patient_id}").json()["total"] == 1
        counts = (_database(bare).reads, _database(bare).fetches, _database(bare).runs)
        assert counts == (0, 0, 0)
    finally:
        bare.state.services.engine.dispose()


def test_requests_on_another_event_loop_take_the_thread_path(
    pg_app: tuple[FastAPI, TestClient], system_headers: dict[str, str]
) -> None:
    app, client = pg_app
    database = _database(app)
    patient_id = client.post("/fhir/Patient", json=patient()).json()["id"]

    async def elsewhere() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=system_headers
        ) as other:
            return [
                await other.get(f"/fhir/Patient/{patient_id}"),
                await other.get(f"/fhir/Patient?_id={patient_id}"),
                await other.post("/fhir/Task", json=task(patient_id)),
            ]

    counts = database.reads, database.fetches, database.runs
    read, search, create = asyncio.run(elsewhere())
    assert read.json()["id"] == patient_id
    assert search.json()["total"] == 1
    assert create.status_code == 201
    # None over the TestClient loop's pools.
    assert (database.reads, database.fetches, database.runs) == counts
    assert client.get("/fhir/Task").json()["total"] == 1


def test_conninfo_is_the_libpq_form_of_the_url() -> None:
    url = "postgresql+psycopg://app:s3cret@db.example:5433/careplan?sslmode=require"
    assert conninfo_of(url) == "postgresql://app:s3cret@db.example:5433/careplan?sslmode=require"
