"""A stored plan's lifecycle over HTTP: Task roll-up, revoke, revise with a diff; the CLI."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from careplan_fhir.cli import app as cli_app
from careplan_fhir.settings import Settings
from careplan_fhir.workflows import plan_lifecycle as lifecycle
from tests.factories import encounter
from tests.plan_setup import (
    LEAFLET,
    attach,
    attach_body,
    create,
    import_template,
    search,
    set_up,
)

OPEN = sorted(lifecycle.OPEN_TASK_STATUSES)


def attached(client: TestClient) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    setup = set_up(client)
    response = attach(client, setup.encounter_id, attach_body(setup))
    assert response.status_code == 201, response.text
    plan = response.json()["entry"][0]["resource"]
    tasks = search(client, f"Task?based-on=CarePlan/{plan['id']}")
    return setup, plan, tasks


def activity_for(plan: dict[str, Any], task_id: str) -> dict[str, Any]:
    return next(
        a for a in plan["activity"] if a.get("reference", {}).get("reference") == f"Task/{task_id}"
    )


def set_status(client: TestClient, task: dict[str, Any], status: str) -> dict[str, Any]:
    task = client.get(f"/fhir/Task/{task['id']}").json()
    task["status"] = status
    response = client.put(f"/fhir/Task/{task['id']}", json=task)
    assert response.status_code == 200, response.text
    return task


def test_task_status_rolls_up_to_the_plan_activity(client: TestClient) -> None:
    _, plan, tasks = attached(client)
    first, second = tasks[0], tasks[1]
    set_status(client, first, "in-progress")
    current = client.get(f"/fhir/CarePlan/{plan['id']}").json()
    assert current["meta"]["versionId"] == "2"
    assert lifecycle.activity_status(activity_for(current, first["id"])) == "in-progress"
    assert activity_for(current, first["id"])["progress"][-1]["text"].endswith("in-progress")

    set_status(client, first, "completed")
    patch = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    response = client.patch(
        f"/fhir/Task/{second['id']}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    current = client.get(f"/fhir/CarePlan/{plan['id']}").json()
    assert current["meta"]["versionId"] == "4"
    assert lifecycle.activity_status(activity_for(current, first["id"])) == "completed"
    assert lifecycle.activity_status(activity_for(current, second["id"])) == "cancelled"

    # The same status again adds no CarePlan version.
    set_status(client, first, "completed")
    assert client.get(f"/fhir/CarePlan/{plan['id']}").json()["meta"]["versionId"] == "4"


def test_plan_stays_active_when_every_task_is_done_until_the_clinician_completes_it(
    client: TestClient,
) -> None:
    _, plan, tasks = attached(client)
    for task in tasks:
        set_status(client, task, "completed")
    current = client.get(f"/fhir/CarePlan/{plan['id']}").json()
    assert current["status"] == "active"
    assert lifecycle.ready_to_complete(current)
    current["status"] = "completed"
    assert client.put(f"/fhir/CarePlan/{plan['id']}", json=current).status_code == 200


def test_revoke_cancels_open_tasks_and_keeps_finished_ones(client: TestClient) -> None:
    _, plan, tasks = attached(client)
    set_status(client, tasks[0], "completed")
    response = client.post(
        f"/fhir/CarePlan/{plan['id']}/$revoke",
        json={"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "x"}]},
    )
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["status"] == "revoked"
    assert revoked["note"][-1]["text"] == "x"
    statuses = {
        t["id"]: t["status"] for t in search(client, f"Task?based-on=CarePlan/{plan['id']}")
    }
    assert statuses.pop(tasks[0]["id"]) == "completed"
    assert set(statuses.values()) == {"cancelled"}
    # Again: nothing changes.
    again = client.post(f"/fhir/CarePlan/{plan['id']}/$revoke")
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == revoked["meta"]["versionId"]


def test_put_of_a_revoked_status_cancels_open_tasks(client: TestClient) -> None:
    _, plan, tasks = attached(client)
    set_status(client, tasks[0], "in-progress")
    current = client.get(f"/fhir/CarePlan/{plan['id']}").json()
    current["status"] = "revoked"
    assert client.put(f"/fhir/CarePlan/{plan['id']}", json=current).status_code == 200
    open_tasks = search(client, f"Task?based-on=CarePlan/{plan['id']}&status={','.join(OPEN)}")
    assert open_tasks == []


def test_completed_plan_cannot_be_revoked(client: TestClient) -> None:
    _, plan, _ = attached(client)
    current = client.get(f"/fhir/CarePlan/{plan['id']}").json()
    current["status"] = "completed"
    client.put(f"/fhir/CarePlan/{plan['id']}", json=current)
    response = client.post(f"/fhir/CarePlan/{plan['id']}/$revoke")
    assert response.status_code == 422
    assert response.json()["resourceType"] == "OperationOutcome"


def revised_leaflet() -> str:
    text = LEAFLET.read_text()
    # inst-17 changed, supply-4 removed, inst-20 added (ids are numbered in reading order).
    text = text.replace(
        "Look at the site every day for redness, swelling or drainage.",
        "Look at the site twice a day for redness, swelling or drainage.",
    )
    text = text.replace("  • A reacher or grabber, so you can pick things up without bending\n", "")
    return text.replace(
        "    bones stronger.\n",
        "    bones stronger.\n  • Wear your back brace whenever you are out of bed.\n",
    )


def test_a_newer_template_version_revises_the_plan(client: TestClient) -> None:
    setup, old_plan, old_tasks = attached(client)
    by_action = {lifecycle.action_id_of(t): t for t in old_tasks}
    done = set_status(client, by_action["inst-2"], "completed")
    opened = by_action["inst-3"]  # unchanged, open: carried over
    watched = by_action["inst-17"]  # changed, open: cancelled and replaced
    grabber = by_action["supply-4"]  # removed, open: cancelled

    newer = import_template(client, revised_leaflet(), version="0.2.0")
    canonical = f"{newer['url']}|0.2.0"
    response = attach(client, setup.encounter_id, attach_body(setup, canonical=canonical))
    assert response.status_code == 201, response.text
    entries = [e["resource"] for e in response.json()["entry"]]
    plan = entries[0]
    assert plan["replaces"] == [{"reference": f"CarePlan/{old_plan['id']}"}]
    assert plan["instantiatesCanonical"] == [canonical]

    old = client.get(f"/fhir/CarePlan/{old_plan['id']}").json()
    assert old["status"] == "revoked"
    tasks = {t["id"]: t for t in search(client, f"Task?based-on=CarePlan/{plan['id']}")}
    assert done["id"] in tasks and tasks[done["id"]]["status"] == "completed"
    assert lifecycle.activity_status(activity_for(plan, done["id"])) == "completed"
    assert opened["id"] in tasks and tasks[opened["id"]]["status"] == "requested"
    assert watched["id"] not in tasks
    assert client.get(f"/fhir/Task/{watched['id']}").json()["status"] == "cancelled"
    assert client.get(f"/fhir/Task/{grabber['id']}").json()["status"] == "cancelled"
    assert {lifecycle.action_id_of(t) for t in tasks.values()} >= {"inst-17", "inst-20"}
    assert "supply-4" not in {lifecycle.action_id_of(t) for t in tasks.values()}
    # Every activity of the new plan points at a Task that is based on it.
    refs = {a["reference"]["reference"] for a in plan["activity"] if "reference" in a}
    assert refs == {f"Task/{i}" for i in tasks}

    provenance = entries[-1]
    assert provenance["resourceType"] == "Provenance"
    (revision,) = [e for e in provenance["extension"] if e["url"] == lifecycle.PLAN_REVISION_URL]
    parts: dict[str, list[Any]] = {}
    for part in revision["extension"]:
        parts.setdefault(part["url"], []).append(
            part.get("valueString") or part.get("valueReference")
        )
    assert parts["replaces"] == [{"reference": f"CarePlan/{old_plan['id']}"}]
    assert parts["added"] == ["inst-20"]
    assert parts["removed"] == ["supply-4"]
    assert parts["changed"] == ["inst-17"]
    assert "1 added, 1 removed, 1 changed" in provenance["activity"]["text"]
    assert any(e["role"] == "revision" for e in provenance["entity"])
    # Retrying the revision returns it; the first version's call returns the revoked plan.
    assert (
        attach(client, setup.encounter_id, attach_body(setup, canonical=canonical)).status_code
        == 200
    )
    first = attach(client, setup.encounter_id, attach_body(setup))
    assert first.status_code == 200
    assert first.json()["entry"][0]["resource"]["id"] == old_plan["id"]


def test_cli_attach_stores_the_plan_once(client: TestClient, settings: Settings) -> None:
    setup = set_up(client)
    runner = CliRunner()
    arguments = [
        "attach",
        setup.encounter_id,
        "--template",
        setup.canonical,
        "--practitioner",
        setup.practitioner_id,
        "--param",
        "fever_threshold=38.0Cel",
        "--database-url",
        settings.database_url,
    ]
    result = runner.invoke(cli_app, arguments)
    assert result.exit_code == 0, result.output
    assert "stored" in result.output
    again = runner.invoke(cli_app, arguments)
    assert again.exit_code == 0, again.output
    assert "already stored" in again.output
    assert len(search(client, f"CarePlan?encounter=Encounter/{setup.encounter_id}")) == 1
    other = create(client, encounter(setup.patient_id))
    missing = runner.invoke(cli_app, ["attach", other, *arguments[2:6], *arguments[-2:]])
    assert missing.exit_code == 1
    assert "fever_threshold" in missing.output
