"""The AuditEvent of one request (pure): https://hl7.org/fhir/R4/auditevent.html.

Every request under ``/fhir`` (and the security endpoints ``/auth/token`` and
``/auth/introspect``) is one access decision, allowed or refused, and becomes one AuditEvent:

* ``type``: ``rest`` "RESTful Operation" from http://terminology.hl7.org/CodeSystem/audit-event-type
  (DICOM ``110114`` "User Authentication" for the token endpoints, as the R4 example
  AuditEvent/example-login has it);
* ``subtype``: the interaction, from http://hl7.org/fhir/restful-interaction
  (https://hl7.org/fhir/R4/codesystem-restful-interaction.html: every code's display is the
  code itself);
* ``action``: C, R, U, D or E (https://hl7.org/fhir/R4/valueset-audit-event-action.html;
  searches, operations, transactions and batches are executions, as the R4 search example has
  it); an update or patch that created the resource (201) is a C;
* ``outcome``: ``0`` Success, ``4`` Minor failure (every 4xx, refusals 401/403 included),
  ``8`` Serious failure (5xx), from https://hl7.org/fhir/R4/valueset-audit-event-outcome.html,
  with ``outcomeDesc`` for every failure;
* ``agent``: who asked: the user (``fhirUser``) and the client application, or the client
  alone; ``network`` the peer address (type ``2`` "IP Address", ``1`` "Machine Name" otherwise,
  https://hl7.org/fhir/R4/valueset-network-type.html);
* ``source.observer``: this server;
* ``entity``: the resource (``Type/id``, ``Type/id/_history/v`` when the version is known), the
  query of a search or conditional interaction (base64), and the patient a patient-confined
  caller is confined to, so that the ``patient`` search parameter finds every event of a
  patient's own access.

Never in an AuditEvent: tokens (an ``access_token`` query parameter is dropped from the
recorded query), request or response bodies, resource content.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode

from careplan_fhir.fhir.dates import format_instant

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
#: Identifier system of the OAuth client ids (and token subjects) this server records.
CLIENT_SYSTEM = "urn:careplan-fhir:client"
OBSERVER = "careplan-fhir"
UNRESTRICTED_DISPLAY = "anonymous (authorization disabled)"
ANONYMOUS_DISPLAY = "anonymous (no valid access token)"

#: The ASGI scope key where an interaction may say what it was when the URL cannot tell
#: (``POST [base]`` is a batch or a transaction, depending on the body).
INTERACTION_KEY = "careplan.audit.interaction"
#: The ASGI scope key where the authorization layer may put the reason of a refusal.
REASON_KEY = "careplan.audit.reason"
#: The ASGI scope key of the caller (set by the authentication middleware).
ACCESS_KEY = "careplan.access"
#: The ASGI scope key where the token endpoints put the client they authenticated.
CLIENT_KEY = "careplan.audit.client_id"

_REST_TYPE = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_AUTH_TYPE = {"system": DICOM, "code": "110114", "display": "User Authentication"}
_LOGIN = {"system": DICOM, "code": "110122", "display": "Login"}
#: A patient-portal page or action: patient data seen or changed outside the FHIR API
#: (DICOM audit event ID, in https://hl7.org/fhir/R4B/valueset-audit-event-type.html).
_PATIENT_RECORD_TYPE = {"system": DICOM, "code": "110110", "display": "Patient Record"}
#: Portal actions that change a resource: ``POST /portal/<path>/{id}/<verb>``.
_PORTAL_WRITES = {("tasks", "done"): "Task", ("alerts", "acknowledge"): "Communication"}
_QUERY_TYPE = {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"}
_QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
_RESOURCE_ROLE = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
_PATIENT_ROLE = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
#: Query parameters never recorded (RFC 6750 section 2.3 lets a client send its token there).
_SECRET_PARAMETERS = frozenset({"access_token", "client_assertion", "client_secret", "token"})

#: The restful-interaction codes (https://hl7.org/fhir/R4/codesystem-restful-interaction.html).
INTERACTIONS = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    }
)


@dataclass(frozen=True)
class Interaction:
    """What a request asked for, as far as its method and path tell."""

    #: A restful-interaction code, "token"/"introspect" for the security endpoints, or None
    #: when the path is no interaction (the server answers 404 or 405).
    code: str | None
    #: The audit-event-action code.
    action: str
    resource_type: str | None = None
    resource_id: str | None = None
    version: str | None = None
    #: The operation's name without "$" (``apply``), for ``code == "operation"``.
    operation: str | None = None


@dataclass(frozen=True)
class Caller:
    """The parts of the request's caller (``careplan.auth.access.Access``) an audit record uses."""

    kind: str
    client_id: str | None = None
    subject: str | None = None
    fhir_user: str | None = None
    #: The patient id the caller is confined to (patient-level access), if any.
    patient: str | None = None


