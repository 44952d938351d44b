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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir.search_parameters import parameters_for

from . import search
from .audit_log import AUDIT_TYPE, URL_SYSTEM, event_table, key_table
from .indexing import normalise_string, parse_reference
from .repository import StoredResource

_event = event_table()
_key = key_table()


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
            predicate = audit_condition(name, modifier, items, base_url=request.base_url)
        else:
            if strict:
                raise InvalidRequest(f"Unknown search parameter {raw_name!r} for {AUDIT_TYPE}")
            request.ignored.append(raw_name)
            continue
        request.conditions.append(AuditCriterion(predicate))  # type: ignore[arg-type]
        request.canonical_params.append((raw_name, value))
    return request


# -- search criteria -------------------------------------------------------------------------

#: Single-valued token parameters kept as columns: ``(system column or None, code column)``.
_TOKEN_COLUMNS = {
    "type": ("type_system", "type_code"),
    "action": (None, "action"),
    "outcome": (None, "outcome"),
}
#: Repeating parameters kept as key rows, by search-parameter type.
_KEY_PARAMETERS = {
    "subtype": "token",
    "altid": "token",
    "agent": "reference",
    "entity": "reference",
    "patient": "reference",
    "address": "string",
}
#: What each parameter type takes after the colon.
_MODIFIERS = {
    "token": {"", "not", "missing"},
    "reference": {"", "missing"},
    "string": {"", "exact", "contains", "missing"},
    "date": {"", "missing"},
}


def _keys(name: str, *criteria: ColumnElement[bool]) -> Any:
    return select(_key.c.event_pk).where(_key.c.name == name, *criteria)


def _token_parts(item: str) -> tuple[str | None, str, str]:
    """``(system or None, code, form)``: form is ``code``, ``both``, ``nosystem`` or ``system``."""
    parts = search._split_pipe(item)
    if len(parts) == 1:
        return None, parts[0], "code"
    system, code = parts
    if system == "":
        return None, code, "nosystem"
    if code == "":
        return system, "", "system"
    return system, code, "both"


def audit_condition(
    name: str,
    modifier: str,
    items: list[str],
    *,
    base_url: str,
) -> ColumnElement[bool]:
    """One AuditEvent search parameter as a predicate on ``audit_event`` rows.

    ``items`` are its comma-separated values, still escaped; they are read with the generic
    search's helpers (careplan_fhir.storage.search), so both read values alike.
    """
    if name == "date":
        kind = "date"
    elif name in _TOKEN_COLUMNS:
        kind = "token"
    else:
        kind = _KEY_PARAMETERS[name]
    target_type: str | None = None
    if kind == "reference" and modifier[:1].isupper():
        target_type, modifier = modifier, ""
    if modifier not in _MODIFIERS[kind]:
        raise InvalidRequest(f"Modifier :{modifier} is not supported on {name}")
    if name == "patient":
        target_type = "Patient"
    if modifier == "missing":
        if items != ["true"] and items != ["false"]:
            raise InvalidRequest(f"{name}:missing must be true or false")
        present = _present(name, kind)
        return not_(present) if items == ["true"] else present
    alternatives = []
    for item in items:
        if item == "":
            raise InvalidRequest(f"Empty value for search parameter {name}")
        if kind == "date":
            prefix, text = search._split_prefix(search.unescape(item))
            alternatives.append(_recorded_condition(prefix, *search._parse_date_value(text, name)))
        elif kind == "token":
            alternatives.append(_token_condition(name, item))
        elif kind == "reference":
            alternatives.append(_reference_condition(name, item, target_type, base_url))
        else:
            text = search.unescape(item)
            if modifier == "exact":
                matched = _key.c.exact == text
            else:
                pattern = search._escape_like(normalise_string(text))
                pattern = f"%{pattern}%" if modifier == "contains" else f"{pattern}%"
                matched = _key.c.value.like(pattern, escape="\\")
            alternatives.append(_event.c.pk.in_(_keys(name, matched)))
    condition = or_(*alternatives)
    return not_(condition) if modifier == "not" else condition


