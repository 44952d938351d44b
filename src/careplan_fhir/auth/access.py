"""Who is calling, and what their token lets them do (pure).

An :class:`Access` is built once per request from the verified token
(:func:`access_from_token`) and kept in the ASGI scope under :data:`SCOPE_KEY`. Every
interaction asks it for a :class:`Decision` about one resource type and one SMART permission
(https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

* ``system/`` scopes reach every patient's data;
* ``user/`` scopes reach what the user may see: every patient for a practitioner, only their own
  compartment when ``fhirUser`` is a Patient;
* ``patient/`` scopes reach the compartment of the token's ``patient`` launch context (and
  nothing without one);
* a granular scope (``patient/Observation.rs?category=...``) adds its query as a filter.

A decision is either unrestricted or a list of :class:`Grant` (a compartment and/or a query),
ORed; the REST layer turns them into SQL criteria before a search reaches the database
(:mod:`careplan_fhir.rest.authorization`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from careplan_fhir.errors import Forbidden

from .compartment import in_compartment_type

if TYPE_CHECKING:
    from .scopes import ScopeSet

#: Where the authentication middleware keeps the request's :class:`Access`.
SCOPE_KEY = "careplan.access"

#: The SMART permission letter each FHIR interaction needs.
PERMISSION_OF = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "search-type": "s",
    "history-type": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}

#: What a patient at home needs, and no more (issue 5: a patient updates the status of her own
#: Tasks and creates her own QuestionnaireResponses and Observations): the portal's session
#: and the demo patient token carry this.
PATIENT_PORTAL_SCOPE = (
    "patient/*.rs patient/Task.u patient/QuestionnaireResponse.c patient/Observation.c"
)

#: Types only system clients may read or search (the audit trail).
SYSTEM_ONLY_TYPES = frozenset({"AuditEvent"})


@dataclass(frozen=True)
class Grant:
    """One way a scope lets the caller reach resources of a type."""

    #: Confined to this patient's compartment, or None for every patient.
    patient: str | None = None
    #: A granular scope's search parameters (ANDed), or empty.
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Decision:
    """What an interaction may touch: everything, or what one of ``grants`` allows."""

    resource_type: str
    permission: str
    grants: tuple[Grant, ...] = ()

    @property
    def unrestricted(self) -> bool:
        return not self.grants

    @property
    def patients(self) -> frozenset[str]:
        return frozenset(g.patient for g in self.grants if g.patient is not None)


@dataclass(frozen=True)
class Access:
    """The caller of one request."""

    #: "system" | "user" | "patient" | "unrestricted" (authorization turned off) | "anonymous"
    kind: str
    scopes: ScopeSet | None = None
    client_id: str | None = None
    subject: str | None = None
    fhir_user: str | None = None
    #: The patient launch context (``patient`` claim), if any.
    patient: str | None = None
    encounter: str | None = None
    scope_text: str = ""
    #: Token id, for the audit trail.
    token_id: str | None = None
    issuer: str | None = None
    _decisions: dict[tuple[str, str], Decision | Forbidden] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def fhir_user_patient(self) -> str | None:
        """The patient id when ``fhirUser`` is a Patient (relative or absolute reference)."""
        return patient_of(self.fhir_user)

    @property
    def confined_patient(self) -> str | None:
        """The one patient this caller is confined to, when every grant is patient-level."""
        if self.kind == "patient":
            return self.patient or self.fhir_user_patient
        return None

    def decide(self, resource_type: str, interaction: str) -> Decision:
        """The decision for ``interaction`` on ``resource_type``; 403 when nothing grants it.

        Memoised per Access (one per token, shared by that client's requests).
        """
        key = (resource_type, interaction)
        memo = self._decisions.get(key)
        if memo is None:
            try:
                memo = self._decide(resource_type, interaction)
            except Forbidden as refused:
                memo = refused
            self._decisions[key] = memo
        if isinstance(memo, Forbidden):
            raise Forbidden(memo.message)
        return memo

    def _decide(self, resource_type: str, interaction: str) -> Decision:
        permission = PERMISSION_OF.get(interaction, interaction)
        if resource_type in SYSTEM_ONLY_TYPES and permission in ("u", "d"):
            raise Forbidden(f"The audit trail is append-only: no {interaction} on {resource_type}")
        if self.kind == "unrestricted":
            return Decision(resource_type, permission)
        if self.scopes is None:
            raise Forbidden(f"No scope allows {interaction} on {resource_type}")
        grants: list[Grant] = []
        writes = permission in ("c", "u", "d")
        for scope in self.scopes.granting(resource_type, permission):
            if resource_type in SYSTEM_ONLY_TYPES and scope.context != "system":
                continue
            patient: str | None
            if scope.context == "system":
                patient = None
            elif scope.context == "user":
                patient = self.fhir_user_patient
            else:
                patient = self.patient or self.fhir_user_patient
                if patient is None:
                    continue  # a patient scope without a patient context reaches nothing
            if patient is not None and not in_compartment_type(resource_type):
                if writes:
                    continue  # shared definitions (PlanDefinition ...) are not a patient's
                patient = None
            grant = Grant(patient, tuple(scope.query))
            if grant == Grant():
                return Decision(resource_type, permission)
            if grant not in grants:
                grants.append(grant)
        if not grants:
            raise Forbidden(
                f"The token's scopes do not allow {interaction} on {resource_type}"
                + (
                    " (the audit trail is for system clients)"
                    if resource_type in SYSTEM_ONLY_TYPES
                    else ""
                )
            )
        return Decision(resource_type, permission, tuple(grants))

    def unrestricted_for(self, resource_type: str, interaction: str) -> bool:
        """Whether ``interaction`` on ``resource_type`` needs no filtering at all."""
        try:
            return self.decide(resource_type, interaction).unrestricted
        except Forbidden:
            return False


#: The caller when authorization is turned off (a warning is logged at every start).
UNRESTRICTED = Access(kind="unrestricted")
#: Before authentication (public endpoints such as the CapabilityStatement).
ANONYMOUS = Access(kind="anonymous")


def kind_of(scopes: ScopeSet, patient: str | None, fhir_user: str | None) -> str:
    """ "system", "user" or "patient": the widest context among the token's resource scopes."""
    contexts = {scope.context for scope in scopes.scopes}
    if "system" in contexts:
        return "system"
    if "user" in contexts:
        return "patient" if patient_of(fhir_user) else "user"
    return "patient"


def patient_of(fhir_user: str | None) -> str | None:
    """The patient id of a ``fhirUser`` that is a Patient (relative or absolute reference)."""
    if not fhir_user:
        return None
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None
