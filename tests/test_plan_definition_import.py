"""``POST /fhir/PlanDefinition/$import`` over HTTP: store, read, search, activate, refuse."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.guidance.fhir_builder import SOURCE_SPAN_URL

IMPORT = "/fhir/PlanDefinition/$import"
YAML = {"Content-Type": "application/yaml"}

LEAFLET = """\
title: Recovery after a wrist fracture repair
procedure: Wrist fracture repair
instructions:
  - id: raise-hand
    kind: activity
    text: Keep your hand raised on a pillow.
    timing: {text: for the first 3 days, duration: 3 days}
  - id: no-wet-cast
    kind: hygiene
    text: Do not get the splint wet.
    prohibition: true
    timing: {until: your team removes it}
warning_signs:
  - id: fever
    text: Your temperature is 38.5 °C or higher.
    condition: {measure: body-temperature, threshold: 38.5 Cel}
  - id: numb-fingers
    text: Your fingers feel numb or turn blue.
supplies:
  - A sling
goals:
  - id: swelling-down
    text: The swelling goes down.
    instructions: [raise-hand]
"""


def parameters(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def outcome_of(response: Any, status: int) -> list[dict[str, Any]]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issues: list[dict[str, Any]] = body["issue"]
    return issues


def count(client: TestClient, resource_type: str) -> int:
    total: int = client.get(f"/fhir/{resource_type}").json()["total"]
    return total


def stored_nothing(client: TestClient) -> bool:
    kinds = ("PlanDefinition", "ActivityDefinition", "Questionnaire", "DocumentReference")
    return all(count(client, kind) == 0 for kind in kinds)


def test_import_yaml_then_read_search_and_activate(client: TestClient) -> None:
    response = client.post(IMPORT, content=LEAFLET, headers=YAML)
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["PlanDefinition", "ActivityDefinition", "Questionnaire", "DocumentReference"]
    plan = bundle["entry"][0]["resource"]
    assert response.headers["location"].endswith(f"/PlanDefinition/{plan['id']}/_history/1")
    assert bundle["entry"][0]["fullUrl"] == f"http://testserver/fhir/PlanDefinition/{plan['id']}"
    document_id = bundle["entry"][3]["resource"]["id"]

    read = client.get(f"/fhir/PlanDefinition/{plan['id']}")
    assert read.status_code == 200
    stored = read.json()
    assert stored["status"] == "draft"
    assert stored["version"] == "0.1.0"
    assert stored["title"] == "Recovery after a wrist fracture repair"
    assert stored["url"] == (
        "http://testserver/fhir/PlanDefinition/recovery-after-a-wrist-fracture-repair"
    )
    # References to the source point at the stored DocumentReference.
    assert stored["relatedArtifact"][0]["url"] == f"DocumentReference/{document_id}"
    first = stored["action"][0]
    span = next(e for e in first["extension"] if e["url"] == SOURCE_SPAN_URL)
    assert span["extension"][0]["valueReference"]["reference"] == f"DocumentReference/{document_id}"
    source = client.get(f"/fhir/DocumentReference/{document_id}").json()
    text = base64.b64decode(source["content"][0]["attachment"]["data"]).decode()
    assert text == LEAFLET
    start, end = (p["valueInteger"] for p in span["extension"][1:3])
    assert text[start:end] == first["description"]
    # The prohibition's ActivityDefinition is found by its canonical.
    prohibition = next(a for a in stored["action"] if a["id"] == "no-wet-cast")
    url, _, version = prohibition["definitionCanonical"].partition("|")
    found = client.get("/fhir/ActivityDefinition", params={"url": url, "version": version}).json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["doNotPerform"] is True

    drafts = client.get("/fhir/PlanDefinition", params={"status": "draft"}).json()
    assert [e["resource"]["id"] for e in drafts["entry"]] == [plan["id"]]

    stored["status"] = "active"
    activated = client.put(f"/fhir/PlanDefinition/{plan['id']}", json=stored)
    assert activated.status_code == 200, activated.text
    assert activated.json()["meta"]["versionId"] == "2"
    assert client.get("/fhir/PlanDefinition", params={"status": "draft"}).json()["total"] == 0
    active = client.get("/fhir/PlanDefinition", params={"status": "active"}).json()
    assert active["total"] == 1


def test_import_parameters_with_string_and_options(client: TestClient) -> None:
    body = parameters(
        {"name": "document", "valueString": LEAFLET},
        {"name": "format", "valueCode": "yaml"},
        {"name": "title", "valueString": "Wrist repair: home care"},
        {"name": "version", "valueString": "2.0.0"},
    )
    response = client.post(IMPORT, json=body, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 201, response.text
    plan = response.json()["entry"][0]["resource"]
    assert (plan["title"], plan["version"], plan["name"]) == (
        "Wrist repair: home care",
        "2.0.0",
        "WristRepairHomeCare",
    )


def test_import_parameters_with_attachment(client: TestClient) -> None:
    data = base64.b64encode(LEAFLET.encode()).decode()
    body = parameters(
        {"name": "document", "valueAttachment": {"contentType": "application/yaml", "data": data}}
    )
    response = client.post(IMPORT, json=body)
    assert response.status_code == 201, response.text
    document = response.json()["entry"][-1]["resource"]
    assert document["content"][0]["attachment"]["contentType"] == "application/yaml"


def test_raw_body_takes_title_and_version_from_the_url(client: TestClient) -> None:
    response = client.post(
        IMPORT, params={"version": "1.2.0", "title": "Wrist care"}, content=LEAFLET, headers=YAML
    )
    assert response.status_code == 201, response.text
    plan = response.json()["entry"][0]["resource"]
    assert (plan["title"], plan["version"]) == ("Wrist care", "1.2.0")


def test_same_canonical_version_twice_is_a_conflict(client: TestClient) -> None:
    assert client.post(IMPORT, content=LEAFLET, headers=YAML).status_code == 201
    outcome_of(client.post(IMPORT, content=LEAFLET, headers=YAML), 409)
    assert count(client, "DocumentReference") == 1
    again = client.post(IMPORT, params={"version": "0.2.0"}, content=LEAFLET, headers=YAML)
    assert again.status_code == 201
    assert count(client, "PlanDefinition") == 2


@pytest.mark.parametrize(
    ("content", "headers", "status", "expected"),
    [
        ("", YAML, 400, "empty"),
        ("   \n", {"Content-Type": "text/plain"}, 400, "empty"),
        (b"", {"Content-Type": "application/fhir+json"}, 400, "empty"),
        ("{not json", {"Content-Type": "application/fhir+json"}, 400, "not valid JSON"),
        (LEAFLET, {"Content-Type": "application/pdf"}, 415, "not supported"),
        (LEAFLET, {"Content-Type": "text/plain; charset=klingon"}, 415, "charset"),
        (b"\xff\xfe\xfa", YAML, 400, "not valid utf-8"),
        ("title: [unclosed", YAML, 422, "not valid YAML"),
        ("title: A\ninstructions:\n  - kind: walking\n    text: Walk.\n", YAML, 422, "kind"),
    ],
)
def test_bad_requests_store_nothing(
    client: TestClient, content: str | bytes, headers: dict[str, str], status: int, expected: str
) -> None:
    issues = outcome_of(client.post(IMPORT, content=content, headers=headers), status)
    assert any(expected in i["diagnostics"] for i in issues), issues
    assert stored_nothing(client)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"resourceType": "Patient"}, 400, "Expected a Parameters resource"),
        (parameters(), 400, "'document' is required"),
        (parameters({"name": "document"}), 400, "valueString or valueAttachment"),
        (
            parameters({"name": "document", "valueString": LEAFLET}, {"name": "colour"}),
            400,
            "Unknown parameter",
        ),
        (
            parameters(
                {"name": "document", "valueString": LEAFLET},
                {"name": "format", "valueCode": "pdf"},
            ),
            400,
            "'format' must be one of",
        ),
        (
            parameters({"name": "document", "valueAttachment": {"contentType": "text/plain"}}),
            400,
            "must carry its data",
        ),
        (
            parameters(
                {
                    "name": "document",
                    "valueAttachment": {"contentType": "application/pdf", "data": "AAAA"},
                }
            ),
            415,
            "not supported",
        ),
        (
            parameters(
                {"name": "document", "valueString": "title: A\nsupplies: {x: 1}\n"},
                {"name": "format", "valueCode": "yaml"},
            ),
            422,
            "supplies: must be a list",
        ),
    ],
)
def test_bad_parameters_store_nothing(
    client: TestClient, body: dict[str, Any], status: int, expected: str
) -> None:
    issues = outcome_of(client.post(IMPORT, json=body), status)
    assert any(expected in i["diagnostics"] for i in issues), issues
    assert stored_nothing(client)


def test_invalid_yaml_lists_every_problem(client: TestClient) -> None:
    document = (
        "title: A\ninstructions:\n  - kind: walking\n    text: Walk.\n"
        "warning_signs:\n  - text: Fever\n    urgency: soon\n"
    )
    issues = outcome_of(client.post(IMPORT, content=document, headers=YAML), 422)
    assert [i.get("expression") for i in issues] == [
        ["instructions[0].kind"],
        ["warning_signs[0].urgency"],
    ]


def test_capability_statement_lists_the_operation(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    plan = next(r for r in statement["rest"][0]["resource"] if r["type"] == "PlanDefinition")
    operations = {operation["name"]: operation for operation in plan["operation"]}
    assert operations["import"]["definition"] == (
        "https://careplan-fhir.org/fhir/OperationDefinition/PlanDefinition-import"
    )
    assert operations["import"]["documentation"]


def test_import_route_does_not_shadow_read(client: TestClient) -> None:
    assert client.get("/fhir/PlanDefinition/$import").status_code in (404, 405)
    response = client.post(IMPORT, content=LEAFLET, headers=YAML)
    plan_id = response.json()["entry"][0]["resource"]["id"]
    assert client.get(f"/fhir/PlanDefinition/{plan_id}").status_code == 200


TEXT_LEAFLET = """\
Going Home After Carpal Tunnel Release

