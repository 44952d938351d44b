"""Golden Bundles of the example leaflets: reproducible, valid, and keeping the issue's promises.

Each leaflet in ``examples/guidance/`` has its artifacts Bundle checked in as
``examples/guidance/golden/<stem>.bundle.json``, built with fixed inputs (url base, version,
date). Regenerating must give the checked-in file byte for byte; ``make golden`` rewrites them
after a deliberate change of the importer (review the diff before committing it).
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from careplan_fhir.cli import app
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.guidance.fhir_builder import (
    BODY_TEMPERATURE,
    DISCHARGE_ACTION_ID,
    INSTRUCTION_KIND_SYSTEM,
    PAIN_SEVERITY,
    PLAN_PARAMETER_URL,
    SOURCE_SPAN_URL,
)
from careplan_fhir.workflows.import_guidance import build_import, format_for_path
from tests.test_guidance_recall import normalise

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "guidance"
GOLDEN = EXAMPLES / "golden"
GOLD = EXAMPLES / "gold"

#: The fixed inputs of the golden Bundles (the same as the Makefile's ``golden`` target).
URL_BASE = "https://careplan-fhir.org/fhir"
VERSION = "0.1.0"
DATE = "2026-11-24T00:00:00Z"
NOW = datetime(2026, 11, 24, tzinfo=UTC)
REGENERATE = "make golden"

LEAFLETS = sorted(p for p in EXAMPLES.iterdir() if p.is_file() and format_for_path(p))


def golden_path(leaflet: Path) -> Path:
    return GOLDEN / f"{leaflet.stem}.bundle.json"


def regenerate(leaflet: Path) -> bytes:
    """The Bundle of ``leaflet`` as the golden file holds it: pretty JSON, trailing newline."""
    _, bundle = build_import(
        leaflet.read_text(encoding="utf-8"),
        format_for_path(leaflet),
        url_base=URL_BASE,
        version=VERSION,
        now=NOW,
    )
    return jsonio.dumps(bundle, pretty=True) + b"\n"


def load_golden(leaflet: Path) -> dict[str, Any]:
    document: dict[str, Any] = jsonio.loads(golden_path(leaflet).read_bytes())
    return document


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def plan_of(bundle: dict[str, Any]) -> dict[str, Any]:
    (plan,) = resources(bundle, "PlanDefinition")
    return plan


def kind_of(action: dict[str, Any]) -> str | None:
    for concept in action.get("code", []):
        for coding in concept.get("coding", []):
            if coding.get("system") == INSTRUCTION_KIND_SYSTEM:
                return str(coding["code"])
    return None


def gold_of(leaflet: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((GOLD / f"{leaflet.stem}.yaml").read_text("utf-8"))
    return data


def source_text(bundle: dict[str, Any]) -> str:
    (document,) = resources(bundle, "DocumentReference")
    data = document["content"][0]["attachment"]["data"]
    return base64.b64decode(data).decode("utf-8")


def span_of(action: dict[str, Any]) -> dict[str, Any]:
    (extension,) = [e for e in action.get("extension", []) if e["url"] == SOURCE_SPAN_URL]
    parts = {part["url"]: part for part in extension["extension"]}
    return {
        "document": parts["document"]["valueReference"]["reference"],
        "start": parts["start"]["valueInteger"],
        "end": parts["end"]["valueInteger"],
        "line": parts["line"]["valueInteger"],
    }


def test_every_leaflet_has_a_golden_bundle_and_nothing_else_is_there() -> None:
    assert len(LEAFLETS) >= 5
    expected = {golden_path(leaflet).name for leaflet in LEAFLETS}
    present = {p.name for p in GOLDEN.glob("*.bundle.json")}
    assert present == expected, f"golden Bundles out of step with the leaflets; run `{REGENERATE}`"


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_regenerating_gives_the_golden_bundle_exactly(leaflet: Path) -> None:
    path = golden_path(leaflet)
    assert path.exists(), f"{path.relative_to(ROOT)} is missing; run `{REGENERATE}`"
    if regenerate(leaflet) != path.read_bytes():
        pytest.fail(
            f"{path.relative_to(ROOT)} differs from what the importer now builds from"
            f" {leaflet.relative_to(ROOT)}. If the change is intended, run `{REGENERATE}`"
            " and review the diff before committing it.",
            pytrace=False,
        )


def test_the_cli_writes_the_golden_bundle(tmp_path: Path) -> None:
    """``make golden`` goes through the CLI: it must give the same bytes as :func:`regenerate`."""
    leaflet = EXAMPLES / "vertebroplasty.txt"
    out = tmp_path / "bundle.json"
    result = CliRunner().invoke(
        app,
        [
            "guidance",
            "import",
            str(leaflet),
            "--out",
            str(out),
            "--url-base",
            URL_BASE,
            "--version",
            VERSION,
            "--date",
            DATE,
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == golden_path(leaflet).read_bytes()


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_golden_resources_are_valid_fhir(leaflet: Path) -> None:
    bundle = load_golden(leaflet)
    validate_resource(bundle)
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
    plan = plan_of(bundle)
    assert plan["status"] == "draft"
    assert plan["url"].startswith(f"{URL_BASE}/PlanDefinition/")
    assert plan["version"] == VERSION
    assert plan["type"]["coding"][0]["code"] == "clinical-protocol"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {
        "PlanDefinition",
        "Questionnaire",
        "DocumentReference",
    }


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_prohibitions_are_do_not_perform_activity_definitions(leaflet: Path) -> None:
    bundle = load_golden(leaflet)
    plan = plan_of(bundle)
    definitions = {f"{d['url']}|{d['version']}": d for d in resources(bundle, "ActivityDefinition")}
    referenced = [a for a in plan["action"] if "definitionCanonical" in a]
    gold_prohibitions = [i for i in gold_of(leaflet)["instructions"] if i["prohibition"]]
    assert gold_prohibitions, "every example leaflet has prohibitions"
    assert len(referenced) >= len(gold_prohibitions) * 0.9
    assert len(referenced) == len(definitions)
    for action in referenced:
        definition = definitions[action["definitionCanonical"]]
        assert definition["doNotPerform"] is True
        assert definition["description"] == action["description"]
    # Every gold prohibition is an action pointing at a doNotPerform ActivityDefinition.
    descriptions = [normalise(a["description"]) for a in referenced]
    for item in gold_prohibitions:
        needle = normalise(item["text"])
        assert any(f" {needle} " in f" {d} " for d in descriptions), item["text"]


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_warning_signs_are_stat_or_urgent_as_annotated(leaflet: Path) -> None:
    bundle = load_golden(leaflet)
    text = source_text(bundle)
    markup = leaflet.suffix == ".html"
    signs = [a for a in plan_of(bundle)["action"] if kind_of(a) == "warning-sign"]
    assert signs
    assert {a["priority"] for a in signs} <= {"stat", "urgent"}
    haystacks = [
        (
            normalise(a["description"]),
            normalise(text[span_of(a)["start"] : span_of(a)["end"]], markup=markup),
            a["priority"],
        )
        for a in signs
    ]
    for item in gold_of(leaflet)["warning_signs"]:
        needle = f" {normalise(item['text'])} "
        found = [p for d, s, p in haystacks if needle in f" {d} " or needle in f" {s} "]
        assert found, f"warning sign {item['text']!r} has no action"
        assert item["urgency"] in found, (item["text"], found)


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_every_action_points_back_to_its_source_sentence(leaflet: Path) -> None:
    bundle = load_golden(leaflet)
    text = source_text(bundle)
    (document,) = resources(bundle, "DocumentReference")
    markup = leaflet.suffix == ".html"
    assert text == leaflet.read_text(encoding="utf-8")
    for action in plan_of(bundle)["action"]:
        if action["id"] == DISCHARGE_ACTION_ID:
            assert "extension" not in action  # the anchor of offsets, not from the leaflet
            continue
        span = span_of(action)
        assert span["document"] == f"DocumentReference/{document['id']}"
        assert 0 <= span["start"] < span["end"] <= len(text), action["id"]
        assert span["line"] == text.count("\n", 0, span["start"]) + 1, action["id"]
        sliced = normalise(text[span["start"] : span["end"]], markup=markup)
        described = normalise(action["description"])
        assert f" {described} " in f" {sliced} ", (action["id"], sliced, described)


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_check_in_asks_temperature_and_pain_with_loinc_codes(leaflet: Path) -> None:
    (questionnaire,) = resources(load_golden(leaflet), "Questionnaire")
    items = {item["linkId"]: item for item in questionnaire["item"]}
    temperature = items["body-temperature"]
    assert temperature["type"] == "decimal"
    assert temperature["code"][0]["code"] == BODY_TEMPERATURE[1] == "8310-5"
    assert temperature["code"][0]["system"] == "http://loinc.org"
    units = [o["valueCoding"]["code"] for o in items["body-temperature-unit"]["answerOption"]]
    assert units == ["Cel", "[degF]"]
    pain = items["pain-score"]
    assert pain["type"] == "integer"
    assert pain["code"][0]["code"] == PAIN_SEVERITY[1] == "72514-3"
    assert pain["code"][0]["system"] == "http://loinc.org"
    assert items["warning-signs"]["item"]
    assert all(i["type"] == "boolean" for i in items["warning-signs"]["item"])


def _temperature_numbers(value: Any) -> list[str]:
    """Every temperature quantity anywhere in a resource (Cel or [degF])."""
    found: list[str] = []
    if isinstance(value, dict):
        if value.get("code") in ("Cel", "[degF]") and "value" in value:
            found.append(str(value["value"]))
        for child in value.values():
            found += _temperature_numbers(child)
    elif isinstance(value, list):
        for child in value:
            found += _temperature_numbers(child)
    return found


@pytest.mark.parametrize("leaflet", LEAFLETS, ids=lambda p: p.name)
def test_a_deferred_fever_threshold_is_a_required_parameter_and_no_number(
    leaflet: Path,
) -> None:
    bundle = load_golden(leaflet)
    plan = plan_of(bundle)
    parameters: dict[str, dict[str, Any]] = {}
    units: dict[str, list[str]] = {}
    for extension in plan.get("extension", []):
        if extension["url"] == PLAN_PARAMETER_URL:
            parts = {p["url"]: p for p in extension["extension"]}
            name = parts["name"]["valueCode"]
            parameters[name] = parts
            units[name] = [
                p["valueCoding"]["code"] for p in extension["extension"] if p["url"] == "unit"
            ]
    fever_signs = [
        condition["expression"]["expression"]
        for action in plan["action"]
        for condition in action.get("condition", [])
        if condition["expression"]["expression"].startswith("%temperature")
    ]
    assert fever_signs, "every example leaflet has a measurable fever sign"
    if "fever_threshold" in gold_of(leaflet)["parameters"]:
        fever = parameters["fever_threshold"]
        assert fever["required"]["valueBoolean"] is True
        assert fever["type"]["valueCode"] == "Quantity"
        assert units["fever_threshold"] == ["Cel", "[degF]"]
        assert "default" not in fever
        assert fever_signs == ["%temperature >= %fever_threshold"]
        # Never invent a number the leaflet did not give: no temperature anywhere.
        for entry in bundle["entry"]:
            assert _temperature_numbers(entry["resource"]) == [], entry["resource"]["id"]
    else:
        assert "fever_threshold" not in parameters
        text = source_text(bundle)
        for expression in fever_signs:
            number = re.search(r"\d+(?:\.\d+)?", expression)
            assert number is not None and number.group(0) in text, expression
