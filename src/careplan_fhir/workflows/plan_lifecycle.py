"""A stored care plan's lifecycle: Task status roll-up, revocation and revision. Pure.

* **Roll-up** (https://hl7.org/fhir/R4/careplan.html#statuses): when a Task based on a CarePlan
  changes status, the plan's activity that points at that Task follows it. ``detail.status``
  where the activity has a detail; an activity that only references its Task (``cpl-3`` forbids
  both) carries the status in the :data:`ACTIVITY_STATUS_URL` extension. Either way a
  ``progress`` note records the change. The plan itself stays ``active`` when every Task is
  finished: completing it is the clinician's decision (``PUT``/``PATCH`` of ``status``);
  :func:`ready_to_complete` tells whether it could be.
* **Revoke**: open Tasks (:data:`OPEN_TASK_STATUSES`) become ``cancelled``; finished ones stay
  as they are.
* **Revise**: a newer template version applied to the same encounter. Activities are matched by
  the template action they came from (:func:`action_id_of`); :func:`diff_activities` says which
  were added, removed or changed.

Nothing here reads a clock or a database: ``now`` comes in as text (a FHIR dateTime).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from careplan_fhir.fhir import jsonio

PROJECT_CANONICAL = "https://careplan-fhir.org/fhir"
#: The status of an activity that references its Task (a referenced activity has no detail).
ACTIVITY_STATUS_URL = f"{PROJECT_CANONICAL}/StructureDefinition/activity-status"
#: The template action a CarePlan activity, Task or Goal was generated from.
TEMPLATE_ACTION_URL = f"{PROJECT_CANONICAL}/StructureDefinition/template-action"
#: A revision's difference from the plan it replaces (on the Provenance of the new plan).
PLAN_REVISION_URL = f"{PROJECT_CANONICAL}/StructureDefinition/plan-revision"

#: Task statuses (http://hl7.org/fhir/task-status) of work still to do.
OPEN_TASK_STATUSES = frozenset(
    {"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"}
)
#: Task statuses of work that is over, one way or another.
FINISHED_TASK_STATUSES = frozenset(
    {"completed", "cancelled", "failed", "rejected", "entered-in-error"}
)
#: CarePlan activity status (http://hl7.org/fhir/care-plan-activity-status) for a Task status.
ACTIVITY_STATUS_BY_TASK_STATUS: Mapping[str, str] = {
    "draft": "not-started",
    "requested": "not-started",
    "received": "not-started",
    "accepted": "not-started",
    "ready": "scheduled",
    "in-progress": "in-progress",
    "on-hold": "on-hold",
    "completed": "completed",
    "cancelled": "cancelled",
    "rejected": "cancelled",
    "failed": "stopped",
    "entered-in-error": "entered-in-error",
}
#: Activity statuses after which a plan has nothing left to do for that activity.
DONE_ACTIVITY_STATUSES = frozenset({"completed", "cancelled", "stopped", "entered-in-error"})
#: CarePlan statuses of a plan that is still in force (the ones a revision replaces).
CURRENT_PLAN_STATUSES = frozenset({"draft", "active", "on-hold"})


def _reference_id(reference: Any, resource_type: str) -> str | None:
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def care_plan_ids_of(task: Mapping[str, Any]) -> list[str]:
    """The ids of the CarePlans a Task is ``basedOn``."""
    ids = [_reference_id(ref, "CarePlan") for ref in task.get("basedOn") or []]
    return [i for i in ids if i]


def task_id_of_activity(activity: Mapping[str, Any]) -> str | None:
    """The Task an activity references (``activity.reference``), if any."""
    return _reference_id(activity.get("reference"), "Task")


def activity_status(activity: Mapping[str, Any]) -> str | None:
    """An activity's status: ``detail.status`` or the :data:`ACTIVITY_STATUS_URL` extension."""
    detail = activity.get("detail")
    if isinstance(detail, dict) and detail.get("status"):
        return str(detail["status"])
    for extension in activity.get("extension") or []:
        if extension.get("url") == ACTIVITY_STATUS_URL:
            value = extension.get("valueCode")
            return str(value) if value else None
    return None


def set_activity_status(activity: dict[str, Any], status: str) -> None:
    detail = activity.get("detail")
    if isinstance(detail, dict):
        detail["status"] = status
        return
    extensions = [e for e in activity.get("extension") or [] if e.get("url") != ACTIVITY_STATUS_URL]
    extensions.append({"url": ACTIVITY_STATUS_URL, "valueCode": status})
    activity["extension"] = extensions


