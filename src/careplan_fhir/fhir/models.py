"""Validation and XML conversion with the ``fhir.resources`` R4B models.

This is the only module that imports ``fhir.resources``. The bare ``fhir.resources`` package is
R5; FHIR R4 (4.0.1) on the wire is served by the ``R4B`` sub-package, whose data types match R4
for every resource type this server handles.

Validation happens once, on the way in (https://hl7.org/fhir/R4/validation.html). The models check
structure, cardinality and primitive formats; :func:`validate_resource` adds the checks the models
leave out: codes bound with *required* strength (https://hl7.org/fhir/R4/terminologies.html#required).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

#: Resource types this server stores and serves.
SERVED_TYPES: tuple[str, ...] = (
    "ActivityDefinition",
    "AuditEvent",
    "CarePlan",
    "CareTeam",
    "Communication",
    "CommunicationRequest",
    "Condition",
    "DocumentReference",
    "Encounter",
    "Flag",
    "Goal",
    "Observation",
    "Organization",
    "Patient",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "Task",
)

#: Required value sets the generated models list only in part (they end in "+").
#: Source: the R4 value sets task-status, observation-status and encounter-status.
_FULL_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Task", "status"): frozenset(
        [
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        ]
    ),
    ("Observation", "status"): frozenset(
        [
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    ("Encounter", "status"): frozenset(
        [
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    # Quantity.comparator is bound (required) to quantity-comparator; the models omit it.
    ("Quantity", "comparator"): frozenset({"<", "<=", ">=", ">"}),
    # AuditEvent's three required bindings, which the models leave unchecked (R4 value sets
    # audit-event-action, audit-event-outcome and network-type, 4.0.1).
    ("AuditEvent", "action"): frozenset({"C", "R", "U", "D", "E"}),
    ("AuditEvent", "outcome"): frozenset({"0", "4", "8", "12"}),
    ("AuditEventAgentNetwork", "type"): frozenset({"1", "2", "3", "4", "5"}),
}


#: Elements bound to R4's MimeType value set, which admits any BCP 13 media type; the models
#: list a few words instead (CapabilityStatement.format: "formats json ttl mime").
_ANY_MIME_TYPE = frozenset({("CapabilityStatement", "format")})


@dataclass(frozen=True)
class Issue:
    """One problem found in a resource, located by a FHIRPath-like expression."""

    diagnostics: str
    expression: str
    code: str = "invalid"
    severity: str = "error"


class ResourceInvalid(ValueError):
    """The resource does not conform to the FHIR R4 specification."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.issues = issues


def is_known_type(resource_type: str) -> bool:
    """True when ``resource_type`` names any FHIR R4 resource (served or not)."""
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return False
    return bool(getattr(cls, "get_resource_type", lambda: None)() == resource_type)


def validate_resource(document: dict[str, Any]) -> None:
    """Validate a FHIR JSON resource; raise :class:`ResourceInvalid` listing every problem."""
    resource_type = document.get("resourceType")
    if not isinstance(resource_type, str) or not is_known_type(resource_type):
        raise ResourceInvalid([Issue(f"Unknown resourceType {resource_type!r}", "resourceType")])
    model_class = get_fhir_model_class(resource_type)
    try:
        instance = model_class.model_validate(document)
    except ValidationError as exc:
        raise ResourceInvalid(_issues_from_pydantic(resource_type, exc)) from None
    except (ValueError, TypeError) as exc:
        raise ResourceInvalid([Issue(str(exc), resource_type)]) from None
    issues: list[Issue] = []
    _check_required_codes(instance, resource_type, resource_type, issues)
    if issues:
        raise ResourceInvalid(issues)


def _issues_from_pydantic(resource_type: str, exc: ValidationError) -> list[Issue]:
    issues = []
    for error in exc.errors(include_url=False):
        expression = resource_type
        for part in error["loc"]:
            if isinstance(part, int):
                expression += f"[{part}]"
            elif part != "__root__":
                expression += f".{part}"
        issues.append(Issue(f"{expression}: {error['msg']}", expression, "structure"))
    return issues


@dataclass(frozen=True)
class _FieldPlan:
    json_name: str
    attribute: str
    allowed: frozenset[str] | None
    nested: bool


