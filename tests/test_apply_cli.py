"""``careplan-fhir apply``: the applied plan of a stored template, printed, nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from careplan_fhir.cli import app
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.settings import Settings

from . import factories
from .test_plan_definition_apply import VERTEBROPLASTY, create, encounter, import_template


def test_apply_prints_the_bundle(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    plan = import_template(client, VERTEBROPLASTY)
    patient = create(client, factories.patient())
    stay = create(client, encounter(patient))
    runner = CliRunner()
    base = ["apply", "--patient", patient, "--database-url", settings.database_url]

    printed = runner.invoke(
        app, [*base, plan["id"], "--encounter", stay, "--param", "fever_threshold=38.0Cel"]
    )
    assert printed.exit_code == 0, printed.output
    bundle = json.loads(printed.stdout)
    validate_resource(bundle)
    care_plan = bundle["entry"][0]["resource"]
    assert care_plan["subject"] == {"reference": f"Patient/{patient}"}
    assert care_plan["period"]["start"] == "2026-03-01T10:00:00Z"
    assert "38.0 °C (100.4 °F) or higher" in care_plan["text"]["div"]

    out = tmp_path / "plan.json"
    by_url = runner.invoke(
        app,
        [
            *base,
            f"{plan['url']}|{plan['version']}",
            "--param",
            "fever_threshold=100.4[degF]",
            "--out",
            str(out),
        ],
    )
    assert by_url.exit_code == 0, by_url.output
    assert "100.4 °F (38.0 °C)" in out.read_text(encoding="utf-8")

    missing = runner.invoke(app, [*base, plan["id"]])
    assert missing.exit_code == 1
    assert "fever_threshold" in missing.stderr
    assert client.get("/fhir/CarePlan").json()["total"] == 0
