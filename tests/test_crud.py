"""read, vread, create, update, patch, delete and their headers, through HTTP."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.factories import care_plan, patient, task

FHIR_JSON = "application/fhir+json"


def create(client: TestClient, resource: dict[str, object]) -> dict[str, object]:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_create_sets_id_meta_and_headers(client: TestClient) -> None:
    response = client.post("/fhir/Patient", json=patient(id="ignored-on-create"))
    assert response.status_code == 201
    body = response.json()
    assert body["id"] == "id1"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].startswith("2026-03-01T09:00:00.001")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == "http://testserver/fhir/Patient/id1/_history/1"
    assert response.headers["last-modified"] == "Sun, 01 Mar 2026 09:00:00 GMT"
    assert response.headers["content-type"].startswith(FHIR_JSON)


def test_read_returns_the_stored_bytes(client: TestClient) -> None:
    created = client.post("/fhir/Patient", json=patient())
    read = client.get("/fhir/Patient/id1")
    assert read.status_code == 200
    assert read.content == created.content
    assert read.headers["etag"] == 'W/"1"'


def test_decimals_and_timestamps_kept_as_written(client: TestClient) -> None:
    body = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"Body temperature"},'
        b'"effectiveDateTime":"2026-03-01T08:00:00.000+01:00",'
        b'"valueQuantity":{"value":38.50,"unit":"Cel","system":"http://unitsofmeasure.org",'
        b'"code":"Cel"}}'
    )
    response = client.post("/fhir/Observation", content=body, headers={"content-type": FHIR_JSON})
    assert response.status_code == 201, response.text
    stored = client.get(f"/fhir/Observation/{response.json()['id']}").content
    assert b'"value":38.50' in stored
    assert b'"effectiveDateTime":"2026-03-01T08:00:00.000+01:00"' in stored


def test_read_unknown_is_404_operation_outcome(client: TestClient) -> None:
    response = client.get("/fhir/Patient/nope")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["code"] == "not-found"


def test_update_versions_and_vread(client: TestClient) -> None:
    create(client, patient())
    updated = patient(id="id1", gender="male")
    response = client.put("/fhir/Patient/id1", json=updated)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    first = client.get("/fhir/Patient/id1/_history/1")
    assert first.status_code == 200
    assert first.json()["gender"] == "female"
    assert client.get("/fhir/Patient/id1/_history/2").json()["gender"] == "male"
    assert client.get("/fhir/Patient/id1/_history/9").status_code == 404


def test_update_creates_with_client_id(client: TestClient) -> None:
    response = client.put("/fhir/Patient/chosen-1", json=patient(id="chosen-1"))
    assert response.status_code == 201
    assert response.json()["id"] == "chosen-1"
    assert client.get("/fhir/Patient/chosen-1").status_code == 200


def test_if_match_stale_is_412_and_nothing_written(client: TestClient) -> None:
    create(client, patient())
    client.put("/fhir/Patient/id1", json=patient(id="id1", gender="male"))
    stale = client.put(
        "/fhir/Patient/id1",
        json=patient(id="id1", gender="other"),
        headers={"If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/id1").json()["gender"] == "male"
    fresh = client.put(
        "/fhir/Patient/id1",
        json=patient(id="id1", gender="other"),
        headers={"If-Match": 'W/"2"'},
    )
    assert fresh.status_code == 200
    assert fresh.json()["meta"]["versionId"] == "3"


def test_conditional_create(client: TestClient) -> None:
    identified = patient(identifier=[{"system": "urn:mrn", "value": "123"}])
    headers = {"If-None-Exist": "identifier=urn:mrn|123"}
    first = client.post("/fhir/Patient", json=identified, headers=headers)
    assert first.status_code == 201
    second = client.post("/fhir/Patient", json=identified, headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    create(client, identified)  # a duplicate made without the condition
    third = client.post("/fhir/Patient", json=identified, headers=headers)
    assert third.status_code == 412
    bundle = client.get("/fhir/Patient?identifier=urn:mrn|123").json()
    assert bundle["total"] == 2


def test_conditional_update(client: TestClient) -> None:
    identified = patient(identifier=[{"system": "urn:mrn", "value": "9"}])
    created = client.put("/fhir/Patient?identifier=urn:mrn|9", json=identified)
    assert created.status_code == 201
    changed = dict(identified, gender="male")
    updated = client.put("/fhir/Patient?identifier=urn:mrn|9", json=changed)
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    create(client, identified)
    ambiguous = client.put("/fhir/Patient?identifier=urn:mrn|9", json=changed)
    assert ambiguous.status_code == 412


def test_json_patch(client: TestClient) -> None:
    create(client, patient())
    operations = [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/active", "value": True},
    ]
    response = client.patch(
        "/fhir/Patient/id1",
        content=json.dumps(operations),
        headers={"content-type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "male"
    assert response.json()["active"] is True
    assert response.json()["meta"]["versionId"] == "2"


def test_json_patch_that_breaks_the_resource_is_refused(client: TestClient) -> None:
    create(client, patient())
    response = client.patch(
        "/fhir/Patient/id1",
        content=json.dumps([{"op": "replace", "path": "/gender", "value": "bogus"}]),
        headers={"content-type": "application/json-patch+json"},
    )
    assert response.status_code == 422
    assert client.get("/fhir/Patient/id1").json()["gender"] == "female"


def test_delete_then_read_is_410_and_history_keeps_it(client: TestClient) -> None:
    create(client, patient())
    deleted = client.delete("/fhir/Patient/id1")
    assert deleted.status_code == 200
    assert client.get("/fhir/Patient/id1").status_code == 410
    assert client.get("/fhir/Patient?_id=id1").json()["total"] == 0
    history = client.get("/fhir/Patient/id1/_history").json()
    assert history["type"] == "history"
    assert history["total"] == 2
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert client.get("/fhir/Patient/id1/_history/1").status_code == 200
    assert client.get("/fhir/Patient/id1/_history/2").status_code == 410
    again = client.put("/fhir/Patient/id1", json=patient(id="id1"))
    assert again.status_code == 201
    assert again.json()["meta"]["versionId"] == "3"


def test_type_history_since_and_count(client: TestClient) -> None:
    for _ in range(3):
        create(client, patient())
    create(client, care_plan("id1"))
    history = client.get("/fhir/Patient/_history?_count=2").json()
    assert history["total"] == 3
    assert len(history["entry"]) == 2
    next_url = next(link["url"] for link in history["link"] if link["relation"] == "next")
    create(client, patient())  # written while paging: must not shift the next page
    page2 = client.get(next_url.replace("http://testserver", "")).json()
    assert [e["resource"]["id"] for e in page2["entry"]] == ["id1"]
    since = client.get("/fhir/Patient/_history?_since=2026-03-01T09:00:00.003Z").json()
    assert {e["resource"]["id"] for e in since["entry"]} == {"id3", "id5"}
    system = client.get("/fhir/_history").json()
    assert system["total"] == 5


def test_prefer_return(client: TestClient) -> None:
    minimal = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"].endswith("/Patient/id1/_history/1")
    outcome = client.post(
        "/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"
    full = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"


def test_task_status_required_binding(client: TestClient) -> None:
    create(client, patient())
    response = client.post("/fhir/Task", json=task("id1", status="bogus"))
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Task.status"]
    assert client.get("/fhir/Task").json()["total"] == 0


def test_plain_read_fast_path_matches_the_framework_read(client: TestClient) -> None:
    client.post("/fhir/Patient", json=patient())
    client.put("/fhir/Patient/id1", json=patient(id="id1", gender="male"))
    fast = client.get("/fhir/Patient/id1")  # answered by rest/fast_paths.py
    framework = client.get("/fhir/Patient/id1?_format=json")  # by rest/read.py
    assert fast.status_code == framework.status_code == 200
    assert fast.content == framework.content
    for header in ("etag", "last-modified", "content-type", "content-length"):
        assert fast.headers[header] == framework.headers[header]
    assert fast.headers["etag"] == 'W/"2"'
    # Whatever the fast path does not serve still gets the framework's answers.
    not_modified = client.get("/fhir/Patient/id1", headers={"If-None-Match": 'W/"2"'})
    assert not_modified.status_code == 304
    xml = client.get("/fhir/Patient/id1", headers={"accept": "application/fhir+xml"})
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    client.delete("/fhir/Patient/id1")
    assert client.get("/fhir/Patient/id1").status_code == 410


def test_http_date_is_the_standard_library_s_imf_fixdate() -> None:
    from datetime import UTC, datetime, timedelta, timezone
    from email.utils import format_datetime

    from careplan_fhir.rest.context import http_date

    moment = datetime(2026, 1, 1, 0, 0, 0, 999999)
    for _ in range(400):  # every weekday and month, both ends of the day
        moment += timedelta(days=1, hours=7, minutes=13, seconds=59)
        expected = format_datetime(moment.replace(tzinfo=UTC), usegmt=True)
        assert http_date(moment) == expected
        plus_two = moment.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
        assert http_date(plus_two) == expected
