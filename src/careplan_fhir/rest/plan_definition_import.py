"""``POST /PlanDefinition/$import``: recovery guidance in, stored draft artifacts out.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-PlanDefinition-import.json``. The body is a Parameters resource
(``document`` as valueString or valueAttachment, optional ``format``, ``title``, ``version``) or
the document itself (text/plain, text/markdown, text/html, application/yaml; ``title`` and
``version`` then come from the URL). The PlanDefinition, its ActivityDefinitions, the check-in
Questionnaire and the source DocumentReference are stored in one transaction, with server ids;
the answer is 201 with a Bundle (type collection) of what was stored, PlanDefinition first.
Activating the draft is an ordinary update of ``PlanDefinition.status``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.errors import (
    InvalidRequest,
    ResourceConflict,
    Unprocessable,
    UnsupportedMediaType,
)
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.fhir.outcome import issue
from careplan_fhir.guidance.authored import GuidanceInvalid
from careplan_fhir.workflows.import_guidance import (
    DEFAULT_VERSION,
    FORMAT_BY_MEDIA_TYPE,
    FORMATS,
    FormatNotSupported,
    build_import,
    format_for_media_type,
)

from .authorization import require_unrestricted
from .bundles import bundle_bytes, entry_bytes
from .context import (
    BodyDep,
    ContextDep,
    FhirContext,
    find_by_criteria,
    parse_document,
    resource_headers,
)
from .formats import media_type

router = APIRouter()

#: What an import stores: the template, its ActivityDefinitions, the check-in Questionnaire
#: and the source document.
IMPORTED_TYPES = ("PlanDefinition", "ActivityDefinition", "Questionnaire", "DocumentReference")

_FHIR_TYPES = frozenset(
    {
        "",
        "application/fhir+json",
        "application/json",
        "application/json+fhir",
        "application/fhir+xml",
        "application/xml",
        "text/xml",
        "application/xml+fhir",
    }
)
_PARAMETER_NAMES = ("document", "format", "title", "version")


@dataclass
class ImportRequest:
    """What to import: the document's text, its format (None: detect) and the options."""

    text: str
    fmt: str | None
    title: str | None
    version: str


def read_import_request(
    body: bytes, content_type: str | None, query: dict[str, str]
) -> ImportRequest:
    """The request's document and options; 400 for a malformed request, 415 for its type."""
    media = media_type(content_type)
    raw_format = format_for_media_type(content_type)
    if raw_format is not None:
        text = _decode(body, _charset(content_type), "The request body")
        return ImportRequest(
            text,
            raw_format,
            _option(query.get("title"), "title"),
            _option(query.get("version"), "version") or DEFAULT_VERSION,
        )
    if media not in _FHIR_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; send a Parameters resource"
            " (application/fhir+json) or the document as " + ", ".join(sorted(FORMAT_BY_MEDIA_TYPE))
        )
    parameters = parse_document(body, content_type)
    if parameters.get("resourceType") != "Parameters":
        raise InvalidRequest(
            f"Expected a Parameters resource, not {parameters.get('resourceType')!r}"
        )
    validate_resource(parameters)
    return _from_parameters(parameters)


def _from_parameters(parameters: dict[str, Any]) -> ImportRequest:
    values: dict[str, dict[str, Any]] = {}
    for parameter in parameters.get("parameter", []):
        name = parameter.get("name")
        if name not in _PARAMETER_NAMES:
            raise InvalidRequest(
                f"Unknown parameter {name!r}; $import takes {', '.join(_PARAMETER_NAMES)}"
            )
        if name in values:
            raise InvalidRequest(f"Parameter {name!r} is given more than once")
        values[name] = parameter
    document = values.get("document")
    if document is None:
        raise InvalidRequest("Parameter 'document' is required")
    fmt = _scalar(values.get("format"), "format", ("valueCode", "valueString"))
    if fmt is not None and fmt not in FORMATS:
        raise InvalidRequest(f"Parameter 'format' must be one of {', '.join(FORMATS)}")
    if "valueString" in document:
        text = document["valueString"]
    elif "valueAttachment" in document:
        attachment = document["valueAttachment"]
        if "data" not in attachment:
            raise InvalidRequest("The document attachment must carry its data (base64)")
        try:
            data = base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("The document attachment's data is not base64") from None
        content_type = attachment.get("contentType")
        if fmt is None and content_type:
            fmt = format_for_media_type(content_type)
            if fmt is None:
                raise UnsupportedMediaType(
                    f"Attachment contentType {content_type!r} is not supported; use one of "
                    + ", ".join(sorted(FORMAT_BY_MEDIA_TYPE))
                )
        text = _decode(data, _charset(content_type), "The document attachment")
    else:
        raise InvalidRequest("Parameter 'document' needs valueString or valueAttachment")
    return ImportRequest(
        text,
        fmt,
        _scalar(values.get("title"), "title", ("valueString",)),
        _scalar(values.get("version"), "version", ("valueString",)) or DEFAULT_VERSION,
    )


