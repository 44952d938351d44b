"""``$validate`` (https://hl7.org/fhir/R4/resource-operation-validate.html).

``POST [base]/[type]/$validate`` and ``POST [base]/[type]/[id]/$validate``, defined by
http://hl7.org/fhir/OperationDefinition/Resource-validate (we add nothing to it). The body is a
Parameters resource (``resource``, optional ``mode`` and ``profile``) or the resource itself,
with ``mode`` and ``profile`` then in the URL.

The resource is checked against the base specification
(:func:`careplan_fhir.fhir.models.validate_resource`), against the profile named by ``profile``
and against each profile it declares in ``meta.profile`` that we ship
(:mod:`careplan_fhir.fhir.profiles`). The answer is 200 with an OperationOutcome listing every
issue found, or one information issue when there is none: problems *in the resource* are the
operation's result. Problems *in the request* are errors of the operation itself and leave with
a 4xx status: a profile we cannot validate against (the spec: "it SHALL return an error", 400),
a resource of another type than the URL's, an unknown mode, a mode that needs an instance at
type level, an instance that does not exist for ``delete`` and ``profile`` (404/410).

Modes: none and ``create`` check the content; ``update`` also checks the id against the URL;
``delete`` checks that the resource exists (we keep no referential-integrity rules, so every
existing resource may be deleted); ``profile`` without a resource checks the stored one against
the named profile. Nothing is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import Issue, ResourceInvalid, validate_resource
from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.fhir.profiles import (
    Profile,
    check_declared_profiles,
    declared_profiles,
    find_profile,
    unchecked_profiles,
    validate_against_profile,
)

from .authorization import guarded_read
from .context import BodyDep, ContextDep, FhirContext, check_type, parse_document

router = APIRouter()

#: The R4 value set resource-validation-mode (required binding of the ``mode`` parameter).
MODES = frozenset({"create", "update", "delete", "profile"})
_INSTANCE_MODES = frozenset({"update", "delete", "profile"})
_PARAMETER_VALUES = {
    "resource": ("resource",),
    "mode": ("valueCode", "valueString"),
    "profile": ("valueCanonical", "valueUri", "valueString"),
}


@dataclass
class ValidateRequest:
    """What to validate and how: the resource (absent for ``delete``), mode and profile."""

    resource: dict[str, Any] | None
    mode: str | None
    profile: Profile | None


def read_validate_request(
    body: bytes,
    content_type: str | None,
    query: dict[str, str],
    resource_type: str,
    resource_id: str | None,
) -> ValidateRequest | list[Issue]:
    """The request's parts; 4xx for a malformed request, or the issues of unreadable content."""
    values: dict[str, Any] = {}
    if body.strip():
        try:
            document = parse_document(body, content_type)
        except ResourceInvalid as exc:  # XML that is no valid resource: that is the outcome
            return exc.issues
        if document.get("resourceType") == "Parameters":
            values = _from_parameters(document)
        else:
            values["resource"] = document
    for name in ("mode", "profile"):
        given = query.get(name)
        if given is not None:
            if name in values and values[name] != given:
                raise InvalidRequest(f"Parameter {name!r} differs between the URL and the body")
            values[name] = given
    mode = values.get("mode")
    if mode is not None and mode not in MODES:
        raise InvalidRequest(f"Unknown mode {mode!r}; use one of {', '.join(sorted(MODES))}")
    if mode in _INSTANCE_MODES and resource_id is None:
        raise InvalidRequest(f"Mode {mode!r} applies to an instance: POST [type]/[id]/$validate")
    resource = values.get("resource")
    if resource is None and mode not in ("delete", "profile"):
        raise InvalidRequest("Parameter 'resource' is required (unless the mode is delete)")
    if resource is not None and resource.get("resourceType") != resource_type:
        raise InvalidRequest(
            f"resourceType {resource.get('resourceType')!r} does not match the URL's"
            f" {resource_type!r}"
        )
    profile = None
    canonical = values.get("profile")
    if canonical is not None:
        profile = find_profile(canonical)
        if profile is None:
            raise InvalidRequest(
                f"Profile {canonical!r} is not one this server can validate against",
                issues=[
                    issue(
                        f"Profile {canonical!r} is not one this server can validate against;"
                        " see CapabilityStatement.rest.resource.supportedProfile",
                        code="not-supported",
                    )
                ],
            )
        if profile.type != resource_type:
            raise InvalidRequest(f"Profile {canonical!r} constrains {profile.type}")
    elif mode == "profile":
        raise InvalidRequest("Mode 'profile' needs the parameter 'profile'")
    return ValidateRequest(resource, mode, profile)


