"""Authorization of each FHIR interaction: scopes, the patient compartment, granular filters.

Every interaction module calls these functions with the request's :class:`FhirContext`; the
caller's :class:`~careplan_fhir.auth.access.Access` decides (SMART App Launch v2 scopes,
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

* an interaction no scope allows is refused with 403;
* a search gets the caller's compartment (and granular scope queries) as criteria before it
  reaches SQL, so paging, ``total`` and ``_summary=count`` count only what the caller may see;
* a resource outside the caller's reach answers 404, exactly as a resource that does not exist
  (a 403 would tell another patient's record exists);
* included resources, history entries and historical versions are filtered the same way;
* a write is checked before (the current version) and after (the new one, in the same
  transaction: a refusal rolls it back), so a patient can neither take nor give away data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, or_, select

from careplan_fhir.auth.access import Access, Decision, Grant
from careplan_fhir.auth.compartment import compartment_criterion, document_in_compartment
from careplan_fhir.errors import FhirError, Forbidden, ResourceNotFound
from careplan_fhir.fhir import jsonio
from careplan_fhir.storage.audit_log import AUDIT_TYPE
from careplan_fhir.storage.audit_search import audit_any_of, visible_event_pks
from careplan_fhir.storage.repository import StoredResource
from careplan_fhir.storage.search import Criterion, SearchRequest, parse_search, resource_table

from .context import FhirContext

#: Task elements a patient-confined caller may change on their own Task (ticking it off).
PATIENT_TASK_ELEMENTS = frozenset(
    {
        "status",
        "statusReason",
        "businessStatus",
        "lastModified",
        "executionPeriod",
        "output",
        "note",
        "meta",
        "text",
    }
)


def decide(ctx: FhirContext, resource_type: str, interaction: str) -> Decision:
    """The caller's decision for ``interaction`` on ``resource_type`` (403 when refused)."""
    return ctx.access.decide(resource_type, interaction)


def _grant_criteria(ctx: FhirContext, resource_type: str, grant: Grant) -> list[Criterion] | None:
    """The criteria of one grant, or None when its granular query cannot be understood."""
    criteria: list[Criterion] = []
    if grant.patient is not None:
        criteria.append(compartment_criterion(resource_type, grant.patient, ctx.base_url))
    if grant.query:
        try:
            parsed = parse_search(resource_type, grant.query, base_url=ctx.base_url, strict=True)
        except FhirError:
            return None  # a scope we cannot apply grants nothing (never more than it says)
        criteria.extend(parsed.conditions)
    return criteria


def decision_criterion(ctx: FhirContext, decision: Decision) -> list[Criterion]:
    """Search criteria restricting ``decision.resource_type`` to what the decision allows."""
    if decision.unrestricted:
        return []
    per_grant = [
        c
        for c in (_grant_criteria(ctx, decision.resource_type, g) for g in decision.grants)
        if c is not None
    ]
    if decision.resource_type == AUDIT_TYPE:  # criteria on the audit trail's own table
        return per_grant[0] if len(per_grant) == 1 else [audit_any_of(per_grant)]  # type: ignore[list-item]
    if len(per_grant) == 1:
        return per_grant[0]
    if not per_grant:
        return [Criterion(-1, predicate=resource_table().c.pk.is_(None))]
    alternatives = [and_(*(c.exists() for c in criteria)) for criteria in per_grant]
    return [Criterion(9, predicate=or_(*alternatives))]


def guard_search(
    ctx: FhirContext, request: SearchRequest, interaction: str = "search-type"
) -> Decision:
    """Refuse or restrict a search before it runs (criteria added to ``request``)."""
    decision = decide(ctx, request.resource_type, interaction)
    request.conditions.extend(decision_criterion(ctx, decision))
    return decision


def visible_pks(ctx: FhirContext, decision: Decision, pks: Iterable[int]) -> set[int]:
    """The primary keys of current resources of ``decision``'s type the caller may see."""
    wanted = sorted(set(pks))
    if not wanted:
        return set()
    if decision.unrestricted:
        return set(wanted)
    if decision.resource_type == AUDIT_TYPE:
        return visible_event_pks(
            ctx.repository.audit_connection, wanted, decision_criterion(ctx, decision)
        )
    resource = resource_table()
    conditions = [resource.c.pk.in_(wanted), resource.c.res_type == decision.resource_type]
    conditions.extend(c.exists() for c in decision_criterion(ctx, decision))
    rows = ctx.connection.execute(select(resource.c.pk).where(*conditions)).scalars().all()
    return set(rows)


def check_visible(ctx: FhirContext, decision: Decision, stored: StoredResource) -> None:
    """404 unless the caller may see the current version ``stored`` (by its index rows)."""
    if decision.unrestricted:
        return
    if stored.pk not in visible_pks(ctx, decision, [stored.pk]):
        raise ResourceNotFound(f"{stored.resource_type}/{stored.id} is not known")


def version_visible(ctx: FhirContext, decision: Decision, stored: StoredResource) -> bool:
    """Whether a historical version's own content is in the caller's compartment.

    A resource can move between patients (a misfiled record corrected): each version is judged
    by what it says, and the resource as it is now must be visible too.
    """
    patients = decision.patients
    if decision.unrestricted or not patients or stored.raw is None:
        return True
    document = jsonio.loads(stored.raw)
    return any(document_in_compartment(document, p, ctx.base_url) for p in patients)


