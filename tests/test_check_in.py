"""The daily check-in over HTTP (both backends): ``CarePlan/$check-in`` and plain FHIR.

An attached vertebroplasty plan (fever threshold 38.0 °C set by the clinician; emergency signs
such as "Sudden chest pain or trouble catching your breath", ``warn-6``). The patient checks in
with a patient token; the care team finds and acknowledges alerts with a clinician token.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.settings import Settings
from careplan_fhir.workflows.check_in import CHECK_IN_KEY_SYSTEM
from tests.factories import encounter, patient
from tests.plan_setup import UCUM, attach, attach_body, create, fever, search, set_up
from tests.tokens import bearer, mint_token

DERIVED = ("QuestionnaireResponse", "Observation", "Communication", "Flag")
EMERGENCY_SIGN = "warn-6"  # "Sudden chest pain or trouble catching your breath" (stat)
YAML_TEMPLATE = """\
title: Home care after a port placement
parameters:
  - name: fever_threshold
    type: Quantity
    description: Temperature at which the patient should call the team
    units: [Cel, "[degF]"]
instructions:
  - kind: medication
    text: Take pain medicine as your team told you.
warning_signs:
  - id: fever
    text: Your temperature reaches the number your team gave you.
    condition: {measure: body-temperature, parameter: fever_threshold}
  - id: pain
    text: Pain above 7 that medicine does not help.
    condition: {measure: pain-score, comparator: ">", threshold: 7}
  - id: breathing
    text: You cannot breathe well.
    urgency: stat
"""


@dataclass
class Plan:
    id: str
    patient_id: str
    practitioner_id: str
    patient: dict[str, str]
    clinician: dict[str, str]


def attached_plan(client: TestClient, key_file: Path, *clinician_values: dict[str, Any]) -> Plan:
    setup = set_up(client)
    response = attach(client, setup.encounter_id, attach_body(setup, *clinician_values))
    assert response.status_code == 201, response.text
    plan_id = response.json()["entry"][0]["resource"]["id"]
    return Plan(
        plan_id,
        setup.patient_id,
        setup.practitioner_id,
        bearer(mint_token(key_file, "patient/*.cruds", patient=setup.patient_id)),
        bearer(
            mint_token(key_file, "user/*.cruds", fhir_user=f"Practitioner/{setup.practitioner_id}")
        ),
    )


def response_of(
    temperature: str | None = None,
    unit: str = "Cel",
    pain: int | None = None,
    authored: str = "2026-03-02T08:00:00Z",
    **signs: bool,
) -> dict[str, Any]:
    """A check-in as a portal sends it: the answers, the rest left to the server."""
    items: list[dict[str, Any]] = []
    if temperature is not None:
        items.append({"linkId": "body-temperature", "answer": [{"valueDecimal": temperature}]})
        coding = {"system": UCUM, "code": unit}
        items.append({"linkId": "body-temperature-unit", "answer": [{"valueCoding": coding}]})
    if pain is not None:
        items.append({"linkId": "pain-score", "answer": [{"valueInteger": pain}]})
    if signs:
        items.append(
            {
                "linkId": "warning-signs",
                "item": [
                    {"linkId": f"sign-{name.replace('_', '-')}", "answer": [{"valueBoolean": v}]}
                    for name, v in signs.items()
                ],
            }
        )
    return {"resourceType": "QuestionnaireResponse", "authored": authored, "item": items}


def check_in(
    client: TestClient, plan_id: str, response: dict[str, Any], headers: dict[str, str]
) -> Any:
    body = {"resourceType": "Parameters", "parameter": [{"name": "response", "resource": response}]}
    return client.post(f"/fhir/CarePlan/{plan_id}/$check-in", json=body, headers=headers)


def out(parameters: dict[str, Any]) -> dict[str, list[Any]]:
    """Output parameters by name: their value[x] (or parts, by name)."""
    values: dict[str, list[Any]] = {}
    for parameter in parameters["parameter"]:
        if "part" in parameter:
            value: Any = {
                p["name"]: next(v for k, v in p.items() if k != "name") for p in parameter["part"]
            }
        else:
            value = next(v for k, v in parameter.items() if k.startswith("value"))
        values.setdefault(parameter["name"], []).append(value)
    return values


def count(client: TestClient, resource_type: str) -> int:
    total: int = client.get(f"/fhir/{resource_type}?_summary=count").json()["total"]
    return total


def counts(client: TestClient) -> dict[str, int]:
    return {kind: count(client, kind) for kind in DERIVED}


def open_alerts(
    client: TestClient, plan: Plan
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the care team finds with ordinary FHIR searches, as the clinician."""
    communications = client.get(
        "/fhir/Communication?category=alert&status=in-progress", headers=plan.clinician
    )
    flags = client.get(
        f"/fhir/Flag?patient=Patient/{plan.patient_id}&status=active", headers=plan.clinician
    )
    assert communications.status_code == flags.status_code == 200, communications.text
    return (
        [e["resource"] for e in communications.json().get("entry", [])],
        [e["resource"] for e in flags.json().get("entry", [])],
    )


