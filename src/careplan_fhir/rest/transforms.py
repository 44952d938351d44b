"""``_summary`` and ``_elements`` (https://hl7.org/fhir/R4/search.html#summary, #elements).

Only applied when asked for: the plain read path serves the stored bytes untouched.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import mandatory_elements, summary_elements

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = ("resourceType", "id", "meta")


def subset(
    document: dict[str, Any], summary: str | None, elements: list[str] | None
) -> dict[str, Any]:
    """The part of ``document`` that ``_summary``/``_elements`` ask for, tagged SUBSETTED."""
    resource_type = document["resourceType"]
    if summary == "true":
        keep = summary_elements(resource_type)
        result = {k: v for k, v in document.items() if k in keep}
    elif summary == "text":
        keep = frozenset(_ALWAYS) | {"text"} | mandatory_elements(resource_type)
        result = {k: v for k, v in document.items() if k in keep}
    elif summary == "data":
        result = {k: v for k, v in document.items() if k != "text"}
    elif elements:
        keep = frozenset(_ALWAYS) | frozenset(elements) | mandatory_elements(resource_type)
        result = {k: v for k, v in document.items() if k in keep}
    else:
        return document
    meta = dict(result.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    result["meta"] = meta
    return result


def subset_options(request: Request) -> tuple[str | None, list[str] | None]:
    summary = request.query_params.get("_summary")
    if summary is not None and summary not in ("true", "false", "text", "data", "count"):
        raise InvalidRequest(f"_summary={summary!r} is not one of true, false, text, data, count")
    elements_text = request.query_params.get("_elements")
    elements = [e.strip() for e in elements_text.split(",") if e.strip()] if elements_text else None
    return (None if summary in (None, "false", "count") else summary), elements


def shape_resource(request: Request, raw: bytes) -> bytes | dict[str, Any]:
    """The stored bytes, or the subset ``_summary``/``_elements`` ask for."""
    summary, elements = subset_options(request)
    if summary is None and not elements:
        return raw
    return subset(jsonio.loads(raw), summary, elements)
