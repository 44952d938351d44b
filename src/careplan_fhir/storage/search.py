"""Search: parse FHIR search parameters and run them against the index tables.

https://hl7.org/fhir/R4/search.html. Each parameter becomes a semi-join on its index table;
values separated by commas are ORed, repeated parameters ANDed. Paging is keyset-based: the
``next`` link carries the sort values of the last entry, so pages neither repeat nor skip
entries while other clients create or delete resources.

Statements are cached per search *shape*. Parsing splits each parameter into its shape, which
says what SQL it needs and holds no value (``category`` as a bare code, ``patient`` as
``Type/id``, ``date`` with the ``ge`` prefix, how many values are ORed...), and the values that
fill that SQL's bind parameters. A search's statements depend only on its resource type, the
shapes of its criteria, its sort keys and the form of its cursor, so each combination is built
once and then run with new values: building the SQLAlchemy expressions, and the cache key of a
new statement, cost several times what SQLite takes to run a patient's search. A criterion
made as an expression elsewhere has no shape; a search that holds one is built afresh.
"""

from __future__ import annotations

import base64
import functools
import itertools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    false,
    func,
    not_,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import Dialect

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir.dates import DateFormatError, parse_range, to_naive_utc, utc_now
from careplan_fhir.fhir.search_parameters import (
    OWN_STORAGE,
    SPECIAL_PARAMETERS,
    SearchParameter,
    parameters_for,
)

from .indexing import normalise_string, parse_reference
from .repository import Repository, StoredResource
from .tables import (
    DateIndexRow,
    QuantityIndexRow,
    ReferenceIndexRow,
    ResourceRow,
    StringIndexRow,
    TokenIndexRow,
    UriIndexRow,
)

_resource = ResourceRow.__table__  # type: ignore[attr-defined]
_TABLES = {
    "token": TokenIndexRow.__table__,  # type: ignore[attr-defined]
    "string": StringIndexRow.__table__,  # type: ignore[attr-defined]
    "reference": ReferenceIndexRow.__table__,  # type: ignore[attr-defined]
    "date": DateIndexRow.__table__,  # type: ignore[attr-defined]
    "uri": UriIndexRow.__table__,  # type: ignore[attr-defined]
    "quantity": QuantityIndexRow.__table__,  # type: ignore[attr-defined]
}


def resource_table() -> Any:
    """The current-resource table, for criteria built outside this module (authorization)."""
    return _resource


def index_table(kind: str) -> Any:
    """The index table of a search-parameter type (``token``, ``reference``, ...)."""
    return _TABLES[kind]


#: Result parameters (https://hl7.org/fhir/R4/search.html#return) this server understands.
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_after",
        "_before",
    }
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MODIFIERS = {
    "token": {"not", "missing", "exact"},
    "string": {"exact", "contains", "missing"},
    "reference": {"missing"},
    "date": {"missing"},
    "uri": {"below", "missing"},
    "quantity": {"missing"},
}
_SUMMARY_MODES = {"true", "false", "count", "data", "text"}
_MAX_INCLUDE_DEPTH = 4


@dataclass(frozen=True)
class Include:
    """``_include`` or ``_revinclude``: ``source_type:param[:target_type]``."""

    source_type: str
    param: str
    target_type: str | None
    iterate: bool
    text: str


#: How well a parameter type narrows a search, lower first: the best criterion drives the
#: query (its index rows are read first), the others are checked per candidate with EXISTS.
_DRIVER_RANK = {"reference": 0, "uri": 1, "token": 2, "string": 3, "date": 4, "quantity": 4}


@dataclass(frozen=True)
class Restriction:
    """The SQL of one criterion.

    Either a set of resource rows from an index table (``table`` + ``subquery`` selecting
    ``resource_pk``), possibly negated, or a ``predicate`` on the resource row itself.
    """

    table: Any = None
    subquery: Select[Any] | None = None
    negated: bool = False
    predicate: ColumnElement[bool] | None = None

    def exists(self) -> ColumnElement[bool]:
        """This restriction as a per-row test of the resource being considered."""
        if self.predicate is not None:
            return self.predicate
        assert self.subquery is not None
        found = self.subquery.where(self.table.c.resource_pk == _resource.c.pk).exists()
        return not_(found) if self.negated else found


#: Hands out a criterion's values one per call, in the order of ``Criterion.values``: the
#: values themselves, or (building a statement to cache) the bind parameters standing for them.
Take = Callable[[], Any]


@dataclass(frozen=True)
class Criterion:
    """One search parameter's restriction: a shape and its values, or ready-made SQL.

    ``shape`` is hashable and holds no value: a module-level function and its value-free
    arguments (parameter name, form of each value...). ``shape[0](*shape[1:], take)`` builds
    the :class:`Restriction`, calling ``take()`` once per value, in the order of ``values``.
    The same shape with other values is the same SQL with other bind values: that is what lets
    :func:`run_search` cache statements.

    A criterion without a shape carries its SQL itself, as a :class:`Restriction`'s fields
    (``table`` + ``subquery``, or ``predicate``); a search that holds one is built afresh.
    """

    rank: int
    table: Any = None
    subquery: Select[Any] | None = None
    negated: bool = False
    predicate: ColumnElement[bool] | None = None
    shape: tuple[Any, ...] | None = None
    values: tuple[Any, ...] = ()

    def restriction(self) -> Restriction:
        """This criterion's SQL, its values inline."""
        if self.shape is None:
            return Restriction(self.table, self.subquery, self.negated, self.predicate)
        values = iter(self.values)
        restriction = _build(self.shape, values.__next__)
        assert next(values, _END) is _END, f"{self.shape[0].__name__} left values unused"
        return restriction

    def exists(self) -> ColumnElement[bool]:
        """This criterion as a per-row test of the resource being considered."""
        return self.restriction().exists()


_END = object()


def _build(shape: tuple[Any, ...], take: Take) -> Restriction:
    restriction: Restriction = shape[0](*shape[1:], take)
    return restriction


