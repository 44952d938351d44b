"""``PlanDefinition/$apply`` (https://hl7.org/fhir/R4/plandefinition-operation-apply.html).

Type level ``[base]/PlanDefinition/$apply`` (the template by ``planDefinition``, a reference or
the resource itself, or by canonical ``url`` and ``version``) and instance level
``[base]/PlanDefinition/{id}/$apply``; GET with query parameters or POST with a Parameters body.
Inputs: ``subject`` (required), ``encounter``, ``practitioner``, ``organization``,
``userLanguage``, ``setting``, and ``parameters``, a nested Parameters resource with the
template's clinician parameters (``fever_threshold`` as valueQuantity …). A GET cannot carry a
resource, so there each clinician parameter is a query parameter of its own name
(``fever_threshold=38.0Cel``). The definition is ``profiles/OperationDefinition-PlanDefinition-
apply.json``.

The answer, as R4 defines it, is one CarePlan: transient, nothing is stored. Its Goals, Tasks
and education Communication are ``contained`` and referenced as ``#id``. Errors: 400 without
``subject``; 404 for an unknown template; 422 for a template that is not active, a missing or
wrong clinician parameter (each issue names it) or an unknown subject, encounter or author.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.apply.engine import apply_plan_definition, parameter_specs, parse_parameter
from careplan_fhir.apply.model import ApplyContext, ApplyError
from careplan_fhir.errors import (
    InvalidRequest,
    ResourceGone,
    ResourceNotFound,
    Unprocessable,
)
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import DateFormatError, parse_range
from careplan_fhir.fhir.models import ResourceInvalid, validate_resource
from careplan_fhir.fhir.outcome import issue
from careplan_fhir.storage.repository import StoredResource
from careplan_fhir.storage.search import parse_search, run_search

from .authorization import guard_search, guarded_read
from .context import BodyDep, ContextDep, FhirContext, parse_document

router = APIRouter()

#: The operation's own input parameters (R4, plus ``url``/``version`` and ``parameters``).
OPERATION_PARAMETERS = (
    "planDefinition",
    "url",
    "version",
    "subject",
    "encounter",
    "practitioner",
    "organization",
    "userType",
    "userLanguage",
    "userTaskContext",
    "setting",
    "settingContext",
    "parameters",
)
#: Query parameters of the HTTP layer, not of the operation.
_HTTP_PARAMETERS = frozenset({"_format", "_pretty"})
_REFERENCE_TYPES = {
    "subject": "Patient",
    "encounter": "Encounter",
    "practitioner": "Practitioner",
    "organization": "Organization",
}


@dataclass
class ApplyRequest:
    """The operation's inputs, read from a query string or a Parameters body."""

    values: dict[str, Any] = field(default_factory=dict)
    plan_definition: dict[str, Any] | None = None
    #: Clinician parameters by name: FHIR values (Quantity dicts, strings, integers).
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Clinician parameters given as text (GET), parsed once the template is known.
    parameter_texts: dict[str, str] = field(default_factory=dict)


def read_query(query: list[tuple[str, str]]) -> ApplyRequest:
    """GET: operation parameters and, under their own names, the clinician parameters."""
    request = ApplyRequest()
    for name, value in query:
        if name in _HTTP_PARAMETERS:
            continue
        if name == "parameters":
            raise InvalidRequest(
                "'parameters' is a resource and cannot be sent with GET; give each clinician"
                " parameter as a query parameter of its name (fever_threshold=38.0Cel) or POST"
                " a Parameters body"
            )
        target = request.values if name in OPERATION_PARAMETERS else request.parameter_texts
        if name in target:
            raise InvalidRequest(f"Parameter {name!r} is given more than once")
        target[name] = value
    return request


