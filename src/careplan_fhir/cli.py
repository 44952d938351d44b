"""The ``careplan-fhir`` command: serve, migrate and load examples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from careplan_fhir.settings import Settings

app = typer.Typer(help="careplan-fhir: a FHIR R4 care-plan server.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default CAREPLAN_DATABASE_URL or sqlite:///./careplan.db",
    ),
]


def _display_url(url: str) -> str:
    """The database URL with its password masked, for logs."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def _settings(database_url: str | None) -> Settings:
    settings = Settings()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOption = None, revision: str = "head") -> None:
    """Migrate the database to the newest schema."""
    from careplan_fhir.storage.migrate import upgrade

    settings = _settings(database_url)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}: {_display_url(settings.database_url)}")


@app.command("load-examples")
def load_examples_command(
    folder: Annotated[Path, typer.Argument(help="Folder of example resources")] = Path("examples"),
    database_url: DatabaseOption = None,
) -> None:
    """Store the example resources (skipping those already stored)."""
    from careplan_fhir.app import new_resource_id
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.storage.db import make_engine
    from careplan_fhir.workflows.load_examples import load_examples

    settings = _settings(database_url)
    engine = make_engine(settings.database_url)
    stored, skipped = load_examples(engine, folder, now=utc_now, new_id=new_resource_id)
    engine.dispose()
    typer.echo(f"examples: {stored} stored, {skipped} already there")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    database_url: DatabaseOption = None,
    workers: int = 1,
    migrate: Annotated[bool, typer.Option(help="Run migrations first")] = True,
    examples: Annotated[
        Path | None, typer.Option(help="Load example resources from this folder first")
    ] = None,
    log_level: str = "info",
) -> None:
    """Serve the FHIR API (base /fhir) with uvicorn."""
    import uvicorn

    settings = _settings(database_url)
    if migrate:
        db_upgrade(settings.database_url)
    if examples is not None:
        load_examples_command(examples, settings.database_url)
    # Workers build their app from the environment (see app_from_environment).
    os.environ["CAREPLAN_DATABASE_URL"] = settings.database_url
    typer.echo(f"FHIR base: http://{host}:{port}/fhir")
    uvicorn.run(
        "careplan_fhir.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        loop="uvloop",
        http="httptools",
    )


def main() -> None:
    app()
