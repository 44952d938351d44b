"""Group commit (rest/group_commit.py): creates that arrive together share one transaction,
and each still succeeds or fails exactly as it would alone.

The requests go through the whole ASGI app on one event loop (httpx's ASGI transport, many at
once with ``asyncio.gather``), the way uvicorn hands concurrent connections' requests to it.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Connection

from careplan_fhir.app import create_app
from careplan_fhir.rest.group_commit import GroupCommit
from careplan_fhir.settings import Settings
from careplan_fhir.storage import pending_creates
from tests.factories import patient, task
from tests.tokens import bearer, mint_token

PATIENT_SCOPE = "patient/*.cruds"


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    """The app without its lifespan (httpx's ASGI transport runs none): disposed here."""
    ids = (f"id{n}" for n in itertools.count(1))
    application = create_app(settings, new_id=lambda: next(ids))
    yield application
    application.state.services.engine.dispose()


def group_commit_of(app: FastAPI) -> GroupCommit:
    """The app's fast-path middleware's GroupCommit (the middleware stack is built lazily)."""
    stack: Any = app.middleware_stack
    while stack is not None:
        found = getattr(stack, "group_commit", None)
        if found is not None:
            return found  # type: ignore[no-any-return]
        stack = getattr(stack, "app", None)
    raise AssertionError("no FastPaths in the middleware stack")


async def post_all(
    app: FastAPI, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.get("/fhir/metadata", headers=headers)  # builds the middleware stack
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        "/fhir/Patient"
                        if b["resourceType"] == "Patient"
                        else f"/fhir/{b['resourceType']}",
                        json=b,
                        headers=headers,
                    )
                    for b in bodies
                )
            )
        )


