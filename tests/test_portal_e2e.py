"""The patient portal end to end: a real uvicorn, real headless Chromium, a phone-sized window.

The server runs in a thread of the test (SQLite migrated by Alembic, a free port on 127.0.0.1,
the wall clock); Debian's ``/usr/bin/chromium`` is driven by Playwright's sync API through
``executable_path`` (no browser is downloaded) with a fresh profile. The patient opens her
invitation, sees today's tasks, ticks one off and finds it ticked after a reload, checks in with
a normal temperature (no alert), then with one above the clinician's threshold (the advice is
shown; one alert Communication and one Flag are found through the FHIR API with a clinician
token), and is refused another patient's plan. A screenshot of every page at 320 px is saved
under ``test-artifacts/portal/``.

Skipped, with the reason shown, only where ``/usr/bin/chromium`` is missing (``.ci/run``
installs it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from careplan_fhir.app import create_app
from careplan_fhir.auth.keys import load_or_create_signing_key
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant
from careplan_fhir.settings import Settings
from careplan_fhir.storage.migrate import upgrade
from tests.factories import encounter, patient, practitioner
from tests.plan_setup import LEAFLET, fever
from tests.tokens import mint_token

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="end-to-end portal tests need Debian's chromium (/usr/bin/chromium)",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "portal"
PHONE = {"width": 320, "height": 640}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    root: str
    system: httpx.Client
    clinician: httpx.Client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("portal-e2e")
    database_url = f"sqlite:///{folder / 'portal.db'}"
    upgrade(database_url)
    key_file = folder / "signing-key.json"
    load_or_create_signing_key(key_file)
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=database_url,
        base_url=f"{root}/fhir",
        auth_signing_key_file=str(key_file),
        audit_enabled=False,
    )
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", ws="none"
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.05)

    def client(scope: str, **claims: Any) -> httpx.Client:
        token = mint_token(key_file, scope, audience=f"{root}/fhir", **claims)
        return httpx.Client(base_url=root, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    system = client("system/*.cruds")
    clinician = client("user/*.cruds", fhir_user="Practitioner/e2e-clinician")
    try:
        yield Server(root, system, clinician)
    finally:
        system.close()
        clinician.close()
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


def created(client: httpx.Client, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def matches(client: httpx.Client, query: str) -> list[dict[str, Any]]:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.text
    return [
        e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"
    ]


@dataclass
class Patient:
    id: str
    plan_id: str
    tasks: list[dict[str, Any]]


def patient_with_plan(server: Server, template: dict[str, Any], family: str) -> Patient:
    """A patient discharged an hour ago with the template attached (fever 38.0 °C)."""
    system = server.system
    patient_id = created(system, patient(name=[{"family": family, "given": ["Harriet"]}]))
    discharged = datetime.now(UTC) - timedelta(hours=1)
    period = {
        "start": format_instant(discharged - timedelta(days=2)),
        "end": format_instant(discharged),
    }
    encounter_id = created(system, encounter(patient_id, period=period))
    practitioner_id = created(
        system, practitioner(telecom=[{"system": "phone", "value": "555-0100", "use": "work"}])
    )
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "planDefinition",
                "valueCanonical": f"{template['url']}|{template['version']}",
            },
            {
                "name": "practitioner",
                "valueReference": {"reference": f"Practitioner/{practitioner_id}"},
            },
            {
                "name": "parameters",
                "resource": {"resourceType": "Parameters", "parameter": [fever()]},
            },
        ],
    }
    attached = system.post(
        f"/fhir/Encounter/{encounter_id}/$attach-care-plan",
        content=jsonio.dumps(body),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert attached.status_code == 201, attached.text
    plan_id = attached.json()["entry"][0]["resource"]["id"]
    return Patient(
        patient_id, plan_id, matches(system, f"Task?based-on=CarePlan/{plan_id}&_count=100")
    )


@pytest.fixture(scope="module")
def patients(server: Server) -> tuple[Patient, Patient]:
    system = server.system
    imported = system.post(
        "/fhir/PlanDefinition/$import?version=0.1.0",
        content=LEAFLET.read_text(),
        headers={"Content-Type": "text/plain"},
    )
    assert imported.status_code == 201, imported.text
    template = imported.json()["entry"][0]["resource"]
    activated = system.put(
        f"/fhir/PlanDefinition/{template['id']}", json={**template, "status": "active"}
    )
    assert activated.status_code == 200, activated.text
    return patient_with_plan(server, template, "Example"), patient_with_plan(
        server, template, "Other"
    )


def invitation(server: Server, patient_id: str) -> str:
    response = server.clinician.post(f"/fhir/Patient/{patient_id}/$portal-invitation")
    assert response.status_code == 200, response.text
    (url,) = [p["valueUrl"] for p in response.json()["parameter"] if p["name"] == "url"]
    return str(url)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=PHONE,
            service_workers="block",
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def snapshot(page: Any, name: str) -> None:
    """A full-page screenshot, and the page fits 320 px (no sideways scrolling)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name} is {width} px wide at a 320 px viewport"


