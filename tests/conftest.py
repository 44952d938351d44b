"""Fixtures: an app per test on a fresh SQLite file, and on PostgreSQL when configured.

PostgreSQL tests run when ``CAREPLAN_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it) and are
skipped, with the reason shown, when it is not.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text
from sqlmodel import SQLModel

from careplan_fhir.app import create_app
from careplan_fhir.auth.keys import load_or_create_signing_key
from careplan_fhir.settings import Settings, sibling_audit_url
from careplan_fhir.storage import tables  # noqa: F401
from careplan_fhir.storage.db import make_engine, normalise_url
from tests.tokens import SYSTEM_SCOPE, TEST_BASE, mint_token

POSTGRES_URL = os.environ.get("CAREPLAN_TEST_POSTGRES_URL")


class TickingClock:
    """A clock that moves one millisecond per reading: deterministic, strictly increasing."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        self.current += timedelta(milliseconds=1)
        return self.current


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's server signing key (the app trusts tokens it signs)."""
    path = tmp_path_factory.mktemp("keys") / "signing-key.json"
    load_or_create_signing_key(path)
    return path


@pytest.fixture(scope="session")
def system_headers(signing_key_file: Path) -> dict[str, str]:
    """``Authorization`` for a system client that may do everything."""
    return {"Authorization": f"Bearer {mint_token(signing_key_file, SYSTEM_SCOPE)}"}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test run's own on the configured server, dropped at the end.

    Concurrent test runs on one server (developers, CI) never see each other's rows.
    """
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need CAREPLAN_TEST_POSTGRES_URL (set by .ci/run)")
    name = f"careplan_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(POSTGRES_URL)).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    names = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database with the current schema.

    On SQLite the audit trail's file beside it (``test-audit.db``, where the default settings
    keep the trail) gets the schema too.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        for each in (url, sibling_audit_url(url)):
            assert each is not None
            engine = make_engine(each)
            SQLModel.metadata.create_all(engine)
            engine.dispose()
        return url
    engine = request.getfixturevalue("postgres_engine")
    _truncate(engine)
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(database_url: str, signing_key_file: Path) -> Settings:
    # The server-core suites count resources: automatic Provenance and AuditEvents are off here
    # and on in the security suites (tests/test_audit.py, tests/test_provenance_auto.py).
    return Settings(
        database_url=database_url,
        base_url=TEST_BASE,
        auth_signing_key_file=str(signing_key_file),
        audit_enabled=False,
        auto_provenance=False,
    )


@pytest.fixture
def client(settings: Settings, system_headers: dict[str, str]) -> Iterator[TestClient]:
    """The app over HTTP, as a system client whose token allows everything."""
    ids = (f"id{n}" for n in itertools.count(1))
    clock = TickingClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    app = create_app(settings, now=clock, new_id=lambda: next(ids))
    with TestClient(app, headers=system_headers) as test_client:
        yield test_client
