"""The ``careplan-fhir`` command: serve, migrate, load examples, import guidance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from careplan_fhir.settings import Settings

if TYPE_CHECKING:
    from careplan_fhir.guidance.model import RecoveryGuidance

app = typer.Typer(help="careplan-fhir: a FHIR R4 care-plan server.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
guidance_app = typer.Typer(
    help="Recovery guidance: import a leaflet or authored YAML as draft FHIR artifacts.",
    no_args_is_help=True,
)
app.add_typer(guidance_app, name="guidance")

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


GuidanceFile = Annotated[
    Path,
    typer.Argument(
        help="Leaflet (.txt, .md, .html) or authored guidance (.yaml)",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", help="text, markdown, html or yaml; default: from the file name"),
]
TitleOption = Annotated[
    str | None, typer.Option(help="Title of the template, instead of the document's own")
]


def _read_guidance_file(file: Path, fmt: str | None, title: str | None) -> RecoveryGuidance:
    from careplan_fhir.workflows.import_guidance import format_for_path, read_guidance

    try:
        return read_guidance(
            file.read_text(encoding="utf-8"), fmt or format_for_path(file), title=title
        )
    except (ValueError, UnicodeDecodeError) as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None


@guidance_app.command("import")
def guidance_import(
    file: GuidanceFile,
    out: Annotated[
        Path | None, typer.Option(help="Write the Bundle here (default: standard output)")
    ] = None,
    yaml_out: Annotated[
        Path | None, typer.Option(help="Also write the authored YAML, for review")
    ] = None,
    version: Annotated[str, typer.Option(help="Business version of the artifacts")] = "0.1.0",
    fmt: FormatOption = None,
    title: TitleOption = None,
    url_base: Annotated[
        str, typer.Option(help="Canonical base of the artifacts' urls")
    ] = "https://careplan-fhir.org/fhir",
    date: Annotated[
        str | None,
        typer.Option(help="Date of the artifacts (ISO 8601), for reproducible output; default now"),
    ] = None,
) -> None:
    """Write the FHIR Bundle (PlanDefinition, ActivityDefinitions, Questionnaire, source)."""
    from datetime import datetime

    from careplan_fhir.fhir import jsonio
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.guidance.authored import write_authored
    from careplan_fhir.guidance.fhir_builder import build_artifacts
    from careplan_fhir.guidance.readability import hard_to_read

    guidance = _read_guidance_file(file, fmt, title)
    try:
        now = datetime.fromisoformat(date) if date else utc_now()
        bundle = build_artifacts(guidance, url_base=url_base, version=version, now=now)
    except ValueError as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None
    data = jsonio.dumps(bundle, pretty=True) + b"\n"
    if out is None:
        typer.echo(data.decode("utf-8"), nl=False)
    else:
        out.write_bytes(data)
    if yaml_out is not None:
        yaml_out.write_text(write_authored(guidance), encoding="utf-8")
    plan = bundle["entry"][0]["resource"]
    hard = hard_to_read(guidance)
    typer.echo(
        f"{plan['url']}|{plan['version']}: {len(plan.get('action', []))} actions,"
        f" {len(bundle['entry']) - 1} other resources; {len(hard)} texts above grade 8",
        err=True,
    )


@guidance_app.command("show")
def guidance_show(file: GuidanceFile, fmt: FormatOption = None, title: TitleOption = None) -> None:
    """Print a review table: kind, text, timing, prohibition, source line, reading grade."""
    from rich.console import Console
    from rich.table import Table

    from careplan_fhir.guidance.readability import GRADE_LIMIT, reading_grade

    guidance = _read_guidance_file(file, fmt, title)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(f"[bold]{guidance.title}[/bold] ({guidance.source_format}, {file})")
    if guidance.procedure:
        console.print(f"Procedure: {guidance.procedure}")
    table = Table(show_lines=False, expand=True)
    for column, options in (
        ("kind", {"no_wrap": True}),
        ("text", {"ratio": 4}),
        ("timing", {"ratio": 2}),
        ("prohibition", {"ratio": 1}),
        ("line", {"justify": "right", "no_wrap": True}),
        ("grade", {"justify": "right", "no_wrap": True}),
    ):
        table.add_column(column, **options)

    def grade_cell(text: str) -> str:
        grade = reading_grade(text)
        if grade is None:
            return "-"
        if grade > GRADE_LIMIT:
            return f"[bold red]{grade} > {GRADE_LIMIT}[/bold red]"
        return str(grade)

    for instruction in guidance.instructions:
        timing = instruction.timing
        prohibition = ""
        if instruction.prohibition:
            prohibition = "yes"
            if timing and timing.until and timing.until not in timing.text:
                prohibition += f", until {timing.until}"
        table.add_row(
            instruction.kind,
            instruction.text,
            timing.text if timing else "",
            prohibition,
            str(instruction.source.line),
            grade_cell(instruction.text),
        )
    for sign in guidance.warning_signs:
        condition = ""
        if sign.condition is not None:
            from careplan_fhir.guidance.fhir_builder import condition_expression

            condition = condition_expression(sign.condition)
        table.add_row(
            f"warning-sign ({sign.urgency})",
            sign.text,
            condition,
            "",
            str(sign.source.line),
            grade_cell(sign.text),
        )
    for supply in guidance.supplies:
        table.add_row(
            "supplies", supply.text, "", "", str(supply.source.line), grade_cell(supply.text)
        )
    console.print(table)
    for parameter in guidance.parameters:
        needed = "required" if parameter.required else "optional"
        default = (
            f", default {parameter.default.value} {parameter.default.unit}"
            if parameter.default
            else ""
        )
        units = f" [{', '.join(parameter.units)}]" if parameter.units else ""
        console.print(
            f"Parameter {parameter.name} ({parameter.type}{units}, {needed}{default}):"
            f" {parameter.description}",
            markup=False,
        )
    for goal in guidance.goals:
        served = ", ".join(goal.instruction_ids) or "no linked actions"
        console.print(f"Goal {goal.id}: {goal.text} ({served})", markup=False)


def main() -> None:
    app()