def alerts_of(server: Server, patient_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    communications = matches(
        server.clinician,
        f"Communication?category=alert&status=in-progress&patient=Patient/{patient_id}",
    )
    flags = matches(server.clinician, f"Flag?patient=Patient/{patient_id}&status=active")
    return communications, flags


def test_a_patient_uses_the_portal_in_a_real_browser(
    server: Server, patients: tuple[Patient, Patient], page: Any
) -> None:
    harriet, other = patients
    # The invitation opens a session.
    opened = page.goto(invitation(server, harriet.id))
    assert opened is not None and opened.status == 200
    assert page.get_by_role("heading", name="You are signed in").is_visible()
    snapshot(page, "01-welcome")
    cookie = next(c for c in page.context.cookies() if c["name"] == "careplan_portal")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/portal"

    # Today's tasks, then one ticked off that stays ticked after a reload.
    page.get_by_role("link", name="Open today's tasks").click()
    page.wait_for_url("**/portal/today")
    due = page.locator("#due")
    assert due.get_by_text(
        "Take your pain medicine exactly as your care team prescribed it.", exact=True
    ).is_visible()
    snapshot(page, "02-today")
    medicine = next(t for t in harriet.tasks if "Take your pain medicine" in t["description"])
    page.locator(f"#task-{medicine['id']}").get_by_role("button", name="Mark done").click()
    page.wait_for_load_state()
    page.reload()
    assert page.locator(f"#done #task-{medicine['id']}").is_visible()
    assert page.locator(f"#due #task-{medicine['id']}").count() == 0
    snapshot(page, "03-today-ticked")
    assert server.system.get(f"/fhir/Task/{medicine['id']}").json()["status"] == "completed"

    # The keyboard reaches the skip link first, and every form control has a label.
    page.goto(f"{server.root}/portal/today")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"

    page.get_by_role("link", name="My plan").click()
    page.wait_for_url("**/portal/plan")
    assert page.get_by_text("Don't drive while you are taking opioid pain medicine.").is_visible()
    snapshot(page, "04-my-plan")
    page.get_by_role("link", name="Get help").click()
    page.wait_for_url("**/portal/help")
    assert page.get_by_text("Temperature 38.0 °C / 100.4 °F or higher").is_visible()
    assert page.locator(".emergency").get_by_text("Call 911 now").is_visible()
    assert page.get_by_role("link", name="555-0100").first.is_visible()
    snapshot(page, "05-help")
    page.goto(f"{server.root}/portal/handout")
    snapshot(page, "06-handout")

    # A normal check-in: thanks, and no alert.
    page.get_by_role("link", name="Check-in").click()
    page.wait_for_url("**/portal/check-in")
    unlabelled = page.evaluate(
        """Array.from(document.querySelectorAll('input:not([type=hidden]), textarea, select'))
             .filter(e => !(e.labels && e.labels.length)).length"""
    )
    assert unlabelled == 0
    snapshot(page, "07-check-in")
    page.get_by_label("What is your temperature today?").fill("37.0")
    page.get_by_label("°C").check()
    page.get_by_label("How bad is your pain right now?").fill("3")
    page.get_by_role("button", name="Send my check-in").click()
    page.wait_for_load_state()
    assert page.get_by_text("Thank you for checking in.").is_visible()
    snapshot(page, "08-check-in-thanks")
    assert alerts_of(server, harriet.id) == ([], [])

    # Above the threshold: the advice instead of a thank-you, one alert and one Flag.
    page.get_by_role("link", name="Check-in").click()
    page.get_by_label("What is your temperature today?").fill("38.6")
    page.get_by_label("°C").check()
    page.get_by_label("How bad is your pain right now?").fill("4")
    page.get_by_role("button", name="Send my check-in").click()
    page.wait_for_load_state()
    advice = page.locator("#advice")
    assert advice.get_by_text("Call your care team now.").is_visible()
    assert advice.get_by_text(
        "Fever. Call your care team if your temperature is 38.0 °C"
    ).is_visible()
    assert page.get_by_text("Thank you for checking in.").count() == 0
    snapshot(page, "09-check-in-advice")
    communications, flags = alerts_of(server, harriet.id)
    assert len(communications) == 1 and len(flags) == 1
    assert communications[0]["priority"] == "urgent"

    # Another patient's plan is refused, as if it did not exist.
    refused = page.goto(f"{server.root}/portal/plans/{other.plan_id}")
    assert refused is not None and refused.status == 404
    assert page.get_by_role("heading", name="We could not find that").is_visible()
    assert page.get_by_text("Harriet Other").count() == 0
    snapshot(page, "10-other-patient-refused")


def test_the_care_team_acknowledges_an_alert_in_a_real_browser(
    server: Server, patients: tuple[Patient, Patient], page: Any
) -> None:
    _, other = patients
    checked_in = server.system.post(
        f"/fhir/CarePlan/{other.plan_id}/$check-in",
        json={
            "resourceType": "QuestionnaireResponse",
            "item": [
                {"linkId": "body-temperature", "answer": [{"valueDecimal": 39.1}]},
                {
                    "linkId": "body-temperature-unit",
                    "answer": [
                        {"valueCoding": {"system": "http://unitsofmeasure.org", "code": "Cel"}}
                    ],
                },
            ],
        },
    )
    assert checked_in.status_code == 201, checked_in.text
    (communication,) = alerts_of(server, other.id)[0]
    token = server.clinician.headers["Authorization"].removeprefix("Bearer ")

    page.goto(f"{server.root}/portal/alerts/sign-in")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/portal/alerts")
    card = page.locator(f"#alert-{communication['id']}")
    assert card.get_by_role("heading", name="Harriet Other").is_visible()
    assert card.get_by_text("39.1", exact=True).is_visible()
    snapshot(page, "11-alerts")
    card.get_by_role("button", name="Acknowledge").click()
    page.wait_for_load_state()
    assert page.locator(f"#alert-{communication['id']}").count() == 0
    assert alerts_of(server, other.id) == ([], [])