_WRITE_ACTIONS = {"POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}


def classify(method: str, path: str) -> Interaction | None:
    """The interaction of ``method path``; None for paths that are not audited.

    ``path`` is the request path from the server's root (``/fhir/CarePlan/1``).
    https://hl7.org/fhir/R4/http.html lists the URL of each interaction.
    """
    method = "GET" if method == "HEAD" else method
    if path == "/auth/token":
        return Interaction("token", "E")
    if path == "/auth/introspect":
        return Interaction("introspect", "E")
    if path == "/portal" or path.startswith("/portal/"):
        return _portal_interaction(method, path)
    if path != "/fhir" and not path.startswith("/fhir/"):
        return None
    parts = [p for p in path[6:].split("/") if p]
    if not parts:
        if method == "POST":
            return Interaction("transaction", "E")
        if method == "GET":
            return Interaction("search-system", "E")
        return Interaction(None, _WRITE_ACTIONS.get(method, "E"))
    head = parts[0]
    if head.startswith("."):
        return None  # .well-known discovery documents: public, no data, no decision
    if head.startswith("$"):
        return Interaction("operation", "E", operation=head[1:])
    if len(parts) == 1 and head == "metadata" and method == "GET":
        return Interaction("capabilities", "R")
    if len(parts) == 1 and head == "_history" and method == "GET":
        return Interaction("history-system", "R")
    if len(parts) == 1 and head == "_search" and method == "POST":
        return Interaction("search-system", "E")
    resource_type = head
    if len(parts) == 1:
        by_method = {
            "GET": ("search-type", "E"),
            "POST": ("create", "C"),
            "PUT": ("update", "U"),
            "PATCH": ("patch", "U"),
            "DELETE": ("delete", "D"),
        }
        code, action = by_method.get(method, (None, "E"))
        return Interaction(code, action, resource_type)
    second = parts[1]
    if len(parts) == 2:
        if second == "_search" and method == "POST":
            return Interaction("search-type", "E", resource_type)
        if second == "_history" and method == "GET":
            return Interaction("history-type", "R", resource_type)
        if second.startswith("$"):
            return Interaction("operation", "E", resource_type, operation=second[1:])
        by_method = {
            "GET": ("read", "R"),
            "PUT": ("update", "U"),
            "PATCH": ("patch", "U"),
            "DELETE": ("delete", "D"),
        }
        code, action = by_method.get(method, (None, _WRITE_ACTIONS.get(method, "E")))
        return Interaction(code, action, resource_type, second)
    third = parts[2]
    if len(parts) == 3 and third == "_history" and method == "GET":
        return Interaction("history-instance", "R", resource_type, second)
    if len(parts) == 3 and third.startswith("$"):
        return Interaction("operation", "E", resource_type, second, operation=third[1:])
    if len(parts) == 4 and third == "_history" and method == "GET":
        return Interaction("vread", "R", resource_type, second, parts[3])
    return Interaction(None, _WRITE_ACTIONS.get(method, "E"), resource_type, second)


def caller_of(access: object | None, status: int) -> Caller:
    """The :class:`Caller` of a request from its ``careplan.access`` (read by attribute name).

    Without one, the request either was refused by authentication (401: anonymous) or ran
    with authorization turned off (the server's own unrestricted caller).
    """
    if access is None:
        return Caller("anonymous" if status == 401 else "unrestricted")
    kind = str(getattr(access, "kind", "unrestricted"))
    patient = getattr(access, "confined_patient", None)
    if patient is None and kind == "patient":
        patient = getattr(access, "patient", None)
    return Caller(
        kind,
        client_id=_text(getattr(access, "client_id", None)),
        subject=_text(getattr(access, "subject", None)),
        fhir_user=_text(getattr(access, "fhir_user", None)),
        patient=_text(patient),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def outcome_of(status: int) -> str:
    """``0`` for success (1xx-3xx), ``4`` for a client error (4xx), ``8`` for a server error."""
    if status >= 500:
        return "8"
    if status >= 400:
        return "4"
    return "0"


def outcome_description(status: int, reason: str | None = None) -> str | None:
    """What went wrong, for ``outcomeDesc`` (None on success)."""
    if status < 400:
        return None
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == 401:
        text = f"Refused: no valid access token (HTTP 401 {phrase})"
    elif status == 403:
        text = f"Refused: the access token does not allow this interaction (HTTP 403 {phrase})"
    elif status >= 500:
        text = f"Server error (HTTP {status} {phrase})"
    else:
        text = f"Failed (HTTP {status} {phrase})"
    return f"{text}: {reason}" if reason else text


def recorded_query(resource_type: str | None, query: str) -> str | None:
    """The query as recorded (base64): ``Type?params`` without any secret parameter."""
    if not query:
        return None
    params = parse_qsl(query, keep_blank_values=True)
    kept = [(name, value) for name, value in params if name not in _SECRET_PARAMETERS]
    if not kept:
        return None
    text = (resource_type or "") + "?" + urlencode(kept, safe="/:|,$")
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def network_of(address: str | None) -> dict[str, str] | None:
    """``agent.network`` for a peer address: type 2 (IP Address) or 1 (Machine Name)."""
    if not address:
        return None
    if _is_ip_address(address):
        return {"address": address, "type": "2"}
    return {"address": address[:255], "type": "1"}


@functools.lru_cache(maxsize=4096)
def _is_ip_address(address: str) -> bool:
    # Parsed once per address (the same few clients make most requests).
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def agents_of(caller: Caller, address: str | None) -> list[dict[str, Any]]:
    """``agent``: the user and the client application, or whoever is known."""
    network = network_of(address)
    requestor: dict[str, Any]
    others: list[dict[str, Any]] = []
    if caller.kind == "unrestricted":
        requestor = {"who": {"display": UNRESTRICTED_DISPLAY}, "requestor": True}
    elif caller.kind == "anonymous":
        requestor = {"who": {"display": ANONYMOUS_DISPLAY}, "requestor": True}
    elif not (caller.fhir_user or caller.client_id or caller.subject):
        requestor = {
            "who": {"display": f"{caller.kind} caller without identity"},
            "requestor": True,
        }
    elif caller.fhir_user:
        requestor = {"who": {"reference": caller.fhir_user}, "requestor": True}
        if caller.subject:
            requestor["altId"] = caller.subject
        others = (
            [{"who": _client_reference(caller.client_id), "requestor": False}]
            if caller.client_id
            else []
        )
    else:
        identity = caller.client_id or caller.subject
        assert identity is not None
        requestor = {"who": _client_reference(identity), "requestor": True}
        if caller.subject and caller.subject != identity:
            requestor["altId"] = caller.subject
    if network is not None:
        requestor["network"] = network
    return [requestor, *others]


def _client_reference(client_id: str) -> dict[str, Any]:
    return {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}}


def _resource_entity(reference: str, resource_type: str | None) -> dict[str, Any]:
    entity: dict[str, Any] = {"what": {"reference": reference}}
    if resource_type and resource_type[:1].isupper() and resource_type.isalpha():
        entity["type"] = {"system": RESOURCE_TYPES, "code": resource_type, "display": resource_type}
        entity["role"] = _PATIENT_ROLE if resource_type == "Patient" else _RESOURCE_ROLE
    return entity


def entities_of(
    interaction: Interaction,
    caller: Caller,
    query: str,
    *,
    location: str | None = None,
    etag_version: str | None = None,
) -> list[dict[str, Any]]:
    """``entity``: the resource touched, the query, and the confining patient.

    ``location`` is the ``Location`` header of the response (``.../Type/id/_history/v``, a
    create's new id) and ``etag_version`` the version its ``ETag`` names.
    """
    entities: list[dict[str, Any]] = []
    reference: str | None = None
    resource_type = interaction.resource_type
    from_location = _reference_from_location(location) if location else None
    if from_location is not None and (
        resource_type is None or from_location.split("/", 1)[0] == resource_type
    ):
        reference = from_location
        resource_type = from_location.split("/", 1)[0]
    elif interaction.resource_id is not None and resource_type is not None:
        reference = f"{resource_type}/{interaction.resource_id}"
        version = interaction.version or etag_version
        if version:
            reference += f"/_history/{version}"
    if reference is not None:
        entities.append(_resource_entity(reference, resource_type))
    recorded = recorded_query(resource_type if interaction.resource_id is None else None, query)
    if recorded is not None:
        entities.append({"type": _QUERY_TYPE, "role": _QUERY_ROLE, "query": recorded})
    if caller.patient:
        patient = f"Patient/{caller.patient}"
        if reference is None or reference.split("/_history/")[0] != patient:
            entities.append(_resource_entity(patient, "Patient"))
    return entities


def _reference_from_location(location: str) -> str | None:
    """``Type/id/_history/v`` out of an absolute or relative ``Location``."""
    path = location.split("?", 1)[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return "/".join(parts[-4:])
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return "/".join(parts[-2:])
    return None


def subtype_of(interaction: Interaction) -> list[dict[str, str]]:
    if interaction.code == "token":
        return [_LOGIN]
    if interaction.code in INTERACTIONS:
        return [
            {"system": RESTFUL_INTERACTION, "code": interaction.code, "display": interaction.code}
        ]
    return []


class AuditFacts(NamedTuple):
    """What a request's AuditEvent is made of, as plain values (no dicts, no objects).

    The middleware gathers these on the event loop (a few attribute reads) and the audit
    writer builds the event from them (:func:`event_from_facts`), so the dozens of dicts of an
    AuditEvent are made off the request path. Plain values travel to a writer process as one
    JSON array (audit/process_sink.py).
    """

    code: str | None
    action: str
    resource_type: str | None
    resource_id: str | None
    version: str | None
    operation: str | None
    caller_kind: str
    client_id: str | None
    subject: str | None
    fhir_user: str | None
    patient: str | None
    status: int
    #: When the request ended: an aware datetime, or its ISO 8601 text after a journey as JSON.
    recorded: datetime | str
    query: str
    address: str | None
    location: str | None
    etag_version: str | None
    reason: str | None


def facts_of(
    interaction: Interaction,
    caller: Caller,
    *,
    status: int,
    recorded: datetime,
    query: str = "",
    address: str | None = None,
    location: str | None = None,
    etag_version: str | None = None,
    reason: str | None = None,
) -> AuditFacts:
    return AuditFacts(
        interaction.code,
        interaction.action,
        interaction.resource_type,
        interaction.resource_id,
        interaction.version,
        interaction.operation,
        caller.kind,
        caller.client_id,
        caller.subject,
        caller.fhir_user,
        caller.patient,
        status,
        recorded,
        query,
        address,
        location,
        etag_version,
        reason,
    )


def event_from_facts(facts: AuditFacts | Sequence[Any]) -> dict[str, Any]:
    """The AuditEvent of :class:`AuditFacts` (or of the same values as a JSON array)."""
    f = facts if isinstance(facts, AuditFacts) else AuditFacts(*facts)
    recorded = f.recorded
    if isinstance(recorded, str):
        recorded = datetime.fromisoformat(recorded)
    return build_audit_event(
        Interaction(f.code, f.action, f.resource_type, f.resource_id, f.version, f.operation),
        Caller(f.caller_kind, f.client_id, f.subject, f.fhir_user, f.patient),
        status=int(f.status),
        recorded=format_instant(recorded),
        query=f.query,
        address=f.address,
        location=f.location,
        etag_version=f.etag_version,
        reason=f.reason,
    )


def build_audit_event(
    interaction: Interaction,
    caller: Caller,
    *,
    status: int,
    recorded: str,
    query: str = "",
    address: str | None = None,
    location: str | None = None,
    etag_version: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The AuditEvent of one request (a dict ready to store)."""
    action = interaction.action
    if interaction.code in ("update", "patch") and status == 201:
        action = "C"
    event_type = _REST_TYPE
    if interaction.code in ("token", "introspect"):
        event_type = _AUTH_TYPE
    elif interaction.code == "portal":
        event_type = _PATIENT_RECORD_TYPE
    event: dict[str, Any] = {"resourceType": "AuditEvent", "type": event_type}
    subtype = subtype_of(interaction)
    if subtype:
        event["subtype"] = subtype
    event["action"] = action
    event["recorded"] = recorded
    event["outcome"] = outcome_of(status)
    description = outcome_description(status, reason)
    if description:
        event["outcomeDesc"] = description
    event["agent"] = agents_of(caller, address)
    event["source"] = {"observer": {"display": OBSERVER}}
    if interaction.code in ("token", "introspect"):
        entities = []
    elif interaction.code == "portal":
        # The page, never its query (an invitation link carries its token there).
        entities = entities_of(interaction, caller, "")
        entities.insert(0, {"name": str(interaction.operation)[:255]})
    else:
        entities = entities_of(
            interaction, caller, query, location=location, etag_version=etag_version
        )
    if entities:
        event["entity"] = entities
    return event


def _portal_interaction(method: str, path: str) -> Interaction | None:
    """A portal page (read) or action; its stylesheet is no access decision."""
    parts = [p for p in path[len("/portal") :].split("/") if p]
    if parts[:1] == ["static"]:
        return None
    if method == "GET":
        return Interaction("portal", "R", operation=path)
    if len(parts) == 3 and (parts[0], parts[2]) in _PORTAL_WRITES:
        resource_type = _PORTAL_WRITES[(parts[0], parts[2])]
        return Interaction("portal", "U", resource_type, parts[1], operation=path)
    if parts[:1] == ["check-in"] and len(parts) == 2:
        return Interaction("portal", "C", "CarePlan", parts[1], operation=path)
    return Interaction("portal", "E", operation=path)


def note_interaction(scope: MutableMapping[str, Any], code: str) -> None:
    """Tell the audit which interaction ran when the URL cannot (``batch``/``transaction``)."""
    scope[INTERACTION_KEY] = code