@dataclass
class SearchRequest:
    """A parsed search of one resource type."""

    resource_type: str
    conditions: list[Criterion] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)
    count: int = 20
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str = "accurate"
    after: list[Any] | None = None
    before: list[Any] | None = None
    #: The parameters that define the result set, re-emitted in paging links.
    canonical_params: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    #: This server's base URL: absolute references under it are local, all others external.
    base_url: str = ""


@dataclass
class SearchResult:
    """One page of matches plus included resources."""

    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None


# -- parsing ---------------------------------------------------------------------------------


_ESCAPED = re.compile(r"\\([,|$\\])")


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not escaped with a backslash; keep the escapes.

    https://hl7.org/fhir/R4/search.html#escaping: ``\\,`` ``\\|`` ``\\$`` and ``\\\\`` are
    literal characters of a value, not separators.
    """
    if "\\" not in text:
        return text.split(separator)  # nothing escaped: the common case, without the loop
    parts: list[str] = []
    current: list[str] = []
    characters = iter(text)
    for character in characters:
        if character == "\\":
            current.append(character)
            current.append(next(characters, ""))
        elif character == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Remove the backslash of ``\\,`` ``\\|`` ``\\$`` and ``\\\\``."""
    return _ESCAPED.sub(r"\1", text)


def split_values(text: str) -> list[str]:
    """Split on commas not escaped with a backslash, and unescape ``\\,`` ``\\|`` ``\\$``."""
    return [unescape(part) for part in split_escaped(text, ",")]


def parse_search(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    base_url: str = "",
    default_count: int = 20,
    max_count: int = 1000,
    strict: bool = False,
) -> SearchRequest:
    """Turn query parameters into a :class:`SearchRequest`; unknown ones are ignored or 400."""
    if resource_type in OWN_STORAGE:  # the audit trail: its own table (audit_search.py)
        from .audit_search import parse_audit_search

        return parse_audit_search(
            params,
            base_url=base_url,
            default_count=default_count,
            max_count=max_count,
            strict=strict,
        )
    request = SearchRequest(resource_type, count=default_count, base_url=base_url.rstrip("/"))
    known = parameters_for(resource_type)
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in RESULT_PARAMETERS:
            _parse_result_parameter(request, name, modifier, value, max_count)
            continue
        if name in SPECIAL_PARAMETERS:
            request.conditions.append(_special_condition(name, modifier, value))
            request.canonical_params.append((raw_name, value))
            continue
        param = known.get(name)
        if param is None:
            if strict:
                raise InvalidRequest(f"Unknown search parameter {raw_name!r} for {resource_type}")
            request.ignored.append(raw_name)
            continue
        request.conditions.append(_condition(param, modifier, value, base_url))
        request.canonical_params.append((raw_name, value))
    return request


def _parse_result_parameter(
    request: SearchRequest, name: str, modifier: str, value: str, max_count: int
) -> None:
    if name == "_count":
        if not value.isdigit():
            raise InvalidRequest(f"_count must be a non-negative integer, not {value!r}")
        request.count = min(int(value), max_count)
    elif name == "_sort":
        request.sort = []
        for key in split_values(value):
            descending = key.startswith("-")
            key = key.lstrip("-")
            if key not in SPECIAL_PARAMETERS and key not in parameters_for(request.resource_type):
                raise InvalidRequest(f"Cannot sort {request.resource_type} by {key!r}")
            request.sort.append((key, descending))
    elif name in ("_include", "_revinclude"):
        include = _parse_include(value, modifier, reverse=name == "_revinclude")
        (request.revincludes if name == "_revinclude" else request.includes).append(include)
    elif name == "_summary":
        if value not in _SUMMARY_MODES:
            raise InvalidRequest(f"_summary must be one of {sorted(_SUMMARY_MODES)}")
        request.summary = None if value == "false" else value
    elif name == "_elements":
        request.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise InvalidRequest("_total must be none, estimate or accurate")
        request.total = value
    elif name in ("_after", "_before"):
        cursor = decode_cursor(value)
        if name == "_after":
            request.after = cursor
        else:
            request.before = cursor


def _parse_include(value: str, modifier: str, *, reverse: bool) -> Include:
    parts = value.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise InvalidRequest(f"_include/_revinclude value {value!r} is not Type:param[:Target]")
    source_type, param = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source_type in OWN_STORAGE or target in OWN_STORAGE:
        raise InvalidRequest(f"{value!r}: AuditEvents cannot be included in a search")
    if modifier not in ("", "iterate", "recurse"):
        raise InvalidRequest(f"Unknown modifier :{modifier} on _include")
    if param != "*":
        definition = parameters_for(source_type).get(param)
        if definition is None or definition.type != "reference":
            raise InvalidRequest(f"{source_type}:{param} is not a reference search parameter")
    return Include(source_type, param, target, modifier in ("iterate", "recurse"), value)


def encode_cursor(values: list[Any]) -> str:
    """Encode sort values (and the tie-breaking key) as an opaque, URL-safe token."""
    tagged = [["d", v.isoformat()] if isinstance(v, datetime) else ["v", v] for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(tagged)).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> list[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        tagged = orjson.loads(base64.urlsafe_b64decode(padded))
        return [datetime.fromisoformat(v) if tag == "d" else v for tag, v in tagged]
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"Invalid paging cursor: {exc}") from None


# -- conditions ------------------------------------------------------------------------------
#
# Parsing turns each value into its *form* (value-free: which SQL) and its values; the
# ``_*_sql`` functions turn a form back into SQL, taking the values (or bind parameters) in the
# order the matching ``_*_form`` function produced them. Each pair is kept side by side.


def _condition(param: SearchParameter, modifier: str, value: str, base_url: str) -> Criterion:
    if param.type == "reference" and modifier and modifier[:1].isupper():
        target_type: str | None = modifier
        modifier = ""
    else:
        target_type = None
    if modifier and modifier not in _MODIFIERS[param.type]:
        raise InvalidRequest(f"Modifier :{modifier} is not supported on {param.name}")
    index = (_index_sql, param.resource_type, param.name, param.type)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidRequest(f"{param.name}:missing must be true or false")
        return Criterion(9, shape=(*index, value == "true", None))
    forms: list[tuple[Any, ...]] = []
    values: list[Any] = []
    for item in split_escaped(value, ","):
        if item == "":
            raise InvalidRequest(f"Empty value for search parameter {param.name}")
        form, item_values = _value_form(param, modifier, item, target_type, base_url)
        forms.append(form)
        values.extend(item_values)
    shape = (*index, modifier == "not", tuple(forms))
    return Criterion(_DRIVER_RANK.get(param.type, 5), shape=shape, values=tuple(values))


