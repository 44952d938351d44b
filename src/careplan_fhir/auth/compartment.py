"""The Patient compartment: which resources belong to one patient (pure rules, SQL and content).

https://hl7.org/fhir/R4/compartmentdefinition-patient.html lists, per resource type, the search
parameters whose reference to a Patient puts a resource in that patient's compartment. Task is
not in the R4 Patient compartment; a patient's Tasks are the ones whose ``for`` or ``owner``
is the patient (DESIGN.md), so Task is given those two parameters here.

Types without compartment parameters (PlanDefinition, ActivityDefinition, Questionnaire,
Practitioner, PractitionerRole, Organization) hold no patient's data: a patient-confined
caller may read them when a scope allows it, and never write them.

For ``Patient`` only the patient's own record is in the compartment: the spec also names
``link``, but another person's record that merely links to this one is not this patient's data.

Two forms of the same rule:

* :func:`compartment_criterion` is SQL on the reference index (used by search, and to check a
  stored resource by primary key), so paging and totals never see another patient's rows;
* :func:`document_in_compartment` reads a resource's own references (used for historical
  versions, whose index rows are gone once a newer version replaced them).

``tests/test_auth_compartment.py`` proves the two agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, false, select

from careplan_fhir.fhir.search_parameters import parameters_for
from careplan_fhir.storage.indexing import parse_reference, values_at
from careplan_fhir.storage.search import (
    Criterion,
    Restriction,
    Take,
    index_table,
    local_target,
    resource_table,
)

#: Search parameters (of this server's index) that put a resource in a patient's compartment.
COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    "AuditEvent": ("patient",),
    "CarePlan": ("subject", "performer"),
    "CareTeam": ("subject", "participant"),
    "Communication": ("subject", "sender", "recipient"),
    "CommunicationRequest": ("subject", "sender", "recipient", "requester"),
    "Condition": ("subject", "asserter"),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("subject",),
    "Flag": ("subject",),
    "Goal": ("subject",),
    "Observation": ("subject", "performer"),
    "Procedure": ("subject", "performer"),
    "Provenance": ("patient",),
    "QuestionnaireResponse": ("subject", "author"),
    # Not in the R4 compartment; membership through Task.for and Task.owner (DESIGN.md).
    "Task": ("subject", "owner"),
}


def in_compartment_type(resource_type: str) -> bool:
    """Whether resources of this type can belong to a patient (Patient itself included)."""
    return resource_type == "Patient" or resource_type in COMPARTMENT_PARAMS


def compartment_criterion(resource_type: str, patient_id: str, base_url: str) -> Criterion:
    """The search criterion "in ``Patient/{patient_id}``'s compartment" for ``resource_type``.

    For a type outside the compartment it matches nothing: callers decide beforehand whether
    such types are readable (they are not filtered by patient at all).

    The patient id is the criterion's only value: every patient-confined search of one shape
    runs the same cached statement (careplan_fhir.storage.search).
    """
    if resource_type == "Patient":
        return Criterion(-1, shape=(_own_record,), values=(patient_id,))
    names = COMPARTMENT_PARAMS.get(resource_type)
    if not names:
        return Criterion(-1, shape=(_nothing,))
    known = parameters_for(resource_type)
    missing = [name for name in names if name not in known]
    assert not missing, f"compartment parameters not indexed for {resource_type}: {missing}"
    # Rank 0: the patient's index rows drive the query (a patient has few resources).
    shape = (_patient_references, resource_type, names, base_url.rstrip("/"))
    return Criterion(0, shape=shape, values=(patient_id,))


def _own_record(take: Take) -> Restriction:
    return Restriction(predicate=resource_table().c.res_id == take())


def _nothing(take: Take) -> Restriction:
    return Restriction(predicate=false())


def _patient_references(
    resource_type: str, names: tuple[str, ...], base: str, take: Take
) -> Restriction:
    """Resources of ``resource_type`` that reference the patient by a compartment parameter."""
    table = index_table("reference")
    subquery = select(table.c.resource_pk).where(
        table.c.res_type == resource_type,
        table.c.param.in_(names),
        table.c.target_type == "Patient",
        table.c.target_id == take(),
        local_target(table, base),
    )
    return Restriction(table, subquery)


def compartment_predicate(
    resource_type: str, patient_id: str, base_url: str
) -> ColumnElement[bool]:
    """:func:`compartment_criterion` as a per-row test of the resource table."""
    return compartment_criterion(resource_type, patient_id, base_url).exists()


def _is_local_patient(reference: str, patient_id: str, base_url: str) -> bool:
    ref_type, ref_id, url, _ = parse_reference(reference)
    if ref_type != "Patient" or ref_id != patient_id:
        return False
    if url is None:
        return True
    base = base_url.rstrip("/")
    return bool(base) and url.startswith(base + "/")


def document_in_compartment(document: dict[str, Any], patient_id: str, base_url: str) -> bool:
    """Whether ``document`` (any version's content) belongs to ``Patient/{patient_id}``."""
    resource_type = document.get("resourceType")
    if not isinstance(resource_type, str):
        return False
    if resource_type == "Patient":
        return document.get("id") == patient_id
    names = COMPARTMENT_PARAMS.get(resource_type)
    if not names:
        return False
    params = parameters_for(resource_type)
    for name in names:
        param = params[name]
        for path in param.paths:
            for value in values_at(document, path):
                reference = value.get("reference") if isinstance(value, dict) else None
                if isinstance(reference, str) and _is_local_patient(
                    reference, patient_id, base_url
                ):
                    return True
    return False
