"""The ``careplan-fhir`` command: serve, migrate, load examples, import guidance."""

from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from careplan_fhir.auth.access import PATIENT_PORTAL_SCOPE
from careplan_fhir.settings import Settings

if TYPE_CHECKING:
    from datetime import datetime

    from careplan_fhir.auth.keys import SigningKey
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
    from careplan_fhir.storage.db import display_url

    return display_url(url)


def _settings(database_url: str | None) -> Settings:
    settings = Settings()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOption = None, revision: str = "head") -> None:
    """Migrate the database (and the audit trail's, if it has one) to the newest schema."""
    from careplan_fhir.storage.migrate import upgrade

    settings = _settings(database_url)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}: {_display_url(settings.database_url)}")
    if _own_audit_database(settings):
        upgrade(settings.audit_url, revision)
        typer.echo(f"audit database at {revision}: {_display_url(settings.audit_url)}")
        _move_audit_trail(settings)


@db_app.command("move-audit")
def db_move_audit(database_url: DatabaseOption = None) -> None:
    """Move the AuditEvents the main database still holds into the audit trail's database
    (both already migrated; ``db upgrade`` does this too)."""
    from sqlalchemy.exc import SQLAlchemyError

    settings = _settings(database_url)
    if not _own_audit_database(settings):
        typer.echo(
            f"the audit trail is in the main database ({_display_url(settings.database_url)}):"
            " nothing to move"
        )
        return
    try:
        moved = _move_audit_trail(settings)
    except SQLAlchemyError as exc:
        typer.echo(
            f"error: {type(exc).__name__} ({exc.__cause__ or exc}); are both databases"
            " migrated? (careplan-fhir db upgrade)",
            err=True,
        )
        raise typer.Exit(1) from None
    if moved == 0:
        typer.echo("audit trail: no events to move")


def _own_audit_database(settings: Settings) -> bool:
    from careplan_fhir.storage.db import normalise_url

    return normalise_url(settings.audit_url) != normalise_url(settings.database_url)


def _move_audit_trail(settings: Settings) -> int:
    from careplan_fhir.storage.audit_move import move_audit_events

    moved = move_audit_events(settings.database_url, settings.audit_url)
    if moved:
        typer.echo(
            f"audit trail: moved {moved} events from {_display_url(settings.database_url)}"
            f" to {_display_url(settings.audit_url)}"
        )
    return moved


#: What ``make serve`` loads: the sample patient's records and the example templates.
DEFAULT_EXAMPLES = (Path("examples/fhir"), Path("examples/guidance/golden"))