def _index_sql(
    resource_type: str,
    name: str,
    kind: str,
    negated: bool,
    forms: tuple[tuple[Any, ...], ...] | None,
    take: Take,
) -> Restriction:
    """The index rows of one parameter: any of its values (``forms``), or any row (``None``,
    for ``:missing``)."""
    table = _TABLES[kind]
    criteria: list[ColumnElement[bool]] = []
    if forms is not None:
        value_sql = _VALUE_SQL[kind]
        criteria.append(or_(*(value_sql(table, form, take) for form in forms)))
    subquery = select(table.c.resource_pk).where(
        table.c.res_type == resource_type, table.c.param == name, *criteria
    )
    return Restriction(table, subquery, negated)


def _value_form(
    param: SearchParameter,
    modifier: str,
    item: str,
    target_type: str | None,
    base_url: str,
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """One value of a parameter (``item`` still carries its ``\\`` escapes): form and values."""
    if param.type == "token":
        return _token_form(item)
    if param.type == "reference":
        return _reference_form(item, target_type or param.target, base_url)
    if param.type == "quantity":
        return _quantity_form(item, param.name)
    text = unescape(item)
    if param.type == "string":
        if modifier == "exact":
            return ("exact",), (text,)
        pattern = _escape_like(normalise_string(text))
        return ("like",), (f"%{pattern}%" if modifier == "contains" else f"{pattern}%",)
    if param.type == "date":
        prefix, text = _split_prefix(text)
        return (prefix,), _date_values(prefix, text, param.name)
    if param.type == "uri":
        if modifier == "below":
            return ("like",), (_escape_like(text) + "%",)
        return ("eq",), (text,)
    raise InvalidRequest(f"Search parameter type {param.type} is not supported")


def _string_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    if form[0] == "exact":
        return table.c.value_exact == take()  # type: ignore[no-any-return]
    return table.c.value_norm.like(take(), escape="\\")  # type: ignore[no-any-return]


def _uri_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    if form[0] == "like":
        return table.c.uri.like(take(), escape="\\")  # type: ignore[no-any-return]
    return table.c.uri == take()  # type: ignore[no-any-return]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _split_pipe(item: str) -> list[str]:
    """``item`` split at its first unescaped ``|`` (into at most two parts), then unescaped."""
    parts = split_escaped(item, "|")
    return [unescape(part) for part in (parts[:1] + ["|".join(parts[1:])] if parts[1:] else parts)]


def _token_form(item: str) -> tuple[tuple[str], tuple[str, ...]]:
    """``[code]``, ``[system]|[code]``, ``|[code]`` or ``[system]|`` (search.html#token)."""
    parts = _split_pipe(item)
    if len(parts) == 1:
        return ("code",), (parts[0],)
    system, code = parts
    if system == "":
        return ("|code",), (code,)
    if code == "":
        return ("system|",), (system,)
    return ("system|code",), (system, code)


def _token_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    if form[0] == "code":
        return table.c.code == take()  # type: ignore[no-any-return]
    if form[0] == "|code":
        return and_(table.c.system.is_(None), table.c.code == take())
    if form[0] == "system|":
        return table.c.system == take()  # type: ignore[no-any-return]
    system, code = take(), take()
    return and_(table.c.system == system, table.c.code == code)


def _is_absolute(text: str) -> bool:
    return "://" in text or text.startswith("urn:")


@functools.lru_cache(maxsize=64)
def local_target(table: Any, base_url: str) -> ColumnElement[bool]:
    """Index rows whose reference points into this server: relative, or absolute on our base.

    Built once per base URL (expressions are immutable, so one serves every search).

    ``http://other.example.org/fhir/Patient/1`` is another server's Patient/1, not ours
    (https://hl7.org/fhir/R4/references.html#literal).
    """
    relative: ColumnElement[bool] = table.c.target_url.is_(None)
    if not base_url:
        return relative
    return or_(relative, table.c.target_url.startswith(base_url + "/", autoescape=True))


def _reference_form(
    item: str, target_type: str | None, base_url: str
) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """``[type]/[id]``, ``[id]``, an absolute URL, or a canonical ``url|version``.

    https://hl7.org/fhir/R4/search.html#reference; an absolute URL on this server's base is the
    same as the relative reference. The base and the target type the parameter or its modifier
    allows are part of the form: they change the SQL, not just its values.
    """
    parts = _split_pipe(item)
    text, version = parts[0], (parts[1] if len(parts) > 1 else None)
    base = base_url.rstrip("/")
    if base and text.startswith(base + "/") and not version:
        text = text[len(base) + 1 :]
    if _is_absolute(text):
        if version:
            return ("url|version",), (text, version)
        return ("url",), (text,)
    if version:
        raise InvalidRequest(f"{item!r}: only a canonical URL can carry a |version")
    ref_type, ref_id, _, _ = parse_reference(text)
    if ref_type is None:
        if "/" in text or text.startswith("#"):
            raise InvalidRequest(f"{item!r} is not a reference (Type/id, id or a URL)")
        return ("id", target_type, base), (text,)
    if target_type and ref_type != target_type:
        return ("none",), ()
    assert ref_id is not None
    return ("type/id", base), (ref_type, ref_id)


def _reference_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    if form[0] == "url":
        return table.c.target_url == take()  # type: ignore[no-any-return]
    if form[0] == "url|version":
        url, version = take(), take()
        return and_(table.c.target_url == url, table.c.target_version == version)
    if form[0] == "none":
        return false()
    if form[0] == "id":
        _, target_type, base = form
        criteria = [table.c.target_id == take(), local_target(table, base)]
        if target_type:
            criteria.append(table.c.target_type == target_type)
        return and_(*criteria)
    _, base = form
    ref_type, ref_id = take(), take()
    return and_(
        table.c.target_type == ref_type, table.c.target_id == ref_id, local_target(table, base)
    )


def _split_prefix(item: str) -> tuple[str, str]:
    if item[:2] in _PREFIXES and len(item) > 2 and (item[2].isdigit() or item[2] in "-+."):
        return item[:2], item[2:]
    return "eq", item


def _parse_date_value(text: str, name: str) -> tuple[datetime, datetime]:
    """The search value's ``[low, high)``; a space is read as the ``+`` of a time-zone offset.

    Clients often leave the ``+`` of ``2026-03-01T10:00:00+02:00`` unencoded in a URL, where
    it arrives as a space; no valid value contains a space, so the reading is unambiguous.
    """
    try:
        return parse_range(text.replace(" ", "+"))
    except DateFormatError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None


def _date_values(prefix: str, text: str, name: str) -> tuple[datetime, ...]:
    """The bounds a comparison with ``prefix`` needs, in the order :func:`_date_sql` takes them."""
    p_low, p_high = _parse_date_value(text, name)
    if prefix in ("gt", "sa"):
        return (p_high,)
    if prefix in ("lt", "eb"):
        return (p_low,)
    if prefix == "ap":
        # approximately; the spec leaves the margin to the server: 10% of the gap to now.
        margin = max(abs(to_naive_utc(utc_now()) - p_low) / 10, timedelta(days=1))
        return (p_high + margin, p_low - margin)
    return (p_low, p_high)


def _date_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    """A range-to-range comparison per prefix (https://hl7.org/fhir/R4/search.html#prefix)."""
    low, high = table.c.low, table.c.high
    prefix = form[0]
    if prefix == "gt":
        return high > take()  # type: ignore[no-any-return]
    if prefix == "lt":
        return low < take()  # type: ignore[no-any-return]
    if prefix == "sa":
        return low >= take()  # type: ignore[no-any-return]
    if prefix == "eb":
        return high <= take()  # type: ignore[no-any-return]
    if prefix == "ap":
        upper, lower = take(), take()
        return and_(low < upper, high > lower)
    p_low, p_high = take(), take()
    contained = and_(low >= p_low, high <= p_high)
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not_(contained)
    if prefix == "ge":
        return or_(high > p_high, contained)
    return or_(low < p_low, contained)  # le


#: Quantity prefixes that compare with the number itself (eq, ne and ap use a range).
_QUANTITY_COMPARISONS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "gt": operator.gt,
    "lt": operator.lt,
    "ge": operator.ge,
    "le": operator.le,
    "sa": operator.gt,
    "eb": operator.lt,
}


