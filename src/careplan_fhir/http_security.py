"""HTTP-level protections that are not FHIR: CORS for portal apps, headers on HTML pages.

* CORS (https://fetch.spec.whatwg.org/#http-cors-protocol): only the origins configured in
  ``Settings.cors_origins`` may call the API from a browser; preflight requests are answered
  before authentication (they carry no token).
* HTML responses (the portal, the API docs) get ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and a
  ``Content-Security-Policy`` that forbids framing, unless the page set its own policy.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careplan_fhir.settings import Settings

_HTML_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_FRAME_POLICY = (b"content-security-policy", b"frame-ancestors 'none'")

#: Request headers a FHIR client sends (https://hl7.org/fhir/R4/http.html).
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Accept",
    "Prefer",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "X-Provenance",
]
#: Response headers a browser client may read.
CORS_EXPOSED_HEADERS = ["Location", "Content-Location", "ETag", "Last-Modified"]


class HtmlSecurityHeaders:
    """ASGI middleware: protective headers on every ``text/html`` response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/fhir/"):
            # FHIR answers are JSON or XML, never pages: no per-response header work.
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = b""
                names = set()
                for name, value in headers:
                    names.add(name.lower())
                    if name.lower() == b"content-type":
                        content_type = value
                if content_type.startswith(b"text/html"):
                    headers.extend(h for h in _HTML_HEADERS if h[0] not in names)
                    if _FRAME_POLICY[0] not in names:
                        headers.append(_FRAME_POLICY)
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cors_options(settings: Settings) -> dict[str, object]:
    """Keyword arguments of Starlette's ``CORSMiddleware`` for ``settings``."""
    return {
        "allow_origins": list(settings.cors_origins),
        "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        "allow_headers": CORS_REQUEST_HEADERS,
        "expose_headers": CORS_EXPOSED_HEADERS,
        "allow_credentials": False,
        "max_age": 600,
    }


__all__ = ["CORSMiddleware", "HtmlSecurityHeaders", "cors_options"]
