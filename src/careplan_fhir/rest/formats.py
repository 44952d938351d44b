"""Content negotiation: FHIR JSON and XML, ``_format``, ``_pretty`` and ``Accept``.

https://hl7.org/fhir/R4/http.html#mime-type. Stored JSON is sent as stored; pretty-printing and
XML are conversions done only when asked for.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from careplan_fhir.errors import NotAcceptable
from careplan_fhir.fhir import jsonio

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"

_FORMAT_ALIASES = {
    "json": FHIR_JSON,
    "application/json": FHIR_JSON,
    "application/fhir+json": FHIR_JSON,
    "application/json+fhir": FHIR_JSON,
    "xml": FHIR_XML,
    "text/xml": FHIR_XML,
    "application/xml": FHIR_XML,
    "application/fhir+xml": FHIR_XML,
    "application/xml+fhir": FHIR_XML,
}


def media_type(value: str | None) -> str:
    """The bare media type of a Content-Type or Accept item: ``a/b;charset=x`` → ``a/b``."""
    return (value or "").split(";", 1)[0].strip().lower()


def response_format(request: Request) -> str:
    """The response media type: ``_format`` wins over ``Accept``; JSON by default."""
    requested = request.query_params.get("_format")
    if requested:
        media = _FORMAT_ALIASES.get(media_type(requested.replace(" ", "+")))
        if media is None:
            raise NotAcceptable(f"_format {requested!r} is not supported (json or xml)")
        return media
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    candidates = []
    for position, part in enumerate(accept.split(",")):
        media = media_type(part)
        quality = 1.0
        for parameter in part.split(";")[1:]:
            key, _, value = parameter.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        candidates.append((quality, -position, media))
    for quality, _, media in sorted(candidates, reverse=True):
        if quality <= 0:
            continue
        if media in _FORMAT_ALIASES:
            return _FORMAT_ALIASES[media]
        if media in ("*/*", "application/*", "text/html", "text/*"):
            return FHIR_JSON
    raise NotAcceptable(f"None of the accepted types ({accept}) is supported")


def safe_response_format(request: Request) -> str:
    try:
        return response_format(request)
    except NotAcceptable:
        return FHIR_JSON


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


def render(content: bytes | dict[str, Any], media_type: str, pretty: bool) -> bytes:
    """Bytes for ``content`` (stored JSON bytes or a document) in the requested format."""
    if media_type == FHIR_XML:
        from careplan_fhir.fhir.models import resource_to_xml

        document = jsonio.loads(content) if isinstance(content, bytes) else content
        return resource_to_xml(document)
    if isinstance(content, bytes):
        return jsonio.dumps(jsonio.loads(content), pretty=True) if pretty else content
    return jsonio.dumps(content, pretty=pretty)


def render_response(
    request: Request,
    content: bytes | dict[str, Any] | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A FHIR response in the negotiated format (falls back to JSON for errors)."""
    media_type = safe_response_format(request)
    body = b"" if content is None else render(content, media_type, is_pretty(request))
    return Response(
        body, status_code=status, headers=headers, media_type=f"{media_type};charset=utf-8"
    )