def _quantity_form(item: str, name: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``[prefix][number]|[system]|[code]`` (https://hl7.org/fhir/R4/search.html#quantity)."""
    prefix, text = _split_prefix(item)
    parts = [unescape(part) for part in split_escaped(text, "|")]
    if len(parts) not in (1, 3):
        raise InvalidRequest(f"{name}: {item!r} is not number or number|system|code")
    number, system, code = (parts + ["", ""])[:3]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise InvalidRequest(f"{name}: {number!r} is not a number") from None
    if not value.is_finite():
        raise InvalidRequest(f"{name}: {number!r} is not a finite number")
    bounds: tuple[float, ...]
    if prefix in ("eq", "ne"):
        # The precision of the number given: 5.4 is [5.35, 5.45).
        exponent = value.as_tuple().exponent
        half = Decimal(5) * Decimal(10) ** (int(exponent) - 1) if isinstance(exponent, int) else 0
        bounds = (float(value - half), float(value + half))
    elif prefix == "ap":
        # ap: within 10% of the value (the spec leaves the margin to the server).
        bounds = tuple(sorted((float(value) * 0.9, float(value) * 1.1)))
    else:
        bounds = (float(value),)
    form = (prefix, bool(system), bool(code))
    return form, bounds + ((system,) if system else ()) + ((code,) if code else ())


def _quantity_sql(table: Any, form: tuple[Any, ...], take: Take) -> ColumnElement[bool]:
    prefix, has_system, has_code = form
    column = table.c.value
    if prefix in ("eq", "ne"):
        lower, upper = take(), take()
        if prefix == "eq":
            comparison = and_(column >= lower, column < upper)
        else:
            comparison = or_(column < lower, column >= upper)
    elif prefix == "ap":
        lower, upper = take(), take()
        comparison = column.between(lower, upper)
    else:
        comparison = _QUANTITY_COMPARISONS[prefix](column, take())
    criteria = [comparison]
    if has_system:
        criteria.append(table.c.system == take())
    if has_code:
        code = take()
        criteria.append(or_(table.c.code == code, table.c.unit == code))
    return and_(*criteria)


_VALUE_SQL: dict[str, Callable[[Any, tuple[Any, ...], Take], ColumnElement[bool]]] = {
    "token": _token_sql,
    "string": _string_sql,
    "reference": _reference_sql,
    "date": _date_sql,
    "uri": _uri_sql,
    "quantity": _quantity_sql,
}


def _special_condition(name: str, modifier: str, value: str) -> Criterion:
    if name == "_id":
        if modifier not in ("", "not"):
            raise InvalidRequest(f"Modifier :{modifier} is not supported on _id")
        ids = tuple(split_values(value))
        negated = modifier == "not"
        return Criterion(9 if negated else -1, shape=(_id_sql, len(ids), negated), values=ids)
    if modifier:
        raise InvalidRequest(f"Modifier :{modifier} is not supported on {name}")
    prefixes: list[str] = []
    values: list[datetime] = []
    for item in split_values(value):
        prefix, text = _split_prefix(item)
        prefixes.append(prefix)
        values.extend(_instant_values(prefix, text, name))
    return Criterion(9, shape=(_last_updated_sql, tuple(prefixes)), values=tuple(values))


def _id_sql(count: int, negated: bool, take: Take) -> Restriction:
    column = _resource.c.res_id
    # IN types literal values by the column, not bind parameters: type them here, as each
    # dialect renders them per type (psycopg casts to VARCHAR).
    by_id: ColumnElement[bool] = column.in_(
        [type_coerce(take(), column.type) for _ in range(count)]
    )
    return Restriction(predicate=not_(by_id) if negated else by_id)


def _instant_values(prefix: str, text: str, name: str) -> tuple[datetime, ...]:
    """lastUpdated is an instant: a point, compared with the parameter's range ``[low, high)``.

    The bounds a prefix needs, in the order :func:`_last_updated_sql` takes them.
    """
    p_low, p_high = _parse_date_value(text, name)
    if prefix in ("eq", "ne"):
        return (p_low, p_high)
    if prefix == "ap":
        return (p_low - timedelta(days=1), p_high + timedelta(days=1))
    if prefix in ("gt", "le", "sa"):
        return (p_high,)
    return (p_low,)  # lt, ge, eb


def _last_updated_sql(prefixes: tuple[str, ...], take: Take) -> Restriction:
    column = _resource.c.last_updated
    alternatives: list[ColumnElement[bool]] = []
    for prefix in prefixes:
        if prefix in ("eq", "ap"):
            low, high = take(), take()
            alternatives.append(and_(column >= low, column < high))
        elif prefix == "ne":
            low, high = take(), take()
            alternatives.append(or_(column < low, column >= high))
        elif prefix in ("gt", "ge", "sa"):
            alternatives.append(column >= take())
        else:  # lt, le, eb
            alternatives.append(column < take())
    return Restriction(predicate=or_(*alternatives))


# -- running ---------------------------------------------------------------------------------


def _sort_expression(resource_type: str, key: str, descending: bool) -> Any:
    if key == "_id":
        return _resource.c.res_id
    if key == "_lastUpdated":
        return _resource.c.last_updated
    param = parameters_for(resource_type)[key]
    table = _TABLES[param.type]
    column_name = {
        "date": "high" if descending else "low",
        "string": "value_norm",
        "token": "code",
        "reference": "target_id",
        "uri": "uri",
        "quantity": "value",
    }[param.type]
    column = table.c[column_name]
    aggregate = func.max(column) if descending else func.min(column)
    return (
        select(aggregate)
        .where(
            table.c.resource_pk == _resource.c.pk,
            table.c.res_type == resource_type,
            table.c.param == key,
        )
        .scalar_subquery()
    )


def _keyset(
    keys: list[tuple[Any, bool]], values: Sequence[Any], *, forward: bool
) -> ColumnElement[bool]:
    """Rows strictly after (or before) ``values`` in the order of ``keys`` (nulls last)."""
    clauses: list[ColumnElement[bool]] = []
    equal_so_far: list[ColumnElement[bool]] = []
    for (expression, descending), value in zip(keys, values, strict=True):
        if forward:
            if value is None:
                step: ColumnElement[bool] = false()
            else:
                beyond = expression < value if descending else expression > value
                step = or_(beyond, expression.is_(None))
        else:
            if value is None:
                step = expression.is_not(None)
            else:
                step = expression > value if descending else expression < value
        clauses.append(and_(*equal_so_far, step))
        equal_so_far.append(expression.is_(None) if value is None else expression == value)
    return or_(*clauses)


def _where(resource_type: str, restrictions: list[tuple[int, Restriction]]) -> list[Any]:
    """The WHERE clause of ``(rank, restriction)`` pairs: the most selective index drives, the
    rest are per-row tests.

    ``pk IN (index rows)`` for the driver lets SQLite (and PostgreSQL) start from the few index
    rows of, say, one patient instead of scanning every resource of the type; the index rows
    carry the type, so the type test is needed only when no index criterion drives.
    """
    conditions: list[Any] = [_resource.c.deleted.is_(False)]
    drivers = [
        i
        for i, (_, restriction) in enumerate(restrictions)
        if restriction.subquery is not None and not restriction.negated
    ]
    driver = min(drivers, key=lambda i: restrictions[i][0]) if drivers else None
    if driver is not None and any(rank < restrictions[driver][0] for rank, _ in restrictions):
        driver = None  # a predicate on the resource row (_id) is more selective
    if driver is None:
        conditions.append(_resource.c.res_type == resource_type)
    else:
        conditions.append(_resource.c.pk.in_(restrictions[driver][1].subquery))
    conditions.extend(r.exists() for i, (_, r) in enumerate(restrictions) if i != driver)
    return conditions


def _count_statement(resource_type: str, restrictions: list[tuple[int, Restriction]]) -> Any:
    return select(func.count()).select_from(_resource).where(*_where(resource_type, restrictions))


def _page_statement(
    resource_type: str,
    restrictions: list[tuple[int, Restriction]],
    sort: Sequence[tuple[str, bool]],
    cursor: Sequence[Any] | None,
    forward: bool,
    limit: Any,
) -> Any:
    """One page's rows with their sort keys (``k0``, ``k1``...): one query, no second fetch by
    pk. ``cursor`` holds the values (or bind parameters) rows must come strictly after (before
    when not ``forward``), None standing for a null sort value."""
    keys = [
        (_sort_expression(resource_type, key, descending), descending) for key, descending in sort
    ]
    keys.append((_resource.c.pk, False))
    conditions = _where(resource_type, restrictions)
    if cursor is not None:
        conditions.append(_keyset(keys, cursor, forward=forward))
    order = []
    for expression, descending in keys:
        ascending_now = (not descending) if forward else descending
        ordered = expression.asc() if ascending_now else expression.desc()
        order.append(ordered.nulls_last() if forward else ordered.nulls_first())
    return (
        select(
            _resource.c.pk,
            _resource.c.res_type,
            _resource.c.res_id,
            _resource.c.version,
            _resource.c.last_updated,
            _resource.c.raw,
            *[expression.label(f"k{i}") for i, (expression, _) in enumerate(keys)],
        )
        .where(*conditions)
        .order_by(*order)
        .limit(limit)
    )


# -- the statement cache ---------------------------------------------------------------------

#: Search shapes whose statements are kept (each a few kilobytes of expression objects). The
#: bound keeps clients that send ever new shapes (a different number of ORed values each time,
#: say) from growing the cache without limit; the least recently used shape goes first.
STATEMENT_CACHE_SIZE = 512

#: A search's criteria as a cache key: ``(rank, shape, number of values)`` per criterion.
_CriteriaKey = tuple[tuple[int, tuple[Any, ...], int], ...]


def _criteria_key(conditions: Sequence[Criterion]) -> _CriteriaKey | None:
    """The value-free key of ``conditions``; None when one of them has no shape."""
    key = []
    for criterion in conditions:
        if criterion.shape is None:
            return None
        key.append((criterion.rank, criterion.shape, len(criterion.values)))
    return tuple(key)


class _Binds:
    """The bind parameters of a statement built for a shape: ``v0``, ``v1``... in the order
    ``take`` is called, the order of the criteria's values. (SQLAlchemy names its own
    parameters ``<column>_<n>``, so these never clash.)"""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> BindParameter[Any]:
        name = f"v{self.count}"
        self.count += 1
        return bindparam(name)


def _bound_restrictions(criteria: _CriteriaKey) -> list[tuple[int, Restriction]]:
    take = _Binds()
    restrictions = []
    for rank, shape, arity in criteria:
        first = take.count
        restrictions.append((rank, _build(shape, take)))
        assert take.count - first == arity, f"{shape[0].__name__} took a wrong number of values"
    return restrictions


@functools.lru_cache(maxsize=STATEMENT_CACHE_SIZE)
def _cached_count(resource_type: str, criteria: _CriteriaKey) -> Any:
    return _count_statement(resource_type, _bound_restrictions(criteria))


@functools.lru_cache(maxsize=STATEMENT_CACHE_SIZE)
def _cached_page(
    resource_type: str,
    criteria: _CriteriaKey,
    sort: tuple[tuple[str, bool], ...],
    cursor_nulls: tuple[bool, ...] | None,
    forward: bool,
) -> Any:
    """The page statement of a shape; ``cursor_nulls`` says, per sort key, whether the cursor's
    value is null (a different comparison), None when there is no cursor. The cursor's values
    are ``c0``, ``c1``... and the page size ``page_size``."""
    cursor: list[BindParameter[Any] | None] | None = None
    if cursor_nulls is not None:
        cursor = [None if null else bindparam(f"c{i}") for i, null in enumerate(cursor_nulls)]
    return _page_statement(
        resource_type,
        _bound_restrictions(criteria),
        sort,
        cursor,
        forward,
        bindparam("page_size", type_=Integer),
    )


@dataclass(frozen=True)
class StatementCacheInfo:
    """Hits, misses and size of the statement cache, page and count statements together."""

    hits: int
    misses: int
    size: int


def statement_cache_info() -> StatementCacheInfo:
    """How the statement cache is doing (for tests and for looking at a running server)."""
    page, count = _cached_page.cache_info(), _cached_count.cache_info()
    return StatementCacheInfo(
        page.hits + count.hits, page.misses + count.misses, page.currsize + count.currsize
    )


def clear_statement_cache() -> None:
    """Forget every cached statement (tests start from an empty cache)."""
    _cached_page.cache_clear()
    _cached_count.cache_clear()
    _DRIVER_STATEMENTS.clear()


class _Statements:
    """The count and page statements of one search, with the values to run them with.

    When every criterion has a shape the statements come from the cache: the same objects run
    each time, so SQLAlchemy computes their cache key once and finds them compiled. Otherwise
    they are built afresh with the values inline, as they were before there was a cache.

    They run through SQLAlchemy, not as compiled strings on the DB-API cursor: that would save
    about 0.04 ms more per search on SQLite, but SQLAlchemy's execution also applies the bind
    and result processors, wraps driver errors and invalidates a pooled PostgreSQL connection
    whose server went away, all of which a cursor path would have to redo.
    """

    def __init__(self, request: SearchRequest) -> None:
        self.request = request
        self.criteria = _criteria_key(request.conditions)
        values = itertools.chain.from_iterable(c.values for c in request.conditions)
        self.values = {f"v{i}": value for i, value in enumerate(values)}

    def count(self, connection: Connection) -> int:
        request = self.request
        if self.criteria is None:
            restrictions = [(c.rank, c.restriction()) for c in request.conditions]
            statement = _count_statement(request.resource_type, restrictions)
            return int(connection.execute(statement).scalar_one())
        statement = _cached_count(request.resource_type, self.criteria)
        return int(connection.execute(statement, self.values).scalar_one())

    def page(
        self, connection: Connection, cursor: list[Any] | None, forward: bool, limit: int
    ) -> list[Row[Any]]:
        request = self.request
        if self.criteria is None:
            restrictions = [(c.rank, c.restriction()) for c in request.conditions]
            statement = _page_statement(
                request.resource_type, restrictions, request.sort, cursor, forward, limit
            )
            return list(connection.execute(statement).all())
        nulls = None if cursor is None else tuple(value is None for value in cursor)
        statement = _cached_page(
            request.resource_type, self.criteria, tuple(request.sort), nulls, forward
        )
        values = dict(self.values, page_size=limit)
        for i, value in enumerate(cursor or ()):
            if value is not None:
                values[f"c{i}"] = value
        return list(connection.execute(statement, values).all())


def run_search(repository: Repository, request: SearchRequest) -> SearchResult:
    """Run ``request``: one page of matches, the total and the included resources."""
    if request.resource_type in OWN_STORAGE:  # the audit trail: its own table
        from .audit_search import run_audit_search

        return run_audit_search(repository.audit_connection, request)
    connection: Connection = repository.connection
    statements = _Statements(request)
    wants_total = request.total != "none" or request.summary == "count"
    if request.summary == "count" or request.count == 0:
        return SearchResult(
            [], [], statements.count(connection) if wants_total else None, None, None
        )
    cursor, forward = _paging(request)
    rows = statements.page(connection, cursor, forward, request.count + 1)
    total = _total_of_page(request, rows)
    if total is None and wants_total:
        total = statements.count(connection)
    result = _page_result(request, rows, total, forward)
    result.included = _resolve_includes(repository, request, result.matches)
    return result


def _paging(request: SearchRequest) -> tuple[list[Any] | None, bool]:
    """The page's cursor (None on a first page) and whether it is read forward."""
    key_count = len(request.sort) + 1  # the sort keys, then pk
    forward = request.before is None
    cursor = request.after if forward else request.before
    if cursor is not None and len(cursor) != key_count:
        raise InvalidRequest("The paging cursor does not belong to this search")
    return cursor, forward


def _total_of_page(request: SearchRequest, rows: Sequence[Any]) -> int | None:
    """The total when the page tells it (a first page that holds every match is its own
    count: no second query); None when a count must run, or none is wanted."""
    if request.total == "none":
        return None
    first_page = request.after is None and request.before is None
    return len(rows) if first_page and len(rows) <= request.count else None


def _page_result(
    request: SearchRequest, rows: Sequence[Any], total: int | None, forward: bool
) -> SearchResult:
    """The page of matches and its cursors from the rows of a page statement (one row more
    than the page when there is a next one); no included resources yet."""
    key_count = len(request.sort) + 1
    more = len(rows) > request.count
    rows = list(rows[: request.count])
    if not forward:
        rows.reverse()
    matches = [
        StoredResource(
            row.pk, row.res_type, row.res_id, row.version, row.last_updated, bytes(row.raw), False
        )
        for row in rows
    ]
    cursor_values = [
        [_cursor_value(getattr(row, f"k{i}")) for i in range(key_count)] for row in rows
    ]
    next_cursor = previous_cursor = None
    if rows:
        if (forward and more) or not forward:
            next_cursor = encode_cursor(cursor_values[-1])
        if (not forward and more) or (forward and request.after is not None):
            previous_cursor = encode_cursor(cursor_values[0])
    return SearchResult(matches, [], total, next_cursor, previous_cursor)


@dataclass(frozen=True)
class DriverQuery:
    """A statement as the DB-API driver takes it: its text and its parameters."""

    sql: str
    parameters: dict[str, Any]


class _DriverStatement:
    """A cached statement compiled once for one dialect, for callers that run it on the
    driver themselves. ``IN`` lists whose values the statement holds (the compartment's
    parameters) are written out here, as SQLAlchemy would at each execution; ``usable`` is
    False when it cannot run as plain text: a list given at execution, an empty one, or
    parameters that SQLAlchemy converts on the way in."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self._compiled = compiled
        sql: str = compiled.string
        self._lists: dict[str, Any] = {}
        usable = True
        for name, bind in compiled.binds.items():
            if bind.type.bind_processor(dialect) is not None:
                usable = False
            if not bind.expanding:
                continue
            values = list(bind.value or ())
            if bind.required or not values:
                usable = False
                continue
            names = [f"{name}_{n}" for n in range(1, len(values) + 1)]
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join(f"%({n})s" for n in names))
            self._lists.update(zip(names, values, strict=True))
        self.sql = sql
        self.usable = usable and "POSTCOMPILE" not in sql

    def query(self, values: dict[str, Any]) -> DriverQuery:
        parameters = self._compiled.construct_params(values)
        parameters.update(self._lists)
        return DriverQuery(self.sql, parameters)


#: Cached statements compiled for a dialect, by (dialect, statement): both are held here, so
#: neither id can be reused while its entry lives. Emptied when it outgrows the cache.
_DRIVER_STATEMENTS: dict[tuple[int, int], tuple[Any, Any, _DriverStatement]] = {}


def _for_driver(statement: Any, dialect: Dialect) -> _DriverStatement:
    """``statement`` (from the statement cache) compiled for ``dialect``, once."""
    key = (id(dialect), id(statement))
    found = _DRIVER_STATEMENTS.get(key)
    if found is not None:
        return found[2]
    if len(_DRIVER_STATEMENTS) >= 4 * STATEMENT_CACHE_SIZE:
        _DRIVER_STATEMENTS.clear()
    driver = _DriverStatement(statement, dialect)
    _DRIVER_STATEMENTS[key] = (dialect, statement, driver)
    return driver


class NotPlannable(Exception):
    """A planned search turned out to need :func:`run_search` after all."""


class SearchPlan:
    """A search whose statements its caller runs on the driver (the event loop's PostgreSQL
    connections, rest/fast_paths.py), with the same statements and the same result as
    :func:`run_search`: :attr:`page`, then :meth:`count_query` when the page does not tell
    the total, then :meth:`finish`."""

    def __init__(
        self,
        request: SearchRequest,
        page: DriverQuery,
        criteria: _CriteriaKey,
        values: dict[str, Any],
        forward: bool,
        dialect: Dialect,
    ) -> None:
        self.request = request
        self.page = page
        self._criteria = criteria
        self._values = values
        self._forward = forward
        self._dialect = dialect

    def count_query(self, rows: Sequence[Any]) -> DriverQuery | None:
        """The count statement, when a total is wanted and the page's ``rows`` do not tell it.
        Raises :class:`NotPlannable` when it cannot run as plain text (the caller then runs
        the search as :func:`run_search` does)."""
        if self.request.total == "none" or _total_of_page(self.request, rows) is not None:
            return None
        statement = _cached_count(self.request.resource_type, self._criteria)
        driver = _for_driver(statement, self._dialect)
        if not driver.usable:
            raise NotPlannable("the count statement cannot run as plain text")
        return driver.query(self._values)

    def finish(self, rows: Sequence[Any], total: int | None) -> SearchResult:
        """The result of the page's rows (named columns) and the count's total, if it ran."""
        if total is None:
            total = _total_of_page(self.request, rows)
        return _page_result(self.request, rows, total, self._forward)


def plan_search(request: SearchRequest, dialect: Dialect) -> SearchPlan | None:
    """``request`` as statements for the driver, or None when only :func:`run_search` can run
    it: the audit trail, included resources (queries that depend on the matches), a count
    alone, criteria without a cached shape, statements that cannot run as plain text."""
    if (
        request.resource_type in OWN_STORAGE
        or request.includes
        or request.revincludes
        or request.summary == "count"
        or request.count == 0
    ):
        return None
    statements = _Statements(request)
    if statements.criteria is None:
        return None
    cursor, forward = _paging(request)
    nulls = None if cursor is None else tuple(value is None for value in cursor)
    statement = _cached_page(
        request.resource_type, statements.criteria, tuple(request.sort), nulls, forward
    )
    page = _for_driver(statement, dialect)
    if not page.usable:
        return None
    values = dict(statements.values, page_size=request.count + 1)
    for i, value in enumerate(cursor or ()):
        if value is not None:
            values[f"c{i}"] = value
    return SearchPlan(
        request, page.query(values), statements.criteria, statements.values, forward, dialect
    )


def _cursor_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


def _resolve_includes(
    repository: Repository, request: SearchRequest, matches: list[StoredResource]
) -> list[StoredResource]:
    if not (request.includes or request.revincludes) or not matches:
        return []
    seen = {(m.resource_type, m.id) for m in matches}
    included: list[StoredResource] = []
    frontier = matches
    for depth in range(_MAX_INCLUDE_DEPTH):
        found: list[StoredResource] = []
        for include in request.includes:
            if depth == 0 or include.iterate:
                found.extend(_forward_include(repository, include, frontier, request.base_url))
        for include in request.revincludes:
            if depth == 0 or include.iterate:
                found.extend(_reverse_include(repository, include, frontier, request.base_url))
        new = []
        for resource in found:
            key = (resource.resource_type, resource.id)
            if key not in seen and not resource.deleted:
                seen.add(key)
                new.append(resource)
        included.extend(new)
        if not new:
            break
        frontier = new
    return included


def _forward_include(
    repository: Repository, include: Include, sources: list[StoredResource], base_url: str
) -> list[StoredResource]:
    """The targets of ``include`` from ``sources``: local references by type and id, canonical
    references (any other absolute URL) by the ``url`` of the resource that defines it.
    """
    pks = [s.pk for s in sources if s.resource_type == include.source_type]
    if not pks:
        return []
    table = _TABLES["reference"]
    criteria = [table.c.resource_pk.in_(pks)]
    if include.param != "*":
        criteria.append(table.c.param == include.param)
    if include.target_type:
        criteria.append(table.c.target_type == include.target_type)
    references = repository.connection.execute(
        select(
            table.c.target_type,
            table.c.target_id,
            table.c.target_url,
            table.c.target_version,
            local_target(table, base_url).label("local"),
        )
        .where(*criteria)
        .distinct()
    ).all()
    local = {(r.target_type, r.target_id) for r in references if r.local and r.target_id}
    target_pks: list[int] = []
    if local:
        target_pks.extend(
            repository.connection.execute(
                select(_resource.c.pk)
                .where(tuple_(_resource.c.res_type, _resource.c.res_id).in_(sorted(local)))
                .order_by(_resource.c.pk)
            )
            .scalars()
            .all()
        )
    canonicals = {(r.target_url, r.target_version) for r in references if not r.local}
    target_pks.extend(_resources_by_canonical(repository, canonicals, include.target_type))
    return repository.load_many(sorted(set(target_pks)))


def _resources_by_canonical(
    repository: Repository, canonicals: set[tuple[str, str | None]], target_type: str | None
) -> list[int]:
    """Resources whose ``url`` (and ``version``, when the canonical names one) match."""
    uri = _TABLES["uri"]
    token = _TABLES["token"]
    found: list[int] = []
    for url, version in sorted(canonicals, key=lambda c: (c[0], c[1] or "")):
        criteria = [uri.c.param == "url", uri.c.uri == url]
        if target_type:
            criteria.append(uri.c.res_type == target_type)
        if version:
            criteria.append(
                uri.c.resource_pk.in_(
                    select(token.c.resource_pk).where(
                        token.c.param == "version", token.c.code == version
                    )
                )
            )
        found.extend(
            repository.connection.execute(select(uri.c.resource_pk).where(*criteria))
            .scalars()
            .all()
        )
    return found


def _canonicals_of(repository: Repository, pks: list[int]) -> list[tuple[str, str | None]]:
    """``(url, version)`` of the resources ``pks`` that have a canonical ``url``."""
    uri = _TABLES["uri"]
    token = _TABLES["token"]
    version = (
        select(func.min(token.c.code))
        .where(token.c.resource_pk == uri.c.resource_pk, token.c.param == "version")
        .scalar_subquery()
    )
    rows = repository.connection.execute(
        select(uri.c.uri, version.label("version"))
        .where(uri.c.resource_pk.in_(pks), uri.c.param == "url")
        .order_by(uri.c.resource_pk)
    ).all()
    return [(row.uri, row.version) for row in rows]


def _reverse_include(
    repository: Repository, include: Include, targets: list[StoredResource], base_url: str
) -> list[StoredResource]:
    """Resources of ``include.source_type`` whose ``include.param`` points at ``targets``:
    by a local reference, or by a canonical reference to a target's ``url``.
    """
    if not targets:
        return []
    table = _TABLES["reference"]
    pointing: ColumnElement[bool] = and_(
        tuple_(table.c.target_type, table.c.target_id).in_(
            sorted((t.resource_type, t.id) for t in targets)
        ),
        local_target(table, base_url),
    )
    for url, version in _canonicals_of(repository, [t.pk for t in targets]):
        # A canonical without |version means whichever version is current: it points here too.
        same_version = table.c.target_version.is_(None)
        if version:
            same_version = or_(same_version, table.c.target_version == version)
        pointing = or_(pointing, and_(table.c.target_url == url, same_version))
    criteria = [table.c.res_type == include.source_type, pointing]
    if include.param != "*":
        criteria.append(table.c.param == include.param)
    source_pks = (
        repository.connection.execute(select(table.c.resource_pk).where(*criteria).distinct())
        .scalars()
        .all()
    )
    return repository.load_many(sorted(source_pks))


__all__ = [
    "Criterion",
    "Include",
    "Restriction",
    "SearchRequest",
    "SearchResult",
    "StatementCacheInfo",
    "clear_statement_cache",
    "parse_search",
    "run_search",
    "split_values",
    "statement_cache_info",
]