CARING FOR YOUR HAND
- Keep the bandage clean and dry for 2 days.
- Do not lift anything heavier than a cup of coffee for 2 weeks.

WHAT YOU NEED AT HOME
- Ice pack

WHEN TO CALL US
Call your surgeon if your temperature is above 38.3 °C.
Call 911 if you have trouble breathing.
"""


def check_leaflet_import(response: Any, content_type: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    resources = {e["resource"]["resourceType"]: e["resource"] for e in response.json()["entry"]}
    plan = resources["PlanDefinition"]
    assert plan["status"] == "draft"
    document = resources["DocumentReference"]
    attachment = document["content"][0]["attachment"]
    assert attachment["contentType"] == content_type
    source = base64.b64decode(attachment["data"]).decode()
    kinds = [a["code"][0]["coding"][0]["code"] for a in plan["action"] if "code" in a]
    assert "warning-sign" in kinds
    for action in plan["action"]:
        span = next((e for e in action.get("extension", []) if e["url"] == SOURCE_SPAN_URL), None)
        if span is None:
            continue
        reference, start, end = (
            p.get("valueReference", {}).get("reference") or p.get("valueInteger")
            for p in span["extension"][:3]
        )
        assert reference == f"DocumentReference/{document['id']}"
        assert isinstance(start, int) and isinstance(end, int)
        assert 0 <= start < end <= len(source)
    return plan


def test_import_plain_text_leaflet(client: TestClient) -> None:
    response = client.post(
        IMPORT, content=TEXT_LEAFLET.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    plan = check_leaflet_import(response, "text/plain")
    assert plan["title"] == "Going Home After Carpal Tunnel Release"
    assert "ActivityDefinition" in [e["resource"]["resourceType"] for e in response.json()["entry"]]
    stored = client.get(f"/fhir/PlanDefinition/{plan['id']}")
    assert stored.status_code == 200


def test_import_markdown_attachment(client: TestClient) -> None:
    markdown = (
        "# Home care after a cyst removal\n\n## Wound care\n\n"
        "* Keep the wound covered for 2 days.\n\n## Call us\n\n"
        "Call us right away if the wound bleeds through the bandage.\n"
    )
    data = base64.b64encode(markdown.encode()).decode()
    body = parameters(
        {"name": "document", "valueAttachment": {"contentType": "text/markdown", "data": data}},
        {"name": "version", "valueString": "1.0.0"},
    )
    plan = check_leaflet_import(client.post(IMPORT, json=body), "text/markdown")
    assert plan["version"] == "1.0.0"


def test_import_html_string(client: TestClient) -> None:
    page = (
        "<html><head><title>After a tooth extraction</title></head><body>"
        "<h1>After a tooth extraction</h1><h2>At home</h2><ul>"
        "<li>Do not rinse your mouth for 24 hours.</li></ul>"
        "<h2>When to call</h2><p>Call us if the bleeding does not stop.</p></body></html>"
    )
    body = parameters(
        {"name": "document", "valueString": page}, {"name": "format", "valueCode": "html"}
    )
    check_leaflet_import(client.post(IMPORT, json=body), "text/html")
