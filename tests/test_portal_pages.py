"""The portal's pages over HTTP (docs/portal.md), on SQLite and PostgreSQL.

A patient with an attached vertebroplasty plan (tests/portal_setup.py) opens her invitation and
sees today's tasks, ticks one off (a guarded Task update with its Provenance) and finds it done
after a reload; her plan, warning signs with the clinician's threshold and the handout; never
another patient's data, whatever URL she types. The care team's alerts page lists open alerts
and acknowledges one with updates.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.portal.templating import CONTENT_SECURITY_POLICY
from careplan_fhir.settings import Settings
from tests.factories import task
from tests.plan_setup import attach, attach_body, create, fever, search
from tests.portal_setup import (
    AttachedPlan,
    attached_plan,
    browser,
    csrf_of,
    invite,
    portal_app,
    signed_in,
)
from tests.tokens import bearer, mint_token

ALERT = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
            "code": "alert",
            "display": "Alert",
        }
    ]
}


@pytest.fixture
def system(settings: Settings, system_headers: dict[str, str]) -> Iterator[TestClient]:
    with portal_app(settings, system_headers) as client:
        yield client


def task_with(plan: AttachedPlan, client: TestClient, words: str) -> dict[str, Any]:
    (found,) = [t for t in plan.tasks(client) if words in t.get("description", "")]
    return found


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}".*?</section>', html, re.S)
    return match.group(0) if match else ""


def tick(patient_browser: TestClient, task_id: str, csrf: str | None, **extra: str) -> Any:
    data = {"next": "/portal/today", **extra}
    if csrf is not None:
        data["csrf"] = csrf
    return patient_browser.post(f"/portal/tasks/{task_id}/done", data=data)


def test_today_lists_due_tasks_and_a_tick_stays_after_reload(system: TestClient) -> None:
    plan = attached_plan(system)
    other = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    page = patient_browser.get("/portal/today")
    assert page.status_code == 200
    due = section(page.text, "due")
    assert "Take your pain medicine exactly as your care team prescribed it." in due
    # Tasks that start 24 hours after discharge are "coming up", not due yet.
    assert "Start walking short distances" in section(page.text, "upcoming")
    assert "Start walking short distances" not in due
    # Supplies are the plan page's checklist, warning signs the help page's.
    assert "thermometer" not in page.text
    other_ids = {t["id"] for t in other.tasks(system)}
    assert not any(f'id="task-{i}"' in page.text for i in other_ids)

    medicine = task_with(plan, system, "Take your pain medicine")
    ticked = tick(patient_browser, medicine["id"], csrf_of(page.text))
    assert ticked.status_code == 303
    assert ticked.headers["location"] == f"/portal/today#task-{medicine['id']}"

    stored = system.get(f"/fhir/Task/{medicine['id']}").json()
    assert stored["status"] == "completed"
    assert stored["executionPeriod"]["end"]
    assert stored["meta"]["profile"] == medicine["meta"]["profile"]
    version = f"Task/{medicine['id']}/_history/{stored['meta']['versionId']}"
    (provenance,) = [
        p
        for p in search(system, f"Provenance?target=Task/{medicine['id']}")
        if any(t["reference"].endswith(version) for t in p["target"])
    ]
    assert provenance["agent"][0]["who"] == {"reference": f"Patient/{plan.patient_id}"}
    # The plan's activity follows the Task (rest/hooks.py roll-up).
    current_plan = system.get(f"/fhir/CarePlan/{plan.plan_id}").json()
    assert current_plan["meta"]["versionId"] != plan.plan["meta"]["versionId"]

    reloaded = patient_browser.get("/portal/today")
    assert f'id="task-{medicine["id"]}"' in section(reloaded.text, "done")
    assert f'id="task-{medicine["id"]}"' not in section(reloaded.text, "due")
    # Ticking again (a double tap) changes nothing.
    tick(patient_browser, medicine["id"], csrf_of(reloaded.text))
    assert (
        system.get(f"/fhir/Task/{medicine['id']}").json()["meta"]["versionId"]
        == (stored["meta"]["versionId"])
    )


def test_a_daily_task_is_done_for_today_and_due_again_tomorrow(system: TestClient) -> None:
    plan = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    daily = task_with(plan, system, "Look at the site every day")
    page = patient_browser.get("/portal/today")
    assert f'id="task-{daily["id"]}"' in section(page.text, "due")
    assert tick(patient_browser, daily["id"], csrf_of(page.text)).status_code == 303

    stored = system.get(f"/fhir/Task/{daily['id']}").json()
    assert stored["status"] == "in-progress"
    assert stored["note"][-1]["text"] == "Done for today"
    today = patient_browser.get("/portal/today").text
    assert f'id="task-{daily["id"]}"' in section(today, "done")

    system.app.state.services.now.current += timedelta(days=1)  # the next morning
    tomorrow = patient_browser.get("/portal/today").text
    assert f'id="task-{daily["id"]}"' in section(tomorrow, "due")


def test_a_form_without_the_sessions_csrf_value_changes_nothing(system: TestClient) -> None:
    plan = attached_plan(system)
    link = invite(system, plan.patient_id)
    patient_browser = signed_in(system.app, link)
    second_session = signed_in(system.app, link)
    medicine = task_with(plan, system, "Take your pain medicine")
    other_csrf = csrf_of(second_session.get("/portal/today").text)
    for csrf in (None, "0" * 64, other_csrf):
        refused = tick(patient_browser, medicine["id"], csrf)
        assert refused.status_code == 403
        assert "This form has expired" in refused.text
    assert system.get(f"/fhir/Task/{medicine['id']}").json()["status"] == "requested"


def test_another_patients_task_or_plan_is_not_found(system: TestClient) -> None:
    mine = attached_plan(system)
    theirs = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, mine.patient_id))
    csrf = csrf_of(patient_browser.get("/portal/today").text)
    their_task = task_with(theirs, system, "Take your pain medicine")

    refused = tick(patient_browser, their_task["id"], csrf)
    assert refused.status_code == 404
    assert "We could not find that" in refused.text
    assert system.get(f"/fhir/Task/{their_task['id']}").json()["status"] == "requested"
    assert tick(patient_browser, "no-such-task", csrf).status_code == 404

    assert patient_browser.get(f"/portal/plans/{mine.plan_id}").status_code == 200
    their_plan = patient_browser.get(f"/portal/plans/{theirs.plan_id}")
    assert their_plan.status_code == 404
    assert theirs.plan["title"] not in their_plan.text
    assert patient_browser.get("/portal/no/such/page").status_code == 404


def test_my_plan_shows_goals_instructions_prohibitions_supplies_and_reading(
    system: TestClient,
) -> None:
    plan = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    page = patient_browser.get("/portal/plan")
    assert page.status_code == 200
    html = page.text
    assert "Going Home After Vertebroplasty" in html
    assert "Pain is controlled" in html  # a goal
    for heading in ("Medicines", "Moving around", "Caring for your wound", "Eating and drinking"):
        assert f"<h4>{heading}</h4>" in html
    assert "Don&#39;t drive while you are taking opioid pain medicine." in html
    assert "Avoid lifting anything heavy" in html
    assert "Until 15 March 2026" in html  # "for 2 weeks" after the 1 March discharge
    assert "Until your care team says the site has healed" in html
    assert "A thermometer that works" in html
    assert "Read about your recovery" in html

    thermometer = task_with(plan, system, "thermometer")
    had = patient_browser.post(
        f"/portal/tasks/{thermometer['id']}/done",
        data={"csrf": csrf_of(html), "next": "/portal/plan"},
    )
    assert had.status_code == 303
    assert had.headers["location"].startswith("/portal/plan#")
    assert "(you have this)" in patient_browser.get("/portal/plan").text


def test_when_to_get_help_shows_the_clinicians_threshold_and_who_to_call(
    system: TestClient,
) -> None:
    plan = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    html = patient_browser.get("/portal/help").text
    emergency = html.split('class="emergency"')[1].split("</section>")[0]
    call_team = html.split('class="call-team"')[1].split("</section>")[0]
    assert "Call 911 now" in emergency
    assert "Sudden chest pain or trouble catching your breath" in emergency
    assert "Fever" not in emergency
    assert "Temperature 38.0 °C / 100.4 °F or higher" in call_team
    assert "Dr. Ada Okafor" in html


def test_a_threshold_set_in_fahrenheit_is_shown_in_both_units(system: TestClient) -> None:
    plan = attached_plan(system)
    encounter_id = create(
        system,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "IMP",
            },
            "subject": {"reference": f"Patient/{plan.patient_id}"},
            "period": {"start": "2026-02-27T08:00:00Z", "end": "2026-03-01T10:00:00Z"},
        },
    )
    second = attach(system, encounter_id, attach_body(plan.setup, fever("101.5", "[degF]")))
    assert second.status_code == 201, second.text
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    html = patient_browser.get("/portal/help").text
    assert "Temperature 101.5 °F / 38.6 °C or higher" in html


def test_pages_are_escaped_and_carry_a_strict_policy(system: TestClient) -> None:
    plan = attached_plan(system)
    create(
        system,
        task(
            plan.patient_id,
            plan.plan_id,
            description="<script>alert('x')</script> Walk",
            executionPeriod={"start": "2026-03-01T10:00:00Z"},
        ),
    )
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    page = patient_browser.get("/portal/today")
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Walk" in page.text
    for path in ("/portal/today", "/portal/plan", "/portal/help", "/portal/handout", "/portal/"):
        response = patient_browser.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert '<link rel="stylesheet" href="/portal/static/portal.css">' in response.text
        assert "http://" not in response.text.split("<body")[0]  # no external resource
    css = patient_browser.get("/portal/static/portal.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "@media print" in css.text
    assert patient_browser.get("/portal/static/../pages.py").status_code == 404
    root = browser(system.app).get("/")
    assert root.status_code == 302
    assert root.headers["location"] == "/portal/"


def test_the_handout_is_the_whole_personalised_plan(system: TestClient) -> None:
    plan = attached_plan(system)
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    html = patient_browser.get("/portal/handout").text
    assert "Recovery plan for Sam Rivera" in html
    assert "Going Home After Vertebroplasty" in html
    assert "Temperature 38.0 °C / 100.4 °F or higher" in html
    assert "Until 15 March 2026" in html
    assert "<form" not in html.split("<footer")[0]  # nothing to tick on paper


def alert_for(system: TestClient, plan: AttachedPlan) -> tuple[str, str]:
    """An open alert Communication with its Flag, as the check-in writes them."""
    response = create(
        system,
        {
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "subject": {"reference": f"Patient/{plan.patient_id}"},
            "item": [
                {
                    "linkId": "body-temperature",
                    "text": "What is your temperature today?",
                    "answer": [{"valueDecimal": 38.6}],
                }
            ],
        },
    )
    identifier = {"system": "https://careplan-fhir.org/fhir/identifier/check-in", "value": "k1"}
    communication = create(
        system,
        {
            "resourceType": "Communication",
            "identifier": [identifier],
            "status": "in-progress",
            "category": [ALERT],
            "priority": "urgent",
            "subject": {"reference": f"Patient/{plan.patient_id}"},
            "basedOn": [{"reference": f"CarePlan/{plan.plan_id}"}],
            "about": [{"reference": f"QuestionnaireResponse/{response}"}],
            "sent": "2026-03-01T12:00:00Z",
            "reasonCode": [{"text": "Fever"}],
            "payload": [{"contentString": "Fever (urgent): temperature 38.6 °C."}],
        },
    )
    flag = create(
        system,
        {
            "resourceType": "Flag",
            "identifier": [identifier],
            "status": "active",
            "code": {"text": "Warning sign at the daily check-in (urgent): Fever"},
            "subject": {"reference": f"Patient/{plan.patient_id}"},
        },
    )
    return communication, flag


def test_the_alerts_page_lists_open_alerts_and_acknowledges_one(
    system: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(system)
    communication, flag = alert_for(system, plan)
    clinician = mint_token(signing_key_file, "user/*.cruds", fhir_user="Practitioner/dr")
    listed = browser(system.app).get("/portal/alerts", headers=bearer(clinician))
    assert listed.status_code == 200
    assert f'id="alert-{communication}"' in listed.text
    assert "Sam Rivera" in listed.text
    assert "What is your temperature today?" in listed.text
    assert "38.6" in listed.text

    # A clinician's browser: the token pasted once, kept in an HttpOnly cookie.
    clinician_browser = browser(system.app)
    signed = clinician_browser.post("/portal/alerts/sign-in", data={"token": clinician})
    assert signed.status_code == 303
    assert "httponly" in signed.headers["set-cookie"].lower()
    page = clinician_browser.get("/portal/alerts")
    assert (
        clinician_browser.post(
            f"/portal/alerts/{communication}/acknowledge", data={"csrf": "nope"}
        ).status_code
        == 403
    )
    done = clinician_browser.post(
        f"/portal/alerts/{communication}/acknowledge", data={"csrf": csrf_of(page.text)}
    )
    assert done.status_code == 303
    acknowledged = system.get(f"/fhir/Communication/{communication}").json()
    assert acknowledged["status"] == "completed"
    assert acknowledged["received"]
    closed = system.get(f"/fhir/Flag/{flag}").json()
    assert closed["status"] == "inactive"
    assert closed["period"]["end"]
    assert f'id="alert-{communication}"' not in clinician_browser.get("/portal/alerts").text


def test_patients_cannot_use_the_alerts_page(system: TestClient, signing_key_file: Path) -> None:
    plan = attached_plan(system)
    alert_for(system, plan)
    patient_token = mint_token(signing_key_file, "patient/*.rs", patient=plan.patient_id)
    assert (
        browser(system.app).get("/portal/alerts", headers=bearer(patient_token)).status_code == 403
    )
    patient_browser = signed_in(system.app, invite(system, plan.patient_id))
    assert patient_browser.get("/portal/alerts").status_code == 401  # no care-team sign-in
    refused = patient_browser.post("/portal/alerts/sign-in", data={"token": patient_token})
    assert refused.status_code == 403
    assert "set-cookie" not in refused.headers