def _recorded_condition(prefix: str, p_low: datetime, p_high: datetime) -> ColumnElement[bool]:
    """``recorded`` (a range ``[low, high)``) against the value's range, per prefix
    (https://hl7.org/fhir/R4/search.html#prefix), as the generic date search compares."""
    low, high = _event.c.recorded_low, _event.c.recorded_high
    contained = and_(low >= p_low, high <= p_high)
    comparisons: dict[str, ColumnElement[bool]] = {
        "eq": contained,
        "ne": not_(contained),
        "gt": high > p_high,
        "lt": low < p_low,
        "ge": or_(high > p_high, contained),
        "le": or_(low < p_low, contained),
        "sa": low >= p_high,
        "eb": high <= p_low,
    }
    if prefix not in comparisons:
        raise InvalidRequest(f"date: prefix {prefix!r} is not supported on AuditEvent")
    return and_(low.is_not(None), comparisons[prefix])


def _present(name: str, kind: str) -> ColumnElement[bool]:
    if kind == "date":
        return _event.c.recorded_low.is_not(None)  # type: ignore[no-any-return]
    if name in _TOKEN_COLUMNS:
        return _event.c[_TOKEN_COLUMNS[name][1]].is_not(None)  # type: ignore[no-any-return]
    found = _keys(name).where(_key.c.event_pk == _event.c.pk)
    return exists(found)


def _token_condition(name: str, item: str) -> ColumnElement[bool]:
    system, code, form = _token_parts(item)
    if name in _TOKEN_COLUMNS:
        system_name, code_name = _TOKEN_COLUMNS[name]
        code_column = _event.c[code_name]
        system_column = _event.c[system_name] if system_name else None
        if form == "code":
            return code_column == code  # type: ignore[no-any-return]
        if system_column is None:  # a plain code: it has no system
            return code_column == code if form == "nosystem" else false()
        if form == "nosystem":
            return and_(system_column.is_(None), code_column == code)
        if form == "system":
            return system_column == system  # type: ignore[no-any-return]
        return and_(system_column == system, code_column == code)
    if form == "code":
        matched = _key.c.value == code
    elif form == "nosystem":
        matched = and_(_key.c.system.is_(None), _key.c.value == code)
    elif form == "system":
        matched = _key.c.system == system
    else:
        matched = and_(_key.c.system == system, _key.c.value == code)
    return _event.c.pk.in_(_keys(name, matched))  # type: ignore[no-any-return]


def _reference_condition(
    name: str,
    item: str,
    target_type: str | None,
    base_url: str,
) -> ColumnElement[bool]:
    text = search._split_pipe(item)[0]
    base = base_url.rstrip("/")
    if base and text.startswith(base + "/"):
        text = text[len(base) + 1 :]
    if "://" in text or text.startswith("urn:"):
        matched = and_(_key.c.system == URL_SYSTEM, _key.c.value == text[:255])
        return _event.c.pk.in_(_keys(name, matched))  # type: ignore[no-any-return]
    ref_type, ref_id, _, _ = parse_reference(text)
    if ref_type is None:
        if "/" in text or text.startswith("#"):
            raise InvalidRequest(f"{item!r} is not a reference (Type/id, id or a URL)")
        criteria = [_key.c.value == text]
        criteria.append(
            _key.c.system == target_type if target_type else _key.c.system != URL_SYSTEM
        )
        return _event.c.pk.in_(_keys(name, *criteria))  # type: ignore[no-any-return]
    if target_type and ref_type != target_type:
        return false()
    matched = and_(_key.c.system == ref_type, _key.c.value == ref_id)
    return _event.c.pk.in_(_keys(name, matched))  # type: ignore[no-any-return]


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
