"""The example resources under ``examples/``: valid, loadable once, and served by a real server.

The last test starts ``careplan-fhir serve`` as a subprocess (uvicorn, SQLite, examples loaded)
and runs the US Core CarePlan search an EHR sends:
https://hl7.org/fhir/us/core/STU6.1/CapabilityStatement-us-core-server.html (CarePlan:
``patient`` + ``category``, ``_include=CarePlan:goal``, ``_revinclude=Provenance:target``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from careplan_fhir.fhir.models import SERVED_TYPES, validate_resource
from careplan_fhir.storage.db import make_engine
from careplan_fhir.storage.migrate import upgrade
from careplan_fhir.storage.tables import ResourceVersionRow
from careplan_fhir.workflows.load_examples import iter_resources, load_examples
from tests.tokens import mint_token

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: What `make serve` loads: the sample patient's records and the example templates.
LOADED = (EXAMPLES / "fhir", EXAMPLES / "guidance" / "golden")
EXAMPLE_FILES = sorted(path for folder in LOADED for path in folder.rglob("*.json"))

PATIENT_ID = "vtp-patient"
CARE_PLAN_ID = "vtp-careplan"
GOAL_IDS = {"vtp-goal-pain", "vtp-goal-healing", "vtp-goal-activity"}
PROVENANCE_ID = "vtp-provenance"


def _example_resources() -> list[dict[str, Any]]:
    return [resource for path in EXAMPLE_FILES for resource in iter_resources(path)]


RESOURCES = _example_resources()


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        for item in value.values():
            found.extend(_references(item))
        return found
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


def test_examples_exist() -> None:
    assert EXAMPLE_FILES, f"no example files under {EXAMPLES}"
    types = {resource["resourceType"] for resource in RESOURCES}
    assert {"CarePlan", "Goal", "Task", "Communication", "Provenance", "Patient"} <= types


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_file_validates(path: Path) -> None:
    from careplan_fhir.fhir import jsonio

    validate_resource(jsonio.loads(path.read_bytes()))


@pytest.mark.parametrize(
    "resource", RESOURCES, ids=lambda r: f"{r.get('resourceType')}/{r.get('id')}"
)
def test_example_resource_validates(resource: dict[str, Any]) -> None:
    assert resource["resourceType"] in SERVED_TYPES
    assert resource.get("id"), "examples carry fixed ids"
    validate_resource(resource)


def test_example_ids_are_unique_and_references_resolve() -> None:
    keys = [f"{r['resourceType']}/{r['id']}" for r in RESOURCES]
    assert len(keys) == len(set(keys))
    dangling = {ref for r in RESOURCES for ref in _references(r) if ref not in set(keys)}
    assert not dangling, f"references to resources missing from the examples: {dangling}"


def test_example_care_plan_shape() -> None:
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in RESOURCES}
    plan = by_key[f"CarePlan/{CARE_PLAN_ID}"]
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    categories = {(c["system"], c["code"]) for cat in plan["category"] for c in cat["coding"]}
    assert ("http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "assess-plan") in categories
    assert {g["reference"] for g in plan["goal"]} == {f"Goal/{g}" for g in GOAL_IDS}
    details = [a["detail"] for a in plan["activity"] if "detail" in a]
    assert any(d.get("doNotPerform") is True for d in details)
    task_refs = [a["reference"]["reference"] for a in plan["activity"] if "reference" in a]
    assert task_refs and all(ref.startswith("Task/") for ref in task_refs)
    for ref in task_refs:
        task = by_key[ref]
        assert task["for"]["reference"] == task["owner"]["reference"] == f"Patient/{PATIENT_ID}"
        assert [b["reference"] for b in task["basedOn"]] == [f"CarePlan/{CARE_PLAN_ID}"]


def test_loading_twice_stores_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'examples.db'}"
    upgrade(url)
    engine = make_engine(url)
    ids = (f"generated-{n}" for n in range(1000))
    clock = lambda: datetime(2026, 11, 17, 16, 0, tzinfo=UTC)  # noqa: E731
    try:
        stored = skipped = 0
        for folder in LOADED:
            added, present = load_examples(engine, folder, now=clock, new_id=lambda: next(ids))
            stored, skipped = stored + added, skipped + present
        assert (stored, skipped) == (len(RESOURCES), 0)
        again = [
            load_examples(engine, folder, now=clock, new_id=lambda: next(ids)) for folder in LOADED
        ]
        assert (sum(a for a, _ in again), sum(p for _, p in again)) == (0, len(RESOURCES))
        with engine.connect() as connection:
            versions = connection.execute(
                select(func.count()).select_from(ResourceVersionRow)
            ).scalar_one()
        assert versions == len(RESOURCES)
    finally:
        engine.dispose()


# -- a real server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command() -> list[str]:
    script = Path(sys.executable).parent / "careplan-fhir"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from careplan_fhir.cli import main; main()"]


def _wait_for_metadata(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server did not answer /fhir/metadata within 60 s:\n{log.read_text()}")


def test_served_us_core_care_plan_search(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    log = tmp_path / "server.log"
    command = [
        *_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--examples",
        str(LOADED[0]),
        "--examples",
        str(LOADED[1]),
        "--log-level",
        "warning",
    ]
    # The server creates its signing key in its working directory on first start; making it
    # first lets the test sign a system token the server will trust.
    token = mint_token(tmp_path / "careplan-dev-key.json", "system/*.rs", audience=base)
    auth = {"Authorization": f"Bearer {token}"}
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_for_metadata(base, process, log)
            assert httpx.get(f"{base}/CarePlan", timeout=10).status_code == 401
            response = httpx.get(
                f"{base}/CarePlan",
                params={
                    "patient": PATIENT_ID,
                    "category": "assess-plan",
                    "_include": "CarePlan:goal",
                },
                headers=auth,
                timeout=10,
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/fhir+json")
            bundle = response.json()
            assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset")
            assert bundle["total"] == 1
            by_mode: dict[str, set[str]] = {}
            for entry in bundle["entry"]:
                resource = entry["resource"]
                key = f"{resource['resourceType']}/{resource['id']}"
                by_mode.setdefault(entry["search"]["mode"], set()).add(key)
            assert by_mode["match"] == {f"CarePlan/{CARE_PLAN_ID}"}
            assert by_mode["include"] == {f"Goal/{goal}" for goal in GOAL_IDS}

            with_provenance = httpx.get(
                f"{base}/CarePlan",
                params={"patient": f"Patient/{PATIENT_ID}", "_revinclude": "Provenance:target"},
                headers=auth,
                timeout=10,
            ).json()
            included = {
                f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in with_provenance["entry"]
                if e["search"]["mode"] == "include"
            }
            assert included == {f"Provenance/{PROVENANCE_ID}"}

            other_patient = httpx.get(
                f"{base}/CarePlan", params={"patient": "someone-else"}, headers=auth, timeout=10
            ).json()
            assert other_patient["total"] == 0
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def test_the_serving_factory_hides_the_startup_heap_from_the_collector(tmp_path: Path) -> None:
    """``app_from_environment`` (what ``serve`` runs) freezes what startup built (gc.freeze),
    so full collections no longer pause requests by walking the whole heap."""
    code = (
        "import gc, sys\n"
        "from careplan_fhir.app import app_from_environment\n"
        "before = gc.get_freeze_count()\n"
        "app_from_environment()\n"
        "print(before, gc.get_freeze_count(), sys.getswitchinterval())\n"
    )
    env = {**os.environ, "CAREPLAN_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    before, after, interval = result.stdout.split()
    assert int(before) == 0
    assert int(after) > 10_000  # the modules, the FHIR models and the app
    assert float(interval) == 0.001