@app.command("load-examples")
def load_examples_command(
    folders: Annotated[
        list[Path] | None, typer.Argument(help="Folders of example resources")
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Store the example resources (skipping those already stored)."""
    from careplan_fhir.app import new_resource_id
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.storage.db import make_engine
    from careplan_fhir.workflows.load_examples import load_examples

    settings = _settings(database_url)
    engine = make_engine(settings.database_url)
    stored = skipped = 0
    for folder in folders or DEFAULT_EXAMPLES:
        added, present = load_examples(engine, folder, now=utc_now, new_id=new_resource_id)
        stored, skipped = stored + added, skipped + present
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
        list[Path] | None,
        typer.Option(help="Load example resources from this folder first (repeatable)"),
    ] = None,
    log_level: str = "info",
    demo_tokens: Annotated[
        bool | None,
        typer.Option(
            help="Print demo tokens (default: when the signing key is the local development key)"
        ),
    ] = None,
) -> None:
    """Serve the FHIR API (base /fhir) with uvicorn."""
    import uvicorn

    from careplan_fhir.auth.keys import load_or_create_signing_key

    settings = _settings(database_url)
    if migrate:
        db_upgrade(settings.database_url)
    if examples:
        load_examples_command(examples, settings.database_url)
    # Workers build their app from the environment (see app_from_environment).
    os.environ["CAREPLAN_DATABASE_URL"] = settings.database_url
    # The signing key exists before any worker starts (created on the first run).
    key = load_or_create_signing_key(Path(settings.auth_signing_key_file))
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = settings.base_url.rstrip("/") or f"http://{shown_host}:{port}/fhir"
    typer.echo(f"FHIR base: {base}")
    if demo_tokens is None:
        demo_tokens = _is_development_key(settings)
    if settings.auth_enabled and demo_tokens:
        _print_demo_tokens(key, settings, base)
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


#: The example patient and practitioner of examples/fhir/vertebroplasty-recovery.json.
DEMO_PATIENT = "vtp-patient"
DEMO_PRACTITIONER = "Practitioner/vtp-practitioner"
#: How long the tokens ``serve`` prints stay valid.
DEMO_TOKEN_HOURS = 12


def _is_development_key(settings: Settings) -> bool:
    """Whether the signing key is the default local development key (never a deployment's)."""
    default = Settings.model_fields["auth_signing_key_file"].default
    return Path(settings.auth_signing_key_file).resolve() == Path(str(default)).resolve()


def demo_tokens(
    key: SigningKey, settings: Settings, base: str, now: datetime
) -> list[tuple[str, str, str]]:
    """``(who, token, curl example)`` for a patient, a clinician and a system client."""
    from datetime import timedelta

    from careplan_fhir.auth.keys import mint_access_token

    def mint(scope: str, subject: str, **context: str) -> str:
        return mint_access_token(
            key,
            issuer=settings.auth_issuer,
            audience=base,
            scope=scope,
            subject=subject,
            client_id="careplan-fhir-demo",
            lifetime=timedelta(hours=DEMO_TOKEN_HOURS),
            now=now,
            **context,
        )

    patient = mint(PATIENT_PORTAL_SCOPE, f"Patient/{DEMO_PATIENT}", patient=DEMO_PATIENT)
    clinician = mint("user/*.cruds", DEMO_PRACTITIONER, fhir_user=DEMO_PRACTITIONER)
    system = mint("system/*.cruds", "careplan-fhir-demo")

    def curl(token: str, query: str) -> str:
        return f"curl -s -H 'Authorization: Bearer {token}' '{base}/{query}'"

    return [
        (
            f"patient {DEMO_PATIENT} ({PATIENT_PORTAL_SCOPE})",
            patient,
            curl(patient, "CarePlan?category=assess-plan&_include=CarePlan:goal"),
        ),
        (
            f"clinician {DEMO_PRACTITIONER} (user/*.cruds)",
            clinician,
            curl(clinician, f"Task?patient={DEMO_PATIENT}"),
        ),
        ("system client (system/*.cruds)", system, curl(system, "CarePlan?_count=10")),
    ]


def _print_demo_tokens(key: SigningKey, settings: Settings, base: str) -> None:
    from careplan_fhir.fhir.dates import utc_now

    typer.echo(
        f"\nDemo access tokens, signed by the local development key"
        f" {settings.auth_signing_key_file}, valid {DEMO_TOKEN_HOURS} hours"
        " (more: careplan-fhir token --help):"
    )
    for who, _token, example in demo_tokens(key, settings, base, utc_now()):
        typer.echo(f"\n  {who}:\n    {example}")
    typer.echo("")


@app.command("token")
def token_command(
    scope: Annotated[
        str, typer.Option("--scope", help='SMART scopes, e.g. "patient/*.rs" or "system/*.cruds"')
    ],
    patient: Annotated[
        str | None, typer.Option("--patient", help="Id of the patient in context (patient claim)")
    ] = None,
    fhir_user: Annotated[
        str | None,
        typer.Option("--fhir-user", help="The user, e.g. Practitioner/123 (fhirUser claim)"),
    ] = None,
    encounter: Annotated[
        str | None, typer.Option("--encounter", help="Id of the encounter in context")
    ] = None,
    lifetime: Annotated[
        int, typer.Option("--lifetime", min=1, help="Seconds the token stays valid")
    ] = 3600,
    audience: Annotated[
        str | None,
        typer.Option(
            "--audience",
            help="The FHIR base the token is for; default CAREPLAN_BASE_URL or"
            " http://127.0.0.1:8080/fhir",
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Signing key (a private JWK, created if missing); default"
            " CAREPLAN_AUTH_SIGNING_KEY_FILE or ./careplan-dev-key.json",
        ),
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="sub claim; default the user or patient")
    ] = None,
    client_id: Annotated[str, typer.Option("--client-id", help="client_id claim")] = (
        "careplan-fhir-cli"
    ),
) -> None:
    """Print an access token signed by the local key (for demos and tests), and nothing else.

    TOKEN=$(careplan-fhir token --scope "patient/*.rs" --patient vtp-patient)
    """
    from datetime import timedelta

    from careplan_fhir.auth.keys import load_or_create_signing_key, mint_access_token
    from careplan_fhir.auth.scopes import parse_scopes
    from careplan_fhir.fhir.dates import utc_now

    settings = Settings()
    scopes = parse_scopes(scope)
    if scopes.invalid:
        raise typer.BadParameter(
            "not SMART scopes: " + " ".join(scopes.invalid), param_hint="--scope"
        )
    if not scopes.scopes:
        raise typer.BadParameter(
            "no resource scope (patient/, user/ or system/)", param_hint="--scope"
        )
    if patient is not None:
        patient = patient.removeprefix("Patient/")
    if "patient" in scopes.contexts() and not patient:
        raise typer.BadParameter("patient/ scopes need --patient ID", param_hint="--patient")
    if fhir_user is not None and "/" not in fhir_user:
        raise typer.BadParameter(
            f"{fhir_user!r} is not a reference such as Practitioner/123", param_hint="--fhir-user"
        )
    if "user" in scopes.contexts() and not fhir_user:
        typer.echo("warning: user/ scopes without --fhir-user name no user", err=True)
    try:
        key = load_or_create_signing_key(key_file or Path(settings.auth_signing_key_file))
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    token = mint_access_token(
        key,
        issuer=settings.auth_issuer,
        audience=audience or settings.base_url.rstrip("/") or "http://127.0.0.1:8080/fhir",
        scope=scope,
        subject=subject or fhir_user or (f"Patient/{patient}" if patient else client_id),
        lifetime=timedelta(seconds=lifetime),
        now=utc_now(),
        patient=patient,
        encounter=encounter,
        fhir_user=fhir_user,
        client_id=client_id,
    )
    typer.echo(token)


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


@app.command("attach")
def attach_command(
    encounter_id: Annotated[str, typer.Argument(help="The encounter's id")],
    template: Annotated[
        str, typer.Option("--template", help="PlanDefinition url|version (or PlanDefinition/id)")
    ],
    practitioner: Annotated[str, typer.Option("--practitioner", help="Practitioner id")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Clinician value, e.g. fever_threshold=38.0Cel (repeat)"),
    ] = None,
    organization: Annotated[
        str | None, typer.Option("--organization", help="Organization id")
    ] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Attach a recovery plan to an encounter, as POST Encounter/{id}/$attach-care-plan does."""
    from careplan_fhir.app import new_resource_id
    from careplan_fhir.errors import FhirError
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.storage.db import begin_write, make_engine
    from careplan_fhir.storage.repository import Repository
    from careplan_fhir.workflows.attach_care_plan import (
        AttachRequest,
        TemplateRef,
        attach_care_plan,
        parameter_value,
    )

    values = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        values[name.strip()] = parameter_value(value)
    request = AttachRequest(
        encounter_id=encounter_id,
        template=TemplateRef.parse(template),
        practitioner=practitioner if "/" in practitioner else f"Practitioner/{practitioner}",
        organization=(
            None
            if organization is None
            else organization
            if "/" in organization
            else f"Organization/{organization}"
        ),
        parameters=values,
    )
    engine = make_engine(_settings(database_url).database_url)
    try:
        with engine.connect() as connection:
            begin_write(connection)
            repository = Repository(connection, now=utc_now, new_id=new_resource_id)
            outcome = attach_care_plan(repository, request, now=utc_now(), new_id=new_resource_id)
            connection.commit()
    except FhirError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for issue in exc.issues or []:
            typer.echo(f"  {issue.get('diagnostics')}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    verb = "stored" if outcome.created else "already stored"
    typer.echo(f"CarePlan/{outcome.care_plan.id} {verb} ({len(outcome.resources)} resources)")
    if outcome.diff is not None:
        typer.echo(f"replaces {outcome.replaced}: {outcome.diff.summary()}")


@app.command("apply")
def apply_command(
    template: Annotated[
        str, typer.Argument(help="PlanDefinition id, or canonical url (url|version)")
    ],
    patient: Annotated[str, typer.Option("--patient", help="Patient id (the plan's subject)")],
    encounter: Annotated[
        str | None, typer.Option("--encounter", help="Encounter id; its discharge starts the plan")
    ] = None,
    practitioner: Annotated[
        str | None, typer.Option("--practitioner", help="Practitioner id (the author)")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Clinician parameter NAME=VALUE: fever_threshold=38.0Cel, 100.4[degF], 48h"
            " (repeat)",
        ),
    ] = None,
    database_url: DatabaseOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the Bundle here (default: standard output)")
    ] = None,
) -> None:
    """Print the plan PlanDefinition/$apply gives (a Bundle: CarePlan, Goals, Tasks, education).

    Nothing is stored: attaching the plan to the encounter is `careplan-fhir attach`.
    """
    from careplan_fhir.app import new_resource_id
    from careplan_fhir.apply.engine import apply_plan_definition, parameter_specs, parse_parameter
    from careplan_fhir.apply.model import ApplyContext, ApplyError
    from careplan_fhir.errors import FhirError
    from careplan_fhir.fhir import jsonio
    from careplan_fhir.fhir.dates import parse_range, utc_now
    from careplan_fhir.storage.db import make_engine
    from careplan_fhir.storage.repository import Repository
    from careplan_fhir.storage.search import parse_search, run_search

    texts: dict[str, str] = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        texts[name.strip()] = value.strip()

    def fail(message: str) -> NoReturn:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    engine = make_engine(_settings(database_url).database_url)
    now = utc_now()
    try:
        with engine.connect() as connection:
            repository = Repository(connection, now=utc_now, new_id=new_resource_id)

            def search(resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
                request = parse_search(resource_type, params, strict=True)
                request.total = "none"
                matches = run_search(repository, request).matches
                return [jsonio.loads(m.raw) for m in matches if m.raw is not None]

            def read(resource_type: str, resource_id: str) -> dict[str, Any]:
                raw = repository.read(resource_type, resource_id).raw
                assert raw is not None
                document: dict[str, Any] = jsonio.loads(raw)
                return document

            if "://" in template:
                url, _, version = template.partition("|")
                criteria = [("url", url), ("_sort", "-_lastUpdated")]
                criteria += [("version", version)] if version else []
                plans = search("PlanDefinition", criteria)
                active = [p for p in plans if p.get("status") == "active"]
                if not plans:
                    fail(f"no PlanDefinition with url {template}")
                plan = (active or plans)[0]
            else:
                plan = read("PlanDefinition", template.removeprefix("PlanDefinition/"))
            definitions: dict[str, dict[str, Any]] = {}
            for action in plan.get("action", []):
                canonical = action.get("definitionCanonical")
                if canonical:
                    url, _, version = canonical.partition("|")
                    criteria = [("url", url)] + ([("version", version)] if version else [])
                    found = search("ActivityDefinition", criteria)
                    if found:
                        definitions[canonical] = found[0]
            read("Patient", patient)
            start = now
            addresses: tuple[str, ...] = ()
            if encounter is not None:
                stay = read("Encounter", encounter)
                end = stay.get("period", {}).get("end")
                if end:
                    start = parse_range(end)[0].replace(tzinfo=UTC)
                addresses = tuple(
                    d["condition"]["reference"]
                    for d in stay.get("diagnosis", [])
                    if str(d.get("condition", {}).get("reference", "")).startswith("Condition/")
                )
            if practitioner is not None:
                read("Practitioner", practitioner)
    except FhirError as exc:
        fail(exc.message)
    finally:
        engine.dispose()
    specs = parameter_specs(plan)
    values = {
        name: parse_parameter(text, specs[name].type if name in specs else "string")
        for name, text in texts.items()
    }
    context = ApplyContext(
        subject=f"Patient/{patient}",
        now=now,
        start=start,
        new_id=lambda resource_type: new_resource_id(),
        encounter=f"Encounter/{encounter}" if encounter else None,
        practitioner=f"Practitioner/{practitioner}" if practitioner else None,
        parameters=values,
        addresses=addresses,
    )
    try:
        result = apply_plan_definition(plan, definitions, context)
    except ApplyError as exc:
        for issue in exc.issues:
            typer.echo(f"error: {issue.name}: {issue.message}", err=True)
        raise typer.Exit(1) from None
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in result.resources()],
    }
    data = jsonio.dumps(bundle, pretty=True) + b"\n"
    if out is None:
        typer.echo(data.decode("utf-8"), nl=False)
    else:
        out.write_bytes(data)


def main() -> None:
    app()