def read_parameters(body: bytes, content_type: str | None) -> ApplyRequest:
    """POST: a Parameters resource (https://hl7.org/fhir/R4/parameters.html)."""
    document = parse_document(body, content_type)
    if document.get("resourceType") != "Parameters":
        kind = document.get("resourceType")
        raise InvalidRequest(f"Expected a Parameters resource, not {kind!r}")
    validate_resource(document)
    request = ApplyRequest()
    for parameter in document.get("parameter", []):
        name = parameter.get("name")
        if name not in OPERATION_PARAMETERS:
            raise InvalidRequest(
                f"Unknown parameter {name!r}; $apply takes {', '.join(OPERATION_PARAMETERS)}"
                " (clinician parameters go inside 'parameters')"
            )
        if name in request.values or (name == "planDefinition" and request.plan_definition):
            raise InvalidRequest(f"Parameter {name!r} is given more than once")
        if name == "parameters":
            nested = parameter.get("resource")
            if not isinstance(nested, dict) or nested.get("resourceType") != "Parameters":
                raise InvalidRequest("Parameter 'parameters' must hold a Parameters resource")
            request.parameters.update(_clinician_values(nested))
            request.values[name] = True
        elif name == "planDefinition" and "resource" in parameter:
            resource = parameter["resource"]
            if resource.get("resourceType") != "PlanDefinition":
                raise InvalidRequest("Parameter 'planDefinition' must hold a PlanDefinition")
            request.plan_definition = resource
        else:
            request.values[name] = _simple_value(parameter)
    return request


def _simple_value(parameter: dict[str, Any]) -> Any:
    for key, value in parameter.items():
        if key == "valueReference":
            return value.get("reference")
        if key == "valueCodeableConcept":
            return value
        if key.startswith("value"):
            return value
    raise InvalidRequest(f"Parameter {parameter.get('name')!r} needs a value")


