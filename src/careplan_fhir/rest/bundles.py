"""Bundles assembled from stored bytes (https://hl7.org/fhir/R4/bundle.html).

Entries embed each resource's stored JSON as it is, so a searchset of N resources costs N
byte copies, not N parse-and-serialise round trips.
"""

from __future__ import annotations

from typing import Any

import orjson

from careplan_fhir.fhir import jsonio


def entry_bytes(
    full_url: str | None, resource: bytes | dict[str, Any] | None, **fields: Any
) -> bytes:
    """One ``Bundle.entry``; ``fields`` (search, request, response) are plain JSON."""
    parts = []
    if full_url:
        parts.append(b'"fullUrl":' + orjson.dumps(full_url))
    if resource is not None:
        body = resource if isinstance(resource, bytes) else jsonio.dumps(resource)
        parts.append(b'"resource":' + body)
    for key, value in fields.items():
        if value is not None:
            parts.append(orjson.dumps(key) + b":" + jsonio.dumps(value))
    return b"{" + b",".join(parts) + b"}"


def bundle_bytes(head: dict[str, Any], entries: list[bytes]) -> bytes:
    """A Bundle from its non-entry elements and pre-rendered entries."""
    head_bytes = orjson.dumps(head)
    if not entries:
        return head_bytes
    return head_bytes[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