def roll_up_task(
    care_plan: Mapping[str, Any], task_id: str, task_status: str, now: str
) -> dict[str, Any] | None:
    """The CarePlan with the activity backed by ``Task/{task_id}`` following ``task_status``.

    None when nothing changes (no such activity, or it already has that status), so a repeated
    or unrelated Task write adds no CarePlan version.
    """
    status = ACTIVITY_STATUS_BY_TASK_STATUS.get(task_status)
    if status is None:
        return None
    updated = copy.deepcopy(dict(care_plan))
    changed = False
    for activity in updated.get("activity") or []:
        if task_id_of_activity(activity) != task_id or activity_status(activity) == status:
            continue
        set_activity_status(activity, status)
        progress = list(activity.get("progress") or [])
        progress.append({"time": now, "text": f"Task/{task_id} is {task_status}"})
        activity["progress"] = progress
        changed = True
    return updated if changed else None


def ready_to_complete(care_plan: Mapping[str, Any]) -> bool:
    """True when the plan has Task-backed activities and every one of them is done."""
    statuses = [
        activity_status(a) for a in care_plan.get("activity") or [] if task_id_of_activity(a)
    ]
    return bool(statuses) and all(s in DONE_ACTIVITY_STATUSES for s in statuses)


def cancelled_task(task: Mapping[str, Any], now: str, reason: str) -> dict[str, Any] | None:
    """The Task cancelled (with ``statusReason``), or None when it is finished already."""
    if task.get("status") not in OPEN_TASK_STATUSES:
        return None
    updated = copy.deepcopy(dict(task))
    updated["status"] = "cancelled"
    updated["statusReason"] = {"text": reason}
    updated["lastModified"] = now
    return updated


def revoked_plan(care_plan: Mapping[str, Any], now: str, reason: str) -> dict[str, Any]:
    """The CarePlan revoked: open activities cancelled, done ones kept, a note with the reason."""
    updated = copy.deepcopy(dict(care_plan))
    updated["status"] = "revoked"
    for activity in updated.get("activity") or []:
        status = activity_status(activity)
        if status is not None and status not in DONE_ACTIVITY_STATUSES:
            set_activity_status(activity, "cancelled")
    notes = list(updated.get("note") or [])
    notes.append({"time": now, "text": reason})
    updated["note"] = notes
    return updated


def action_id_of(resource: Mapping[str, Any]) -> str | None:
    """The template action a Task, Goal or CarePlan activity (or its detail) came from."""
    for holder in (resource, resource.get("detail") or {}):
        for extension in holder.get("extension") or []:
            if extension.get("url") == TEMPLATE_ACTION_URL:
                for key in ("valueString", "valueId", "valueCode", "valueUri"):
                    if extension.get(key):
                        return str(extension[key]).rsplit("#", 1)[-1]
        for uri in holder.get("instantiatesUri") or []:
            if isinstance(uri, str) and "#" in uri:
                return uri.rsplit("#", 1)[-1]
    return None


#: What makes two activities "the same" for a revision: what the patient is asked to do,
#: not who, when it was written, or how far it got.
_TASK_CONTENT = ("code", "description", "executionPeriod", "restriction", "input", "priority")
_DETAIL_CONTENT = (
    "kind",
    "code",
    "description",
    "doNotPerform",
    "scheduledTiming",
    "scheduledPeriod",
    "scheduledString",
    "quantity",
    "dailyAmount",
    "productCodeableConcept",
)


def activity_content(activity: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]) -> bytes:
    """A comparable rendering of what an activity (or its Task) asks of the patient."""
    task_id = task_id_of_activity(activity)
    if task_id is not None:
        task = tasks.get(task_id) or {}
        return jsonio.dumps({key: task[key] for key in _TASK_CONTENT if key in task})
    detail = activity.get("detail") or {}
    return jsonio.dumps({key: detail[key] for key in _DETAIL_CONTENT if key in detail})


def activities_by_action(
    care_plan: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A plan's activities keyed by the template action they came from (others are skipped)."""
    keyed: dict[str, dict[str, Any]] = {}
    for activity in care_plan.get("activity") or []:
        task_id = task_id_of_activity(activity)
        key = action_id_of(tasks.get(task_id) or {}) if task_id else None
        key = key or action_id_of(activity)
        if key:
            keyed[key] = activity
    return keyed


@dataclass
class PlanDiff:
    """How a revised plan differs from the plan it replaces, by template action id."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed,"
            f" {len(self.unchanged)} unchanged"
        )

    def extension(self, replaced: str) -> dict[str, Any]:
        """The :data:`PLAN_REVISION_URL` extension: the replaced plan and each difference."""
        parts: list[dict[str, Any]] = [
            {"url": "replaces", "valueReference": {"reference": replaced}}
        ]
        for kind in ("added", "removed", "changed"):
            parts.extend({"url": kind, "valueString": key} for key in getattr(self, kind))
        return {"url": PLAN_REVISION_URL, "extension": parts}


def diff_activities(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> PlanDiff:
    """Compare activity contents keyed by action id (see :func:`activity_content`)."""
    diff = PlanDiff()
    for key, content in new.items():
        if key not in old:
            diff.added.append(key)
        elif old[key] != content:
            diff.changed.append(key)
        else:
            diff.unchanged.append(key)
    diff.removed = [key for key in old if key not in new]
    return diff
