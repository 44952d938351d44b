"""A Provenance for every write, stored in the write's own transaction.

https://hl7.org/fhir/R4/provenance.html: who (``agent.who``), on whose behalf
(``agent.onBehalfOf``), when (``recorded``) and which interaction (``activity``) produced one
version of a resource (``target``, the versioned reference ``Type/id/_history/n``, so that
``_revinclude=Provenance:target`` and ``Provenance?target=Type/id`` find it).

* ``activity``: ``CREATE`` "create", ``UPDATE`` "revise" or ``DELETE`` "delete" from
  http://terminology.hl7.org/CodeSystem/v3-DataOperation;
* ``agent.type``: ``author`` "Author" (the party that originates the version) for creates and
  updates, ``performer`` "Performer" (who carries out the activity) for deletes, from
  http://terminology.hl7.org/CodeSystem/provenance-participant-type;
* ``agent.who``: the user (``fhirUser``), else the client application by its client id
  (identifier system ``urn:careplan-fhir:client``); ``onBehalfOf`` the patient a
  patient-confined caller is confined to (unless that patient is the user). No reason, no
  extensions, no copy of the resource.

The automatic Provenance is left out when the written resource is itself a Provenance or an
AuditEvent, and when the client supplied its own:

* the ``X-Provenance`` request header (https://hl7.org/fhir/R4/provenance.html#header): a
  Provenance resource as JSON (optionally percent-encoded) without a ``target``; the server
  sets ``target`` to the version written and stores it instead of its own;
* a Provenance entry of the same transaction or batch Bundle whose ``target`` names the entry's
  resource (after ``urn:uuid:`` resolution): :func:`note_bundle_provenance`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant
from careplan_fhir.fhir.models import ResourceInvalid, validate_resource
from careplan_fhir.storage.repository import StoredResource

from .events import ACCESS_KEY, CLIENT_SYSTEM, UNRESTRICTED_DISPLAY, Caller, caller_of

if TYPE_CHECKING:
    from careplan_fhir.rest.context import FhirContext

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
#: v3-DataOperation code -> display (https://hl7.org/fhir/R4/v3/DataOperation/cs.html).
ACTIVITIES = {"CREATE": "create", "UPDATE": "revise", "DELETE": "delete"}
#: The request header that carries a client's own Provenance.
HEADER = "x-provenance"
#: Types whose writes get no automatic Provenance.
UNTRACKED_TYPES = frozenset({"Provenance", "AuditEvent"})

#: ASGI scope keys: the parsed ``X-Provenance`` header, and the references a Bundle's own
#: Provenance entries cover.
_HEADER_KEY = "careplan.provenance.header"
_COVERED_KEY = "careplan.provenance.covered"
_ABSENT = object()


def versioned_reference(stored: StoredResource) -> str:
    return f"{stored.resource_type}/{stored.id}/_history/{stored.version}"


def agent_of(caller: Caller, activity: str) -> dict[str, Any]:
    """The one ``agent`` of an automatic Provenance."""
    code, display = ("performer", "Performer") if activity == "DELETE" else ("author", "Author")
    who: dict[str, Any]
    if caller.fhir_user:
        who = {"reference": caller.fhir_user}
    elif caller.client_id or caller.subject:
        who = {"identifier": {"system": CLIENT_SYSTEM, "value": caller.client_id or caller.subject}}
    else:
        who = {"display": UNRESTRICTED_DISPLAY}
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": code, "display": display}]},
        "who": who,
    }
    if caller.patient:
        patient = f"Patient/{caller.patient}"
        user = (caller.fhir_user or "").rstrip("/")
        if user != patient and not user.endswith("/" + patient):
            agent["onBehalfOf"] = {"reference": patient}
    return agent


def build_provenance(target: str, activity: str, recorded: str, caller: Caller) -> dict[str, Any]:
    """The automatic Provenance of one written version (pure)."""
    if activity not in ACTIVITIES:
        raise ValueError(f"unknown activity {activity!r}")
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": {
            "coding": [
                {"system": DATA_OPERATION, "code": activity, "display": ACTIVITIES[activity]}
            ]
        },
        "agent": [agent_of(caller, activity)],
    }


def provenance_from_header(text: str) -> dict[str, Any]:
    """The Provenance an ``X-Provenance`` header holds (target not yet set); 400 if unusable."""
    text = text.strip()
    if text[:3].upper() == "%7B":
        text = unquote(text)
    try:
        document = jsonio.loads(text)
    except jsonio.JsonError as exc:
        raise InvalidRequest(f"X-Provenance is not a JSON Provenance resource: {exc}") from None
    if not isinstance(document, dict) or document.get("resourceType") != "Provenance":
        raise InvalidRequest("X-Provenance must hold a Provenance resource (JSON)")
    if document.get("target"):
        raise InvalidRequest(
            "X-Provenance must not carry a target: the server sets it to the version written"
        )
    document.pop("id", None)
    document.pop("meta", None)
    return document


def header_provenance(ctx: FhirContext) -> dict[str, Any] | None:
    """The request's ``X-Provenance`` (parsed once per request), or None."""
    scope = ctx.request.scope
    cached = scope.get(_HEADER_KEY, _ABSENT)
    if cached is _ABSENT:
        text = ctx.header(HEADER)
        cached = provenance_from_header(text) if text else None
        scope[_HEADER_KEY] = cached
    return cached if isinstance(cached, dict) else None


def note_bundle_provenance(ctx: FhirContext, resources: Iterable[dict[str, Any] | None]) -> None:
    """Remember which references the Bundle's own Provenance entries cover (their targets)."""
    covered: set[str] = set()
    base = ctx.base_url + "/"
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Provenance":
            continue
        for target in resource.get("target") or []:
            reference = target.get("reference") if isinstance(target, dict) else None
            if isinstance(reference, str):
                covered.add(_logical(reference, base))
    ctx.request.scope[_COVERED_KEY] = frozenset(covered)


def _logical(reference: str, base: str) -> str:
    """``Type/id`` of a relative, absolute (on this base) or versioned reference."""
    if reference.startswith(base):
        reference = reference[len(base) :]
    return reference.split("/_history/", 1)[0]


def record_write_provenance(ctx: FhirContext, stored: StoredResource, activity: str) -> None:
    """Store the Provenance of the version just written, in the same transaction.

    ``activity`` is ``CREATE``, ``UPDATE`` or ``DELETE``. Called by every REST write
    (create, update, conditional update, patch, delete, and the entries of a transaction or
    batch, which run through those functions).
    """
    if stored.resource_type in UNTRACKED_TYPES:
        return
    scope = ctx.request.scope
    if f"{stored.resource_type}/{stored.id}" in scope.get(_COVERED_KEY, ()):
        return
    target = versioned_reference(stored)
    supplied = header_provenance(ctx)
    if supplied is not None:
        document = dict(supplied, target=[{"reference": target}])
        document.setdefault("recorded", format_instant(stored.last_updated_aware))
        try:
            validate_resource(document)
        except ResourceInvalid as exc:
            raise InvalidRequest(f"X-Provenance is not a valid Provenance: {exc}") from None
        ctx.repository.create(document)
        return
    if not ctx.settings.auto_provenance:
        return
    caller = caller_of(scope.get(ACCESS_KEY), 200)
    recorded = format_instant(stored.last_updated_aware)
    ctx.repository.create(build_provenance(target, activity, recorded, caller))
