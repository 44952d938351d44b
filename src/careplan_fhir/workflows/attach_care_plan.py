"""Attach a recovery plan to an encounter: apply a template and store the result, once.

The use case behind ``POST /fhir/Encounter/{id}/$attach-care-plan`` and ``careplan-fhir
attach``. The caller opens a write transaction (``begin_write``), calls
:func:`attach_care_plan` and commits once; everything below runs in that transaction.

Retry safety: the ``careplan_attachment`` row (encounter, template url, template version) is
inserted before anything else is written, inside a savepoint. Its unique constraint lets one of
two concurrent calls win; the loser (a unique violation on PostgreSQL, or, on SQLite where
writers are serialised, the row found up front) answers with the winner's plan and writes
nothing. A later identical call finds the row and answers the same way.

Revision: when the encounter already holds a current plan from another version of the same
template, the new plan ``replaces`` it. The old plan is revoked; its finished Tasks, and its
open Tasks whose activity did not change, are carried over (the new plan's activity points at
them and they gain the new plan in ``basedOn``); its other open Tasks are cancelled. The
difference (added, removed, changed activities by template action id) is recorded on the
Provenance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select

from careplan_fhir.apply.model import ApplyContext, ApplyError, ApplyResult
from careplan_fhir.errors import InvalidRequest, ResourceNotFound, Unprocessable
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant, to_naive_utc
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.fhir.outcome import issue
from careplan_fhir.fhir.profiles import check_declared_profiles
from careplan_fhir.storage.db import claim_row
from careplan_fhir.storage.repository import Repository, StoredResource
from careplan_fhir.storage.search import parse_search, run_search
from careplan_fhir.storage.tables import CarePlanAttachmentRow

from . import plan_lifecycle as lifecycle

_attachment = CarePlanAttachmentRow.__table__  # type: ignore[attr-defined]

UCUM = "http://unitsofmeasure.org"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


@dataclass(frozen=True)
class TemplateRef:
    """Which PlanDefinition: a canonical ``url`` (``version`` optional) or a logical ``id``."""

    url: str | None = None
    version: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, text: str) -> TemplateRef:
        """``url|version``, ``url``, or ``PlanDefinition/{id}``."""
        text = text.strip()
        if text.startswith("PlanDefinition/") and "|" not in text:
            return cls(id=text.split("/", 1)[1])
        url, _, version = text.partition("|")
        return cls(url=url, version=version or None)


@dataclass(frozen=True)
class AttachRequest:
    """One attach call: the encounter, the template, who attaches it, the clinician values."""

    encounter_id: str
    template: TemplateRef
    practitioner: str
    organization: str | None = None
    #: Clinician parameters as the engine takes them (see ``ApplyContext.parameters``).
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AttachOutcome:
    """What the call did: ``created`` False means an earlier call's plan was found."""

    created: bool
    care_plan: StoredResource
    #: The plan's resources as stored now: CarePlan, Goals, Tasks, Communications, Provenance.
    resources: list[StoredResource]
    #: Set on a revision: the replaced plan and the difference.
    replaced: str | None = None
    diff: lifecycle.PlanDiff | None = None


# -- parameters ------------------------------------------------------------------------------

_QUANTITY_TEXT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(\S.*)?$")


def parameter_value(text: str) -> Any:
    """A command-line value: ``38.0Cel`` → UCUM Quantity, ``3`` → int, anything else text."""
    match = _QUANTITY_TEXT.match(text)
    if match is None:
        return text
    number, unit = match.groups()
    if unit:
        unit = unit.strip()
        return {"value": Decimal(number), "unit": unit, "system": UCUM, "code": unit}
    if "." in number:
        return Decimal(number)
    return int(number)


