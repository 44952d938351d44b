"""Logs hold no resource content, no tokens and no identifiers beyond resource ids.

The server's own log lines name methods, paths (resource types and ids) and statuses only;
SQL parameters are hidden from SQLAlchemy's messages (``hide_parameters`` in
:func:`careplan_fhir.storage.db.make_engine`). The one log that would still carry more is
uvicorn's access log: its request line has the query string (``?identifier=...``,
``?name=...``, even ``?access_token=...``, RFC 6750 section 2.3) and the peer address.
:class:`AccessLogRedaction` cuts both from every access record.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class AccessLogRedaction(logging.Filter):
    """Drop the query string and the client address from uvicorn's access records.

    uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with the arguments
    ``(client address, method, path with query, HTTP version, status)``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            _client, method, full_path, version, status = args
            path = str(full_path).split("?", 1)[0]
            record.args = ("-", method, path, version, status)
        return True


def install_log_redaction() -> None:
    """Attach :class:`AccessLogRedaction` to uvicorn's access logger (once)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessLogRedaction) for f in logger.filters):
        logger.addFilter(AccessLogRedaction())
