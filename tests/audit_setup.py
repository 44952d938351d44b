"""An app with the audit trail on (AuditEvents and automatic Provenance), for the security suites.

The server-core suites run with both off (``settings`` in conftest.py); these build their own
settings with the defaults, which are on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.audit.sink import AuditSink
from careplan_fhir.settings import Settings
from tests.tokens import SYSTEM_SCOPE, TEST_BASE, bearer, mint_token

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    """One millisecond further at every reading (read from two threads: requests, the sink)."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        self.current += timedelta(milliseconds=1)
        return self.current


@dataclass
class AuditedServer:
    client: TestClient
    sink: AuditSink
    key_file: Path

    def headers(
        self,
        scope: str = SYSTEM_SCOPE,
        *,
        patient: str | None = None,
        fhir_user: str | None = None,
        client_id: str = "ehr-system",
    ) -> dict[str, str]:
        token = mint_token(
            self.key_file, scope, patient=patient, fhir_user=fhir_user, subject=client_id
        )
        return bearer(token)

    @property
    def system(self) -> dict[str, str]:
        return self.headers()

    def search(self, url: str) -> list[dict[str, Any]]:
        """The matches of a search, as a system client, after every queued AuditEvent is stored."""
        self.sink.flush()
        response = self.client.get(url, headers=self.system)
        assert response.status_code == 200, response.text
        return [
            e["resource"]
            for e in response.json().get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]


def audited_settings(database_url: str, key_file: Path) -> Settings:
    return Settings(
        database_url=database_url, base_url=TEST_BASE, auth_signing_key_file=str(key_file)
    )


@contextmanager
def audited_server(settings: Settings, key_file: Path) -> Iterator[AuditedServer]:
    assert settings.audit_enabled and settings.auto_provenance
    ids = (f"id{n}" for n in itertools.count(1))
    app = create_app(settings, now=Clock(START), new_id=lambda: next(ids))
    with TestClient(app) as client:
        yield AuditedServer(client, app.state.audit_sink, key_file)
