"""Search of the audit trail (``GET [base]/AuditEvent?...``) over its own table.

The same request model, parameter syntax, paging and result parameters as every other search
(careplan_fhir.storage.search), run against ``audit_event`` and ``audit_event_key``
(careplan_fhir.storage.audit_log) instead of the generic index tables. ``_include`` and
``_revinclude`` are refused: an AuditEvent points at resources by reference but is itself
never the target of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, false, func, not_, or_, select, true

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir.search_parameters import parameters_for

from . import search
from .audit_log import AUDIT_TYPE, audit_condition, event_table
from .repository import StoredResource

_event = event_table()


@dataclass(frozen=True)
class AuditCriterion:
    """One restriction of an AuditEvent search: a predicate on the ``audit_event`` row.

    Stands where the generic search keeps its criteria (``SearchRequest.conditions``), so that
    authorization adds its own the same way (careplan_fhir.rest.authorization).
    """

    predicate: ColumnElement[bool]

    def exists(self) -> ColumnElement[bool]:
        return self.predicate


def audit_any_of(groups: Sequence[Sequence[Any]]) -> AuditCriterion:
    """Events matching every criterion of at least one group (none: no event)."""
    if not groups:
        return AuditCriterion(false())
    return AuditCriterion(or_(*(and_(true(), *(c.exists() for c in g)) for g in groups)))


def parse_audit_search(
    params: Sequence[tuple[str, str]],
    *,
    base_url: str,
    default_count: int,
    max_count: int,
    strict: bool,
) -> search.SearchRequest:
    """Turn query parameters into a :class:`~careplan_fhir.storage.search.SearchRequest`
    whose criteria are predicates on the ``audit_event`` table."""
    request = search.SearchRequest(AUDIT_TYPE, count=default_count, base_url=base_url.rstrip("/"))
    known = parameters_for(AUDIT_TYPE)
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in ("_include", "_revinclude"):
            raise InvalidRequest(f"{name} is not supported on AuditEvent searches")
        if name in search.RESULT_PARAMETERS:
            search._parse_result_parameter(request, name, modifier, value, max_count)
            continue
        if name in ("_id", "_lastUpdated"):
            predicate = _special(name, modifier, value)
        elif name in known:
            items = search.split_escaped(value, ",")
            predicate = audit_condition(
                name,
                modifier,
                items,
                base_url=request.base_url,
                split_pipe=search._split_pipe,
                unescape=search.unescape,
                escape_like=search._escape_like,
                date_range=search._parse_date_value,
                split_prefix=search._split_prefix,
            )
        else:
            if strict:
                raise InvalidRequest(f"Unknown search parameter {raw_name!r} for {AUDIT_TYPE}")
            request.ignored.append(raw_name)
            continue
        request.conditions.append(AuditCriterion(predicate))  # type: ignore[arg-type]
        request.canonical_params.append((raw_name, value))
    return request


def _special(name: str, modifier: str, value: str) -> ColumnElement[bool]:
    if name == "_id":
        if modifier not in ("", "not"):
            raise InvalidRequest(f"Modifier :{modifier} is not supported on _id")
        by_id: ColumnElement[bool] = _event.c.res_id.in_(search.split_values(value))
        return not_(by_id) if modifier == "not" else by_id
    if modifier:
        raise InvalidRequest(f"Modifier :{modifier} is not supported on {name}")
    column = _event.c.last_updated
    alternatives = []
    for item in search.split_values(value):
        prefix, text = search._split_prefix(item)
        low, high = search._parse_date_value(text, name)
        alternatives.append(
            {
                "eq": and_(column >= low, column < high),
                "ne": or_(column < low, column >= high),
                "gt": column >= high,
                "lt": column < low,
                "ge": column >= low,
                "le": column < high,
                "sa": column >= high,
                "eb": column < low,
                "ap": and_(column >= low - timedelta(days=1), column < high + timedelta(days=1)),
            }[prefix]
        )
    return or_(*alternatives)


def _sort_column(key: str, descending: bool) -> Any:
    if key == "_id":
        return _event.c.res_id
    if key == "_lastUpdated":
        return _event.c.last_updated
    if key == "date":
        return _event.c.recorded_high if descending else _event.c.recorded_low
    if key in ("type", "action", "outcome"):
        return _event.c[{"type": "type_code"}.get(key, key)]
    raise InvalidRequest(f"Cannot sort AuditEvent by {key!r}")


def run_audit_search(connection: Connection, request: search.SearchRequest) -> search.SearchResult:
    """One page of matching AuditEvents, with the total when asked for."""
    if request.includes or request.revincludes:
        raise InvalidRequest("_include and _revinclude are not supported on AuditEvent searches")
    conditions = [c.exists() for c in request.conditions]

    def count() -> int:
        statement = select(func.count()).select_from(_event).where(*conditions)
        return int(connection.execute(statement).scalar_one())

    wants_total = request.total != "none" or request.summary == "count"
    if request.summary == "count" or request.count == 0:
        return search.SearchResult([], [], count() if wants_total else None, None, None)
    keys = [(_sort_column(key, descending), descending) for key, descending in request.sort]
    keys.append((_event.c.pk, False))
    forward = request.before is None
    page_conditions = list(conditions)
    cursor = request.after if forward else request.before
    if cursor is not None:
        if len(cursor) != len(keys):
            raise InvalidRequest("The paging cursor does not belong to this search")
        page_conditions.append(search._keyset(keys, cursor, forward=forward))
    order = []
    for expression, descending in keys:
        ascending_now = (not descending) if forward else descending
        ordered = expression.asc() if ascending_now else expression.desc()
        order.append(ordered.nulls_last() if forward else ordered.nulls_first())
    statement = (
        select(
            _event.c.pk,
            _event.c.res_id,
            _event.c.last_updated,
            _event.c.raw,
            *[expression.label(f"k{i}") for i, (expression, _) in enumerate(keys)],
        )
        .where(*page_conditions)
        .order_by(*order)
        .limit(request.count + 1)
    )
    rows = list(connection.execute(statement).all())
    more = len(rows) > request.count
    total: int | None = None
    if wants_total:
        first_page = request.after is None and request.before is None
        total = len(rows) if first_page and not more else count()
    rows = rows[: request.count]
    if not forward:
        rows.reverse()
    matches = [
        StoredResource(row.pk, AUDIT_TYPE, row.res_id, 1, row.last_updated, bytes(row.raw))
        for row in rows
    ]
    values = [
        [search._cursor_value(getattr(row, f"k{i}")) for i in range(len(keys))] for row in rows
    ]
    next_cursor = previous_cursor = None
    if rows:
        if (forward and more) or not forward:
            next_cursor = search.encode_cursor(values[-1])
        if (not forward and more) or (forward and request.after is not None):
            previous_cursor = search.encode_cursor(values[0])
    return search.SearchResult(matches, [], total, next_cursor, previous_cursor)


def visible_event_pks(connection: Connection, pks: list[int], criteria: Sequence[Any]) -> set[int]:
    """Which of the events ``pks`` also match ``criteria`` (a granular scope's query)."""
    if not pks:
        return set()
    rows = connection.execute(
        select(_event.c.pk).where(_event.c.pk.in_(pks), *(c.exists() for c in criteria))
    ).scalars()
    return set(rows)
