"""``careplan-fhir guidance import|show``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from careplan_fhir.cli import app
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.guidance.authored import read_authored

from .test_plan_definition_import import LEAFLET

runner = CliRunner()


def leaflet(tmp_path: Path) -> Path:
    path = tmp_path / "wrist.yaml"
    path.write_text(LEAFLET, encoding="utf-8")
    return path


def test_import_writes_bundle_and_review_yaml(tmp_path: Path) -> None:
    out, review = tmp_path / "bundle.json", tmp_path / "review.yaml"
    arguments = ["guidance", "import", str(leaflet(tmp_path)), "--out", str(out)]
    arguments += ["--yaml-out", str(review), "--version", "1.0.0", "--date", "2026-03-01T10:00Z"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    validate_resource(bundle)
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
    plan = bundle["entry"][0]["resource"]
    assert (plan["version"], plan["date"]) == ("1.0.0", "2026-03-01T10:00:00Z")
    assert "texts above grade 8" in result.stderr
    reviewed = read_authored(review.read_text())
    assert [i.id for i in reviewed.instructions] == ["raise-hand", "no-wet-cast"]
    # Same input, same date: the same bytes.
    again = runner.invoke(app, arguments)
    assert again.exit_code == 0
    assert json.loads(out.read_text()) == bundle


def test_import_to_standard_output(tmp_path: Path) -> None:
    result = runner.invoke(app, ["guidance", "import", str(leaflet(tmp_path))])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resourceType"] == "Bundle"


def test_show_prints_the_review_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["guidance", "show", str(leaflet(tmp_path))])
    assert result.exit_code == 0, result.output
    for expected in (
        "Recovery after a wrist fracture repair",
        "Keep your hand raised on a pillow.",
        "for the first 3 days",
        "warning-sign (urgent)",
        "%temperature >= 38.5 'Cel'",
        "A sling",
        "Goal swelling-down",
    ):
        assert expected in result.stdout, expected


def test_show_flags_text_above_grade_eight(tmp_path: Path) -> None:
    path = tmp_path / "hard.yaml"
    path.write_text(
        "title: Hard words\ninstructions:\n  - kind: activity\n    text: >-\n"
        "      Refrain from strenuous physical exertion, including lifting heavy objects,\n"
        "      until radiographic confirmation of satisfactory consolidation is documented.\n"
    )
    result = runner.invoke(app, ["guidance", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "> 8" in result.stdout


def test_invalid_document_exits_with_the_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("title: A\ninstructions:\n  - kind: walking\n    text: Walk.\n")
    result = runner.invoke(app, ["guidance", "import", str(path)])
    assert result.exit_code == 1
    assert "instructions[0].kind" in result.stderr


def test_import_and_show_a_text_leaflet(tmp_path: Path) -> None:
    from .test_plan_definition_import import TEXT_LEAFLET

    path = tmp_path / "carpal-tunnel.txt"
    path.write_text(TEXT_LEAFLET, encoding="utf-8")
    out, review = tmp_path / "bundle.json", tmp_path / "review.yaml"
    arguments = ["guidance", "import", str(path), "--out", str(out), "--yaml-out", str(review)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
    document = bundle["entry"][-1]["resource"]
    assert document["content"][0]["attachment"]["contentType"] == "text/plain"
    reviewed = read_authored(review.read_text())
    assert reviewed.source_text == TEXT_LEAFLET
    assert reviewed.source_format == "text"
    shown = runner.invoke(app, ["guidance", "show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "Going Home After Carpal Tunnel Release" in shown.stdout
    assert "warning-sign" in shown.stdout