def test_a_normal_check_in_stores_answers_and_observations_and_no_alert(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    response = check_in(client, plan.id, response_of("37.1", pain=2, warn_6=False), plan.patient)
    assert response.status_code == 201, response.text
    result = out(response.json())
    assert result["redFlag"] == [False]
    assert "urgency" not in result and "sign" not in result
    assert result["advice"][0].startswith("Thank you")
    assert "communication" not in result and "flag" not in result

    (stored,) = search(client, f"QuestionnaireResponse?based-on=CarePlan/{plan.id}")
    assert response.headers["location"].endswith(
        f"/QuestionnaireResponse/{stored['id']}/_history/1"
    )
    assert stored["subject"] == {"reference": f"Patient/{plan.patient_id}"}
    assert stored["status"] == "completed"
    assert stored["questionnaire"].endswith("-check-in|0.1.0")
    assert stored["identifier"]["system"] == CHECK_IN_KEY_SYSTEM
    observations = search(client, f"Observation?derived-from=QuestionnaireResponse/{stored['id']}")
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert set(by_code) == {"8310-5", "72514-3"}
    temperature = by_code["8310-5"]
    assert temperature["valueQuantity"]["code"] == "Cel"
    assert str(temperature["valueQuantity"]["value"]) == "37.1"
    assert temperature["category"][0]["coding"][0]["code"] == "vital-signs"
    assert temperature["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bodytemp"]
    assert temperature["basedOn"] == [{"reference": f"CarePlan/{plan.id}"}]
    assert temperature["effectiveDateTime"] == "2026-03-02T08:00:00Z"
    pain = by_code["72514-3"]
    assert pain["valueQuantity"]["value"] == 2 and pain["valueQuantity"]["code"] == "{score}"
    assert pain["category"][0]["coding"][0]["code"] == "survey"
    assert count(client, "Communication") == 1  # the plan's education Communication only
    assert count(client, "Flag") == 0
    assert open_alerts(client, plan) == ([], [])


def test_a_temperature_above_the_threshold_alerts_the_care_team_once(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    response = check_in(client, plan.id, response_of("38.6", pain=3), plan.patient)
    assert response.status_code == 201, response.text
    result = out(response.json())
    assert result["redFlag"] == [True]
    assert result["urgency"] == ["call-care-team"] and result["priority"] == ["urgent"]
    assert result["advice"] == [
        "Call your care team now. Fever. Call your care team if your temperature is"
        " 38.0 °C (100.4 °F) or higher."
    ]
    (sign,) = result["sign"]
    assert sign["id"] == "warn-2" and sign["priority"] == "urgent"

    communications, flags = open_alerts(client, plan)
    assert len(communications) == 1 and len(flags) == 1
    alert, flag = communications[0], flags[0]
    assert result["communication"] == [{"reference": f"Communication/{alert['id']}"}]
    assert result["flag"] == [{"reference": f"Flag/{flag['id']}"}]
    assert alert["priority"] == "urgent"
    assert alert["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/communication-category",
        "code": "alert",
        "display": "Alert",
    }
    assert alert["subject"] == {"reference": f"Patient/{plan.patient_id}"}
    assert alert["recipient"] == [{"reference": f"Practitioner/{plan.practitioner_id}"}]
    assert alert["basedOn"] == [{"reference": f"CarePlan/{plan.id}"}]
    about = {a["reference"] for a in alert["about"]}
    assert about == {result["questionnaireResponse"][0]["reference"]} | {
        o["reference"] for o in result["observation"]
    }
    payload = " ".join(p["contentString"] for p in alert["payload"])
    assert "Fever (urgent): temperature 38.6 °C (101.5 °F), at or above 38.0 °C" in payload
    assert "pain 3 out of 10" in payload
    assert flag["status"] == "active"
    assert flag["subject"] == {"reference": f"Patient/{plan.patient_id}"}
    assert "Fever" in flag["code"]["text"]
    details = {e["valueReference"]["reference"] for e in flag["extension"]}
    assert f"CarePlan/{plan.id}" in details and f"Communication/{alert['id']}" in details
    # The patient sees her own alert too (it is in her compartment); another patient does not.
    mine = client.get(f"/fhir/Flag/{flag['id']}", headers=plan.patient)
    assert mine.status_code == 200


def test_a_fahrenheit_answer_is_judged_against_the_celsius_threshold(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    below = check_in(client, plan.id, response_of("100.2", unit="[degF]"), plan.patient)
    assert out(below.json())["redFlag"] == [False]
    above = check_in(
        client,
        plan.id,
        response_of("100.4", unit="[degF]", authored="2026-03-03T08:00:00Z"),
        plan.patient,
    )
    assert above.status_code == 201, above.text
    result = out(above.json())
    assert result["redFlag"] == [True]
    assert "temperature 100.4 °F (38.0 °C)" in result["sign"][0]["reason"]
    observation = client.get(f"/fhir/{result['observation'][0]['reference']}").json()
    assert observation["valueQuantity"]["code"] == "[degF]"
    assert observation["valueQuantity"]["unit"] == "°F"
    assert len(open_alerts(client, plan)[0]) == 1


def test_a_yes_to_an_emergency_sign_is_stat_with_911_advice(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    answers = response_of("37.0", **{EMERGENCY_SIGN.replace("-", "_"): True, "warn_3": False})
    response = check_in(client, plan.id, answers, plan.patient)
    assert response.status_code == 201, response.text
    result = out(response.json())
    assert result["urgency"] == ["emergency"] and result["priority"] == ["stat"]
    assert result["advice"][0].startswith("Call 911 now. Sudden chest pain")
    (alert,), (flag,) = open_alerts(client, plan)
    assert alert["priority"] == "stat"
    assert "answered yes" in " ".join(p["contentString"] for p in alert["payload"])


def test_the_same_answers_twice_make_one_alert(client: TestClient, signing_key_file: Path) -> None:
    plan = attached_plan(client, signing_key_file)
    first = check_in(client, plan.id, response_of("38.6", pain=3), plan.patient)
    assert first.status_code == 201, first.text
    before = counts(client)
    # A double tap: the same answers, the app's clock a few seconds on, numbers written otherwise.
    again = response_of("38.60", pain=3, authored="2026-03-02T08:00:04Z")
    second = check_in(client, plan.id, again, plan.patient)
    assert second.status_code == 200, second.text
    assert out(second.json()) == out(first.json())
    assert second.headers["location"] == first.headers["location"]
    assert counts(client) == before
    communications, flags = open_alerts(client, plan)
    assert len(communications) == 1 and len(flags) == 1
    # Other answers are another event.
    worse = check_in(client, plan.id, response_of("39.2", pain=3), plan.patient)
    assert worse.status_code == 201
    assert len(open_alerts(client, plan)[0]) == 2


def test_concurrent_double_submits_make_one_alert(
    settings: Settings, system_headers: dict[str, str], signing_key_file: Path
) -> None:
    # uuid ids: the shared fixture's id generator is not meant for several threads at once.
    app = create_app(settings, new_id=lambda: uuid.uuid4().hex)
    with TestClient(app, headers=system_headers) as client:
        plan = attached_plan(client, signing_key_file)
        answers = response_of("38.9")
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(
                pool.map(lambda _: check_in(client, plan.id, answers, plan.patient), range(4))
            )
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 201], [
            r.text for r in responses
        ]
        assert len({r.headers["location"] for r in responses}) == 1
        assert count(client, "QuestionnaireResponse") == 1
        assert count(client, "Observation") == 1
        communications, flags = open_alerts(client, plan)
        assert len(communications) == 1 and len(flags) == 1


def test_concurrent_plain_creates_of_one_check_in_make_one_alert(
    settings: Settings, system_headers: dict[str, str], signing_key_file: Path
) -> None:
    app = create_app(settings, new_id=lambda: uuid.uuid4().hex)
    with TestClient(app, headers=system_headers) as client:
        plan = attached_plan(client, signing_key_file)
        document = plain_check_in(client, plan, response_of("38.9"))
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(
                pool.map(
                    lambda _: client.post(
                        "/fhir/QuestionnaireResponse", json=document, headers=plan.patient
                    ),
                    range(4),
                )
            )
        assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
        # Each create is the client's record; the answers were evaluated once.
        assert count(client, "QuestionnaireResponse") == 4
        assert count(client, "Observation") == 1
        communications, flags = open_alerts(client, plan)
        assert len(communications) == 1 and len(flags) == 1


def plain_check_in(client: TestClient, plan: Plan, response: dict[str, Any]) -> dict[str, Any]:
    """The response as a portal app posts it with ordinary FHIR: every element set."""
    stored_plan = client.get(f"/fhir/CarePlan/{plan.id}").json()
    template_url = stored_plan["instantiatesCanonical"][0].partition("|")[0]
    (template,) = search(client, f"PlanDefinition?url={template_url}")
    (questionnaire,) = [
        a["resource"] for a in template["relatedArtifact"] if a["type"] == "composed-of"
    ]
    return {
        **response,
        "questionnaire": questionnaire,
        "status": "completed",
        "subject": {"reference": f"Patient/{plan.patient_id}"},
        "author": {"reference": f"Patient/{plan.patient_id}"},
        "basedOn": [{"reference": f"CarePlan/{plan.id}"}],
    }


def test_a_plain_create_of_a_check_in_runs_the_same_evaluation(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    normal = plain_check_in(client, plan, response_of("36.8", pain=1))
    created = client.post("/fhir/QuestionnaireResponse", json=normal, headers=plan.patient)
    assert created.status_code == 201, created.text
    assert (
        len(
            search(client, f"Observation?derived-from=QuestionnaireResponse/{created.json()['id']}")
        )
        == 2
    )
    assert open_alerts(client, plan) == ([], [])

    fever_answers = plain_check_in(
        client, plan, response_of("38.2", authored="2026-03-03T08:00:00Z")
    )
    created = client.post("/fhir/QuestionnaireResponse", json=fever_answers, headers=plan.patient)
    assert created.status_code == 201, created.text
    (alert,), (flag,) = open_alerts(client, plan)
    assert {"reference": f"QuestionnaireResponse/{created.json()['id']}"} in alert["about"]
    # The same answers posted again: stored (a create is a create), no second alert.
    again = client.post("/fhir/QuestionnaireResponse", json=fever_answers, headers=plan.patient)
    assert again.status_code == 201
    assert len(open_alerts(client, plan)[0]) == 1


def test_a_response_that_is_no_check_in_is_left_alone(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    other = plain_check_in(client, plan, response_of("39.5"))
    other["questionnaire"] = "http://example.org/Questionnaire/satisfaction"
    assert client.post("/fhir/QuestionnaireResponse", json=other).status_code == 201
    draft = plain_check_in(client, plan, response_of("39.5"))
    draft["status"] = "in-progress"
    assert client.post("/fhir/QuestionnaireResponse", json=draft).status_code == 201
    unrelated = {k: v for k, v in other.items() if k != "basedOn"}
    assert client.post("/fhir/QuestionnaireResponse", json=unrelated).status_code == 201
    assert count(client, "Observation") == 0
    assert open_alerts(client, plan) == ([], [])


def test_another_patients_plan_is_not_found_and_nothing_is_written(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    other_id = create(client, patient(name=[{"family": "Other"}]))
    other = bearer(mint_token(signing_key_file, "patient/*.cruds", patient=other_id))
    before = counts(client)
    refused = check_in(client, plan.id, response_of("39.0"), other)
    assert refused.status_code == 404, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    # Nor by plain FHIR, even naming herself as the subject.
    document = plain_check_in(client, plan, response_of("39.0"))
    document["subject"] = document["author"] = {"reference": f"Patient/{other_id}"}
    posted = client.post("/fhir/QuestionnaireResponse", json=document, headers=other)
    assert posted.status_code == 404, posted.text
    # ... and not for her by a system client either (the plan is someone else's).
    assert client.post("/fhir/QuestionnaireResponse", json=document).status_code == 422
    assert counts(client) == before


def test_a_refused_check_in_writes_nothing(client: TestClient, signing_key_file: Path) -> None:
    plan = attached_plan(client, signing_key_file)
    before = counts(client)
    no_unit = response_of("38.9")
    no_unit["item"] = no_unit["item"][:1]
    cases = [
        no_unit,
        response_of(pain=11),
        {**response_of("38.9"), "status": "in-progress"},
        {**response_of("38.9"), "subject": {"reference": "Patient/someone-else"}},
        {**response_of("38.9"), "questionnaire": "http://example.org/Questionnaire/other"},
        {**response_of("38.9"), "item": [{"linkId": "mood", "answer": [{"valueInteger": 3}]}]},
    ]
    for answers in cases:
        response = check_in(client, plan.id, answers, plan.patient)
        assert response.status_code == 422, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    bad_plain = plain_check_in(client, plan, response_of(pain=11))
    refused = client.post("/fhir/QuestionnaireResponse", json=bad_plain, headers=plan.patient)
    assert refused.status_code == 422, refused.text
    malformed = client.post(
        f"/fhir/CarePlan/{plan.id}/$check-in",
        json={"resourceType": "Parameters", "parameter": [{"name": "answers"}]},
        headers=plan.patient,
    )
    assert malformed.status_code == 400
    assert check_in(client, "no-such-plan", response_of("38.9"), plan.patient).status_code == 404
    assert counts(client) == before


def test_a_revoked_plan_takes_no_check_in(client: TestClient, signing_key_file: Path) -> None:
    plan = attached_plan(client, signing_key_file)
    assert client.post(f"/fhir/CarePlan/{plan.id}/$revoke").status_code == 200
    before = counts(client)
    response = check_in(client, plan.id, response_of("39.0"), plan.patient)
    assert response.status_code == 422, response.text
    assert counts(client) == before


def test_the_care_team_acknowledges_an_alert_with_ordinary_updates(
    client: TestClient, signing_key_file: Path
) -> None:
    plan = attached_plan(client, signing_key_file)
    check_in(client, plan.id, response_of("38.6"), plan.patient)
    (alert,), (flag,) = open_alerts(client, plan)
    alert["status"] = "completed"
    alert["received"] = "2026-03-02T08:30:00Z"
    flag["status"] = "inactive"
    flag["period"]["end"] = "2026-03-02T08:30:00Z"
    for resource in (alert, flag):
        updated = client.put(
            f"/fhir/{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers={**plan.clinician, "If-Match": f'W/"{resource["meta"]["versionId"]}"'},
        )
        assert updated.status_code == 200, updated.text
    assert open_alerts(client, plan) == ([], [])
    done = search(client, "Communication?category=alert&status=completed")
    assert [c["id"] for c in done] == [alert["id"]]


def test_a_clinician_threshold_in_fahrenheit_and_a_pain_condition(
    client: TestClient, signing_key_file: Path
) -> None:
    imported = client.post(
        "/fhir/PlanDefinition/$import?version=1.0.0",
        content=YAML_TEMPLATE,
        headers={"Content-Type": "application/yaml"},
    )
    assert imported.status_code == 201, imported.text
    template = imported.json()["entry"][0]["resource"]
    template["status"] = "active"
    assert client.put(f"/fhir/PlanDefinition/{template['id']}", json=template).status_code == 200
    patient_id = create(client, patient())
    encounter_id = create(client, encounter(patient_id))
    setup = set_up(client)  # for a practitioner (its own template is not used)
    body = attach_body(
        setup, fever("100.4", "[degF]"), canonical=f"{template['url']}|{template['version']}"
    )
    attached = attach(client, encounter_id, body)
    assert attached.status_code == 201, attached.text
    plan_id = attached.json()["entry"][0]["resource"]["id"]
    token = bearer(mint_token(signing_key_file, "patient/*.cruds", patient=patient_id))

    celsius = out(check_in(client, plan_id, response_of("38.0", pain=7), token).json())
    assert [s["id"] for s in celsius["sign"]] == ["fever"]
    assert "at or above 100.4 °F (38.0 °C)" in celsius["sign"][0]["reason"]
    pain = out(
        check_in(
            client, plan_id, response_of("37.0", pain=8, authored="2026-03-03T09:00:00Z"), token
        ).json()
    )
    assert [s["id"] for s in pain["sign"]] == ["pain"]
    assert pain["sign"][0]["reason"] == "pain 8 out of 10, above 7 out of 10"


def test_check_in_is_in_the_capability_statement(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    (care_plan,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "CarePlan"]
    operations = {o["name"]: o["definition"] for o in care_plan.get("operation", [])}
    assert operations["check-in"].endswith("/OperationDefinition/CarePlan-check-in")


def test_derived_resources_get_their_provenance_when_it_is_on(
    settings: Settings, system_headers: dict[str, str], signing_key_file: Path
) -> None:
    app = create_app(
        settings.model_copy(update={"auto_provenance": True}), new_id=lambda: uuid.uuid4().hex
    )
    with TestClient(app, headers=system_headers) as client:
        plan = attached_plan(client, signing_key_file)
        result = out(check_in(client, plan.id, response_of("38.6"), plan.patient).json())
        written = [
            result["questionnaireResponse"][0],
            *result["observation"],
            *result["communication"],
            *result["flag"],
        ]
        for reference in written:
            provenances = search(client, f"Provenance?target={reference['reference']}")
            assert len(provenances) == 1, reference
            agent = provenances[0]["agent"][0]
            assert agent.get("onBehalfOf", {}).get("reference") == f"Patient/{plan.patient_id}"
            validate_resource(provenances[0])
