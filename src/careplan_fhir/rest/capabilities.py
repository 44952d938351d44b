"""capabilities (https://hl7.org/fhir/R4/http.html#capabilities): ``GET /metadata``.

Generated from what is registered: the served types, their search parameters (from the same
table the indexer uses), their reference parameters as includes, and the interactions wired
in :mod:`careplan_fhir.rest.router`.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir import __version__
from careplan_fhir.fhir.models import SERVED_TYPES
from careplan_fhir.fhir.profiles import supported_profiles
from careplan_fhir.fhir.search_parameters import OWN_STORAGE, SPECIAL_PARAMETERS, parameters_for

from .context import ContextDep

router = APIRouter()

PROJECT_CANONICAL = "https://careplan-fhir.org/fhir"

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
#: Interactions refused on a type whatever the scopes (auth/access.py: the audit trail is
#: append-only).
IMMUTABLE_TYPES = {"AuditEvent": ("update", "patch", "delete")}
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")

#: Operations on a type: the OperationDefinitions in profiles/.
TYPE_OPERATIONS = {
    "PlanDefinition": [
        {
            "name": "import",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/PlanDefinition-import",
            "documentation": (
                "Import recovery guidance (leaflet or authored YAML) as draft artifacts:"
                " PlanDefinition, ActivityDefinitions, check-in Questionnaire, DocumentReference."
            ),
        },
        {
            "name": "apply",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/PlanDefinition-apply",
            "documentation": (
                "Apply an active recovery template for a patient (R4 PlanDefinition/$apply plus"
                " the template's clinician parameters): a transient CarePlan with its Goals,"
                " Tasks and education Communication contained; nothing is stored."
            ),
        },
    ],
    "Encounter": [
        {
            "name": "attach-care-plan",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/Encounter-attach-care-plan",
            "documentation": (
                "Apply an active recovery template to the encounter's patient and store the"
                " plan (CarePlan, Goals, Tasks, Communication, Provenance) in one transaction;"
                " retry-safe per encounter and template version; a newer version revises."
            ),
        }
    ],
    "CarePlan": [
        {
            "name": "revoke",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/CarePlan-revoke",
            "documentation": "Revoke the plan; its open Tasks are cancelled, finished ones kept.",
        },
        {
            "name": "check-in",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/CarePlan-check-in",
            "documentation": (
                "The patient's daily check-in: store the answers and their Observations, evaluate"
                " the plan's warning signs, alert the care team once (Communication and Flag) and"
                " return the advice for the patient."
            ),
        },
    ],
    "Patient": [
        {
            "name": "portal-invitation",
            "definition": f"{PROJECT_CANONICAL}/OperationDefinition/Patient-portal-invitation",
            "documentation": (
                "A signed, expiring link to the patient portal for this patient (docs/portal.md);"
                " the session it starts sees only this patient's data."
            ),
        },
        {
            "name": "portal-invitation-revoke",
            "definition": (
                f"{PROJECT_CANONICAL}/OperationDefinition/Patient-portal-invitation-revoke"
            ),
            "documentation": "Withdraw the patient's portal links; their sessions end too.",
        },
    ],
}

#: Operations on every type (rest/resource_validate.py; the spec's definition, unchanged).
ALL_TYPE_OPERATIONS = [
    {
        "name": "validate",
        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        "documentation": (
            "Check a resource against the base specification, the profile named by 'profile'"
            " and the profiles it declares in meta.profile; nothing is stored."
        ),
    }
]

#: Reverse includes clients of care plans ask for; any reference parameter works the same way.
REVINCLUDES = (
    "Provenance:target",
    "Task:based-on",
    "Communication:based-on",
    "Goal:subject",
    "Task:focus",
)


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    entries = [
        {
            "name": name,
            "type": kind,
            "documentation": "Logical id" if name == "_id" else "When the resource last changed",
        }
        for name, kind in SPECIAL_PARAMETERS.items()
    ]
    for param in parameters_for(resource_type).values():
        entry: dict[str, Any] = {
            "name": param.name,
            "type": param.type,
            "documentation": f"Expression: {param.expression}",
        }
        if param.custom:
            entry["definition"] = (
                f"{PROJECT_CANONICAL}/SearchParameter/{resource_type}-{param.name}"
            )
        entries.append(entry)
    return entries


@functools.cache
def _resources() -> list[dict[str, Any]]:
    resources = []
    for resource_type in SERVED_TYPES:
        params = parameters_for(resource_type)
        resources.append(
            {
                "type": resource_type,
                "interaction": [
                    {"code": code}
                    for code in TYPE_INTERACTIONS
                    if code not in IMMUTABLE_TYPES.get(resource_type, ())
                ],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "searchInclude": sorted(
                    [f"{resource_type}:{p.name}" for p in params.values() if p.type == "reference"]
                    + [f"{resource_type}:*"]
                ),
                "searchRevInclude": list(REVINCLUDES),
                "searchParam": _search_params(resource_type),
            }
        )
        if resource_type in OWN_STORAGE:
            # The audit trail's own table: no includes either way (storage/audit_search.py).
            del resources[-1]["searchInclude"], resources[-1]["searchRevInclude"]
        if resource_type in supported_profiles():
            resources[-1]["supportedProfile"] = supported_profiles()[resource_type]
        resources[-1]["operation"] = TYPE_OPERATIONS.get(resource_type, []) + ALL_TYPE_OPERATIONS
    return resources


#: https://hl7.org/fhir/R4/codesystem-restful-security-service.html
_SMART_SERVICE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR",
        }
    ],
    "text": "SMART on FHIR bearer tokens (SMART App Launch v2 scopes)",
}


def security(base_url: str, auth_enabled: bool, cors: bool = False) -> dict[str, Any]:
    """``rest.security``: SMART bearer tokens, the OAuth endpoints (also in
    ``/.well-known/smart-configuration``, https://hl7.org/fhir/smart-app-launch/conformance.html).
    """
    if not auth_enabled:
        return {
            "cors": cors,
            "description": "Authorization is turned off on this server (local experiments only).",
        }
    root = base_url.removesuffix("/fhir")
    return {
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "token", "valueUri": f"{root}/auth/token"},
                    {"url": "introspect", "valueUri": f"{root}/auth/introspect"},
                ],
            }
        ],
        "cors": cors,
        "service": [_SMART_SERVICE],
        "description": (
            "Every request except GET /metadata needs Authorization: Bearer <JWT> (RS256,"
            " RS384, ES256 or ES384) from this server's token endpoint (SMART Backend Services,"
            " private_key_jwt) or a configured issuer. SMART v2 scopes (patient|user|system)/"
            "(Type|*).cruds, v1 .read/.write/.*, and granular query scopes are enforced per"
            " interaction; patient-level access is confined to the patient compartment (Task"
            " by for/owner). See /.well-known/smart-configuration."
        ),
    }


def capability_statement(
    base_url: str, *, auth_enabled: bool = True, cors: bool = False
) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "publisher": "careplan-fhir",
        "kind": "instance",
        "software": {"name": "careplan-fhir", "version": __version__},
        "implementation": {"description": "careplan-fhir FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search: token, reference, date, string, uri and quantity parameters with"
                    " OR (commas) and AND (repeats); _include/_revinclude (with :iterate) on"
                    " any reference parameter; _sort, _count, _summary, _elements, _total;"
                    " unknown parameters are ignored unless Prefer: handling=strict."
                ),
                "security": security(base_url, auth_enabled, cors),
                "resource": _resources(),
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            }
        ],
    }


@router.get("/metadata", summary="capabilities")
def metadata(ctx: ContextDep) -> Response:
    return ctx.respond(
        capability_statement(
            ctx.base_url,
            auth_enabled=ctx.settings.auth_enabled,
            cors=bool(ctx.settings.cors_origins),
        )
    )
