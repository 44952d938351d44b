"""rest/fast_paths.py answers as the framework routes would, and leaves everything else to them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import care_plan, patient


def without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def test_search_fast_path_matches_the_framework_search(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient())
    for _ in range(3):
        client.post("/fhir/CarePlan", json=care_plan("id1"))
    query = "patient=Patient/id1&category=assess-plan&_count=2&_include=CarePlan:subject"
    fast = client.get(f"/fhir/CarePlan?{query}")  # fast path
    framework = client.post(  # the framework's POST _search route
        "/fhir/CarePlan/_search",
        content=query,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert fast.status_code == framework.status_code == 200
    assert fast.json()["total"] == 3
    assert fast.json()["entry"] == framework.json()["entry"]
    assert fast.json()["link"] == framework.json()["link"]
    assert fast.headers["content-type"] == framework.headers["content-type"]


def test_search_errors_still_come_from_the_framework(client: TestClient) -> None:
    response = client.get("/fhir/CarePlan?date=not-a-date")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    refused = client.get("/fhir/CarePlan?status=active", headers={"accept": "image/png"})
    assert refused.status_code == 406


def test_create_fast_path_matches_the_framework_create(client: TestClient) -> None:
    fast = client.post("/fhir/Patient", json=patient())  # fast path
    framework = client.post(  # a query string sends it through the framework route
        "/fhir/Patient?_format=json", json=patient()
    )
    assert fast.status_code == framework.status_code == 201
    assert without_server_fields(fast.json()) == without_server_fields(framework.json())
    assert fast.headers["location"].endswith("/fhir/Patient/id1/_history/1")
    assert framework.headers["location"].endswith("/fhir/Patient/id2/_history/1")
    for header in ("etag", "content-type"):
        assert fast.headers[header] == framework.headers[header]


def test_failed_create_writes_nothing_and_gets_the_framework_error(client: TestClient) -> None:
    invalid = client.post("/fhir/Patient", json=patient(gender="bogus"))
    assert invalid.status_code == 422
    assert invalid.json()["issue"][0]["expression"] == ["Patient.gender"]
    wrong_type = client.post("/fhir/Patient", json=care_plan("x"))
    assert wrong_type.status_code == 400
    not_acceptable = client.post("/fhir/Patient", json=patient(), headers={"accept": "image/png"})
    assert not_acceptable.status_code == 406
    assert client.get("/fhir/Patient").json()["total"] == 0
    created = client.post("/fhir/Patient", json=patient())
    assert created.status_code == 201
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_create_fast_path_honours_prefer(client: TestClient) -> None:
    minimal = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"].endswith("/fhir/Patient/id1/_history/1")
    outcome = client.post(
        "/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_a_create_that_fails_after_commit_is_not_run_twice(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careplan_fhir.rest import group_commit as create_module

    def broken_response(*_args: object) -> object:
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(create_module, "write_response", broken_response)
    response = client.post("/fhir/Patient", json=patient())
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    monkeypatch.undo()
    assert client.get("/fhir/Patient").json()["total"] == 1
