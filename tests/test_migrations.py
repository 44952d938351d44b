"""Alembic migrations produce exactly the schema the SQLModel tables describe.

Upgrade a fresh database to head, then ask Alembic's autogenerate to compare it with
``SQLModel.metadata``: any difference (a table, column, type, nullability, index or unique
constraint the migrations forgot) fails the test. Downgrading to base and upgrading again must
work too. PostgreSQL runs in a database of its own, created and dropped here, so the ``test``
database other tests share is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from careplan_fhir.storage import tables  # noqa: F401  (registers the tables)
from careplan_fhir.storage.db import make_engine, normalise_url
from careplan_fhir.storage.migrate import downgrade, upgrade

POSTGRES_URL = os.environ.get("CAREPLAN_TEST_POSTGRES_URL")
MODEL_TABLES = set(SQLModel.metadata.tables)


def differences(url: str) -> list[object]:
    """What autogenerate would write to bring the database at ``url`` to the models."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrations.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A dedicated, empty PostgreSQL database, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need CAREPLAN_TEST_POSTGRES_URL (set by .ci/run)")
    name = f"careplan_migrations_{os.getpid()}"
    server = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(normalise_url(POSTGRES_URL)).set(database=name)
        yield url.render_as_string(hide_password=False)
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


def check_round_trip(url: str) -> None:
    upgrade(url)
    assert table_names(url) >= MODEL_TABLES
    assert differences(url) == []

    downgrade(url, "base")
    assert table_names(url) - {"alembic_version"} == set()

    upgrade(url)
    assert differences(url) == []


def test_fresh_database_has_no_tables_until_upgraded(sqlite_url: str) -> None:
    # The comparison below is only meaningful if it can see a difference.
    make_engine(sqlite_url).dispose()
    assert differences(sqlite_url) != []


def test_sqlite_migrations_match_models(sqlite_url: str) -> None:
    check_round_trip(sqlite_url)


@pytest.mark.postgres
def test_postgres_migrations_match_models(postgres_url: str) -> None:
    check_round_trip(postgres_url)


@pytest.mark.postgres
def test_postgres_content_column_is_jsonb(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("resource")}
    finally:
        engine.dispose()
    assert type(columns["content"]["type"]).__name__ == "JSONB"
