#!/usr/bin/env python3
"""How many AuditEvents per second the audit sink stores (run on demand, not a test).

For each backend: a fresh database (a SQLite file under bench/results/, or the PostgreSQL
database ``bench_audit``), migrated as the server migrates it; then

1. ``sink``: ``--events`` AuditEvents of reads and searches (as the middleware builds them) are
   submitted from one producer thread as fast as it can, to a started :class:`AuditSink`;
   the clock runs from the first submit until ``flush()`` returns, i.e. until every event is
   committed. Events/s, batches and the mean batch size are printed.
2. ``one-by-one``: ``--baseline`` of the same events stored the naive way, one
   ``Repository.create`` and one commit each, for comparison.

Figures only: nothing here asserts. Needs, for ``--backend postgres``, a local PostgreSQL where
``postgres@127.0.0.1`` may create databases (trust auth), as bench/run.py does.

    .venv/bin/python bench/audit_sink.py                      # both backends
    .venv/bin/python bench/audit_sink.py --backend sqlite --events 100000
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from careplan_fhir.audit.events import Caller, build_audit_event, classify  # noqa: E402
from careplan_fhir.audit.sink import AuditSink  # noqa: E402
from careplan_fhir.fhir.dates import format_instant, utc_now  # noqa: E402
from careplan_fhir.storage.db import begin_write, make_engine, normalise_url  # noqa: E402
from careplan_fhir.storage.migrate import upgrade  # noqa: E402
from careplan_fhir.storage.repository import Repository  # noqa: E402

RESULTS = BENCH / "results"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "bench_audit"


def fresh_database(backend: str) -> str:
    if backend == "sqlite":
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "audit-sink.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        admin = create_engine(normalise_url(PG_SERVER), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        admin.dispose()
        url = (
            make_url(normalise_url(PG_SERVER))
            .set(database=PG_DATABASE)
            .render_as_string(hide_password=False)
        )
    upgrade(url)
    return url


def sample_events(count: int) -> list[dict[str, Any]]:
    """Reads of CarePlans and patient-scoped searches by a system client, alternating."""
    caller = Caller("system", client_id="ehr-system", subject="ehr-system")
    recorded = format_instant(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    events = []
    for n in range(count):
        if n % 2:
            interaction = classify("GET", "/fhir/CarePlan")
            query = f"patient=Patient/p{n % 5000}&category=assess-plan"
            etag = None
        else:
            interaction = classify("GET", f"/fhir/CarePlan/cp{n}")
            query = ""
            etag = "1"
        assert interaction is not None
        events.append(
            build_audit_event(
                interaction,
                caller,
                status=200,
                recorded=recorded,
                query=query,
                address="127.0.0.1",
                etag_version=etag,
            )
        )
    return events


def run_sink(url: str, events: list[dict[str, Any]]) -> dict[str, float]:
    engine = make_engine(url, background_checkpoints=True)
    sink = AuditSink(engine, now=utc_now)
    sink.start()
    started = time.perf_counter()

    def produce() -> None:
        for event in events:
            sink.wait_for_room()
            sink.submit(event)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    submitted = time.perf_counter()
    sink.flush(timeout=600)
    stored = time.perf_counter()
    sink.stop()
    engine.dispose()
    elapsed = stored - started
    return {
        "events": len(events),
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "submit_seconds": submitted - started,
        "batches": sink.batches,
        "mean_batch": sink.written / max(sink.batches, 1),
    }


def run_one_by_one(url: str, events: list[dict[str, Any]]) -> dict[str, float]:
    engine = make_engine(url, background_checkpoints=True)
    started = time.perf_counter()
    with engine.connect() as connection:
        for event in events:
            begin_write(connection)
            Repository(connection, now=utc_now, new_id=_ids()).create(event)
            connection.commit()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"events": len(events), "seconds": elapsed, "events_per_s": len(events) / elapsed}


def _ids() -> Any:
    import uuid

    return lambda: str(uuid.uuid4())


def count_stored(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
    engine.dispose()
    return int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--events", type=int, default=50_000, help="events through the sink")
    parser.add_argument("--baseline", type=int, default=2_000, help="events stored one by one")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    events = sample_events(args.events)
    print(f"{'backend':<10} {'mode':<11} {'events':>8} {'seconds':>8} {'events/s':>10}  detail")
    for backend in backends:
        url = fresh_database(backend)
        sink = run_sink(url, events)
        print(
            f"{backend:<10} {'sink':<11} {sink['events']:>8.0f} {sink['seconds']:>8.2f}"
            f" {sink['events_per_s']:>10,.0f}  {sink['batches']:.0f} batches,"
            f" mean {sink['mean_batch']:.0f} events; producer done after"
            f" {sink['submit_seconds']:.2f} s"
        )
        naive = run_one_by_one(url, events[: args.baseline])
        print(
            f"{backend:<10} {'one-by-one':<11} {naive['events']:>8.0f} {naive['seconds']:>8.2f}"
            f" {naive['events_per_s']:>10,.0f}  one create + commit per event"
        )
        stored = count_stored(url)
        expected = len(events) + args.baseline
        print(f"{backend:<10} stored {stored} AuditEvents (expected {expected})")


if __name__ == "__main__":
    main()