def _from_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    entries = parameters.get("parameter")
    if not isinstance(entries, list):
        raise InvalidRequest("The Parameters resource has no parameter")
    values: dict[str, Any] = {}
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in _PARAMETER_VALUES:
            raise InvalidRequest(
                f"Unknown parameter {name!r}; $validate takes {', '.join(_PARAMETER_VALUES)}"
            )
        if name in values:
            raise InvalidRequest(f"Parameter {name!r} is given more than once")
        keys = _PARAMETER_VALUES[name]
        value = next((entry[key] for key in keys if key in entry), None)
        wanted = dict if name == "resource" else str
        if not isinstance(value, wanted):
            raise InvalidRequest(f"Parameter {name!r} needs {' or '.join(keys)}")
        values[name] = value
    return values


def validation_issues(
    ctx: FhirContext, request: ValidateRequest, resource_type: str, resource_id: str | None
) -> list[Issue]:
    """Every issue of the request's resource (or of the stored one, for mode profile/delete)."""
    resource = request.resource
    if request.mode in ("delete", "profile"):
        assert resource_id is not None
        stored = guarded_read(ctx, resource_type, resource_id)  # 404 or 410 when absent
        if request.mode == "delete":
            return []
        if resource is None:
            assert stored.raw is not None
            resource = jsonio.loads(stored.raw)
    assert resource is not None
    issues: list[Issue] = []
    try:
        validate_resource(resource)
    except ResourceInvalid as exc:
        issues.extend(exc.issues)
    if request.profile is not None:
        issues.extend(validate_against_profile(resource, request.profile))
    issues.extend(i for i in check_declared_profiles(resource) if i not in issues)
    issues.extend(_unchecked_issues(resource, resource_type))
    if resource_id is not None and request.mode == "update" and resource.get("id") != resource_id:
        issues.append(
            Issue(
                f"An update of {resource_type}/{resource_id} must carry id {resource_id!r}"
                f" (found {resource.get('id')!r})",
                f"{resource_type}.id",
                "invalid",
            )
        )
    return issues


def _unchecked_issues(resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Information on each declared profile we do not hold (US Core's: checked through ours)."""
    unchecked = unchecked_profiles(resource)
    if not unchecked:
        return []
    declared = resource["meta"]["profile"]
    derived = {p.base_definition: p.name for p in declared_profiles(resource)}
    issues = []
    for canonical in unchecked:
        where = f"{resource_type}.meta.profile[{declared.index(canonical)}]"
        if canonical.partition("|")[0] in derived:
            message = (
                f"{canonical}: its definition is not held here; its mandatory elements are"
                f" checked through {derived[canonical.partition('|')[0]]}, which restates them"
            )
        else:
            message = f"{canonical}: not checked, this server does not hold that profile"
        issues.append(Issue(message, where, "informational", "information"))
    return issues


def validation_outcome(issues: list[Issue], checked: list[str]) -> dict[str, Any]:
    """The OperationOutcome: every issue, or (no error nor warning) an information issue."""
    entries = [
        issue(i.diagnostics, code=i.code, severity=i.severity, expression=i.expression or None)
        for i in issues
    ]
    if not any(i.severity in ("fatal", "error", "warning") for i in issues):
        entries.insert(
            0,
            issue(
                "valid: no issues found against " + ", ".join(checked),
                code="informational",
                severity="information",
            ),
        )
    return operation_outcome(entries)


def _validate(
    ctx: FhirContext, body: bytes, resource_type: str, resource_id: str | None
) -> Response:
    check_type(resource_type)
    request = read_validate_request(
        body, ctx.header("content-type"), dict(ctx.request.query_params), resource_type, resource_id
    )
    if isinstance(request, list):
        return ctx.respond(validation_outcome(request, []))
    issues = validation_issues(ctx, request, resource_type, resource_id)
    if request.mode == "delete":
        checked = [f"deleting {resource_type}/{resource_id} (no rule prevents it)"]
    else:
        checked = ["FHIR R4 (4.0.1)"]
        if request.profile is not None:
            checked.append(request.profile.url)
        if request.resource is not None:
            checked.extend(
                p.url for p in declared_profiles(request.resource) if p.url not in checked
            )
    return ctx.respond(validation_outcome(issues, checked))


@router.post("/{resource_type}/$validate", summary="$validate")
def validate_type(resource_type: str, ctx: ContextDep, body: BodyDep) -> Response:
    return _validate(ctx, body, resource_type, None)


@router.post("/{resource_type}/{resource_id}/$validate", summary="$validate (instance)")
def validate_instance(
    resource_type: str, resource_id: str, ctx: ContextDep, body: BodyDep
) -> Response:
    return _validate(ctx, body, resource_type, resource_id)
