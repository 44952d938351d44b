"""Import recovery guidance: read a document of any supported format, build its FHIR artifacts.

Shared by ``careplan-fhir guidance import|show`` and ``POST /fhir/PlanDefinition/$import``.
Leaflets (plain text, Markdown, HTML) go to the leaflet parser
(:func:`careplan_fhir.guidance.parse.parse_guidance`); authored guidance (YAML) to
:func:`careplan_fhir.guidance.authored.read_authored`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from careplan_fhir.guidance.fhir_builder import build_artifacts
from careplan_fhir.guidance.model import RecoveryGuidance
from careplan_fhir.guidance.parse import parse_guidance

FORMATS = ("text", "markdown", "html", "yaml")
DEFAULT_VERSION = "0.1.0"
#: Canonical base of artifacts built outside a server (the CLI); a server uses its own base.
DEFAULT_URL_BASE = "https://careplan-fhir.org/fhir"

FORMAT_BY_MEDIA_TYPE = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
}
FORMAT_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".yaml": "yaml",
    ".yml": "yaml",
}


class FormatNotSupported(ValueError):
    """No reader for the document's format is available."""


def format_for_media_type(content_type: str | None) -> str | None:
    """The guidance format of a MIME type (parameters such as charset ignored), or None."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return FORMAT_BY_MEDIA_TYPE.get(media)


def format_for_path(path: Path) -> str | None:
    """The guidance format of a file name's suffix, or None (let the parser detect it)."""
    return FORMAT_BY_SUFFIX.get(path.suffix.lower())


def read_guidance(
    text: str, fmt: str | None = None, *, title: str | None = None
) -> RecoveryGuidance:
    """Parse ``text`` as ``fmt`` (detected when None); ``title`` replaces the document's own.

    Raises :class:`~careplan_fhir.guidance.authored.GuidanceInvalid` for invalid authored
    guidance, :class:`FormatNotSupported` for an unknown format, and ``ValueError`` for a
    leaflet the parser cannot read.
    """
    if fmt is not None and fmt not in FORMATS:
        raise FormatNotSupported(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    guidance = parse_guidance(text, fmt, title=title)
    if title:
        guidance.title = title
    return guidance


def build_import(
    text: str,
    fmt: str | None = None,
    *,
    title: str | None = None,
    version: str = DEFAULT_VERSION,
    url_base: str = DEFAULT_URL_BASE,
    now: datetime,
) -> tuple[RecoveryGuidance, dict[str, Any]]:
    """The guidance read from ``text`` and the Bundle of artifacts built from it."""
    guidance = read_guidance(text, fmt, title=title)
    return guidance, build_artifacts(guidance, url_base=url_base, version=version, now=now)
