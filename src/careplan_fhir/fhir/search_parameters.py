"""The search parameters this server indexes, per resource type.

Each row follows the FHIR R4 search parameter registry
(https://hl7.org/fhir/R4/searchparameter-registry.html): name, type and the element paths of its
expression. Paths are a small FHIRPath subset, evaluated by :mod:`careplan_fhir.storage.indexing`:
dotted element names, ``name[x]`` for choice elements, ``name[field=value]`` for a ``where()``
filter; a reference parameter may name the only target type it matches (``subject`` as
``patient`` matches Patient targets only, as ``.where(resolve() is Patient)`` does in the spec).

Custom parameters (not in R4) are marked ``custom`` and published as SearchParameter resources.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

COMMON = """
_tag token meta.tag
_profile uri meta.profile
_security token meta.security
"""

_CONFORMANCE = """
date date date
description string description
identifier token identifier
jurisdiction token jurisdiction
name string name
publisher string publisher
status token status
title string title
url uri url
version token version
"""

_DEFINITIONS: dict[str, str] = {
    "ActivityDefinition": _CONFORMANCE
    + """
topic token topic
context-type token useContext.code
effective date effectivePeriod
""",
    # https://hl7.org/fhir/R4/auditevent.html#search: the parameters the audit trail's own
    # table answers (careplan_fhir/storage/audit_log.py); none of the common _tag, _profile
    # or _security (the server's events carry no meta beyond id and lastUpdated).
    "AuditEvent": """
action token action
address string agent.network.address
agent reference agent.who
altid token agent.altId
date date recorded
entity reference entity.what
outcome token outcome
patient reference agent.who|entity.what Patient
subtype token subtype
type token type
""",
    "CarePlan": """
activity-code token activity.detail.code
activity-date date activity.detail.scheduled[x]
activity-reference reference activity.reference
based-on reference basedOn
care-team reference careTeam
category token category
condition reference addresses
date date period
encounter reference encounter Encounter
goal reference goal
identifier token identifier
instantiates-canonical reference instantiatesCanonical
instantiates-uri uri instantiatesUri
intent token intent
part-of reference partOf
patient reference subject Patient
performer reference activity.detail.performer
replaces reference replaces
status token status
subject reference subject
""",
    "CareTeam": """
category token category
date date period
encounter reference encounter Encounter
identifier token identifier
participant reference participant.member
patient reference subject Patient
status token status
subject reference subject
""",
    "Communication": """
based-on reference basedOn
category token category
encounter reference encounter Encounter
identifier token identifier
instantiates-canonical uri instantiatesCanonical
instantiates-uri uri instantiatesUri
medium token medium
part-of reference partOf
patient reference subject Patient
received date received
recipient reference recipient
sender reference sender
sent date sent
status token status
subject reference subject
""",
    "CommunicationRequest": """
authored date authoredOn
based-on reference basedOn
category token category
encounter reference encounter Encounter
identifier token identifier
medium token medium
occurrence date occurrence[x]
patient reference subject Patient
priority token priority
recipient reference recipient
replaces reference replaces
requester reference requester
sender reference sender
status token status
subject reference subject
""",
    "Condition": """
abatement-date date abatement[x]
asserter reference asserter
body-site token bodySite
category token category
clinical-status token clinicalStatus
code token code
encounter reference encounter Encounter
evidence token evidence.code
identifier token identifier
onset-date date onset[x]
patient reference subject Patient
recorded-date date recordedDate
severity token severity
subject reference subject
verification-status token verificationStatus
""",
    "DocumentReference": """
author reference author
category token category
contenttype token content.attachment.contentType
date date date
description string description
encounter reference context.encounter
event token context.event
facility token context.facilityType
format token content.format
identifier token identifier
language token content.attachment.language
location uri content.attachment.url
patient reference subject Patient
period date context.period
related reference context.related
relatesto reference relatesTo.target
relation token relatesTo.code
security-label token securityLabel
setting token context.practiceSetting
status token status
subject reference subject
type token type
""",
    "Encounter": """
appointment reference appointment
based-on reference basedOn
class token class
date date period
diagnosis reference diagnosis.condition
episode-of-care reference episodeOfCare
identifier token identifier
location reference location.location
part-of reference partOf
participant reference participant.individual
participant-type token participant.type
patient reference subject Patient
practitioner reference participant.individual Practitioner
reason-code token reasonCode
reason-reference reference reasonReference
service-provider reference serviceProvider
special-arrangement token hospitalization.specialArrangement
status token status
subject reference subject
type token type
""",
    "Flag": """
author reference author
category token category
date date period
encounter reference encounter Encounter
identifier token identifier
patient reference subject Patient
status token status custom
subject reference subject
""",
    "Goal": """
achievement-status token achievementStatus
category token category
identifier token identifier
lifecycle-status token lifecycleStatus
patient reference subject Patient
start-date date start[x]
subject reference subject
target-date date target.due[x]
""",
    "Observation": """
based-on reference basedOn
category token category
code token code
combo-code token code|component.code
component-code token component.code
date date effective[x]
derived-from reference derivedFrom
encounter reference encounter Encounter
focus reference focus
has-member reference hasMember
identifier token identifier
part-of reference partOf
patient reference subject Patient
performer reference performer
status token status
subject reference subject
value-concept token valueCodeableConcept
value-date date valueDateTime|valuePeriod
value-quantity quantity valueQuantity
value-string string valueString
""",
    "Organization": """
