"""Portal pages and actions are access decisions too: each leaves an AuditEvent (type Patient
Record, DICOM 110110) naming the patient's session as the agent and the patient as an entity,
and never the invitation token."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings
from tests.conftest import TickingClock
from tests.portal_setup import PORTAL_START, attached_plan, csrf_of, invite, signed_in


@pytest.fixture
def audited(settings: Settings, system_headers: dict[str, str]) -> Iterator[TestClient]:
    ids = (f"id{n}" for n in itertools.count(1))
    app = create_app(
        settings.model_copy(update={"auto_provenance": True, "audit_enabled": True}),
        now=TickingClock(PORTAL_START),
        new_id=lambda: next(ids),
    )
    with TestClient(app, headers=system_headers) as client:
        yield client


def _portal_events(client: TestClient) -> list[dict[str, Any]]:
    client.app.state.audit_sink.flush()  # type: ignore[attr-defined]
    bundle = client.get("/fhir/AuditEvent", params={"type": "110110", "_count": "100"}).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_portal_pages_and_actions_are_audited(audited: TestClient) -> None:
    plan = attached_plan(audited)
    link = invite(audited, plan.patient_id)
    browser = signed_in(audited.app, link)
    page = browser.get("/portal/today")
    assert page.status_code == 200
    task = next(t for t in plan.tasks(audited) if t["status"] == "requested")
    ticked = browser.post(
        f"/portal/tasks/{task['id']}/done",
        data={"csrf": csrf_of(page.text)},
    )
    assert ticked.status_code == 303
    assert browser.get("/portal/static/portal.css").status_code == 200

    events = _portal_events(audited)
    by_page = {e["entity"][0]["name"]: e for e in events}
    assert "/portal/static/portal.css" not in by_page
    today = by_page["/portal/today"]
    assert (today["type"]["code"], today["action"], today["outcome"]) == ("110110", "R", "0")
    patient = f"Patient/{plan.patient_id}"
    assert {"reference": patient} in [e.get("what") for e in today["entity"]]
    assert today["agent"][0]["requestor"] is True
    done = by_page[f"/portal/tasks/{task['id']}/done"]
    assert done["action"] == "U"
    assert {"reference": f"Task/{task['id']}"} in [e.get("what") for e in done["entity"]]
    token = link.split("token=", 1)[1]
    assert "/portal/invitation" in by_page
    assert token not in json.dumps(events)
    # The patient's own session can never read the audit trail.
    assert browser.get("/fhir/AuditEvent").status_code == 401