def guarded_find(
    ctx: FhirContext, resource_type: str, resource_id: str, interaction: str
) -> tuple[Decision, StoredResource | None]:
    """The current version (deleted included) if the caller may see it; refuses with 403.

    A deleted resource has no index rows left; a confined caller sees its deletion only when
    the last version before it was theirs.
    """
    decision = decide(ctx, resource_type, interaction)
    found = ctx.repository.find(resource_type, resource_id)
    if found is None or decision.unrestricted:
        return decision, found
    if found.deleted:
        if found.version > 1:
            try:
                previous = ctx.repository.vread(resource_type, resource_id, str(found.version - 1))
            except FhirError:
                return decision, None
            if version_visible(ctx, decision, previous):
                return decision, found
        return decision, None
    if found.pk in visible_pks(ctx, decision, [found.pk]):
        return decision, found
    return decision, None


def guarded_read(ctx: FhirContext, resource_type: str, resource_id: str) -> StoredResource:
    """read: the current version, 404/410 as usual, 404 when out of the caller's reach."""
    _, found = guarded_find(ctx, resource_type, resource_id, "read")
    if found is None:
        raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
    return ctx.repository.read(resource_type, resource_id)


def guarded_vread(
    ctx: FhirContext, resource_type: str, resource_id: str, version: str
) -> StoredResource:
    """vread: the version if both it and the resource are the caller's to see."""
    decision, found = guarded_find(ctx, resource_type, resource_id, "vread")
    if found is None:
        raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
    stored = ctx.repository.vread(resource_type, resource_id, version)
    if not version_visible(ctx, decision, stored):
        raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
    return stored


def filter_included(ctx: FhirContext, included: list[StoredResource]) -> list[StoredResource]:
    """The included resources the caller may read (by type scope, compartment and query)."""
    access = ctx.access
    if access.kind == "unrestricted" or not included:
        return included
    by_type: dict[str, list[int]] = defaultdict(list)
    for stored in included:
        by_type[stored.resource_type].append(stored.pk)
    visible: set[int] = set()
    for resource_type, pks in by_type.items():
        try:
            decision = access.decide(resource_type, "read")
        except Forbidden:
            continue
        visible |= visible_pks(ctx, decision, pks)
    return [stored for stored in included if stored.pk in visible]


def filter_versions(ctx: FhirContext, decision: Decision, versions: list[Any]) -> list[Any]:
    """History entries whose content the caller may see (instance history)."""
    # A delete entry carries no content, and is kept (version_visible passes it).
    return [version for version in versions if version_visible(ctx, decision, version)]


# -- writes ------------------------------------------------------------------------------------


def guard_write_before(
    ctx: FhirContext, resource_type: str, interaction: str, current: StoredResource | None
) -> Decision:
    """Refuse a write no scope allows; 404 when the resource to change is out of reach."""
    decision = decide(ctx, resource_type, interaction)
    if current is not None and not current.deleted:
        check_visible(ctx, decision, current)
    return decision


def guard_write_after(ctx: FhirContext, decision: Decision, stored: StoredResource) -> None:
    """403 (and the transaction rolls back) when the written version is out of reach."""
    if decision.unrestricted or stored.deleted:
        return
    if stored.pk not in visible_pks(ctx, decision, [stored.pk]):
        raise Forbidden(
            f"{stored.resource_type}/{stored.id} would not be in your compartment"
            " (or outside what your scopes allow); nothing was written"
        )


def check_patient_task_change(
    access: Access, decision: Decision, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """A patient-confined caller changes only the progress of their own Task, nothing else."""
    if decision.unrestricted or before.get("resourceType") != "Task":
        return
    if all(g.patient is None for g in decision.grants):
        return
    changed = {
        key
        for key in set(before) | set(after)
        if key not in ("id",) and before.get(key) != after.get(key)
    }
    refused = sorted(changed - PATIENT_TASK_ELEMENTS)
    if refused:
        raise Forbidden(
            "A patient may change only the progress of their own Task (status, statusReason,"
            " businessStatus, executionPeriod, output, note); not " + ", ".join(refused)
        )


def guard_history(ctx: FhirContext, resource_type: str | None, resource_id: str | None) -> Decision:
    """history: an instance the caller may see (404 otherwise); a type or the whole system
    only for callers who see all of it (a confined caller searches instead: history pages
    and totals are not filtered per patient).
    """
    from careplan_fhir.fhir.models import SERVED_TYPES

    if resource_type and resource_id:
        decision, found = guarded_find(ctx, resource_type, resource_id, "history-instance")
        if found is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        return decision
    types = [resource_type] if resource_type else list(SERVED_TYPES)
    for name in types:
        if not decide(ctx, name, "history-type").unrestricted:
            raise Forbidden(
                f"History of {'all ' + name if resource_type else 'the whole server'} is only"
                " for callers who may see every patient's data; search within your"
                " compartment instead"
            )
    return Decision(resource_type or "*", "s")


def require_unrestricted(
    ctx: FhirContext, interaction: str, resource_types: Iterable[str], what: str
) -> None:
    """403 unless the caller may do ``interaction`` on each type for every patient.

    For operations that write several resources at once ($attach-care-plan, $import): a
    patient-confined caller cannot be checked resource by resource before the operation runs.
    """
    for resource_type in resource_types:
        if not decide(ctx, resource_type, interaction).unrestricted:
            raise Forbidden(f"{what} needs {interaction} on {resource_type} for every patient")
