#!/usr/bin/env python3
"""HTTP benchmark of careplan-fhir against a bare FastAPI ceiling (run on demand, not a test).

1. Loads a fresh database (SQLite file under bench/results/ or the PostgreSQL ``bench`` database)
   with patients, CarePlans (US Core assess-plan), Goals and Tasks, through the repository.
2. Starts the real server (``careplan-fhir serve``: one uvicorn worker, uvloop, httptools) and a
   bare FastAPI app serving the bytes of one stored CarePlan (bench/bare_app.py).
3. Drives both with wrk (fixed durations, 127.0.0.1 only, Lua scripts spreading requests over
   many ids and patients) and prints requests/s, p50, p99 beside the targets.
4. Writes the figures to bench/results/<backend>-<timestamp>.json.

Figures only: nothing here asserts. See bench/README.md for the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
PG_ADMIN = ["-h", "127.0.0.1", "-U", "postgres"]
PG_URL = "postgresql://postgres@127.0.0.1:5432/bench"
HOST = "127.0.0.1"

CATEGORY_SYSTEM = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"

#: Targets printed beside the figures (never asserted).
READ_RATIO_TARGET = {"sqlite": 0.65, "postgres": 0.35}
SEARCH_P50_TARGET_MS = 1.0
SEARCH_P99_TARGET_MS = 5.0
CREATE_TARGET_RPS = 1000.0
TAIL_RATIO_TARGET = 10.0


# -- data ------------------------------------------------------------------------------------


def _narrative(text: str) -> dict[str, str]:
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{text}</p></div>',
    }


def patient_doc(n: int, rng: random.Random) -> dict[str, Any]:
    family = rng.choice(["Smith", "Jones", "Garcia", "Nguyen", "Müller", "Rossi", "Kowalski"])
    given = rng.choice(["Ana", "Ben", "Chloé", "Dev", "Eva", "Femi", "Goran", "Hana"])
    birth = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 80 * 365))
    return {
        "resourceType": "Patient",
        "text": _narrative(f"{given} {family}"),
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.3.25", "value": f"MRN{n:08d}"}],
        "active": True,
        "name": [{"family": family, "given": [given]}],
        "gender": rng.choice(["female", "male", "other", "unknown"]),
        "birthDate": birth.date().isoformat(),
        "address": [{"line": [f"{n} Main St"], "city": "Springfield", "postalCode": "12345"}],
    }


GOALS = [
    ("Walk 30 minutes a day", "Walks unaided for 30 minutes"),
    ("Keep the wound clean and dry", "No signs of infection at follow-up"),
    ("Pain at rest below 3/10", "Pain score reported at each visit"),
    ("Return to work", "Back at work within six weeks"),
]


def goal_doc(patient_id: str, k: int, start: datetime) -> dict[str, Any]:
    title, note = GOALS[k % len(GOALS)]
    return {
        "resourceType": "Goal",
        "text": _narrative(title),
        "lifecycleStatus": "active",
        "description": {"text": title},
        "subject": {"reference": f"Patient/{patient_id}"},
        "startDate": start.date().isoformat(),
        "target": [{"dueDate": (start + timedelta(days=42)).date().isoformat()}],
        "note": [{"text": note}],
    }


def careplan_doc(patient_id: str, goal_ids: list[str], k: int, start: datetime) -> dict[str, Any]:
    title = ["Recovery after knee replacement", "Post-operative wound care", "Cardiac rehab"][k % 3]
    return {
        "resourceType": "CarePlan",
        "text": _narrative(f"{title}: assessment and plan of treatment."),
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "assess-plan"}]}],
        "title": title,
        "description": f"{title}. Follow the leaflet handed out at discharge.",
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {
            "start": start.isoformat() + "Z",
            "end": (start + timedelta(days=90)).isoformat() + "Z",
        },
        "created": start.isoformat() + "Z",
        "goal": [{"reference": f"Goal/{g}"} for g in goal_ids],
        "activity": [
            {
                "detail": {
                    "kind": "Task",
                    "code": {"text": "Daily walk"},
                    "status": "in-progress",
                    "description": "Walk twice a day, increasing by five minutes each week.",
                }
            }
        ],
    }


def task_doc(patient_id: str, careplan_id: str, status: str, start: datetime) -> dict[str, Any]:
    document: dict[str, Any] = {
        "resourceType": "Task",
        "text": _narrative("Record today's pain score"),
        "status": status,
        "intent": "order",
        "priority": "routine",
        "code": {"text": "Record pain score"},
        "description": "Record today's pain score (0-10) in the portal.",
        "basedOn": [{"reference": f"CarePlan/{careplan_id}"}],
        "for": {"reference": f"Patient/{patient_id}"},
        "owner": {"reference": f"Patient/{patient_id}"},
        "authoredOn": start.isoformat() + "Z",
        "executionPeriod": {"start": start.isoformat() + "Z"},
    }
    return document


@dataclass
class Manifest:
    """What was loaded: counts, timings and sample ids for the wrk scripts."""

    backend: str
    url: str
    careplans: int
    patients: int
    resources: int
    load_seconds: float
    careplan_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    #: (patient id, one of its CarePlan ids), for Task creates.
    pairs: list[tuple[str, str]] = field(default_factory=list)


def fresh_database(backend: str, careplans: int) -> str:
    if backend == "sqlite":
        path = RESULTS / f"bench-{careplans}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{path}"
    subprocess.run(["dropdb", "--if-exists", *PG_ADMIN, "bench"], check=True)
    subprocess.run(["createdb", *PG_ADMIN, "bench"], check=True)
    return PG_URL


def load(backend: str, careplans: int, per_patient: int, batch: int, samples: int) -> Manifest:
    """Migrate a fresh database and store the data set through the repository."""
    from sqlalchemy import text

    from careplan_fhir.app import new_resource_id
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.fhir.models import validate_resource
    from careplan_fhir.storage.db import begin_write, make_engine
    from careplan_fhir.storage.migrate import upgrade
    from careplan_fhir.storage.repository import Repository

    url = fresh_database(backend, careplans)
    upgrade(url)
    engine = make_engine(url)
    rng = random.Random(20240601)
    patients = math.ceil(careplans / per_patient)
    goals_per_patient = 2
    epoch = datetime(2024, 1, 1)
    checked: set[str] = set()
    stored_careplans = stored = pending = 0
    all_patients: list[str] = []
    all_careplans: list[str] = []
    started = time.perf_counter()
    with engine.connect() as session:
        repository = Repository(session, now=utc_now, new_id=new_resource_id)
        begin_write(session)

        def put(document: dict[str, Any]) -> str:
            nonlocal stored, pending
            if document["resourceType"] not in checked:  # one validation per type
                validate_resource(document)
                checked.add(document["resourceType"])
            stored += 1
            pending += 1
            return repository.create(document).id

        for n in range(patients):
            patient_id = put(patient_doc(n, rng))
            all_patients.append(patient_id)
            start = epoch + timedelta(minutes=rng.randrange(0, 365 * 24 * 60))
            goal_ids = [put(goal_doc(patient_id, k, start)) for k in range(goals_per_patient)]
            for k in range(min(per_patient, careplans - stored_careplans)):
                careplan_id = put(careplan_doc(patient_id, goal_ids, k, start))
                all_careplans.append(careplan_id)
                stored_careplans += 1
                status = "requested" if k % 2 == 0 else "completed"
                put(task_doc(patient_id, careplan_id, status, start))
            if pending >= batch:
                session.commit()
                begin_write(session)
                pending = 0
            if (n + 1) % max(1, patients // 10) == 0:
                rate = stored / (time.perf_counter() - started)
                print(f"  {n + 1}/{patients} patients, {stored} resources ({rate:.0f}/s)")
        session.commit()
    load_seconds = time.perf_counter() - started
    if backend == "postgres":
        # What autovacuum would do shortly after a bulk load: planner statistics, visibility map.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    picker = random.Random(7)
    careplan_sample = picker.sample(all_careplans, min(samples, len(all_careplans)))
    patient_sample = picker.sample(all_patients, min(samples, len(all_patients)))
    return Manifest(
        backend=backend,
        url=url,
        careplans=stored_careplans,
        patients=patients,
        resources=stored,
        load_seconds=load_seconds,
        careplan_ids=careplan_sample,
        patient_ids=patient_sample,
        pairs=[],
    )


def manifest_path(backend: str, careplans: int) -> Path:
    return RESULTS / f"{backend}-{careplans}.manifest.json"


def save_manifest(manifest: Manifest) -> None:
    path = manifest_path(manifest.backend, manifest.careplans)
    path.write_text(json.dumps(manifest.__dict__))


def read_manifest(backend: str, careplans: int) -> Manifest:
    data = json.loads(manifest_path(backend, careplans).read_text())
    data["pairs"] = [tuple(p) for p in data["pairs"]]
    return Manifest(**data)


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


@contextmanager
def serve(name: str, command: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    """Start ``command`` in its own process group; always stopped on the way out."""
    log = RESULTS / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, process, port, log)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log}")
        try:
            with urllib.request.urlopen(f"{server.base}/fhir/metadata", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout} s; see {server.log}")


#: The system token every request to the FHIR server carries (authorization is on, as deployed).
AUTHORIZATION: dict[str, str] = {}


def report_audit_trail(url: str, *, clear: bool) -> None:
    """Print how many AuditEvents earlier runs left in the main database; delete them if asked
    (left there, the server warns of them at start-up)."""
    from sqlalchemy import text

    from careplan_fhir.storage.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            count = connection.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
            if clear and count:
                connection.execute(text("DELETE FROM audit_event_key"))
                connection.execute(text("DELETE FROM audit_event"))
        print(
            f"audit trail: {count} AuditEvents from earlier runs in the main database"
            + (", deleted" if clear else "")
        )
        if clear and count and engine.dialect.name == "sqlite":
            # The deleted rows' pages went to SQLite's free list, scattered over the file: the
            # next runs' inserts took their pages from it, at random places (one such run gave
            # creates a p99 of 620 ms). VACUUM writes the database again, packed.
            started = time.monotonic()
            raw = engine.raw_connection()  # autocommit: VACUUM runs outside a transaction
            try:
                raw.cursor().execute("VACUUM")
            finally:
                raw.close()
            print(f"  VACUUM in {time.monotonic() - started:.0f} s")
    finally:
        engine.dispose()


def prepare_audit_database(database_url: str, audit_setting: str) -> None:
    """Make the audit trail's database ready for the server, which runs with --no-migrate.

    The server's default sibling file (SQLite: ``bench-<careplans>-audit.db``) is made afresh,
    so that every run starts with an empty trail; a database set by hand is only migrated.
    """
    from sqlalchemy import make_url

    from careplan_fhir.settings import audit_database_for, sibling_audit_url
    from careplan_fhir.storage.db import display_url
    from careplan_fhir.storage.migrate import upgrade

    audit_url = audit_database_for(database_url, audit_setting)
    if audit_url == database_url:
        print("audit trail in the main database")
        return
    if audit_url == sibling_audit_url(database_url):
        audit_file = Path(str(make_url(audit_url).database))
        for stale in audit_file.parent.glob(f"{audit_file.name}*"):
            stale.unlink()
        upgrade(audit_url)
        shown = audit_file.relative_to(ROOT) if audit_file.is_relative_to(ROOT) else audit_file
        print(f"audit trail in {shown} (new)")
        return
    upgrade(audit_url)
    print(f"audit trail in {display_url(audit_url)} (CAREPLAN_AUDIT_DATABASE_URL, kept)")


def system_token(key_file: Path, audience: str) -> str:
    """A ``system/*.cruds`` token from the server's own key, as its token endpoint issues."""
    from datetime import timedelta

    from careplan_fhir.auth.keys import load_or_create_signing_key, mint_access_token
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.settings import Settings

    return mint_access_token(
        load_or_create_signing_key(key_file),
        issuer=Settings().auth_issuer,
        audience=audience,
        scope="system/*.cruds",
        subject="bench",
        client_id="bench",
        lifetime=timedelta(hours=4),
        now=utc_now(),
    )


def fetch(url: str, *, accept: str = "application/fhir+json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept, **AUTHORIZATION})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


# -- wrk -------------------------------------------------------------------------------------

LUA_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(7919 * (tid or 1))
  codes = {}
end
%(response)s
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local c = t:get("codes")
    if c then
      for k, v in pairs(c) do all[k] = (all[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%%d":%%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,'
    .. '"write":%%d,"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d,'
    .. '"max":%%d,"mean":%%f,"codes":{%%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    table.concat(parts, ",")))
end
"""

LUA_COUNT_CODES = r"""
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end
"""


def lua_list(name: str, values: list[str]) -> str:
    return f"local {name} = {{\n" + ",\n".join(json.dumps(v) for v in values) + "\n}\n"


def lua_headers(extra: dict[str, str]) -> str:
    headers = {**AUTHORIZATION, **extra}
    pairs = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    return f"local headers = {{{pairs}}}\n"


def get_script(paths: list[str], count_codes: bool) -> str:
    body = lua_list("paths", paths)
    body += "local n = #paths\n" + lua_headers({})
    body += (
        'request = function()\n  return wrk.format("GET", paths[math.random(n)], headers)\nend\n'
    )
    return body + LUA_COMMON % {"response": LUA_COUNT_CODES if count_codes else ""}


def create_script(pairs: list[tuple[str, str]]) -> str:
    body = lua_list("patients", [p for p, _ in pairs])
    body += lua_list("careplans", [c for _, c in pairs])
    body += lua_headers({"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
    body += r"""
local n = #patients
request = function()
  local i = math.random(n)
  local p = patients[i]
  local body = '{"resourceType":"Task","status":"requested","intent":"order",'
    .. '"priority":"routine","code":{"text":"Record pain score"},'
    .. '"description":"Record today\'s pain score (0-10) in the portal.",'
    .. '"basedOn":[{"reference":"CarePlan/' .. careplans[i] .. '"}],'
    .. '"for":{"reference":"Patient/' .. p .. '"},'
    .. '"owner":{"reference":"Patient/' .. p .. '"},'
    .. '"authoredOn":"2024-06-01T09:30:00Z"}'
  return wrk.format("POST", "/fhir/Task", headers, body)
end
"""
    return body + LUA_COMMON % {"response": ""}


@dataclass
class Scenario:
    key: str
    label: str
    server: str  # "bare" or "fhir"
    connections: int
    script: str
    count_codes: bool = False


def run_wrk(
    base: str, script: str, connections: int, duration: int, workdir: Path, name: str
) -> dict[str, Any]:
    path = workdir / f"{name}.lua"
    path.write_text(script)
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "2s",
        "--latency",
        "-s",
        str(path),
        base,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    for line in completed.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            figures: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            seconds = figures["duration_us"] / 1e6
            figures["rps"] = figures["requests"] / seconds if seconds else 0.0
            figures["p50_ms"] = figures["p50"] / 1000
            figures["p99_ms"] = figures["p99"] / 1000
            figures["connections"] = connections
            figures["threads"] = threads
            figures["duration_s"] = duration
            return figures
    raise RuntimeError(f"wrk gave no figures:\n{completed.stdout}\n{completed.stderr}")


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def evaluate(backend: str, figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the printed table, each with its target and whether it was met."""
    bare = figures["bare"]["rps"] if "bare" in figures else 0.0
    rows = []
    read_target = READ_RATIO_TARGET[backend]
    labels = {
        "bare": "bare FastAPI endpoint",
        "read": "read CarePlan/{id}",
        "search": "CarePlan?patient&category",
        "search_c1": "CarePlan?patient&category",
        "task_search": "Task?patient&status",
        "create": "POST Task (create)",
        "read_c64": "read CarePlan/{id}",
    }
    for key, label in labels.items():
        if key not in figures:  # --only
            continue
        f = figures[key]
        target, ok = "", None
        if key == "read" and bare:
            target = f">= {read_target:.0%} of bare"
            ok = f["rps"] >= read_target * bare
        elif key == "search_c1":
            target = f"p50 <= {SEARCH_P50_TARGET_MS} ms, p99 <= {SEARCH_P99_TARGET_MS} ms"
            ok = f["p50_ms"] <= SEARCH_P50_TARGET_MS and f["p99_ms"] <= SEARCH_P99_TARGET_MS
        elif key == "create":
            target = f">= {CREATE_TARGET_RPS:.0f}/s"
            ok = f["rps"] >= CREATE_TARGET_RPS
        elif key == "read_c64":
            ratio = f["p99"] / f["p50"] if f["p50"] else math.inf
            f["p99_over_p50"] = ratio
            target = f"p99 <= {TAIL_RATIO_TARGET:.0f}x p50 ({ratio:.1f}x), 0 timeouts"
            ok = ratio <= TAIL_RATIO_TARGET and f["timeout"] == 0
        rows.append(
            {
                "key": key,
                "label": label,
                "connections": f["connections"],
                "rps": f["rps"],
                "p50_ms": f["p50_ms"],
                "p99_ms": f["p99_ms"],
                "vs_bare": f["rps"] / bare if bare else 0.0,
                "target": target,
                "met": ok,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], figures: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'scenario':<28}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}  target"
    )
    print(header)
    print("-" * (len(header) + 40))
    for row in rows:
        mark = "" if row["met"] is None else f"  [{verdict(row['met'])}]"
        print(
            f"{row['label']:<28}{row['connections']:>6}{row['rps']:>10.0f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['vs_bare']:>9.2f}  {row['target']}{mark}"
        )
    print()
    for key, f in figures.items():
        codes = f.get("codes") or {}
        shed = int(codes.get("503", 0))
        errors = f["connect"] + f["read"] + f["write"]
        print(
            f"  {key:<12} requests={f['requests']:<8} timeouts={f['timeout']:<4}"
            f" non-2xx/3xx={f['status']:<6} of which 503 (shed)={shed if codes else 'n/a':<6}"
            f" socket errors={errors:<4} p90={f['p90'] / 1000:.2f} ms"
            f" p99.9={f['p999'] / 1000:.2f} ms max={f['max'] / 1000:.2f} ms"
        )


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--careplans", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 CarePlans, 5 s runs")
    parser.add_argument("--per-patient", type=int, default=5, help="CarePlans per patient")
    parser.add_argument("--batch", type=int, default=1000, help="resources per commit")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--samples", type=int, default=10_000, help="distinct ids in scripts")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the FHIR server, e.g. CAREPLAN_AUDIT_ENABLED=false (repeatable)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the database of an earlier run (same size)"
    )
    parser.add_argument(
        "--load-only", action="store_true", help="load the database, then stop (see --reuse)"
    )
    parser.add_argument(
        "--clear-audit",
        action="store_true",
        help="with --reuse: empty the audit trail that earlier runs left in the main database"
        " (--audit-in-main runs, older checkouts; each run adds about 150,000 AuditEvents, and a"
        " longer trail makes each insert dearer). The trail's own file is new for every run",
    )
    parser.add_argument(
        "--audit-in-main",
        action="store_true",
        help="SQLite: keep the audit trail in the main database (CAREPLAN_AUDIT_DATABASE_URL=main),"
        " the old layout; by default it is in bench/results/bench-<careplans>-audit.db, the"
        " server's default sibling file, made afresh for each run",
    )
    # The default now: accepted so that older command lines still run.
    parser.add_argument("--own-audit-database", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY",
        help="run only this scenario (repeatable; bare, read, search, search_c1, task_search,"
        " read_c64, create)",
    )
    parser.add_argument(
        "--hold",
        type=int,
        default=0,
        help="keep the servers up this many seconds after the runs (for profiling)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.careplans == parser.get_default("careplans"):
            args.careplans = 5_000
        if args.duration == parser.get_default("duration"):
            args.duration = 5
        args.warmup = min(args.warmup, 1)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    RESULTS.mkdir(parents=True, exist_ok=True)

    print(f"== careplan-fhir benchmark: {args.backend}, {args.careplans} CarePlans ==")
    if args.reuse and manifest_path(args.backend, args.careplans).exists():
        manifest = read_manifest(args.backend, args.careplans)
        print(f"reusing {manifest.url} (loaded in {manifest.load_seconds:.1f} s)")
        # A database loaded by an older checkout gets this one's schema (the server does not
        # migrate: it runs with --no-migrate).
        from careplan_fhir.storage.migrate import upgrade

        upgrade(manifest.url)
        report_audit_trail(manifest.url, clear=args.clear_audit)
    else:
        print(f"loading ({args.per_patient} CarePlans per patient, commit every {args.batch})")
        manifest = load(args.backend, args.careplans, args.per_patient, args.batch, args.samples)
        print(
            f"loaded {manifest.resources} resources ({manifest.patients} patients,"
            f" {manifest.careplans} CarePlans) in {manifest.load_seconds:.1f} s"
            f" = {manifest.resources / manifest.load_seconds:.0f} resources/s"
        )
        save_manifest(manifest)
    if args.load_only:
        return
    started_at = datetime.now(UTC)
    fhir_port, bare_port = free_port(), free_port()
    fhir_command = [
        str(BIN / "careplan-fhir"),
        "serve",
        "--host",
        HOST,
        "--port",
        str(fhir_port),
        "--database-url",
        manifest.url,
        "--no-migrate",
        "--log-level",
        "warning",
    ]
    figures: dict[str, dict[str, Any]] = {}
    keys = Path(tempfile.mkdtemp(prefix="careplan-bench-keys-"))
    key_file = keys / "signing-key.json"
    token = system_token(key_file, f"http://{HOST}:{fhir_port}/fhir")
    AUTHORIZATION["Authorization"] = f"Bearer {token}"
    fhir_env = {"CAREPLAN_AUTH_SIGNING_KEY_FILE": str(key_file)}
    fhir_env.update(item.split("=", 1) for item in args.server_env)  # type: ignore[misc]
    if args.audit_in_main and args.own_audit_database:
        sys.exit("--audit-in-main and --own-audit-database contradict each other")
    if args.audit_in_main:
        fhir_env["CAREPLAN_AUDIT_DATABASE_URL"] = "main"
    prepare_audit_database(
        manifest.url,
        fhir_env.get(
            "CAREPLAN_AUDIT_DATABASE_URL", os.environ.get("CAREPLAN_AUDIT_DATABASE_URL", "")
        ),
    )
    with (
        tempfile.TemporaryDirectory(prefix="careplan-bench-") as tmp,
        serve("fhir-server", fhir_command, fhir_env, fhir_port) as fhir,
    ):
        workdir = Path(tmp)
        # The bare app serves the bytes of a real read, and pairs for creates come from reads.
        sample_id = manifest.careplan_ids[0]
        status, careplan_bytes = fetch(f"{fhir.base}/fhir/CarePlan/{sample_id}")
        body_file = workdir / "careplan.json"
        body_file.write_bytes(careplan_bytes)
        if not manifest.pairs:
            manifest.pairs = pairs_from_server(fhir.base, manifest.careplan_ids[:2000])
            save_manifest(manifest)
        sample_patient = manifest.patient_ids[0]
        _, search_bytes = fetch(
            f"{fhir.base}/fhir/CarePlan?patient=Patient/{sample_patient}&category=assess-plan"
        )
        _, task_bytes = fetch(f"{fhir.base}/fhir/Task?patient={sample_patient}&status=requested")
        print(
            f"sample: read {len(careplan_bytes)} bytes; CarePlan search total"
            f" {json.loads(search_bytes).get('total')} ({len(search_bytes)} bytes); Task search"
            f" total {json.loads(task_bytes).get('total')} ({len(task_bytes)} bytes)"
        )
        bare_command = [
            str(BIN / "uvicorn"),
            "--app-dir",
            str(BENCH),
            "--factory",
            "bare_app:create_app",
            "--host",
            HOST,
            "--port",
            str(bare_port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        read_paths = [f"/fhir/CarePlan/{i}" for i in manifest.careplan_ids]
        search_paths = [
            f"/fhir/CarePlan?patient=Patient/{p}&category=assess-plan" for p in manifest.patient_ids
        ]
        task_paths = [f"/fhir/Task?patient={p}&status=requested" for p in manifest.patient_ids]
        scenarios = [
            Scenario("bare", "bare", "bare", 8, get_script(read_paths, False)),
            Scenario("read", "read", "fhir", 8, get_script(read_paths, False)),
            Scenario("search", "search", "fhir", 8, get_script(search_paths, False)),
            Scenario("search_c1", "search", "fhir", 1, get_script(search_paths, False)),
            Scenario("task_search", "task", "fhir", 8, get_script(task_paths, False)),
            Scenario("read_c64", "read", "fhir", 64, get_script(read_paths, True)),
            # Last: creates add Tasks, which the searches above should not see.
            Scenario("create", "create", "fhir", 8, create_script(manifest.pairs)),
        ]
        if args.only:
            unknown = set(args.only) - {scenario.key for scenario in scenarios}
            if unknown:
                sys.exit(f"unknown scenario: {', '.join(sorted(unknown))}")
            scenarios = [scenario for scenario in scenarios if scenario.key in args.only]
        bare_env = {"BENCH_BARE_BODY": str(body_file)}
        with serve("bare-app", bare_command, bare_env, bare_port) as bare:
            bases = {"bare": bare.base, "fhir": fhir.base}
            for scenario in scenarios:
                base = bases[scenario.server]
                if args.warmup:
                    run_wrk(
                        base,
                        scenario.script,
                        scenario.connections,
                        args.warmup,
                        workdir,
                        scenario.key + "-warmup",
                    )
                result = run_wrk(
                    base,
                    scenario.script,
                    scenario.connections,
                    args.duration,
                    workdir,
                    scenario.key,
                )
                figures[scenario.key] = result
                print(
                    f"  {scenario.key:<12} c={scenario.connections:<3}"
                    f" {result['rps']:8.0f} req/s  p50 {result['p50_ms']:.2f} ms"
                    f"  p99 {result['p99_ms']:.2f} ms"
                )
            if args.hold:
                print(f"holding servers for {args.hold} s: fhir pid {fhir.process.pid}")
                time.sleep(args.hold)

    rows = evaluate(args.backend, figures)
    print()
    print(
        f"== {args.backend}: {manifest.careplans} CarePlans, {manifest.resources} resources,"
        f" load {manifest.load_seconds:.1f} s; wrk {args.duration} s per run, 2 threads"
        f" (1 for c=1), {os.cpu_count()} cores shared by wrk and the server =="
    )
    print_table(rows, figures)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{args.backend}-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "backend": args.backend,
                "started_at": started_at.isoformat(),
                "git_commit": git_commit(),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "python": sys.version,
                "data": {
                    "careplans": manifest.careplans,
                    "patients": manifest.patients,
                    "resources": manifest.resources,
                    "load_seconds": manifest.load_seconds,
                    "database": manifest.url,
                },
                "wrk": {"duration_s": args.duration, "warmup_s": args.warmup, "timeout_s": 2},
                "rows": rows,
                "figures": figures,
            },
            indent=2,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT)}")


def pairs_from_server(base: str, careplan_ids: list[str]) -> list[tuple[str, str]]:
    """(patient, CarePlan) pairs read back from stored CarePlans."""
    pairs = []
    for careplan_id in careplan_ids[:500]:
        _, body = fetch(f"{base}/fhir/CarePlan/{careplan_id}")
        reference = json.loads(body)["subject"]["reference"]
        pairs.append((reference.split("/", 1)[1], careplan_id))
    return pairs


def git_commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip()


if __name__ == "__main__":
    main()