@functools.cache
def _plan_for(model_class: type[BaseModel], owner: str) -> tuple[_FieldPlan, ...]:
    plans = []
    for attribute, field in model_class.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        json_name = field.alias or attribute
        enum_values = extra.get("enum_values")
        allowed: frozenset[str] | None = None
        if (model_class.__name__, json_name) in _ANY_MIME_TYPE:
            enum_values = None
        if isinstance(enum_values, list) and enum_values:
            if "+" in enum_values:
                allowed = _FULL_REQUIRED_CODES.get((owner, json_name))
            else:
                allowed = frozenset(str(v) for v in enum_values)
        elif (model_class.__name__, json_name) in _FULL_REQUIRED_CODES:
            allowed = _FULL_REQUIRED_CODES[(model_class.__name__, json_name)]
        # Primitive fields (str, bool, numbers, dates) hold no nested elements to walk.
        nested = not _is_primitive(field.annotation)
        if allowed is not None or nested:
            plans.append(_FieldPlan(json_name, attribute, allowed, nested))
    return tuple(plans)


def _is_primitive(annotation: Any) -> bool:
    # The generated models spell complex element types as ``abc.<Name>Type``.
    text = repr(annotation)
    return "abc." not in text or "FHIRPrimitiveExtensionType" in text


def _check_required_codes(instance: BaseModel, owner: str, path: str, issues: list[Issue]) -> None:
    for plan in _plan_for(type(instance), owner):
        value = getattr(instance, plan.attribute, None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for index, item in enumerate(values):
            where = f"{path}.{plan.json_name}" + (f"[{index}]" if isinstance(value, list) else "")
            if plan.allowed is not None and isinstance(item, str) and item not in plan.allowed:
                issues.append(
                    Issue(
                        f"{where}: {item!r} is not a code of the required value set "
                        f"(allowed: {', '.join(sorted(plan.allowed))})",
                        where,
                        "code-invalid",
                    )
                )
            elif plan.nested and isinstance(item, BaseModel):
                nested_owner = (
                    item.get_resource_type() if hasattr(item, "get_resource_type") else owner
                )
                if not isinstance(nested_owner, str) or not nested_owner:
                    nested_owner = owner
                _check_required_codes(item, nested_owner, where, issues)


@functools.cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON element names kept by ``_summary=true`` (https://hl7.org/fhir/R4/search.html#summary)."""
    names = {"resourceType", "id", "meta"}
    for attribute, field in get_fhir_model_class(resource_type).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            names.add(field.alias or attribute)
    return frozenset(names)


@functools.cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON element names with a minimum cardinality of 1."""
    names = set()
    for attribute, field in get_fhir_model_class(resource_type).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        # Required primitives are flagged element_required; required complex elements
        # (CarePlan.subject, Provenance.target) are plain required pydantic fields.
        if extra.get("element_required") or field.is_required():
            names.add(field.alias or attribute)
    return frozenset(names)


def resource_to_xml(document: dict[str, Any]) -> bytes:
    """Render a FHIR JSON resource as FHIR XML (https://hl7.org/fhir/R4/xml.html)."""
    model_class = get_fhir_model_class(document["resourceType"])
    instance = model_class.model_validate(document)
    xml: bytes | str = instance.model_dump_xml()
    return xml.encode("utf-8") if isinstance(xml, str) else xml


def resource_from_xml(data: bytes) -> dict[str, Any]:
    """Parse a FHIR XML resource into FHIR JSON (as a dict)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ResourceInvalid([Issue(f"Malformed XML: {exc}", "", "structure")]) from None
    resource_type = etree.QName(root).localname
    if etree.QName(root).namespace != "http://hl7.org/fhir" or not is_known_type(resource_type):
        raise ResourceInvalid([Issue(f"Unknown XML root element {root.tag!r}", "", "structure")])
    model_class = get_fhir_model_class(resource_type)
    try:
        instance = model_class.model_validate_xml(data)
    except ValidationError as exc:
        raise ResourceInvalid(_issues_from_pydantic(resource_type, exc)) from None
    except (ValueError, TypeError) as exc:
        raise ResourceInvalid([Issue(str(exc), resource_type, "structure")]) from None
    from . import jsonio

    document: dict[str, Any] = jsonio.loads(instance.model_dump_json())
    return document
