"""Setting up the portal over HTTP: an attached plan, an invitation, a patient's browser."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings
from tests.conftest import TickingClock
from tests.factories import encounter, patient, practitioner
from tests.plan_setup import LEAFLET, Setup, attach, attach_body, create, import_template, search

#: The clock of the portal suites: the morning of the discharge day (the encounter of
#: tests/factories.py ends 2026-03-01T10:00Z, so the plan's first tasks are due "today").
PORTAL_START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@contextmanager
def portal_app(settings: Settings, system_headers: dict[str, str]) -> Iterator[TestClient]:
    """The app with automatic Provenance on, as a system client (its ``app`` is shared)."""
    ids = (f"id{n}" for n in itertools.count(1))
    app = create_app(
        settings.model_copy(update={"auto_provenance": True}),
        now=TickingClock(PORTAL_START),
        new_id=lambda: next(ids),
    )
    with TestClient(app, headers=system_headers) as client:
        yield client


@dataclass
class AttachedPlan:
    setup: Setup
    plan: dict[str, Any]

    @property
    def patient_id(self) -> str:
        return self.setup.patient_id

    @property
    def plan_id(self) -> str:
        return str(self.plan["id"])

    def tasks(self, client: TestClient) -> list[dict[str, Any]]:
        return search(client, f"Task?based-on=CarePlan/{self.plan_id}")


def attached_plan(client: TestClient, **encounter_overrides: Any) -> AttachedPlan:
    """The vertebroplasty leaflet attached to a new patient's discharge (fever 38.0 °C)."""
    found = search(client, "PlanDefinition?name:exact=GoingHomeAfterVertebroplasty&status=active")
    template = found[0] if found else import_template(client, LEAFLET.read_text())
    patient_id = create(client, patient())
    setup = Setup(
        template["id"],
        f"{template['url']}|{template['version']}",
        patient_id,
        create(client, encounter(patient_id, **encounter_overrides)),
        create(client, practitioner()),
    )
    response = attach(client, setup.encounter_id, attach_body(setup))
    assert response.status_code == 201, response.text
    plan = response.json()["entry"][0]["resource"]
    assert plan["resourceType"] == "CarePlan"
    return AttachedPlan(setup, plan)


def invite(client: TestClient, patient_id: str, body: dict[str, Any] | None = None) -> str:
    """A portal invitation link for the patient (path and query, to open with a TestClient)."""
    response = client.post(f"/fhir/Patient/{patient_id}/$portal-invitation", json=body)
    assert response.status_code == 200, response.text
    url = parameter(response.json(), "url")["valueUrl"]
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def parameter(parameters: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [p for p in parameters["parameter"] if p["name"] == name]
    return found  # type: ignore[no-any-return]


def browser(app: FastAPI) -> TestClient:
    """A fresh browser: no token, its own cookie jar."""
    return TestClient(app, follow_redirects=False)


def signed_in(app: FastAPI, link: str) -> TestClient:
    """A browser that opened ``link``."""
    patient_browser = browser(app)
    opened = patient_browser.get(link)
    assert opened.status_code == 200, opened.text
    return patient_browser


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)
