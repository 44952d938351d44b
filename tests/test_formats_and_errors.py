"""Content negotiation and the OperationOutcome for every bad input."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from httpx2 import Response
from lxml import etree

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings
from tests.factories import patient

FHIR_NS = "{http://hl7.org/fhir}"

XML_PATIENT = (
    b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Okafor"/>'
    b'<given value="Ada"/></name><gender value="female"/><birthDate value="1970-01-02"/>'
    b"</Patient>"
)


def assert_outcome(response: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and body["issue"][0]["severity"] in ("error", "fatal")
    if code:
        assert body["issue"][0]["code"] == code
    return body


def test_xml_in_and_out(client: TestClient) -> None:
    created = client.post(
        "/fhir/Patient",
        content=XML_PATIENT,
        headers={"content-type": "application/fhir+xml", "accept": "application/fhir+xml"},
    )
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/fhir+xml")
    root = etree.fromstring(created.content)
    assert root.tag == f"{FHIR_NS}Patient"
    assert root.find(f"{FHIR_NS}name/{FHIR_NS}family").get("value") == "Okafor"
    as_json = client.get("/fhir/Patient/id1")
    assert as_json.json()["name"][0]["given"] == ["Ada"]
    via_format = client.get("/fhir/Patient/id1?_format=xml")
    assert via_format.headers["content-type"].startswith("application/fhir+xml")
    assert etree.fromstring(via_format.content).find(f"{FHIR_NS}gender").get("value") == "female"


def test_format_parameter_and_accept(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient())
    for fmt in ("json", "application/fhir+json", "application/json"):
        response = client.get(f"/fhir/Patient/id1?_format={fmt}")
        assert response.headers["content-type"].startswith("application/fhir+json")
    accept_xml = client.get("/fhir/Patient/id1", headers={"accept": "application/xml"})
    assert accept_xml.headers["content-type"].startswith("application/fhir+xml")
    weighted = client.get(
        "/fhir/Patient/id1",
        headers={"accept": "application/fhir+xml;q=0.5, application/fhir+json;q=0.9"},
    )
    assert weighted.headers["content-type"].startswith("application/fhir+json")
    assert_outcome(client.get("/fhir/Patient/id1", headers={"accept": "image/png"}), 406)
    assert_outcome(client.get("/fhir/Patient/id1?_format=yaml"), 406)


def test_pretty(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient())
    compact = client.get("/fhir/Patient/id1").content
    pretty = client.get("/fhir/Patient/id1?_pretty=true").content
    assert b"\n" not in compact
    assert b'\n  "resourceType": "Patient"' in pretty


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/fhir/Patient",
        content=b'{"resourceType": "Patient",',
        headers={"content-type": "application/fhir+json"},
    )
    assert_outcome(response, 400, "invalid")
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_non_object_and_empty_body_are_400(client: TestClient) -> None:
    headers = {"content-type": "application/fhir+json"}
    assert_outcome(client.post("/fhir/Patient", content=b"[1, 2]", headers=headers), 400)
    assert_outcome(client.post("/fhir/Patient", content=b"", headers=headers), 400)


def test_wrong_resource_type_is_400(client: TestClient) -> None:
    body = assert_outcome(client.post("/fhir/Patient", json={"resourceType": "Goal"}), 400)
    assert "Goal" in str(body["issue"])


def test_id_mismatch_on_update_is_400(client: TestClient) -> None:
    assert_outcome(client.put("/fhir/Patient/a", json=patient(id="b")), 400)
    assert_outcome(client.put("/fhir/Patient/a", json=patient()), 400)
    assert client.get("/fhir/Patient/a").status_code == 404


def test_unsupported_type_is_404(client: TestClient) -> None:
    assert_outcome(client.get("/fhir/Basic/1"), 404, "not-found")
    assert_outcome(client.post("/fhir/Basic", json={"resourceType": "Basic"}), 404)
    assert_outcome(client.get("/fhir/NotAType"), 404)


def test_unknown_element_and_bad_code_are_422_with_locations(client: TestClient) -> None:
    body = assert_outcome(
        client.post("/fhir/Patient", json=patient(colour="blue", gender="sometimes")), 422
    )
    expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
    assert any("colour" in e for e in expressions)
    bad_date = assert_outcome(
        client.post("/fhir/Patient", json=patient(birthDate="1961-13-45")), 422
    )
    assert "birthDate" in str(bad_date["issue"])


def test_bogus_status_is_refused_for_every_status_bound_type(client: TestClient) -> None:
    resources = [
        {
            "resourceType": "CarePlan",
            "status": "bogus",
            "intent": "plan",
            "subject": {"reference": "Patient/1"},
        },
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "bogus",
            "subject": {"reference": "Patient/1"},
        },
        {
            "resourceType": "Goal",
            "lifecycleStatus": "bogus",
            "description": {"text": "x"},
            "subject": {"reference": "Patient/1"},
        },
        {"resourceType": "Communication", "status": "bogus"},
        {"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}},
        {"resourceType": "Encounter", "status": "bogus", "class": {"code": "AMB"}},
    ]
    for resource in resources:
        response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
        assert_outcome(response, 422)


def test_unsupported_media_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/fhir/Patient", content=b"name=x", headers={"content-type": "text/plain"}
    )
    assert_outcome(response, 415)
    client.post("/fhir/Patient", json=patient())
    patch = client.patch("/fhir/Patient/id1", json=[], headers={"content-type": "application/json"})
    assert_outcome(patch, 415)


def test_method_not_allowed_is_405(client: TestClient) -> None:
    assert_outcome(client.delete("/fhir/metadata"), 405)
    assert_outcome(client.put("/fhir/Patient/id1/_history/1", json=patient()), 405)


def test_unknown_path_is_404_outcome(client: TestClient) -> None:
    assert_outcome(client.get("/fhir/Patient/1/2/3/4/5"), 404)


def test_body_over_limit_is_413_and_nothing_written(
    settings: Settings, system_headers: dict[str, str]
) -> None:
    app = create_app(settings.model_copy(update={"max_body_bytes": 200}))
    with TestClient(app, headers=system_headers) as small:
        big = patient(name=[{"family": "x" * 300}])
        assert_outcome(small.post("/fhir/Patient", json=big), 413)
        assert small.get("/fhir/Patient").json()["total"] == 0
        assert small.post("/fhir/Patient", json=patient()).status_code == 201


def test_bad_if_match_is_400(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient())
    response = client.put("/fhir/Patient/id1", json=patient(id="id1"), headers={"If-Match": "x"})
    assert_outcome(response, 400)


def test_server_error_is_500_outcome_and_rolls_back(
    settings: Settings, system_headers: dict[str, str]
) -> None:
    calls = iter(["fine-1", "fine-2"])

    def failing_id() -> str:
        return next(calls)  # StopIteration on the third create: an unexpected failure

    app = create_app(settings, new_id=failing_id)
    with TestClient(app, raise_server_exceptions=False, headers=system_headers) as flaky:
        assert flaky.post("/fhir/Patient", json=patient()).status_code == 201
        assert flaky.post("/fhir/Patient", json=patient()).status_code == 201
        assert_outcome(flaky.post("/fhir/Patient", json=patient()), 500, "exception")
        assert flaky.get("/fhir/Patient").json()["total"] == 2


def test_errors_in_xml_when_xml_asked(client: TestClient) -> None:
    response = client.get("/fhir/Patient/nope", headers={"accept": "application/fhir+xml"})
    assert response.status_code == 404
    root = etree.fromstring(response.content)
    assert root.tag == f"{FHIR_NS}OperationOutcome"