active token active
address string address
address-city string address.city
address-postalcode string address.postalCode
address-state string address.state
identifier token identifier
name string name|alias
partof reference partOf
type token type
""",
    "Patient": """
active token active
address string address
address-city string address.city
address-country string address.country
address-postalcode string address.postalCode
address-state string address.state
address-use token address.use
birthdate date birthDate
death-date date deceasedDateTime
deceased token deceasedBoolean
email token telecom[system=email]
family string name.family
gender token gender
general-practitioner reference generalPractitioner
given string name.given
identifier token identifier
language token communication.language
link reference link.other
name string name
organization reference managingOrganization
phone token telecom[system=phone]
telecom token telecom
""",
    "PlanDefinition": _CONFORMANCE
    + """
composed-of reference relatedArtifact[type=composed-of].resource
context-type token useContext.code
definition reference action.definition[x]
depends-on reference relatedArtifact[type=depends-on].resource|library
derived-from reference relatedArtifact[type=derived-from].resource
effective date effectivePeriod
predecessor reference relatedArtifact[type=predecessor].resource
successor reference relatedArtifact[type=successor].resource
topic token topic
type token type
""",
    "Practitioner": """
active token active
address string address
address-city string address.city
address-postalcode string address.postalCode
address-state string address.state
communication token communication
email token telecom[system=email]
family string name.family
gender token gender
given string name.given
identifier token identifier
name string name
phone token telecom[system=phone]
telecom token telecom
""",
    "PractitionerRole": """
active token active
date date period
email token telecom[system=email]
endpoint reference endpoint
identifier token identifier
location reference location
organization reference organization
phone token telecom[system=phone]
practitioner reference practitioner
role token code
service reference healthcareService
specialty token specialty
telecom token telecom
""",
    "Procedure": """
based-on reference basedOn
category token category
code token code
date date performed[x]
encounter reference encounter Encounter
identifier token identifier
instantiates-canonical reference instantiatesCanonical
instantiates-uri uri instantiatesUri
location reference location
part-of reference partOf
patient reference subject Patient
performer reference performer.actor
reason-code token reasonCode
reason-reference reference reasonReference
status token status
subject reference subject
""",
    "Provenance": """
agent reference agent.who
agent-role token agent.role
agent-type token agent.type
entity reference entity.what
location reference location
patient reference target Patient
recorded date recorded
signature-type token signature.type
target reference target
when date occurred[x]
""",
    "Questionnaire": _CONFORMANCE
    + """
code token item.code
context-type token useContext.code
definition uri item.definition
effective date effectivePeriod
subject-type token subjectType
""",
    "QuestionnaireResponse": """
author reference author
authored date authored
based-on reference basedOn
encounter reference encounter Encounter
identifier token identifier
part-of reference partOf
patient reference subject Patient
questionnaire reference questionnaire
source reference source
status token status
subject reference subject
""",
    "Task": """
authored-on date authoredOn
based-on reference basedOn
business-status token businessStatus
code token code
due-date date restriction.period custom
encounter reference encounter Encounter
focus reference focus
group-identifier token groupIdentifier
identifier token identifier
intent token intent
modified date lastModified
owner reference owner
part-of reference partOf
patient reference for Patient
performer token performerType
period date executionPeriod
priority token priority
requester reference requester
status token status
subject reference for
""",
}


@dataclass(frozen=True)
class SearchParameter:
    """One search parameter of one resource type."""

    resource_type: str
    name: str
    type: str
    paths: tuple[str, ...]
    target: str | None = None
    custom: bool = False

    @property
    def expression(self) -> str:
        """A FHIRPath rendering of the paths, for CapabilityStatement and SearchParameter."""
        parts = []
        for path in self.paths:
            text = f"{self.resource_type}.{path}"
            if self.target:
                text += f".where(resolve() is {self.target})"
            parts.append(text)
        return " | ".join(parts)


def _parse(resource_type: str, text: str) -> dict[str, SearchParameter]:
    params: dict[str, SearchParameter] = {}
    for line in text.strip().splitlines():
        fields = line.split()
        if not fields:
            continue
        name, kind, paths = fields[0], fields[1], tuple(fields[2].split("|"))
        rest = fields[3:]
        custom = "custom" in rest
        targets = [word for word in rest if word != "custom"]
        params[name] = SearchParameter(
            resource_type, name, kind, paths, targets[0] if targets else None, custom
        )
    return params


#: Types stored outside the generic resource and index tables, whose parameters are
#: exactly those listed for them (the audit trail: careplan_fhir/storage/audit_log.py).
OWN_STORAGE = frozenset({"AuditEvent"})


@functools.cache
def parameters_for(resource_type: str) -> dict[str, SearchParameter]:
    """All indexed search parameters of ``resource_type``, by name (common ones included)."""
    params = {} if resource_type in OWN_STORAGE else _parse(resource_type, COMMON)
    params.update(_parse(resource_type, _DEFINITIONS.get(resource_type, "")))
    return params


#: Parameters that apply to every type but are answered from the resource row itself.
SPECIAL_PARAMETERS = {"_id": "token", "_lastUpdated": "date"}