def parameters_from_resource(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Clinician values from a nested Parameters resource, by name (value[x] unwrapped)."""
    values: dict[str, Any] = {}
    for part in parameters.get("parameter") or []:
        name = part.get("name")
        value_keys = [key for key in part if key.startswith("value")]
        if not name or len(value_keys) != 1:
            raise InvalidRequest(f"Clinician parameter {name!r} needs exactly one value[x]")
        if name in values:
            raise InvalidRequest(f"Clinician parameter {name!r} is given more than once")
        value = part[value_keys[0]]
        if value_keys[0] == "valueQuantity" and isinstance(value, dict):
            value = dict(value)
            if "value" in value:
                try:
                    value["value"] = Decimal(str(value["value"]))
                except InvalidOperation:
                    raise InvalidRequest(f"Clinician parameter {name!r}: bad value") from None
        values[name] = value
    return values


# -- reading the inputs ----------------------------------------------------------------------


def _document(stored: StoredResource) -> dict[str, Any]:
    assert stored.raw is not None
    document: dict[str, Any] = jsonio.loads(stored.raw)
    return document


def _search(repository: Repository, resource_type: str, **criteria: str) -> list[StoredResource]:
    params = [(name.replace("_", "-"), value) for name, value in criteria.items()]
    request = parse_search(resource_type, params, default_count=1000, strict=True)
    request.total = "none"
    return run_search(repository, request).matches


def _local_id(reference: Any, resource_type: str) -> str | None:
    if isinstance(reference, dict):
        text = reference.get("reference")
        if isinstance(text, str) and text.startswith(f"{resource_type}/"):
            return text.split("/")[1]
    return None


def read_encounter(repository: Repository, encounter_id: str) -> dict[str, Any]:
    """The encounter (404 unknown, 410 deleted); 422 unless its subject is a Patient."""
    encounter = _document(repository.read("Encounter", encounter_id))
    if _local_id(encounter.get("subject"), "Patient") is None:
        raise Unprocessable(
            f"Encounter/{encounter_id} has no Patient subject; a care plan needs one",
            issues=[
                issue(
                    "The encounter's subject must be a Patient",
                    code="required",
                    expression="Encounter.subject",
                )
            ],
        )
    return encounter


def _addresses(encounter: Mapping[str, Any]) -> tuple[str, ...]:
    references = [d.get("condition") for d in encounter.get("diagnosis") or []]
    references += list(encounter.get("reasonReference") or [])
    ids = [_local_id(reference, "Condition") for reference in references]
    return tuple(dict.fromkeys(f"Condition/{i}" for i in ids if i))


def _version_key(version: str) -> list[tuple[int, Any]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version)]


def find_template(repository: Repository, ref: TemplateRef) -> dict[str, Any]:
    """The PlanDefinition asked for (404 if none); 422 unless it is active."""
    if ref.id is not None:
        template = _document(repository.read("PlanDefinition", ref.id))
    else:
        assert ref.url is not None
        criteria = {"url": ref.url}
        if ref.version:
            criteria["version"] = ref.version
        found = [_document(s) for s in _search(repository, "PlanDefinition", **criteria)]
        if not ref.version:
            # No version asked for: the newest active one, else the newest of any status.
            active = [d for d in found if d.get("status") == "active"] or found
            found = sorted(active, key=lambda d: _version_key(str(d.get("version", ""))))[-1:]
        if not found:
            label = f"{ref.url}|{ref.version}" if ref.version else ref.url
            raise ResourceNotFound(f"No PlanDefinition {label} is stored")
        template = found[-1]
    if not template.get("url") or not template.get("version"):
        raise Unprocessable(
            f"PlanDefinition/{template.get('id')} has no url and version; it cannot be attached"
        )
    if template.get("status") != "active":
        message = (
            f"PlanDefinition {template['url']}|{template['version']} is"
            f" {template.get('status')}; only an active template can be applied"
        )
        raise Unprocessable(
            message,
            issues=[issue(message, code="business-rule", expression="PlanDefinition.status")],
        )
    return template


def _actions(actions: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        yield action
        yield from _actions(action.get("action") or [])


def find_activity_definitions(
    repository: Repository, template: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The ActivityDefinitions the template's actions point to (``definitionCanonical``), by
    canonical url with and without ``|version``, as the engine takes them."""
    found: dict[str, dict[str, Any]] = {}
    for action in _actions(template.get("action") or []):
        canonical = action.get("definitionCanonical")
        if not isinstance(canonical, str) or "/ActivityDefinition/" not in canonical:
            continue
        if canonical in found:
            continue
        url, _, version = canonical.partition("|")
        criteria = {"url": url, **({"version": version} if version else {})}
        matches = _search(repository, "ActivityDefinition", **criteria)
        if matches:
            definition = _document(matches[-1])
            found[canonical] = definition
            found.setdefault(url, definition)
            if definition.get("version"):
                found.setdefault(f"{url}|{definition['version']}", definition)
    return found


# -- the attachment row ----------------------------------------------------------------------


def _attachment_rows(repository: Repository, encounter: str, url: str) -> list[Any]:
    return list(
        repository.connection.execute(
            select(_attachment)
            .where(_attachment.c.encounter == encounter, _attachment.c.template_url == url)
            .order_by(_attachment.c.pk)
        ).all()
    )


def _claim(
    repository: Repository,
    encounter: str,
    url: str,
    version: str,
    care_plan_id: str,
    moment: datetime,
) -> str | None:
    """Insert the attachment row; None when ours, else the id of the plan that won the race."""
    values = {
        "encounter": encounter,
        "template_url": url,
        "template_version": version,
        "careplan_id": care_plan_id,
        "created": to_naive_utc(moment),
    }
    unique = ("encounter", "template_url", "template_version")
    return claim_row(
        repository.connection, _attachment, values, unique=unique, winner="careplan_id"
    )


def stored_plan(repository: Repository, care_plan_id: str) -> list[StoredResource]:
    """A stored plan's resources as they are now: the CarePlan, then Goals, Tasks,
    Communications and Provenances that belong to it."""
    plan = repository.read("CarePlan", care_plan_id)
    document = _document(plan)
    reference = f"CarePlan/{care_plan_id}"
    goals = [
        repository.read("Goal", goal_id)
        for goal_id in (_local_id(g, "Goal") for g in document.get("goal") or [])
        if goal_id
    ]
    tasks = _search(repository, "Task", based_on=reference)
    communications = _search(repository, "Communication", based_on=reference)
    provenances = _search(repository, "Provenance", target=reference)
    return [plan, *goals, *tasks, *communications, *provenances]


# -- attaching -------------------------------------------------------------------------------


class ProfileViolation(RuntimeError):
    """An output of the engine does not meet a profile it declares: a defect of ours."""


def check_profiles(document: Mapping[str, Any]) -> None:
    """Refuse to store a resource that misses a profile it declares in ``meta.profile``."""
    issues = [i for i in check_declared_profiles(document) if i.severity == "error"]
    if issues:
        raise ProfileViolation("; ".join(i.diagnostics for i in issues))


def attach_care_plan(
    repository: Repository,
    request: AttachRequest,
    *,
    now: datetime,
    new_id: Callable[[], str],
) -> AttachOutcome:
    """Apply the template to the encounter's patient and store the plan (see the module doc).

    Raises ResourceNotFound (encounter, template), Unprocessable (no Patient subject, template
    not active, a clinician parameter missing or wrong) before anything is written.
    """
    from careplan_fhir.apply.engine import apply_plan_definition

    encounter_ref = f"Encounter/{request.encounter_id}"
    encounter = read_encounter(repository, request.encounter_id)
    template = find_template(repository, request.template)
    url, version = str(template["url"]), str(template["version"])
    _check_agent(repository, request.practitioner, "practitioner")
    if request.organization:
        _check_agent(repository, request.organization, "organization")

    earlier = _attachment_rows(repository, encounter_ref, url)
    for row in earlier:
        if row.template_version == version:
            return AttachOutcome(False, *_found(repository, row.careplan_id))
    previous = _current_plan(repository, earlier)

    start = now
    period_end = (encounter.get("period") or {}).get("end")
    if period_end:
        start = datetime.fromisoformat(str(period_end).replace("Z", "+00:00"))
        if start.tzinfo is None:
            start = start.replace(tzinfo=now.tzinfo)
    context = ApplyContext(
        subject=str(encounter["subject"]["reference"]),
        now=now,
        start=start,
        new_id=lambda _resource_type: new_id(),
        encounter=encounter_ref,
        practitioner=request.practitioner,
        organization=request.organization,
        parameters=dict(request.parameters),
        addresses=_addresses(encounter),
    )
    try:
        result = apply_plan_definition(
            template, find_activity_definitions(repository, template), context
        )
    except ApplyError as exc:
        raise Unprocessable(
            f"The template cannot be applied: {exc}",
            issues=[
                issue(f"{i.name}: {i.message}", code="invalid", expression=i.name)
                for i in exc.issues
            ],
        ) from None

    care_plan = result.care_plan
    winner = _claim(repository, encounter_ref, url, version, str(care_plan["id"]), now)
    if winner is not None:
        return AttachOutcome(False, *_found(repository, winner))

    now_text = format_instant(now)
    updates: list[StoredResource] = []
    diff: lifecycle.PlanDiff | None = None
    replaced: str | None = None
    if previous is not None:
        replaced = f"CarePlan/{previous[0].id}"
        diff, updates = _revise(repository, previous, result, now_text)

    created = []
    for document in result.resources():
        validate_resource(document)
        check_profiles(document)
        created.append(repository.create(document, resource_id=str(document["id"])))
    provenance = _provenance(
        template, request, [*created, *updates], now_text, new_id(), replaced, diff
    )
    validate_resource(provenance)
    created.append(repository.create(provenance, resource_id=str(provenance["id"])))
    carried = [u for u in updates if u.resource_type == "Task"]
    resources = [created[0], *created[1:-1], *carried, created[-1]]
    return AttachOutcome(True, created[0], resources, replaced, diff)


def _found(
    repository: Repository, care_plan_id: str
) -> tuple[StoredResource, list[StoredResource]]:
    resources = stored_plan(repository, care_plan_id)
    return resources[0], resources


def _check_agent(repository: Repository, reference: str, name: str) -> None:
    resource_type, _, resource_id = reference.partition("/")
    if resource_type not in ("Practitioner", "PractitionerRole", "Organization") or not resource_id:
        raise InvalidRequest(
            f"Parameter {name!r} must reference a Practitioner,"
            f" PractitionerRole or Organization, not {reference!r}"
        )
    found = repository.find(resource_type, resource_id)
    if found is None or found.deleted:
        raise Unprocessable(
            f"Parameter {name!r}: {reference} is not known",
            issues=[issue(f"{reference} is not known", code="not-found", expression=name)],
        )


def _current_plan(
    repository: Repository, rows: list[Any]
) -> tuple[StoredResource, dict[str, Any]] | None:
    """The newest plan of this encounter and template (another version) still in force."""
    for row in reversed(rows):
        found = repository.find("CarePlan", row.careplan_id)
        if found is None or found.deleted:
            continue
        document = _document(found)
        if document.get("status") in lifecycle.CURRENT_PLAN_STATUSES:
            return found, document
    return None


def _revise(
    repository: Repository,
    previous: tuple[StoredResource, dict[str, Any]],
    result: ApplyResult,
    now_text: str,
) -> tuple[lifecycle.PlanDiff, list[StoredResource]]:
    """Revoke the previous plan, carry over or cancel its Tasks; the diff and what was updated.

    ``result`` is changed in place: carried-over Tasks replace the engine's new ones.
    """
    old_stored, old_plan = previous
    old_tasks = {
        s.id: _document(s)
        for s in _search(repository, "Task", based_on=f"CarePlan/{old_stored.id}")
    }
    new_tasks = {str(t["id"]): t for t in result.tasks}
    old_activities = lifecycle.activities_by_action(old_plan, old_tasks)
    new_activities = lifecycle.activities_by_action(result.care_plan, new_tasks)
    diff = lifecycle.diff_activities(
        {k: lifecycle.activity_content(a, old_tasks) for k, a in old_activities.items()},
        {k: lifecycle.activity_content(a, new_tasks) for k, a in new_activities.items()},
    )
    new_plan = result.care_plan
    new_plan["replaces"] = [{"reference": f"CarePlan/{old_stored.id}"}]
    new_plan_ref = f"CarePlan/{new_plan['id']}"
    updates: list[StoredResource] = []
    dropped: set[str] = set()
    for task_id, task in old_tasks.items():
        key = lifecycle.action_id_of(task)
        new_activity = new_activities.get(key) if key else None
        new_task_id = lifecycle.task_id_of_activity(new_activity) if new_activity else None
        finished = task.get("status") not in lifecycle.OPEN_TASK_STATUSES
        keep = new_task_id is not None and (finished or key in diff.unchanged)
        if keep and new_activity is not None and new_task_id is not None:
            # Carry over: the new plan's activity points at the old Task.
            new_activity["reference"] = {"reference": f"Task/{task_id}"}
            status = lifecycle.ACTIVITY_STATUS_BY_TASK_STATUS.get(str(task.get("status")))
            if status:
                lifecycle.set_activity_status(new_activity, status)
            dropped.add(new_task_id)
            task = dict(task)
            task["basedOn"] = [*task.get("basedOn", []), {"reference": new_plan_ref}]
            validate_resource(task)
            updates.append(repository.update(task, task_id, method="PUT")[0])
            continue
        cancelled = lifecycle.cancelled_task(
            task, now_text, f"Plan revised; replaced by {new_plan_ref}"
        )
        if cancelled is not None:
            validate_resource(cancelled)
            updates.append(repository.update(cancelled, task_id)[0])
    if dropped:
        result.tasks[:] = [t for t in result.tasks if str(t["id"]) not in dropped]
        _retarget(result, {f"Task/{i}" for i in dropped})
    revoked = lifecycle.revoked_plan(old_plan, now_text, f"Replaced by {new_plan_ref}")
    validate_resource(revoked)
    updates.insert(0, repository.update(revoked, old_stored.id)[0])
    return diff, updates


def _retarget(result: ApplyResult, dropped: set[str]) -> None:
    """Drop references to Tasks that were not stored (carried-over ones took their place)."""
    for resource in result.resources()[1:]:
        for key in ("partOf", "basedOn", "about"):
            if isinstance(resource.get(key), list):
                resource[key] = [r for r in resource[key] if r.get("reference") not in dropped]
                if not resource[key]:
                    del resource[key]


def _versioned(stored: StoredResource) -> dict[str, str]:
    return {"reference": f"{stored.resource_type}/{stored.id}/_history/{stored.version}"}


def _provenance(
    template: Mapping[str, Any],
    request: AttachRequest,
    written: list[StoredResource],
    now_text: str,
    provenance_id: str,
    replaced: str | None,
    diff: lifecycle.PlanDiff | None,
) -> dict[str, Any]:
    """Who attached which template, producing what (https://hl7.org/fhir/R4/provenance.html)."""
    canonical = f"{template['url']}|{template['version']}"
    agent: dict[str, Any] = {
        "type": {
            "coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author", "display": "Author"}]
        },
        "who": {"reference": request.practitioner},
    }
    if request.organization:
        agent["onBehalfOf"] = {"reference": request.organization}
    activity_text = f"Applied {canonical} to {'Encounter/' + request.encounter_id}"
    entities: list[dict[str, Any]] = [
        {
            "role": "source",
            "what": {
                "reference": canonical,
                "display": str(template.get("title") or template.get("name") or canonical),
            },
        }
    ]
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [_versioned(s) for s in written],
        "recorded": now_text,
        "activity": {
            "coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}],
            "text": activity_text,
        },
        "agent": [agent],
        "entity": entities,
    }
    if replaced is not None and diff is not None:
        provenance["extension"] = [diff.extension(replaced)]
        provenance["activity"]["text"] = f"{activity_text}, replacing {replaced}: {diff.summary()}"
        old = next(s for s in written if f"{s.resource_type}/{s.id}" == replaced)
        entities.append({"role": "revision", "what": _versioned(old)})
    return provenance
