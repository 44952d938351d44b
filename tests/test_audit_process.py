"""The audit writer process (audit/process_sink.py) and the cross-process write turn.

Each test runs the real child (``python -m careplan_fhir.audit.process_sink``) against a real
SQLite file or PostgreSQL database, through the app over HTTP where a request is involved.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from careplan_fhir.app import create_app
from careplan_fhir.audit.events import AuditFacts, Caller, Interaction, facts_of
from careplan_fhir.audit.process_sink import NICENESS, ProcessAuditSink, run_writer
from careplan_fhir.audit.sink import AuditSink
from careplan_fhir.settings import Settings, audit_database_for
from careplan_fhir.storage.audit_log import event_table
from careplan_fhir.storage.db import make_engine
from tests.tokens import SYSTEM_SCOPE, TEST_BASE, bearer, mint_token

PATIENT = {"resourceType": "Patient", "name": [{"family": "Writer"}]}


def _settings(database_url: str, key_file: Path, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        base_url=TEST_BASE,
        auth_signing_key_file=str(key_file),
        auto_provenance=False,
        **overrides,
    )


@contextmanager
def _server(settings: Settings) -> Iterator[tuple[TestClient, ProcessAuditSink]]:
    app = create_app(settings)  # the real clock: the writer runs in a process of its own
    with TestClient(app) as client:
        sink = app.state.audit_sink
        assert isinstance(sink, ProcessAuditSink)
        yield client, sink


def _stored(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(event_table())).scalar())
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) still answers kill(pid, 0).
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def _facts(n: int) -> AuditFacts:
    return facts_of(
        Interaction("read", "R", "Patient", f"p{n}"),
        Caller("client", client_id="ehr-system"),
        status=200,
        recorded=datetime(2026, 3, 1, 9, 0, n % 60, tzinfo=UTC),
        address="127.0.0.1",
    )


def test_the_server_stores_audit_events_from_a_process_of_its_own(
    database_url: str, signing_key_file: Path
) -> None:
    headers = bearer(mint_token(signing_key_file, SYSTEM_SCOPE))
    with _server(_settings(database_url, signing_key_file)) as (client, sink):
        pid = sink.pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        created = client.post("/fhir/Patient", json=PATIENT, headers=headers)
        assert created.status_code == 201, created.text
        patient_id = created.json()["id"]
        for _ in range(20):
            assert client.get(f"/fhir/Patient/{patient_id}", headers=headers).status_code == 200
        sink.flush()
        assert sink.pending == 0
        found = client.get(
            f"/fhir/AuditEvent?subtype=read&entity=Patient/{patient_id}", headers=headers
        ).json()
        assert found["total"] == 20
        event = found["entry"][0]["resource"]
        assert event["agent"][0]["who"]["identifier"]["value"] == "test-client"
        assert event["entity"][0]["what"]["reference"].startswith(f"Patient/{patient_id}")
        created_events = client.get(
            "/fhir/AuditEvent?subtype=create&outcome=0", headers=headers
        ).json()
        assert created_events["total"] == 1
    # Stopped with the app: the child stored everything it was sent, then exited.
    assert not _alive(pid)
    assert sink.pending == 0
    # 1 create, 20 reads, 2 searches (the second search's own event came after the first).
    assert _stored(audit_database_for(database_url)) == 23


def test_the_writer_outlives_signals_meant_for_the_server(
    database_url: str, signing_key_file: Path
) -> None:
    """A Ctrl-C or SIGTERM to the process group must not cut the writer short."""
    with _server(_settings(database_url, signing_key_file)) as (client, sink):
        assert sink.pid is not None
        # Nicer than the server: requests go first on busy cores.
        with open(f"/proc/{sink.pid}/stat") as stat:
            niceness = int(stat.read().split(") ", 1)[1].split()[16])
        assert niceness == min(19, os.nice(0) + NICENESS)
        os.kill(sink.pid, signal.SIGTERM)
        os.kill(sink.pid, signal.SIGINT)
        for _ in range(5):
            client.get("/fhir/metadata")
        sink.flush()
        assert _alive(sink.pid)
        assert sink.restarts == 0 and sink.written == 5


def test_a_writer_that_dies_is_replaced_and_the_events_waiting_in_the_pipe_survive(
    database_url: str, signing_key_file: Path
) -> None:
    with _server(_settings(database_url, signing_key_file)) as (client, sink):
        first = sink.pid
        assert first is not None
        client.get("/fhir/metadata")
        sink.flush()
        # Stopped, the child reads nothing: these wait in the pipe while it is killed.
        os.kill(first, signal.SIGSTOP)
        for _ in range(10):
            client.get("/fhir/metadata")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (sink.pid in (None, first) or sink.restarts == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.restarts == 1 and sink.pid not in (None, first)
        client.get("/fhir/metadata")
        sink.flush()
        assert sink.lost == 0
        assert sink.written == 12
    assert _stored(audit_database_for(database_url)) == 12


def test_requests_wait_while_the_writer_is_behind_and_go_on_when_it_catches_up(
    database_url: str, signing_key_file: Path
) -> None:
    with _server(_settings(database_url, signing_key_file)) as (client, sink):
        assert sink.pid is not None
        sink.capacity = 3
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                client.get("/fhir/metadata")
            assert sink.pending == 3
            answered = threading.Event()

            def one_more() -> None:
                client.get("/fhir/metadata")
                answered.set()

            waiting = threading.Thread(target=one_more)
            waiting.start()
            # Held before it runs: the writer has three events waiting, its capacity.
            assert not answered.wait(0.5)
        finally:
            os.kill(sink.pid, signal.SIGCONT)
        assert answered.wait(30)
        waiting.join()
        sink.flush()
        assert sink.written == 4 and sink.pending == 0


def test_a_create_waits_for_another_process_holding_the_write_turn(
    tmp_path: Path, signing_key_file: Path
) -> None:
    """The lock file beside a SQLite database queues writers of every process."""
    url = f"sqlite:///{tmp_path / 'turn.db'}"
    from careplan_fhir.storage import migrate

    migrate.upgrade(url)
    headers = bearer(mint_token(signing_key_file, SYSTEM_SCOPE))
    # The trail in the same file: the writer process is the other process taking the turn.
    with _server(_settings(url, signing_key_file, audit_database_url="main")) as (client, sink):
        assert client.post("/fhir/Patient", json=PATIENT, headers=headers).status_code == 201
        sink.flush()
        # Another open file description is another holder, as another process would be.
        holder = os.open(tmp_path / "turn.db-writer", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        answer: dict[str, int] = {}

        def create() -> None:
            answer["status"] = client.post(
                "/fhir/Patient", json=PATIENT, headers=headers
            ).status_code

        writer = threading.Thread(target=create)
        try:
            writer.start()
            writer.join(0.5)
            assert writer.is_alive() and not answer  # waiting for the turn, in a worker thread
            # The event loop is not blocked meanwhile: reads are answered.
            assert client.get("/fhir/metadata").status_code == 200
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        writer.join(30)
        assert answer == {"status": 201}
        sink.flush()
        assert sink.lost == 0
    assert _stored(url) == 3  # two creates and the read of metadata


def test_the_child_drops_a_torn_line_and_reports_what_it_stored(database_url: str) -> None:
    """``run_writer`` as the child runs it, fed through a pipe in this process."""
    read_fd, write_fd = os.pipe()
    report_read, report_write = os.pipe()
    reports = os.fdopen(report_write, "wb")
    result: list[int] = []
    child = threading.Thread(
        target=lambda: result.append(run_writer(database_url, read_fd, reports))
    )
    child.start()
    # The tail of a line whose head a dead writer took, then three events, one of them whole.
    event = {"resourceType": "AuditEvent", "action": "E", "recorded": "2026-03-01T09:00:00Z"}
    lines = [b'ient","p1"]', orjson.dumps(tuple(_facts(1))), orjson.dumps(tuple(_facts(2)))]
    lines.append(orjson.dumps(event))
    os.write(write_fd, b"\n".join(lines) + b"\nh\n")
    os.close(write_fd)
    child.join(60)
    reports.close()
    os.close(read_fd)
    with os.fdopen(report_read, "rb") as stream:
        said = [line.split() for line in stream.read().splitlines()]
    assert result == [0]
    assert said[0] == [b"ready"]
    assert [b"x", b"1"] in said
    assert sum(int(words[1]) for words in said if words[0] == b"s") == 3
    assert sum(int(words[2]) for words in said if words[0] == b"s") == 0
    assert _stored(database_url) == 3


def test_which_writer_the_app_uses(tmp_path: Path, signing_key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 'which.db'}"

    def writer(settings: Settings, **kwargs: Any) -> object:
        return create_app(settings, **kwargs).state.audit_sink

    assert isinstance(writer(_settings(url, signing_key_file)), ProcessAuditSink)
    assert type(writer(_settings(url, signing_key_file, audit_writer="thread"))) is AuditSink
    # An in-memory database lives in this process only; another process cannot write to it.
    assert type(writer(_settings("sqlite://", signing_key_file))) is AuditSink
    # Nor can another process read a clock the app was given.
    clock = lambda: datetime(2026, 3, 1, tzinfo=UTC)  # noqa: E731
    assert type(writer(_settings(url, signing_key_file), now=clock)) is AuditSink
    assert writer(_settings(url, signing_key_file, audit_enabled=False)) is None
    with pytest.raises(ValueError):
        _settings(url, signing_key_file, audit_writer="fork")
