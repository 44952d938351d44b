"""Extract search-index values from a resource (pure).

For each search parameter of the resource's type (:mod:`careplan_fhir.fhir.search_parameters`)
the paths are walked and every value found becomes index entries of the parameter's type, as
https://hl7.org/fhir/R4/search.html describes for each type.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from careplan_fhir.fhir.dates import MAX_DATETIME, MIN_DATETIME, DateFormatError, parse_range
from careplan_fhir.fhir.search_parameters import SearchParameter, parameters_for

_SEGMENT = re.compile(
    r"^(?P<name>[A-Za-z_]+)(?P<choice>\[x\])?(\[(?P<key>\w+)=(?P<value>[\w-]+)\])?$"
)


@dataclass
class IndexEntries:
    """Index values of one resource, per index table (dicts of column values)."""

    token: list[dict[str, Any]] = field(default_factory=list)
    string: list[dict[str, Any]] = field(default_factory=list)
    reference: list[dict[str, Any]] = field(default_factory=list)
    date: list[dict[str, Any]] = field(default_factory=list)
    uri: list[dict[str, Any]] = field(default_factory=list)
    quantity: list[dict[str, Any]] = field(default_factory=list)


def normalise_string(text: str) -> str:
    """Fold case and strip accents, the comparison FHIR string search uses."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())[:255]


@functools.cache
def _steps(path: str) -> tuple[tuple[str, bool, str | None, str | None], ...]:
    """``path`` parsed once: ``(name, is_choice, filter key, filter value)`` per segment."""
    steps = []
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise ValueError(f"unsupported path segment {segment!r}")
        steps.append(
            (
                match.group("name"),
                bool(match.group("choice")),
                match.group("key"),
                match.group("value"),
            )
        )
    return tuple(steps)


def values_at(resource: dict[str, Any], path: str) -> Iterator[Any]:
    """Every value at ``path`` (the subset of FHIRPath used in search_parameters)."""
    current: list[Any] = [resource]
    for name, choice, key, wanted in _steps(path):
        found: list[Any] = []
        for node in current:
            if not isinstance(node, dict):
                continue
            if choice:
                values = [
                    v
                    for k, v in node.items()
                    if k.startswith(name) and k[len(name) :][:1].isupper()
                ]
            else:
                value = node.get(name)
                if value is None:
                    continue
                values = [value]
            for value in values:
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
        if key:
            found = [v for v in found if isinstance(v, dict) and v.get(key) == wanted]
        if not found:
            return
        current = found
    yield from current


def parse_reference(text: str) -> tuple[str | None, str | None, str | None, str | None]:
    """Split a reference into ``(type, id, url, version)``.

    ``Patient/1`` and ``Patient/1/_history/2`` give type and id; an absolute URL ending in
    ``Type/id`` gives those and the URL; a canonical ``url|version`` gives url and version.
    """
    if text.startswith("#"):
        return None, None, None, None
    url = version = None
    if "|" in text:
        text, version = text.split("|", 1)
    if "://" in text or text.startswith("urn:"):
        url = text
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-2].isalpha() and parts[-1]:
        return parts[-2], parts[-1][:64], url, version
    return None, None, url, version


@functools.cache
def _index_plan(
    resource_type: str,
) -> tuple[tuple[SearchParameter, str, str, bool], ...]:
    """Per type, each ``(parameter, path, first element name, first is a choice)``."""
    plan = []
    for param in parameters_for(resource_type).values():
        for path in param.paths:
            name, choice, _, _ = _steps(path)[0]
            plan.append((param, path, name, choice))
    return tuple(plan)


def extract_index_entries(resource: dict[str, Any]) -> IndexEntries:
    """All index entries of ``resource`` for its type's search parameters.

    A path whose first element the resource lacks is skipped without walking it: most of a
    type's parameters name elements a given resource does not have.
    """
    entries = IndexEntries()
    for param, path, first, choice in _index_plan(resource["resourceType"]):
        if not choice and first not in resource:
            continue
        for value in values_at(resource, path):
            _add(entries, param, value)
    return entries


def _add(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    adder = _ADDERS.get(param.type)
    if adder is not None:
        adder(entries, param, value)


def _add_token(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    pairs: list[tuple[str | None, str | None]] = []
    if isinstance(value, bool):
        pairs.append((None, "true" if value else "false"))
    elif isinstance(value, str):
        pairs.append((None, value))
    elif isinstance(value, dict):
        if "coding" in value:
            pairs.extend(
                (c.get("system"), c.get("code")) for c in value["coding"] if isinstance(c, dict)
            )
        elif "code" in value:
            pairs.append((value.get("system"), value.get("code")))
        elif "value" in value:
            pairs.append((value.get("system"), str(value["value"])))
    for system, code in pairs:
        if code is None and system is None:
            continue
        entries.token.append(
            {"param": param.name, "system": _clip(system, 255), "code": _clip(code, 255)}
        )


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
)


def _add_string(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    texts: list[str] = []
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        for part in _STRING_PARTS:
            item = value.get(part)
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                texts.extend(x for x in item if isinstance(x, str))
    for text in texts:
        entries.string.append(
            {"param": param.name, "value_norm": normalise_string(text), "value_exact": text[:2000]}
        )


def _add_reference(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    text = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(text, str):
        return
    target_type, target_id, url, version = parse_reference(text)
    if param.target and target_type != param.target:
        return
    if target_type is None and url is None:
        return
    entries.reference.append(
        {
            "param": param.name,
            "target_type": target_type,
            "target_id": target_id,
            "target_url": url[:1000] if url else None,
            "target_version": version[:64] if version else None,
        }
    )


def _range(text: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_range(text)
    except DateFormatError:
        return None


def _add_date(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    ranges: list[tuple[datetime, datetime]] = []
    if isinstance(value, str):
        found = _range(value)
        if found:
            ranges.append(found)
    elif isinstance(value, dict):
        if "start" in value or "end" in value:
            start = _range(value.get("start"))
            end = _range(value.get("end"))
            ranges.append((start[0] if start else MIN_DATETIME, end[1] if end else MAX_DATETIME))
        elif "event" in value or "repeat" in value:
            events = [r for r in (_range(e) for e in value.get("event", [])) if r]
            bounds = (value.get("repeat") or {}).get("boundsPeriod")
            if events:
                ranges.append((min(r[0] for r in events), max(r[1] for r in events)))
            if isinstance(bounds, dict):
                _add_date(entries, param, bounds)
    for low, high in ranges:
        entries.date.append({"param": param.name, "low": low, "high": high})


def _add_uri(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    if isinstance(value, str):
        entries.uri.append({"param": param.name, "uri": value[:1000]})


def _add_quantity(entries: IndexEntries, param: SearchParameter, value: Any) -> None:
    if isinstance(value, dict) and value.get("value") is not None:
        entries.quantity.append(
            {
                "param": param.name,
                "value": float(value["value"]),
                "system": value.get("system"),
                "code": value.get("code"),
                "unit": value.get("unit"),
            }
        )


_ADDERS = {
    "token": _add_token,
    "string": _add_string,
    "reference": _add_reference,
    "date": _add_date,
    "uri": _add_uri,
    "quantity": _add_quantity,
}