def _clinician_values(parameters: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for part in parameters.get("parameter", []):
        name = part.get("name")
        if name in values:
            raise InvalidRequest(f"Clinician parameter {name!r} is given more than once")
        value = next((v for k, v in part.items() if k.startswith("value")), None)
        if value is None:
            raise InvalidRequest(f"Clinician parameter {name!r} needs a value[x]")
        values[name] = value
    return values


# -- resolving the inputs --------------------------------------------------------------------


def _document(stored: StoredResource) -> dict[str, Any]:
    assert stored.raw is not None
    document: dict[str, Any] = jsonio.loads(stored.raw)
    return document


def _search(ctx: FhirContext, resource_type: str, params: list[tuple[str, str]]) -> list[Any]:
    request = parse_search(resource_type, params, base_url=ctx.base_url, strict=True)
    request.total = "none"
    guard_search(ctx, request)
    return run_search(ctx.repository, request).matches


def find_plan_definition(
    ctx: FhirContext, request: ApplyRequest, resource_id: str | None
) -> dict[str, Any]:
    """The template: by id (instance level), reference, inline resource, or canonical url."""
    values = request.values
    if resource_id is not None:
        if request.plan_definition is not None or "planDefinition" in values or "url" in values:
            raise InvalidRequest(
                "At instance level the template is the one in the URL; planDefinition and url"
                " are not allowed"
            )
        return _document(guarded_read(ctx, "PlanDefinition", resource_id))
    if request.plan_definition is not None:
        return request.plan_definition
    reference = values.get("planDefinition")
    if reference:
        text = str(reference)
        if text.startswith(("http://", "https://")) and "/PlanDefinition/" not in text:
            raise InvalidRequest(f"planDefinition {text!r} is not a PlanDefinition reference")
        plan_id = text.rstrip("/").split("PlanDefinition/")[-1].split("/")[0]
        return _document(guarded_read(ctx, "PlanDefinition", plan_id))
    url = values.get("url")
    if not url:
        raise InvalidRequest("Give the template: planDefinition, or url (and version)")
    url, _, version = str(url).partition("|")
    version = str(values.get("version") or version)
    params = [("url", url), ("_sort", "-_lastUpdated")]
    if version:
        params.append(("version", version))
    matches = [_document(s) for s in _search(ctx, "PlanDefinition", params)]
    if not matches:
        suffix = f"|{version}" if version else ""
        raise ResourceNotFound(f"No PlanDefinition with url {url}{suffix}")
    active = [m for m in matches if m.get("status") == "active"]
    return (active or matches)[0]


def load_activity_definitions(
    ctx: FhirContext, plan_definition: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The ActivityDefinitions the template's actions point to, by canonical (±version)."""
    found: dict[str, dict[str, Any]] = {}
    pending = list(plan_definition.get("action", []))
    while pending:
        action = pending.pop(0)
        pending += action.get("action", [])
        canonical = action.get("definitionCanonical")
        if not canonical or canonical in found:
            continue
        url, _, version = canonical.partition("|")
        params = [("url", url)] + ([("version", version)] if version else [])
        matches = _search(ctx, "ActivityDefinition", params)
        if matches:
            definition = _document(matches[0])
            found[canonical] = definition
            found.setdefault(url, definition)
    return found


def _reference(name: str, value: Any) -> str:
    """``Type/id`` for an operation input given as ``Type/id``, a bare id or an absolute url."""
    expected = _REFERENCE_TYPES[name]
    text = str(value).strip()
    if not text:
        raise InvalidRequest(f"Parameter {name!r} is empty")
    parts = text.rstrip("/").split("/")
    if len(parts) == 1:
        return f"{expected}/{parts[0]}"
    resource_type, resource_id = parts[-2], parts[-1]
    if resource_type != expected:
        raise Unprocessable(
            f"{name}: must reference a {expected}, not {text!r}",
            issues=[issue(f"{name}: must reference a {expected}, not {text!r}", code="invalid")],
        )
    return f"{resource_type}/{resource_id}"


def _existing(ctx: FhirContext, name: str, reference: str) -> dict[str, Any]:
    resource_type, resource_id = reference.split("/")
    try:
        return _document(guarded_read(ctx, resource_type, resource_id))
    except (ResourceNotFound, ResourceGone):
        message = f"{name}: {reference} is not known here"
        raise Unprocessable(message, issues=[issue(message, code="not-found")]) from None


def _start_of(encounter: dict[str, Any], now: datetime) -> datetime:
    """The discharge time (``Encounter.period.end``), else now."""
    end = encounter.get("period", {}).get("end")
    if not end:
        return now
    try:
        low, _ = parse_range(str(end))
    except DateFormatError:
        return now
    return low.replace(tzinfo=UTC)


def build_context(ctx: FhirContext, request: ApplyRequest, plan: dict[str, Any]) -> ApplyContext:
    """Check the references and bind the clinician parameters' text forms."""
    values = request.values
    if not values.get("subject"):
        raise InvalidRequest("Parameter 'subject' is required (the Patient the plan is for)")
    subject = _reference("subject", values["subject"])
    _existing(ctx, "subject", subject)
    now = ctx.services.now()
    start = now
    encounter_ref = None
    addresses: tuple[str, ...] = ()
    if values.get("encounter"):
        encounter_ref = _reference("encounter", values["encounter"])
        encounter = _existing(ctx, "encounter", encounter_ref)
        of = encounter.get("subject", {}).get("reference")
        if of and of.split("/")[-2:] != subject.split("/"):
            message = f"encounter: {encounter_ref} is not an encounter of {subject}"
            raise Unprocessable(message, issues=[issue(message, code="business-rule")])
        start = _start_of(encounter, now)
        addresses = tuple(
            d["condition"]["reference"]
            for d in encounter.get("diagnosis", [])
            if d.get("condition", {}).get("reference", "").startswith("Condition/")
        )
    practitioner = organization = None
    if values.get("practitioner"):
        practitioner = _reference("practitioner", values["practitioner"])
        _existing(ctx, "practitioner", practitioner)
    if values.get("organization"):
        organization = _reference("organization", values["organization"])
        _existing(ctx, "organization", organization)
    specs = parameter_specs(plan)
    parameters = dict(request.parameters)
    for name, text in request.parameter_texts.items():
        spec = specs.get(name)
        parameters[name] = parse_parameter(text, spec.type if spec else "string")
    counter = itertools.count(1)
    language = values.get("userLanguage")
    setting = values.get("setting")
    return ApplyContext(
        subject=subject,
        now=now,
        start=start,
        new_id=lambda resource_type: f"{resource_type.lower()}-{next(counter)}",
        encounter=encounter_ref,
        practitioner=practitioner,
        organization=organization,
        user_language=language if isinstance(language, str) else None,
        setting=setting if isinstance(setting, str) else None,
        parameters=parameters,
        addresses=addresses,
    )


def _rewrite(value: Any, references: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: references.get(item, item)
            if key == "reference" and isinstance(item, str)
            else _rewrite(item, references)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(item, references) for item in value]
    return value


def contained_care_plan(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The CarePlan with the other outputs contained, references rewritten to ``#id``.

    The CarePlan loses its id: it is transient, and a client must not take it for a stored one.
    """
    care_plan, *others = resources
    references = {f"CarePlan/{care_plan['id']}": "#"}
    references.update({f"{r['resourceType']}/{r['id']}": f"#{r['id']}" for r in others})
    body = _rewrite({k: v for k, v in care_plan.items() if k != "id"}, references)
    result: dict[str, Any] = {"resourceType": "CarePlan"}
    if "text" in body:
        result["text"] = body.pop("text")
    result["contained"] = [_rewrite(r, references) for r in others]
    result.update((k, v) for k, v in body.items() if k != "resourceType")
    return result


def apply_operation(
    ctx: FhirContext, request: ApplyRequest, resource_id: str | None = None
) -> dict[str, Any]:
    """Run ``$apply``; the transient CarePlan (nothing stored)."""
    plan = find_plan_definition(ctx, request, resource_id)
    context = build_context(ctx, request, plan)
    definitions = load_activity_definitions(ctx, plan)
    try:
        result = apply_plan_definition(plan, definitions, context)
    except ApplyError as exc:
        raise Unprocessable(
            f"The template cannot be applied: {exc}",
            issues=[
                issue(
                    f"{i.name}: {i.message}",
                    code="business-rule" if i.name == "status" else "invalid",
                )
                for i in exc.issues
            ],
        ) from None
    care_plan = contained_care_plan(result.resources())
    try:
        validate_resource(care_plan)
    except ResourceInvalid as exc:  # a bug of the engine, not of the request
        raise RuntimeError(f"$apply produced an invalid CarePlan: {exc}") from exc
    return care_plan


@router.get("/PlanDefinition/$apply", summary="PlanDefinition $apply")
def apply_type_get(ctx: ContextDep) -> Response:
    request = read_query(ctx.request.query_params.multi_items())
    return ctx.respond(apply_operation(ctx, request))


@router.post("/PlanDefinition/$apply", summary="PlanDefinition $apply")
def apply_type_post(ctx: ContextDep, body: BodyDep) -> Response:
    request = read_parameters(body, ctx.header("content-type"))
    return ctx.respond(apply_operation(ctx, request))


@router.get("/PlanDefinition/{resource_id}/$apply", summary="PlanDefinition $apply (instance)")
def apply_instance_get(resource_id: str, ctx: ContextDep) -> Response:
    request = read_query(ctx.request.query_params.multi_items())
    return ctx.respond(apply_operation(ctx, request, resource_id))


@router.post("/PlanDefinition/{resource_id}/$apply", summary="PlanDefinition $apply (instance)")
def apply_instance_post(resource_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    request = read_parameters(body, ctx.header("content-type"))
    return ctx.respond(apply_operation(ctx, request, resource_id))
