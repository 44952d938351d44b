"""Jinja2 rendering of the portal's pages, with the headers every page gets.

Autoescaping is on for every template: texts come from FHIR resources and are never trusted as
HTML. Each page gets a strict Content-Security-Policy (only this server's stylesheet; no
scripts, frames, plugins or foreign form targets; https://www.w3.org/TR/CSP3/) and
``Cache-Control: no-store`` (pages hold health data; a shared computer's back button must not
show them after sign-out).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
}
STATIC_FILES = {"portal.css": "text/css; charset=utf-8"}


@functools.cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("careplan_fhir.portal", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(
    template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    """The page ``template`` rendered with ``context``."""
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


@functools.cache
def static_file(name: str) -> bytes | None:
    """A file of ``portal/static`` (only those listed in :data:`STATIC_FILES`)."""
    if name not in STATIC_FILES:
        return None
    return resources.files("careplan_fhir.portal").joinpath("static", name).read_bytes()
