"""Hooks that run after a resource is created or updated, in the same transaction (HAPI's
STORAGE_PRECOMMIT).

:func:`run_after_update` is called by :func:`careplan_fhir.rest.update.update_resource` (so PUT,
PATCH and transaction/batch entries all pass through it) with the document just stored;
:func:`run_after_create` likewise by :func:`careplan_fhir.rest.create.create_resource`. Hooks
are registered per resource type with :func:`after_update` and :func:`after_create`; a type
without hooks costs one dictionary lookup. A hook writes through ``ctx.repository`` directly,
never through ``update_resource`` or ``create_resource``, so hooks do not trigger each other;
each version a hook writes gets its Provenance
(:func:`careplan_fhir.audit.provenance.record_write_provenance`) like any other.

Registered here, the care-plan lifecycle (:mod:`careplan_fhir.workflows.plan_lifecycle`):

* ``Task``: the status rolls up to the activity of each CarePlan the Task is ``basedOn``.
* ``CarePlan``: a plan that becomes ``revoked`` has its open Tasks cancelled (Tasks that also
  belong to another plan still in force, e.g. carried over by a revision, are left alone).

And the daily check-in (:mod:`careplan_fhir.workflows.check_in`, ``docs/check-in.md``):

* ``QuestionnaireResponse`` (created): a completed check-in of a plan (``basedOn`` the CarePlan,
  answering its check-in Questionnaire) gets its Observations and, when it shows a warning
  sign, one alert Communication and one Flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.storage.repository import StoredResource
from careplan_fhir.storage.search import parse_search, run_search
from careplan_fhir.workflows import plan_lifecycle as lifecycle

from .care_plan_check_in import check_in_after_create
from .context import FhirContext

AfterUpdate = Callable[[FhirContext, dict[str, Any], StoredResource], None]
AfterCreate = Callable[[FhirContext, dict[str, Any], StoredResource], None]

_AFTER_UPDATE: dict[str, list[AfterUpdate]] = {}
_AFTER_CREATE: dict[str, list[AfterCreate]] = {}


def after_update(resource_type: str) -> Callable[[AfterUpdate], AfterUpdate]:
    """Register a hook run after every update of ``resource_type``."""

    def register(hook: AfterUpdate) -> AfterUpdate:
        _AFTER_UPDATE.setdefault(resource_type, []).append(hook)
        return hook

    return register


def run_after_update(ctx: FhirContext, document: dict[str, Any], stored: StoredResource) -> None:
    """Run the hooks of ``stored``'s type, in registration order."""
    for hook in _AFTER_UPDATE.get(stored.resource_type, ()):
        hook(ctx, document, stored)


def after_create(resource_type: str) -> Callable[[AfterCreate], AfterCreate]:
    """Register a hook run after every create of ``resource_type``."""

    def register(hook: AfterCreate) -> AfterCreate:
        _AFTER_CREATE.setdefault(resource_type, []).append(hook)
        return hook

    return register


def run_after_create(ctx: FhirContext, document: dict[str, Any], stored: StoredResource) -> None:
    """Run the create hooks of ``stored``'s type, in registration order."""
    for hook in _AFTER_CREATE.get(stored.resource_type, ()):
        hook(ctx, document, stored)


def _document(stored: StoredResource) -> dict[str, Any]:
    assert stored.raw is not None
    document: dict[str, Any] = jsonio.loads(stored.raw)
    return document


def _current(ctx: FhirContext, resource_type: str, resource_id: str) -> StoredResource | None:
    found = ctx.repository.find(resource_type, resource_id)
    return None if found is None or found.deleted else found


@after_update("Task")
def roll_up_task_status(ctx: FhirContext, task: dict[str, Any], stored: StoredResource) -> None:
    """The CarePlan activity backed by this Task follows its status (a new CarePlan version)."""
    status = task.get("status")
    if not isinstance(status, str):
        return
    now = format_instant(ctx.services.now())
    for plan_id in lifecycle.care_plan_ids_of(task):
        current = _current(ctx, "CarePlan", plan_id)
        if current is None:
            continue
        rolled = lifecycle.roll_up_task(_document(current), stored.id, status, now)
        if rolled is not None:
            validate_resource(rolled)
            plan, _ = ctx.repository.update(rolled, plan_id, if_match=current.version)
            record_write_provenance(ctx, plan, "UPDATE")


@after_update("CarePlan")
def cancel_tasks_of_revoked_plan(
    ctx: FhirContext, plan: dict[str, Any], stored: StoredResource
) -> None:
    """When a plan becomes revoked, its open Tasks are cancelled; finished ones are kept."""
    if plan.get("status") != "revoked":
        return
    if stored.version > 1:
        previous = ctx.repository.vread("CarePlan", stored.id, str(stored.version - 1))
        if previous.raw is not None and _document(previous).get("status") == "revoked":
            return
    cancel_open_tasks(ctx, stored.id, f"CarePlan/{stored.id} was revoked")


@after_create("QuestionnaireResponse")
def evaluate_check_in(ctx: FhirContext, response: dict[str, Any], stored: StoredResource) -> None:
    """A check-in posted as plain FHIR is evaluated as ``CarePlan/{id}/$check-in`` would be."""
    check_in_after_create(ctx, response, stored)


def cancel_open_tasks(ctx: FhirContext, plan_id: str, reason: str) -> list[StoredResource]:
    """Cancel the open Tasks based on ``CarePlan/{plan_id}``; the cancelled versions."""
    request = parse_search(
        "Task",
        [
            ("based-on", f"CarePlan/{plan_id}"),
            ("status", ",".join(sorted(lifecycle.OPEN_TASK_STATUSES))),
        ],
        default_count=1000,
    )
    request.total = "none"
    now = format_instant(ctx.services.now())
    cancelled = []
    for found in run_search(ctx.repository, request).matches:
        task = _document(found)
        others = [i for i in lifecycle.care_plan_ids_of(task) if i != plan_id]
        if any(_in_force(ctx, other) for other in others):
            continue
        updated = lifecycle.cancelled_task(task, now, reason)
        if updated is not None:
            validate_resource(updated)
            written, _ = ctx.repository.update(updated, found.id, if_match=found.version)
            record_write_provenance(ctx, written, "UPDATE")
            cancelled.append(written)
    return cancelled


def _in_force(ctx: FhirContext, plan_id: str) -> bool:
    current = _current(ctx, "CarePlan", plan_id)
    return current is not None and (
        _document(current).get("status") in lifecycle.CURRENT_PLAN_STATUSES
    )
