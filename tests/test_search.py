"""FHIR search through HTTP: parameter types, modifiers, prefixes, result parameters, errors.

Semantics follow https://hl7.org/fhir/R4/search.html; the US Core searches follow
https://hl7.org/fhir/us/core/STU6.1/ (CarePlan, Goal) and the project's Task/Communication uses.
Server ids are ``id1, id2, ...`` in creation order; each write ticks the clock by 1 ms from
2026-03-01T09:00:00.000Z, so ``idN`` of a fresh database was last updated at ``.00N``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from lxml import etree

from tests.factories import (
    ASSESS_PLAN,
    care_plan,
    communication,
    goal,
    observation,
    patient,
    plan_definition,
    provenance,
    task,
)

BASE = "http://testserver/fhir"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN = "http://hospital.example.org/mrn"
COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def search(client: TestClient, query: str, **headers: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    return body


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def found(client: TestClient, query: str) -> list[str]:
    """Ids of the matches of ``query``, in the order returned; the total must agree."""
    bundle = search(client, query)
    matches = ids(bundle)
    assert bundle["total"] == len(matches), query
    return matches


def bad_request(client: TestClient, query: str, **headers: str) -> dict[str, Any]:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 400, (query, response.text)
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return body


# -- token -----------------------------------------------------------------------------------


def _token_patients(client: TestClient) -> None:
    create(  # id1
        client,
        patient(
            active=True,
            identifier=[{"system": MRN, "value": "123"}],
            telecom=[{"system": "email", "value": "sam@example.org"}],
        ),
    )
    create(  # id2
        client,
        patient(
            active=False,
            gender="male",
            identifier=[{"system": "http://other.example.org/ids", "value": "123"}],
        ),
    )
    create(client, patient(gender="other", identifier=[{"value": "456"}]))  # id3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("gender=female", ["id1"]),
        ("gender=male,other", ["id2", "id3"]),
        ("gender:not=female", ["id2", "id3"]),
        ("gender:not=male", ["id1", "id3"]),
        ("active=true", ["id1"]),
        ("active=false", ["id2"]),
        ("active:not=true", ["id2", "id3"]),
        ("active:missing=true", ["id3"]),
        ("active:missing=false", ["id1", "id2"]),
        ("identifier=123", ["id1", "id2"]),
        (f"identifier={MRN}|123", ["id1"]),
        (f"identifier={MRN}|456", []),
        (f"identifier={MRN}|", ["id1"]),
        ("identifier=|456", ["id3"]),
        ("identifier=|123", []),
        ("identifier:missing=true", []),
        ("email=sam@example.org", ["id1"]),
        ("email:missing=true", ["id2", "id3"]),
        ("telecom=email|sam@example.org", ["id1"]),
        ("_id=id2", ["id2"]),
        ("_id=id1,id3", ["id1", "id3"]),
        ("_id:not=id1", ["id2", "id3"]),
        ("_id=nope", []),
    ],
)
def test_token_search(client: TestClient, query: str, expected: list[str]) -> None:
    _token_patients(client)
    assert found(client, f"Patient?{query}") == expected


def test_token_system_and_code_on_codeable_concepts(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2: assess-plan
    other = {"coding": [{"system": "http://example.org/cats", "code": "assess-plan"}]}
    create(client, care_plan("id1", category=[other]))  # id3
    create(client, care_plan("id1", category=[{"coding": [{"code": "assess-plan"}]}]))  # id4
    create(client, care_plan("id1", category=[{"text": "free text only"}]))  # id5
    system = ASSESS_PLAN["coding"][0]["system"]
    assert found(client, "CarePlan?category=assess-plan") == ["id2", "id3", "id4"]
    assert found(client, f"CarePlan?category={system}|assess-plan") == ["id2"]
    assert found(client, "CarePlan?category=|assess-plan") == ["id4"]
    assert found(client, "CarePlan?category=http://example.org/cats|") == ["id3"]
    assert found(client, "CarePlan?category:not=assess-plan") == ["id5"]
    assert found(client, "CarePlan?category:missing=true") == ["id5"]
    assert found(client, "CarePlan?category:missing=false") == ["id2", "id3", "id4"]


def test_token_codes_are_case_sensitive(client: TestClient) -> None:
    _token_patients(client)
    assert found(client, "Patient?gender=Female") == []


# -- reference -------------------------------------------------------------------------------


def _reference_data(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient(name=[{"family": "Other"}]))  # id2
    create(client, care_plan("id1"))  # id3
    create(client, care_plan("id2"))  # id4
    create(  # id5: a reference to our own server, written as an absolute URL
        client, care_plan("x", subject={"reference": f"{BASE}/Patient/id1"})
    )
    create(  # id6: a reference to another server's Patient/id1 is not our Patient/id1
        client, care_plan("x", subject={"reference": "http://other.example.org/fhir/Patient/id1"})
    )
    create(client, care_plan("x", subject={"reference": "Group/id1"}))  # id7
    create(client, care_plan("x", subject={"display": "no reference at all"}))  # id8


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("subject=Patient/id1", ["id3", "id5"]),
        ("subject=id1", ["id3", "id5", "id7"]),
        (f"subject={BASE}/Patient/id1", ["id3", "id5"]),
        ("subject=http://other.example.org/fhir/Patient/id1", ["id6"]),
        ("subject:Patient=id1", ["id3", "id5"]),
        ("subject:Group=id1", ["id7"]),
        ("subject:Group=Patient/id1", []),
        ("subject=Patient/id1,Patient/id2", ["id3", "id4", "id5"]),
        ("subject=Patient/id1/_history/1", ["id3", "id5"]),
        ("patient=id1", ["id3", "id5"]),
        ("patient=Patient/id2", ["id4"]),
        ("patient=Group/id1", []),
        ("subject:missing=true", ["id8"]),
        ("patient:missing=true", ["id7", "id8"]),
        ("subject:missing=false", ["id3", "id4", "id5", "id6", "id7"]),
    ],
)
def test_reference_search(client: TestClient, query: str, expected: list[str]) -> None:
    _reference_data(client)
    assert found(client, f"CarePlan?{query}") == expected


def test_reference_search_rejects_malformed_values(client: TestClient) -> None:
    bad_request(client, "CarePlan?subject=a/b/c")
    bad_request(client, "CarePlan?subject:nonsense=Patient/1")


def test_canonical_reference_with_url_and_version(client: TestClient) -> None:
    create(client, patient())  # id1
    url = "http://example.org/fhir/PlanDefinition/knee-recovery"
    create(client, care_plan("id1", instantiatesCanonical=[f"{url}|1.0"]))  # id2
    create(client, care_plan("id1", instantiatesCanonical=[f"{url}|2.0"]))  # id3
    create(client, care_plan("id1", instantiatesCanonical=[url]))  # id4
    create(client, care_plan("id1", instantiatesCanonical=[f"{url}-other"]))  # id5
    assert found(client, f"CarePlan?instantiates-canonical={url}") == ["id2", "id3", "id4"]
    assert found(client, f"CarePlan?instantiates-canonical={url}|1.0") == ["id2"]
    assert found(client, f"CarePlan?instantiates-canonical={url}|2.0,{url}|3.0") == ["id3"]
    # The canonical names another server: our PlanDefinition/knee-recovery is not it.
    assert found(client, "CarePlan?instantiates-canonical=PlanDefinition/knee-recovery") == []


# -- date ------------------------------------------------------------------------------------


def _birthdates(client: TestClient) -> None:
    for day in ("2026-02-28", "2026-03-01", "2026-03-02", "2027-01-01"):
        create(client, patient(birthDate=day))  # id1..id4
    create(client, patient(birthDate="2026-03"))  # id5: month precision
    create(client, {"resourceType": "Patient"})  # id6: no birthDate


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("birthdate=2026-03-01", ["id2"]),
        ("birthdate=eq2026-03-01", ["id2"]),
        ("birthdate=2026-03", ["id2", "id3", "id5"]),
        ("birthdate=2026", ["id1", "id2", "id3", "id5"]),
        ("birthdate=ne2026-03-01", ["id1", "id3", "id4", "id5"]),
        ("birthdate=gt2026-03-01", ["id3", "id4", "id5"]),
        ("birthdate=ge2026-03-01", ["id2", "id3", "id4", "id5"]),
        ("birthdate=lt2026-03-01", ["id1"]),
        ("birthdate=le2026-03-01", ["id1", "id2"]),
        ("birthdate=sa2026-03-01", ["id3", "id4"]),
        ("birthdate=eb2026-03-01", ["id1"]),
        ("birthdate=sa2026-03", ["id4"]),
        ("birthdate=eb2026-03", ["id1"]),
        ("birthdate=gt2026-03-01T12:00:00Z", ["id2", "id3", "id4", "id5"]),
        ("birthdate=2026-03-01T12:00:00Z", []),
        ("birthdate=ge2026-03-01&birthdate=lt2026-03-02", ["id2", "id5"]),
        ("birthdate=2026-02-28,2027", ["id1", "id4"]),
        ("birthdate:missing=true", ["id6"]),
    ],
)
def test_date_prefixes_and_precision(client: TestClient, query: str, expected: list[str]) -> None:
    _birthdates(client)
    assert found(client, f"Patient?{query}") == expected


def test_date_approximately_is_near_the_value(client: TestClient) -> None:
    _birthdates(client)
    near = found(client, "Patient?birthdate=ap2026-03-01")
    assert {"id1", "id2", "id3"} <= set(near)
    assert "id6" not in near
    assert found(client, "Patient?birthdate=ap1900-01-01") == []


def test_date_time_zones_and_seconds(client: TestClient) -> None:
    create(client, patient())  # id1
    for moment in (
        "2026-03-01T10:00:00+02:00",  # id2: 08:00Z
        "2026-03-01T08:30:00Z",  # id3
        "2026-03-01T09:59:59.5Z",  # id4
    ):
        create(client, communication("id1", sent=moment))
    assert found(client, "Communication?sent=2026-03-01T08:00:00Z") == ["id2"]
    assert found(client, f"Communication?sent={quote('2026-03-01T10:00:00+02:00')}") == ["id2"]
    assert found(client, f"Communication?sent={quote('2026-03-01T09:30:00+01:00')}") == ["id3"]
    assert found(client, "Communication?sent=2026-03-01T08:30Z") == ["id3"]
    assert found(client, "Communication?sent=gt2026-03-01T08:30Z") == ["id4"]
    assert found(client, "Communication?sent=lt2026-03-01T08:30Z") == ["id2"]
    assert found(client, "Communication?sent=2026-03-01T09:59:59Z") == ["id4"]
    assert found(client, "Communication?sent=2026-03-01") == ["id2", "id3", "id4"]
    # A "+" left unencoded arrives as a space; read it as the time-zone sign it was.
    assert found(client, "Communication?sent=2026-03-01T10:00:00+02:00") == ["id2"]


def test_care_plan_date_on_period_with_open_end(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1", period={"start": "2026-03-01"}))  # id2: open end
    create(client, care_plan("id1", period={"start": "2026-01-01", "end": "2026-02-01"}))  # id3
    create(client, care_plan("id1", period={"end": "2025-12-31"}))  # id4: open start
    create(client, care_plan("id1", period={"start": "2026-03-05", "end": "2026-03-06"}))  # id5
    del_period = care_plan("id1")
    del del_period["period"]
    create(client, del_period)  # id6
    assert found(client, "CarePlan?date=ge2026-03-01") == ["id2", "id5"]
    assert found(client, "CarePlan?date=gt2030-01-01") == ["id2"]
    assert found(client, "CarePlan?date=lt2026-01-15") == ["id3", "id4"]
    assert found(client, "CarePlan?date=le2025-06-01") == ["id4"]
    assert found(client, "CarePlan?date=2026-03") == ["id5"]
    assert found(client, "CarePlan?date=2026") == ["id3", "id5"]
    assert found(client, "CarePlan?date=sa2026-02-15") == ["id2", "id5"]
    assert found(client, "CarePlan?date=eb2026-02-15") == ["id3", "id4"]
    assert found(client, "CarePlan?date=ne2026") == ["id2", "id4"]
    assert found(client, "CarePlan?date:missing=true") == ["id6"]


def test_task_due_date_and_period(client: TestClient) -> None:
    create(client, patient())  # id1
    create(  # id2
        client,
        task(
            "id1",
            restriction={"period": {"end": "2026-03-10"}},
            executionPeriod={"start": "2026-03-02T08:00:00Z"},
        ),
    )
    create(client, task("id1", restriction={"period": {"end": "2026-03-20"}}))  # id3
    create(client, task("id1"))  # id4
    # An open start reaches below any value: both restrictions intersect "le".
    assert found(client, "Task?due-date=le2026-03-10") == ["id2", "id3"]
    assert found(client, "Task?due-date=eb2026-03-12") == ["id2"]
    assert found(client, "Task?due-date=gt2026-03-10") == ["id3"]
    assert found(client, "Task?due-date=2026-03-20") == []  # open start: not contained
    assert found(client, "Task?due-date:missing=true") == ["id4"]
    assert found(client, "Task?period=ge2026-03-02") == ["id2"]
    assert found(client, "Task?period=lt2026-03-01") == []


def test_goal_target_date(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, goal("id1", target=[{"dueDate": "2026-04-01"}]))  # id2
    create(client, goal("id1", target=[{"dueDate": "2026-05-01"}, {"dueDate": "2026-06-01"}]))
    create(client, goal("id1"))  # id4
    assert found(client, "Goal?target-date=2026-04-01") == ["id2"]
    assert found(client, "Goal?target-date=gt2026-04-15") == ["id3"]
    assert found(client, "Goal?target-date=2026-06") == ["id3"]
    assert found(client, "Goal?target-date=le2026-05-01") == ["id2", "id3"]
    assert found(client, "Goal?patient=id1&target-date=ge2026-04-01") == ["id2", "id3"]
    assert found(client, "Goal?target-date:missing=true") == ["id4"]


@pytest.mark.parametrize(
    "query",
    [
        "birthdate=garbage",
        "birthdate=2026-13-01",
        "birthdate=2026-02-30",
        "birthdate=xx2026-03-01",
        "birthdate=gt",
        "birthdate=2026-03-01T25:00Z",
        "_lastUpdated=yesterday",
    ],
)
def test_bad_date_values_are_400(client: TestClient, query: str) -> None:
    bad_request(client, f"Patient?{query}")


# -- _lastUpdated ----------------------------------------------------------------------------


def test_last_updated_everywhere(client: TestClient) -> None:
    create(client, patient())  # id1 at .001
    create(client, care_plan("id1"))  # id2 at .002
    create(client, care_plan("id1"))  # id3 at .003
    create(client, goal("id1"))  # id4 at .004
    assert found(client, "CarePlan?_lastUpdated=2026-03-01T09:00:00.002Z") == ["id2"]
    assert found(client, "CarePlan?_lastUpdated=gt2026-03-01T09:00:00.002Z") == ["id3"]
    assert found(client, "CarePlan?_lastUpdated=ge2026-03-01T09:00:00.002Z") == ["id2", "id3"]
    assert found(client, "CarePlan?_lastUpdated=lt2026-03-01T09:00:00.003Z") == ["id2"]
    assert found(client, "CarePlan?_lastUpdated=le2026-03-01T09:00:00.003Z") == ["id2", "id3"]
    assert found(client, "CarePlan?_lastUpdated=ne2026-03-01T09:00:00.003Z") == ["id2"]
    assert found(client, "CarePlan?_lastUpdated=2026-03-01") == ["id2", "id3"]
    assert found(client, "CarePlan?_lastUpdated=2026-03-02") == []
    assert found(client, "CarePlan?_lastUpdated=sa2026-02-28") == ["id2", "id3"]
    assert found(client, "CarePlan?_lastUpdated=eb2026-03-02") == ["id2", "id3"]
    assert found(client, "Goal?_lastUpdated=ge2026-03-01T09:00Z") == ["id4"]
    assert found(client, "Patient?_lastUpdated=lt2026-03-01T09:00:00.002Z") == ["id1"]
    assert found(
        client,
        "CarePlan?_lastUpdated=gt2026-03-01T09:00:00.001Z&_lastUpdated=lt2026-03-01T09:00:00.003Z",
    ) == ["id2"]
    client.put("/fhir/CarePlan/id2", json=care_plan("id1", id="id2"))  # at .005
    assert found(client, "CarePlan?_lastUpdated=gt2026-03-01T09:00:00.004Z") == ["id2"]


# -- string ----------------------------------------------------------------------------------


def _named_patients(client: TestClient) -> None:
    create(client, patient(name=[{"family": "Müller", "given": ["Anna", "Maria"]}]))  # id1
    create(client, patient(name=[{"family": "Mull", "given": ["Ben"]}]))  # id2
    create(client, patient(name=[{"family": "Smith-Muller", "given": ["Carl"]}]))  # id3
    create(client, patient(name=[{"text": "Dora O'Neil", "family": "O'Neil"}]))  # id4
    create(client, patient(name=[{"family": "50%_off"}]))  # id5


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("name=muller", ["id1"]),
        ("name=MÜLLER", ["id1"]),
        ("name=mul", ["id1", "id2"]),
        ("name=mull", ["id1", "id2"]),
        ("family=muller", ["id1"]),
        ("given=maria", ["id1"]),
        ("given=muller", []),
        ("name=anna", ["id1"]),
        ("name=dora", ["id4"]),
        ("name=dora o'n", ["id4"]),
        ("family:exact=Müller", ["id1"]),
        ("family:exact=müller", []),
        ("family:exact=Muller", []),
        ("family:exact=Mul", []),
        ("family:contains=muller", ["id1", "id3"]),
        ("family:contains=ULL", ["id1", "id2", "id3"]),
        ("family=50%25", ["id5"]),
        ("family=5%25", []),
        ("family:contains=%25_", ["id5"]),
        ("family:contains=_", ["id5"]),
        ("name=muller,ben", ["id1", "id2"]),
        ("name=mul&given=ben", ["id2"]),
        ("family:missing=true", []),
    ],
)
def test_string_search(client: TestClient, query: str, expected: list[str]) -> None:
    _named_patients(client)
    assert found(client, f"Patient?{query}") == expected


def test_plan_definition_title_name_and_url(client: TestClient) -> None:
    create(client, plan_definition())  # id1
    create(  # id2
        client,
        plan_definition(
            url="http://example.org/fhir/PlanDefinition/hip-recovery",
            name="HipRecovery",
            title="Récupération après prothèse de hanche",
        ),
    )
    create(client, plan_definition(url="urn:uuid:7d4e5d0a-0000-4000-8000-000000000001"))  # id3
    assert found(client, "PlanDefinition?title=recovery") == ["id1", "id3"]
    assert found(client, "PlanDefinition?title=recuperation") == ["id2"]
    assert found(client, "PlanDefinition?title:contains=knee") == ["id1", "id3"]
    assert found(client, "PlanDefinition?name=hip") == ["id2"]
    assert found(client, "PlanDefinition?name:exact=KneeRecovery") == ["id1", "id3"]
    url = "http://example.org/fhir/PlanDefinition/knee-recovery"
    assert found(client, f"PlanDefinition?url={url}") == ["id1"]
    assert found(client, "PlanDefinition?url=http://example.org/fhir/PlanDefinition") == []
    assert found(client, "PlanDefinition?url:below=http://example.org/fhir/") == ["id1", "id2"]
    assert found(client, "PlanDefinition?url=urn:uuid:7d4e5d0a-0000-4000-8000-000000000001") == [
        "id3"
    ]
    assert found(client, f"PlanDefinition?url={url}&version=1.0") == ["id1"]
    assert found(client, f"PlanDefinition?url={url}&version=2.0") == []
    assert found(client, "PlanDefinition?status=active&title=hip") == []


# -- quantity --------------------------------------------------------------------------------


def _pain_scores(client: TestClient) -> None:
    create(client, patient())  # id1
    for value, code in ((5.4, "mg"), (5.0, "mg"), (100, "g"), (6, "{score}")):
        create(  # id2..id5
            client,
            observation("id1", valueQuantity={"value": value, "system": UCUM, "code": code}),
        )
    create(client, observation("id1", valueQuantity={"value": 5.4, "unit": "mg"}))  # id6
    create(client, observation("id1", valueString="fine"))  # id7


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("value-quantity=5.4", ["id2", "id6"]),
        ("value-quantity=5", ["id2", "id3", "id6"]),
        ("value-quantity=5.0", ["id3"]),
        (f"value-quantity=5.4|{UCUM}|mg", ["id2"]),
        ("value-quantity=5.4||mg", ["id2", "id6"]),
        (f"value-quantity=5.4|{UCUM}|g", []),
        ("value-quantity=gt5.4", ["id4", "id5"]),
        ("value-quantity=ge5.4", ["id2", "id4", "id5", "id6"]),
        ("value-quantity=lt5.4", ["id3"]),
        ("value-quantity=le5", ["id3"]),
        ("value-quantity=ne5.4", ["id3", "id4", "id5"]),
        (f"value-quantity=gt5|{UCUM}|mg", ["id2"]),
        ("value-quantity=ap100", ["id4"]),
        ("value-quantity=1e2", ["id4"]),
        ("value-quantity=5.4,6", ["id2", "id5", "id6"]),
        ("value-quantity=gt5&value-quantity=lt6", ["id2", "id6"]),
        ("value-quantity:missing=true", ["id7"]),
    ],
)
def test_quantity_search(client: TestClient, query: str, expected: list[str]) -> None:
    _pain_scores(client)
    assert found(client, f"Observation?{query}") == expected


@pytest.mark.parametrize("value", ["abc", "xx5", "NaN", "Infinity", "gt"])
def test_bad_quantities_are_400(client: TestClient, value: str) -> None:
    bad_request(client, f"Observation?value-quantity={value}")


# -- OR, AND and escaping --------------------------------------------------------------------


def test_escaped_comma_is_part_of_the_value(client: TestClient) -> None:
    create(client, patient(name=[{"family": "Smith, Jr"}]))  # id1
    create(client, patient(name=[{"family": "Smith"}]))  # id2
    create(client, patient(name=[{"family": "Jr"}]))  # id3
    assert found(client, "Patient?family:exact=" + quote("Smith\\, Jr")) == ["id1"]
    assert found(client, "Patient?family:exact=" + quote("Smith, Jr")) == ["id2"]
    assert found(client, "Patient?family:exact=Smith,Jr") == ["id2", "id3"]
    assert found(client, "Patient?family=smith&family=" + quote("smith\\, j")) == ["id1"]


def test_escaped_pipe_in_token_value(client: TestClient) -> None:
    create(client, patient(identifier=[{"system": MRN, "value": "a|b"}]))  # id1
    create(client, patient(identifier=[{"system": MRN, "value": "a"}]))  # id2
    assert found(client, "Patient?identifier=" + quote(f"{MRN}|a\\|b")) == ["id1"]
    assert found(client, "Patient?identifier=" + quote("a\\|b")) == ["id1"]


def test_or_within_and_across_parameters(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient())  # id2
    create(client, care_plan("id1", status="active"))  # id3
    create(client, care_plan("id1", status="completed"))  # id4
    create(client, care_plan("id2", status="draft"))  # id5
    assert found(client, "CarePlan?status=active,completed") == ["id3", "id4"]
    assert found(client, "CarePlan?status=active,completed&patient=id2") == []
    assert found(client, "CarePlan?status=active,draft&patient=id1,id2") == ["id3", "id5"]
    assert found(client, "CarePlan?status=active,draft&status=draft,completed") == ["id5"]
    assert found(client, "CarePlan?status:not=active&status:not=draft") == ["id4"]


# -- US Core and project searches ------------------------------------------------------------


def test_us_core_care_plan_searches(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient())  # id2
    create(client, care_plan("id1"))  # id3
    create(client, care_plan("id1", status="completed", period={"start": "2025-01-01"}))  # id4
    create(  # id5
        client,
        care_plan(
            "id1",
            category=[{"coding": [{"system": "http://snomed.info/sct", "code": "736353004"}]}],
        ),
    )
    create(client, care_plan("id2"))  # id6
    assert found(client, "CarePlan?patient=id1&category=assess-plan") == ["id3", "id4"]
    assert found(client, "CarePlan?patient=Patient/id1&category=assess-plan&status=active") == [
        "id3"
    ]
    system = ASSESS_PLAN["coding"][0]["system"]
    query = f"CarePlan?patient=id1&category={system}|assess-plan&status=active,completed"
    assert found(client, f"{query}&date=ge2026-01-01") == ["id3", "id4"]
    assert found(client, f"{query}&date=ge2026-01-01&date=lt2025-06-01") == ["id4"]
    assert found(client, f"{query}&date=sa2025-12-31") == ["id3"]
    assert found(client, "CarePlan?patient=id2&category=assess-plan") == ["id6"]


def test_us_core_goal_searches(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient())  # id2
    create(client, goal("id1"))  # id3
    create(client, goal("id1", lifecycleStatus="completed"))  # id4
    create(client, goal("id2"))  # id5
    assert found(client, "Goal?patient=id1") == ["id3", "id4"]
    assert found(client, "Goal?patient=id1&lifecycle-status=active") == ["id3"]
    assert found(client, "Goal?patient=id1&lifecycle-status=active,completed") == ["id3", "id4"]
    assert found(client, "Goal?subject=Patient/id2&lifecycle-status=active") == ["id5"]


def test_task_searches(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient())  # id2
    create(client, care_plan("id1"))  # id3
    create(client, goal("id1"))  # id4
    check = {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}
    create(  # id5
        client,
        task("id1", "id3", focus={"reference": "Goal/id4"}, code=check, status="in-progress"),
    )
    create(client, task("id1", "id3", owner={"reference": "Practitioner/nurse"}))  # id6
    create(client, task("id2", status="completed"))  # id7
    assert found(client, "Task?patient=id1") == ["id5", "id6"]
    assert found(client, "Task?patient=id1&status=requested") == ["id6"]
    assert found(client, "Task?patient=id1&status=requested,in-progress") == ["id5", "id6"]
    assert found(client, "Task?status=completed") == ["id7"]
    assert found(client, "Task?owner=Practitioner/nurse") == ["id6"]
    assert found(client, "Task?owner=Patient/id1") == ["id5"]
    assert found(client, "Task?owner:Practitioner=nurse") == ["id6"]
    assert found(client, "Task?based-on=CarePlan/id3") == ["id5", "id6"]
    assert found(client, "Task?based-on=id3&status=in-progress") == ["id5"]
    assert found(client, "Task?focus=Goal/id4") == ["id5"]
    assert found(client, "Task?code=fulfill") == ["id5"]
    assert found(client, "Task?code=http://hl7.org/fhir/CodeSystem/task-code|fulfill") == ["id5"]
    assert found(client, "Task?subject=Patient/id2") == ["id7"]


def test_communication_searches(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    alert = {"coding": [{"system": COMM_CATEGORY, "code": "alert"}]}
    reminder = {"coding": [{"system": COMM_CATEGORY, "code": "reminder"}]}
    create(  # id3
        client,
        communication(
            "id1",
            category=[alert],
            sent="2026-03-02T10:00:00Z",
            basedOn=[{"reference": "CarePlan/id2"}],
            recipient=[{"reference": "Patient/id1"}],
            sender={"reference": "Practitioner/nurse"},
        ),
    )
    create(  # id4
        client,
        communication(
            "id1",
            category=[reminder],
            sent="2026-03-05T10:00:00Z",
            recipient=[{"reference": "Practitioner/nurse"}],
            sender={"reference": "Patient/id1"},
        ),
    )
    assert found(client, "Communication?category=alert") == ["id3"]
    assert found(client, f"Communication?category={COMM_CATEGORY}|reminder") == ["id4"]
    assert found(client, "Communication?sent=ge2026-03-03") == ["id4"]
    assert found(client, "Communication?sent=2026-03") == ["id3", "id4"]
    assert found(client, "Communication?based-on=CarePlan/id2") == ["id3"]
    assert found(client, "Communication?recipient=Patient/id1") == ["id3"]
    assert found(client, "Communication?recipient=Practitioner/nurse") == ["id4"]
    assert found(client, "Communication?sender=Patient/id1") == ["id4"]
    assert found(client, "Communication?sender:Practitioner=nurse") == ["id3"]
    assert found(client, "Communication?patient=id1&category=alert,reminder") == ["id3", "id4"]


def test_provenance_target_and_patient(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    create(client, provenance("CarePlan/id2", "Patient/id1"))  # id3
    create(client, provenance("CarePlan/id2"))  # id4
    assert found(client, "Provenance?target=CarePlan/id2") == ["id3", "id4"]
    assert found(client, "Provenance?target=Patient/id1") == ["id3"]
    assert found(client, "Provenance?target:CarePlan=id2") == ["id3", "id4"]
    assert found(client, "Provenance?patient=id1") == ["id3"]
    assert found(client, "Provenance?recorded=2026-03-01T09:00:00Z") == ["id3", "id4"]


def test_deleted_resources_are_not_found(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    create(client, care_plan("id1"))  # id3
    assert client.delete("/fhir/CarePlan/id2").status_code in (200, 204)
    assert found(client, "CarePlan?patient=id1") == ["id3"]
    assert found(client, "CarePlan?_id=id2") == []
    assert found(client, "CarePlan") == ["id3"]


def test_updates_reindex(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    client.put("/fhir/CarePlan/id2", json=care_plan("id1", id="id2", status="completed"))
    assert found(client, "CarePlan?status=active") == []
    assert found(client, "CarePlan?status=completed") == ["id2"]


def test_tag_profile_and_security(client: TestClient) -> None:
    followup = {"system": "http://example.org/tags", "code": "follow-up"}
    profile = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan"
    create(client, patient())  # id1
    create(client, care_plan("id1", meta={"tag": [followup], "profile": [profile]}))  # id2
    create(  # id3
        client,
        care_plan(
            "id1",
            meta={
                "security": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": "R",
                    }
                ]
            },
        ),
    )
    assert found(client, "CarePlan?_tag=follow-up") == ["id2"]
    assert found(client, "CarePlan?_tag=http://example.org/tags|follow-up") == ["id2"]
    assert found(client, "CarePlan?_tag:not=follow-up") == ["id3"]
    assert found(client, f"CarePlan?_profile={profile}") == ["id2"]
    assert found(client, "CarePlan?_security=R") == ["id3"]


def test_last_updated_approximately(client: TestClient) -> None:
    create(client, patient())  # id1
    assert found(client, "Patient?_lastUpdated=ap2026-03-01") == ["id1"]
    assert found(client, "Patient?_lastUpdated=ap2026-03-03") == []


# -- _include and _revinclude ----------------------------------------------------------------


def _plan_with_goals(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, goal("id1"))  # id2
    create(client, goal("id1", "Walk 500 m"))  # id3
    create(  # id4
        client, care_plan("id1", goal=[{"reference": "Goal/id2"}, {"reference": "Goal/id3"}])
    )
    create(client, care_plan("id1", goal=[{"reference": "Goal/id2"}]))  # id5
    create(client, provenance("CarePlan/id4"))  # id6
    create(client, provenance("Goal/id2"))  # id7
    create(client, provenance("CarePlan/id4", "CarePlan/id5"))  # id8


def _entries(bundle: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle["entry"]
    ]


def test_include_goal_and_subject(client: TestClient) -> None:
    _plan_with_goals(client)
    bundle = search(client, "CarePlan?_include=CarePlan:goal&_include=CarePlan:subject")
    assert bundle["total"] == 2
    assert ids(bundle) == ["id4", "id5"]
    assert sorted(ids(bundle, "include")) == ["id1", "id2", "id3"]
    keys = [(t, i) for _, t, i in _entries(bundle)]
    assert len(keys) == len(set(keys)), "no resource twice"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"


def test_include_only_follows_the_page(client: TestClient) -> None:
    _plan_with_goals(client)
    bundle = search(client, "CarePlan?_id=id5&_include=CarePlan:goal")
    assert _entries(bundle) == [("match", "CarePlan", "id5"), ("include", "Goal", "id2")]


def test_include_with_target_type_and_wildcard(client: TestClient) -> None:
    _plan_with_goals(client)
    bundle = search(client, "CarePlan?_id=id4&_include=CarePlan:subject:Patient")
    assert ids(bundle, "include") == ["id1"]
    bundle = search(client, "CarePlan?_id=id4&_include=CarePlan:subject:Group")
    assert ids(bundle, "include") == []
    bundle = search(client, "CarePlan?_id=id4&_include=CarePlan:*")
    assert sorted(ids(bundle, "include")) == ["id1", "id2", "id3"]


def test_include_skips_external_and_deleted_targets(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, goal("id1"))  # id2
    create(client, goal("id1"))  # id3: deleted below
    create(client, goal("id1"))  # id4: only referenced on another server
    create(  # id5
        client,
        care_plan(
            "id1",
            goal=[
                {"reference": "Goal/id2"},
                {"reference": "Goal/id3"},
                {"reference": "http://other.example.org/fhir/Goal/id4"},
                {"reference": "Goal/missing"},
            ],
        ),
    )
    create(client, care_plan("id1", goal=[{"reference": f"{BASE}/Goal/id4"}]))  # id6
    client.delete("/fhir/Goal/id3")
    bundle = search(client, "CarePlan?_id=id5&_include=CarePlan:goal")
    assert _entries(bundle) == [("match", "CarePlan", "id5"), ("include", "Goal", "id2")]
    bundle = search(client, "CarePlan?_id=id6&_include=CarePlan:goal")
    assert _entries(bundle) == [("match", "CarePlan", "id6"), ("include", "Goal", "id4")]


def test_include_and_revinclude_canonical(client: TestClient) -> None:
    create(client, patient())  # id1
    url = "http://example.org/fhir/PlanDefinition/knee-recovery"
    create(client, plan_definition())  # id2: version 1.0
    create(client, plan_definition(version="2.0"))  # id3
    create(client, care_plan("id1", instantiatesCanonical=[f"{url}|2.0"]))  # id4
    create(client, care_plan("id1", instantiatesCanonical=[url]))  # id5
    bundle = search(client, "CarePlan?_id=id4&_include=CarePlan:instantiates-canonical")
    assert _entries(bundle) == [
        ("match", "CarePlan", "id4"),
        ("include", "PlanDefinition", "id3"),
    ]
    bundle = search(client, "CarePlan?_id=id5&_include=CarePlan:instantiates-canonical")
    assert ids(bundle, "include") == ["id2", "id3"]
    bundle = search(client, "PlanDefinition?_id=id2&_revinclude=CarePlan:instantiates-canonical")
    assert _entries(bundle) == [("match", "PlanDefinition", "id2"), ("include", "CarePlan", "id5")]
    bundle = search(client, "PlanDefinition?_id=id3&_revinclude=CarePlan:instantiates-canonical")
    assert ids(bundle, "include") == ["id4", "id5"]


def test_include_of_a_match_is_not_repeated(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    create(client, care_plan("id1", partOf=[{"reference": "CarePlan/id2"}]))  # id3
    bundle = search(client, "CarePlan?_include=CarePlan:part-of")
    assert _entries(bundle) == [("match", "CarePlan", "id2"), ("match", "CarePlan", "id3")]


def test_include_iterate(client: TestClient) -> None:
    _plan_with_goals(client)
    create(client, task("id1", "id4"))  # id9
    bundle = search(client, "Task?_include=Task:based-on&_include:iterate=CarePlan:goal")
    assert ids(bundle) == ["id9"]
    assert sorted(ids(bundle, "include")) == ["id2", "id3", "id4"]
    # Without :iterate the goals of the included plan are not followed.
    bundle = search(client, "Task?_include=Task:based-on&_include=CarePlan:goal")
    assert ids(bundle, "include") == ["id4"]
    bundle = search(
        client,
        "Task?_include=Task:based-on&_include:iterate=CarePlan:goal&_include:iterate=Goal:subject",
    )
    assert sorted(ids(bundle, "include")) == ["id1", "id2", "id3", "id4"]


def test_revinclude_provenance(client: TestClient) -> None:
    _plan_with_goals(client)
    bundle = search(client, "CarePlan?_revinclude=Provenance:target")
    assert ids(bundle) == ["id4", "id5"]
    assert sorted(ids(bundle, "include")) == ["id6", "id8"]
    bundle = search(client, "CarePlan?_id=id5&_revinclude=Provenance:target")
    assert ids(bundle, "include") == ["id8"]
    bundle = search(
        client,
        "CarePlan?_id=id5&_include=CarePlan:goal&_revinclude:iterate=Provenance:target",
    )
    assert ids(bundle) == ["id5"]
    assert sorted(ids(bundle, "include")) == ["id2", "id7", "id8"]
    bundle = search(client, "CarePlan?_id=id5&_include=CarePlan:goal&_revinclude=Provenance:target")
    assert sorted(ids(bundle, "include")) == ["id2", "id8"]


def test_revinclude_ignores_references_to_other_servers(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    create(client, provenance("http://other.example.org/fhir/CarePlan/id2"))  # id3
    create(client, provenance(f"{BASE}/CarePlan/id2"))  # id4
    bundle = search(client, "CarePlan?_revinclude=Provenance:target")
    assert _entries(bundle) == [("match", "CarePlan", "id2"), ("include", "Provenance", "id4")]


@pytest.mark.parametrize(
    "query",
    [
        "CarePlan?_include=CarePlan:nonsense",
        "CarePlan?_include=CarePlan:status",
        "CarePlan?_include=CarePlan",
        "CarePlan?_include:bogus=CarePlan:goal",
        "CarePlan?_revinclude=Provenance:nonsense",
    ],
)
def test_bad_includes_are_400(client: TestClient, query: str) -> None:
    bad_request(client, query)


# -- _sort -----------------------------------------------------------------------------------


def _sortable_patients(client: TestClient) -> None:
    create(client, patient(name=[{"family": "Brown", "given": ["Zoe"]}], birthDate="1970"))
    create(client, patient(name=[{"family": "Adams", "given": ["Yan"]}], birthDate="1980"))
    create(client, patient(name=[{"family": "Brown", "given": ["Amy"]}], birthDate="1960"))
    create(client, {"resourceType": "Patient"})  # id4: no name, no birthDate


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("_lastUpdated", ["id1", "id2", "id3", "id4"]),
        ("-_lastUpdated", ["id4", "id3", "id2", "id1"]),
        ("_id", ["id1", "id2", "id3", "id4"]),
        ("-_id", ["id4", "id3", "id2", "id1"]),
        ("birthdate", ["id3", "id1", "id2", "id4"]),
        ("-birthdate", ["id2", "id1", "id3", "id4"]),
        ("family", ["id2", "id1", "id3", "id4"]),
        ("family,given", ["id2", "id3", "id1", "id4"]),
        ("family,-given", ["id2", "id1", "id3", "id4"]),
        ("-family,given", ["id3", "id1", "id2", "id4"]),
        ("family,-_lastUpdated", ["id2", "id3", "id1", "id4"]),
    ],
)
def test_sort(client: TestClient, sort: str, expected: list[str]) -> None:
    _sortable_patients(client)
    assert found(client, f"Patient?_sort={sort}") == expected
    # Every page size walks the same order.
    assert _walk(client, f"Patient?_sort={sort}&_count=1") == expected
    assert _walk(client, f"Patient?_sort={sort}&_count=3") == expected


def test_sort_care_plans_by_date(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1", period={"start": "2026-03-05"}))  # id2
    create(client, care_plan("id1", period={"start": "2026-01-01", "end": "2026-02-01"}))  # id3
    create(client, care_plan("id1", period={"start": "2026-02-01", "end": "2026-12-01"}))  # id4
    assert found(client, "CarePlan?_sort=date") == ["id3", "id4", "id2"]
    assert found(client, "CarePlan?_sort=-date") == ["id2", "id4", "id3"]
    assert _walk(client, "CarePlan?_sort=-date&_count=1") == ["id2", "id4", "id3"]


@pytest.mark.parametrize(
    "query",
    [
        "Patient?_sort=nonsense",
        "Patient?_sort=family,nonsense",
        "Patient?_sort=",
        "Patient?_count=abc",
        "Patient?_count=-1",
        "Patient?_count=2.5",
        "Patient?_summary=sometimes",
        "Patient?_total=maybe",
        "Patient?_after=not-a-cursor",
        "Patient?gender:nonsense=female",
        "Patient?name:not=x",
        "Patient?active:missing=perhaps",
    ],
)
def test_bad_result_parameters_are_400(client: TestClient, query: str) -> None:
    bad_request(client, query)


# -- _count, _summary, _elements, _total -----------------------------------------------------


def _five_patients(client: TestClient) -> None:
    for family in ("Ames", "Bell", "Cole", "Dunn", "Eady"):
        create(
            client,
            patient(
                name=[{"family": family}],
                text={
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{family}</div>',
                },
                contact=[{"name": {"family": "Next-of-kin"}}],
            ),
        )


def test_count_limits_the_page_not_the_total(client: TestClient) -> None:
    _five_patients(client)
    bundle = search(client, "Patient?_count=2")
    assert bundle["total"] == 5
    assert ids(bundle) == ["id1", "id2"]
    bundle = search(client, "Patient?_count=0")
    assert bundle["total"] == 5
    assert "entry" not in bundle
    assert found(client, "Patient?_count=100") == ["id1", "id2", "id3", "id4", "id5"]


def test_summary_count(client: TestClient) -> None:
    _five_patients(client)
    bundle = search(client, "Patient?_summary=count&name=b,c")
    assert bundle["total"] == 2
    assert "entry" not in bundle


def _has_subsetted_tag(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource.get("meta", {}).get("tag", []))


def test_summary_true_text_data(client: TestClient) -> None:
    _five_patients(client)
    summary = search(client, "Patient?_summary=true&_count=1")["entry"][0]["resource"]
    assert summary["name"] == [{"family": "Ames"}]
    assert "contact" not in summary and "text" not in summary
    assert _has_subsetted_tag(summary)
    text = search(client, "Patient?_summary=text&_count=1")["entry"][0]["resource"]
    assert "Ames" in text["text"]["div"]
    assert "name" not in text and "contact" not in text
    assert _has_subsetted_tag(text)
    data = search(client, "Patient?_summary=data&_count=1")["entry"][0]["resource"]
    assert "text" not in data and data["contact"]
    assert _has_subsetted_tag(data)
    full = search(client, "Patient?_summary=false&_count=1")["entry"][0]["resource"]
    assert "text" in full and "contact" in full and not _has_subsetted_tag(full)


def test_elements(client: TestClient) -> None:
    _five_patients(client)
    resource = search(client, "Patient?_elements=gender,birthDate&_count=1")["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert _has_subsetted_tag(resource)
    create(client, care_plan("id1"))  # id6
    plan = search(client, "CarePlan?_elements=category")["entry"][0]["resource"]
    # Mandatory elements are kept too (search.html#elements: SHOULD).
    assert {"resourceType", "id", "meta", "category", "status", "intent"} <= set(plan)
    assert "period" not in plan


def test_total_none_and_accurate(client: TestClient) -> None:
    _five_patients(client)
    bundle = search(client, "Patient?_total=none&_count=2")
    assert "total" not in bundle
    assert ids(bundle) == ["id1", "id2"]
    assert search(client, "Patient?_total=accurate&_count=2")["total"] == 5
    assert search(client, "Patient?_total=estimate&_count=2")["total"] == 5


def test_empty_search_has_total_zero_and_self_link(client: TestClient) -> None:
    bundle = search(client, "CarePlan?status=active")
    assert bundle["total"] == 0
    assert "entry" not in bundle
    assert bundle["link"] == [{"relation": "self", "url": f"{BASE}/CarePlan?status=active"}]


# -- unknown parameters and strict handling --------------------------------------------------


def test_unknown_parameters_are_ignored_and_reported(client: TestClient) -> None:
    _five_patients(client)
    bundle = search(client, "Patient?name=bell&frobnicate=1&_count=10")
    assert ids(bundle) == ["id2"]
    assert bundle["total"] == 1
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    outcome = outcomes[0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "warning"
    assert "frobnicate" in outcome["issue"][0]["diagnostics"]
    # The self link lists only the parameters that were used.
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "frobnicate" not in self_link
    assert "name=bell" in self_link


def test_strict_handling_rejects_unknown_parameters(client: TestClient) -> None:
    _five_patients(client)
    body = bad_request(client, "Patient?frobnicate=1", prefer="handling=strict")
    assert "frobnicate" in body["issue"][0]["diagnostics"]
    bundle = search(client, "Patient?name=bell", prefer="handling=strict")
    assert ids(bundle) == ["id2"]
    lenient = search(client, "Patient?frobnicate=1", prefer="handling=lenient")
    assert lenient["total"] == 5


def test_unknown_resource_type_is_404(client: TestClient) -> None:
    response = client.get("/fhir/Spaceship?name=x")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


# -- POST _search ----------------------------------------------------------------------------


def test_post_search_matches_get(client: TestClient) -> None:
    _five_patients(client)
    create(client, patient(name=[{"family": "Bellamy"}], gender="male"))  # id6
    form = {"name": "bell", "_sort": "-_lastUpdated", "_count": "1"}
    posted = client.post("/fhir/Patient/_search", data=form)
    assert posted.status_code == 200, posted.text
    got = search(client, "Patient?name=bell&_sort=-_lastUpdated&_count=1")
    assert posted.json() == got
    assert ids(posted.json()) == ["id6"]
    assert posted.json()["total"] == 2
    # URL and body parameters combine (AND).
    posted = client.post("/fhir/Patient/_search?gender=male", data={"name": "bell"})
    assert ids(posted.json()) == ["id6"]
    # The next link is a GET link that continues the same search.
    next_url = next(link["url"] for link in got["link"] if link["relation"] == "next")
    assert ids(client.get(next_url).json()) == ["id2"]


def test_post_search_needs_form_encoding(client: TestClient) -> None:
    response = client.post(
        "/fhir/Patient/_search",
        content=b'{"name": "bell"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


def test_post_search_reports_bad_values(client: TestClient) -> None:
    response = client.post("/fhir/Patient/_search", data={"birthdate": "garbage"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


# -- XML -------------------------------------------------------------------------------------


def test_search_in_xml(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    create(client, care_plan("id1"))  # id3
    response = client.get("/fhir/CarePlan?_format=xml&_count=1&unknown=1")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+xml")
    ns = {"f": "http://hl7.org/fhir"}
    root = etree.fromstring(response.content)
    assert root.tag == "{http://hl7.org/fhir}Bundle"
    assert root.find("f:type", ns).get("value") == "searchset"  # type: ignore[union-attr]
    assert root.find("f:total", ns).get("value") == "2"  # type: ignore[union-attr]
    relations = [e.get("value") for e in root.findall("f:link/f:relation", ns)]
    assert relations == ["self", "next"]
    plans = root.findall("f:entry/f:resource/f:CarePlan/f:id", ns)
    assert [p.get("value") for p in plans] == ["id2"]
    modes = [e.get("value") for e in root.findall("f:entry/f:search/f:mode", ns)]
    assert modes == ["match", "outcome"]
    next_url = next(
        link.find("f:url", ns).get("value")  # type: ignore[union-attr]
        for link in root.findall("f:link", ns)
        if link.find("f:relation", ns).get("value") == "next"  # type: ignore[union-attr]
    )
    assert "_format" not in next_url
    assert ids(client.get(str(next_url)).json()) == ["id3"]


def test_subsetted_search_in_xml(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, care_plan("id1"))  # id2
    response = client.get("/fhir/CarePlan?_elements=category&_format=xml")
    assert response.status_code == 200
    root = etree.fromstring(response.content)
    ns = {"f": "http://hl7.org/fhir"}
    subject = root.find("f:entry/f:resource/f:CarePlan/f:subject/f:reference", ns)
    assert subject is not None and subject.get("value") == "Patient/id1"


def test_search_with_accept_xml(client: TestClient) -> None:
    create(client, patient())  # id1
    response = client.get("/fhir/Patient", headers={"accept": "application/fhir+xml"})
    assert response.status_code == 200
    root = etree.fromstring(response.content)
    assert root.tag == "{http://hl7.org/fhir}Bundle"


# -- helpers used by sort tests --------------------------------------------------------------


def _walk(client: TestClient, query: str) -> list[str]:
    """Every match of ``query`` by following next links; checks each page's links."""
    seen: list[str] = []
    bundle = search(client, query)
    pages = 0
    while True:
        pages += 1
        assert pages < 50
        seen.extend(ids(bundle))
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            return seen
        assert links["next"].startswith(f"{BASE}/")
        response = client.get(links["next"])
        assert response.status_code == 200, response.text
        bundle = response.json()