async def get(app: FastAPI, url: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(url, headers=headers)


def test_creates_that_arrive_together_are_committed_together(
    app: FastAPI, settings: Settings, system_headers: dict[str, str]
) -> None:
    responses = asyncio.run(post_all(app, [patient() for _ in range(20)], system_headers))
    assert [r.status_code for r in responses] == [201] * 20
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 20
    group_commit = group_commit_of(app)
    assert group_commit.grouped == 20
    assert group_commit.groups < 20  # they shared transactions
    found = asyncio.run(get(app, "/fhir/Patient?_count=100", system_headers)).json()
    assert {e["resource"]["id"] for e in found["entry"]} == ids
    # Each got its own Provenance, as a create alone does.
    provenance = asyncio.run(get(app, "/fhir/Provenance?_count=100", system_headers)).json()
    assert provenance["total"] == (20 if settings.auto_provenance else 0)


def test_a_failing_create_fails_alone_and_answers_as_it_would_alone(
    app: FastAPI, system_headers: dict[str, str], signing_key_file: Path
) -> None:
    bodies = [
        patient(),
        patient(gender="bogus"),  # invalid: 422
        {"resourceType": "Patient", "id": "x", "birthDate": "not-a-date"},  # invalid: 422
        patient(),
    ]
    responses = asyncio.run(post_all(app, bodies, system_headers))
    assert [r.status_code for r in responses] == [201, 422, 422, 201]
    assert responses[1].json()["issue"][0]["expression"] == ["Patient.gender"]
    total = asyncio.run(get(app, "/fhir/Patient", system_headers)).json()["total"]
    assert total == 2
    # A patient may create a Task for themselves only: refused after the write, in the group,
    # and rolled back alone while the patient's own Task is stored.
    me = bearer(mint_token(signing_key_file, PATIENT_SCOPE, patient="p1"))
    mixed = asyncio.run(post_all(app, [task("p1"), task("p2"), task("p1")], me))
    assert [r.status_code for r in mixed] == [201, 403, 201]
    tasks = asyncio.run(get(app, "/fhir/Task?_count=100", system_headers)).json()
    assert sorted(e["resource"]["for"]["reference"] for e in tasks["entry"]) == [
        "Patient/p1",
        "Patient/p1",
    ]


def test_a_failed_group_commit_stores_nothing_twice(
    app: FastAPI, system_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the group's COMMIT fails, nothing is stored twice. On SQLite nothing was stored: each
    create runs again on its own. On PostgreSQL the group's one statement ran on its own
    (autocommit) and stored the rows before the COMMIT, which had nothing left to do: the
    creates are answered as stored, and not run again."""
    original = Connection.commit
    failed = []

    def commit_failing_once(self: Connection) -> None:
        if not failed and self.in_transaction() and self.in_nested_transaction() is False:
            failed.append(True)
            raise RuntimeError("disk full")
        original(self)

    monkeypatch.setattr(Connection, "commit", commit_failing_once)
    responses = asyncio.run(post_all(app, [patient() for _ in range(5)], system_headers))
    monkeypatch.undo()
    assert failed == [True]
    assert [r.status_code for r in responses] == [201] * 5
    found = asyncio.run(get(app, "/fhir/Patient?_count=100", system_headers)).json()
    assert found["total"] == 5
    assert {e["resource"]["id"] for e in found["entry"]} == {r.json()["id"] for r in responses}


def test_a_failed_group_statement_stores_nothing_and_each_create_runs_alone(
    app: FastAPI,
    settings: Settings,
    system_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: the statement that writes a group's held rows fails in the database after
    its inserts ran: none of them stays, and each create is stored once, on its own."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("creates are held for one statement on PostgreSQL only")
    failing = pending_creates._SQL.replace("SELECT count(*) FROM d", "SELECT 1 / 0 FROM d")
    assert failing != pending_creates._SQL
    monkeypatch.setattr(pending_creates, "_SQL", failing)
    responses = asyncio.run(post_all(app, [patient() for _ in range(5)], system_headers))
    assert [r.status_code for r in responses] == [201] * 5
    group_commit = group_commit_of(app)
    assert group_commit.grouped == 0  # the group failed; the framework stored each
    found = asyncio.run(get(app, "/fhir/Patient?_count=100", system_headers)).json()
    assert found["total"] == 5
    assert {e["resource"]["id"] for e in found["entry"]} == {r.json()["id"] for r in responses}
    provenance = asyncio.run(get(app, "/fhir/Provenance?_count=100", system_headers)).json()
    assert provenance["total"] == (5 if settings.auto_provenance else 0)


@pytest.mark.parametrize(("held", "in_thread"), [(0.01, 0), (0.3, 1)])
def test_creates_that_find_the_write_turn_taken_retry_on_the_loop_then_wait_in_a_thread(
    app: FastAPI,
    settings: Settings,
    system_headers: dict[str, str],
    held: float,
    in_thread: int,
) -> None:
    """Another process's writer (here: a second holder of the lock file) holds SQLite's turn.

    Held briefly, the group is tried again on the event loop until the turn is free; held
    longer than the loop's patience (50 ms), the group waits for it in a worker thread. Either
    way every create is stored once.
    """
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL writers take no turns")
    lock_file = settings.database_url.removeprefix("sqlite:///") + "-writer"

    async def scenario() -> list[httpx.Response]:
        holder = os.open(lock_file, os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)

        async def release() -> None:
            # Held from the moment a group first finds the turn taken (not from the start: on
            # a slow machine the creates may arrive after a fixed delay had passed). The
            # middleware stack, and its GroupCommit, exists once the first request came in.
            deadline = asyncio.get_running_loop().time() + 5  # then the asserts below fail
            while app.middleware_stack is None or group_commit_of(app).busy < 1:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(held)
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)

        releasing = asyncio.ensure_future(release())
        responses = await post_all(app, [patient() for _ in range(5)], system_headers)
        await releasing
        return responses

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [201] * 5
    group_commit = group_commit_of(app)
    assert group_commit.busy >= 1
    assert group_commit.in_thread == in_thread
    assert group_commit.grouped == 5
    found = asyncio.run(get(app, "/fhir/Patient?_count=100", system_headers)).json()
    assert found["total"] == 5