def _scalar(parameter: dict[str, Any] | None, name: str, keys: tuple[str, ...]) -> str | None:
    if parameter is None:
        return None
    for key in keys:
        if key in parameter:
            return _option(parameter[key], name)
    raise InvalidRequest(f"Parameter {name!r} needs {' or '.join(keys)}")


def _option(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise InvalidRequest(f"Parameter {name!r} is empty")
    return value.strip()


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def _decode(data: bytes, charset: str, what: str) -> str:
    try:
        text = data.decode(charset)
    except LookupError:
        raise UnsupportedMediaType(f"Unknown charset {charset!r}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not valid {charset} text") from None
    if not text.strip():
        raise InvalidRequest(f"{what} is empty; a guidance document is expected")
    return text


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    """Replace the builder's ``Type/id`` references (and relatedArtifact urls) by stored ids."""
    if isinstance(value, dict):
        return {
            key: ids.get(item, item)
            if key in ("reference", "url") and isinstance(item, str)
            else _rewrite(item, ids)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(item, ids) for item in value]
    return value


def import_guidance(ctx: FhirContext, request: ImportRequest) -> list[Any]:
    """Build the artifacts and store them in the caller's transaction; the stored versions."""
    try:
        _, bundle = build_import(
            request.text,
            request.fmt,
            title=request.title,
            version=request.version,
            url_base=ctx.base_url,
            now=ctx.services.now(),
        )
    except GuidanceInvalid as exc:
        raise Unprocessable(
            str(exc),
            issues=[issue(str(i), code="invalid", expression=i.path or None) for i in exc.issues],
        ) from None
    except FormatNotSupported as exc:
        raise UnsupportedMediaType(str(exc)) from None
    except ValueError as exc:
        raise Unprocessable(f"The guidance document cannot be imported: {exc}") from None
    documents = [entry["resource"] for entry in bundle["entry"]]
    for document in documents:
        validate_resource(document)
    plan = documents[0]
    ctx.begin_write()
    criteria = urlencode({"url": plan["url"], "version": plan["version"]})
    if find_by_criteria(ctx, "PlanDefinition", criteria, limit=1):
        raise ResourceConflict(
            f"PlanDefinition {plan['url']}|{plan['version']} exists already; import a new"
            " version or give another title"
        )
    keys = [f"{d['resourceType']}/{d['id']}" for d in documents]
    new_ids = {key: ctx.services.new_id() for key in keys}
    references = {key: f"{key.split('/')[0]}/{new_id}" for key, new_id in new_ids.items()}
    stored = []
    for key, document in zip(keys, documents, strict=True):
        created = ctx.repository.create(_rewrite(document, references), resource_id=new_ids[key])
        record_write_provenance(ctx, created, "CREATE")
        stored.append(created)
    return stored


@router.post("/PlanDefinition/$import", summary="PlanDefinition $import")
def plan_definition_import(ctx: ContextDep, body: BodyDep) -> Response:
    require_unrestricted(ctx, "create", IMPORTED_TYPES, "$import")
    request = read_import_request(body, ctx.header("content-type"), dict(ctx.request.query_params))
    stored = import_guidance(ctx, request)
    ctx.commit()
    plan = stored[0]
    headers = resource_headers(plan)
    headers["Location"] = ctx.url_of(plan, versioned=True)
    entries = [entry_bytes(ctx.url_of(s), s.raw) for s in stored]
    return ctx.respond(
        bundle_bytes({"resourceType": "Bundle", "type": "collection"}, entries), 201, headers
    )
