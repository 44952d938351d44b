"""The authored guidance format (YAML): reading, writing back, and its error messages."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from careplan_fhir.guidance.authored import GuidanceInvalid, read_authored, write_authored
from careplan_fhir.guidance.model import Condition, Quantity, Timing
from careplan_fhir.workflows.import_guidance import format_for_path, read_guidance

from .test_guidance_fhir import sample_guidance

AUTHORED = """\
title: Home care after a port placement
procedure: Implanted port placement
sections:
  - Caring for the site
  - When to get help
parameters:
  - name: fever_threshold
    type: Quantity
    description: Temperature at which the patient should call the team
    units: [Cel, °F]
  - name: shower_after
    type: Quantity
    description: How long to wait before the first shower
    units: [h]
    default: 48 hours
instructions:
  - id: keep-dry
    kind: wound-care
    section: Caring for the site
    text: Keep the bandage over the port dry.
  - id: no-lifting
    kind: restriction
    text: Do not lift more than 10 pounds with that arm.
    prohibition: true
    timing:
      duration: 1 week
      until: your nurse says it is fine
  - kind: hygiene
    text: You may shower once the bandage is off.
    timing: {offset: 2 days, offset_max: 3 days}
    parameter: shower_after
  - kind: medication
    text: Take pain medicine as your team told you.
    timing:
      text: every 6 hours as needed
      frequency: 1
      period: 4
      period_max: 6
      period_unit: h
warning_signs:
  - id: fever
    text: Your temperature reaches the number your team gave you.
    condition:
      measure: body-temperature
      parameter: fever_threshold
  - text: Pain above 7 that medicine does not help.
    condition: {measure: pain-score, comparator: ">", threshold: 7}
  - text: Your arm or neck swells.
  - text: You cannot breathe well.
    urgency: stat
supplies:
  - Extra bandages
  - id: thermometer
    text: A thermometer
goals:
  - id: site-heals
    text: The port site heals with no infection.
    instructions: [keep-dry, fever]
"""


def test_read_authored_document() -> None:
    guidance = read_authored(AUTHORED)
    assert guidance.title == "Home care after a port placement"
    assert guidance.procedure == "Implanted port placement"
    assert guidance.source_format == "yaml"
    assert guidance.source_text == AUTHORED
    assert [s.title for s in guidance.sections] == ["Caring for the site", "When to get help"]
    ids = [i.id for i in guidance.instructions]
    assert ids == ["keep-dry", "no-lifting", "instruction-3", "instruction-4"]
    lifting = guidance.instructions[1]
    assert lifting.prohibition
    assert lifting.timing == Timing(
        "for 1 week, until your nurse says it is fine",
        duration=Quantity(Decimal(1), "wk"),
        until="your nurse says it is fine",
    )
    shower = guidance.instructions[2].timing
    assert shower is not None
    assert shower.offset == Quantity(Decimal(2), "d")
    assert shower.offset_max == Quantity(Decimal(3), "d")
    medicine = guidance.instructions[3].timing
    assert medicine is not None and medicine.text == "every 6 hours as needed"
    assert (medicine.frequency, medicine.period, medicine.period_max, medicine.period_unit) == (
        1,
        Decimal(4),
        Decimal(6),
        "h",
    )
    fever, pain, swelling, breathing = guidance.warning_signs
    assert fever.condition == Condition("body-temperature", ">=", parameter="fever_threshold")
    assert pain.condition == Condition("pain-score", ">", Quantity(Decimal(7), "{score}"))
    assert (swelling.id, swelling.urgency, swelling.condition) == ("warning-sign-3", "urgent", None)
    assert breathing.urgency == "stat"
    assert [(s.id, s.text) for s in guidance.supplies] == [
        ("supply-1", "Extra bandages"),
        ("thermometer", "A thermometer"),
    ]
    fever_threshold, shower_after = guidance.parameters
    assert fever_threshold.units == ("Cel", "[degF]")
    assert fever_threshold.required
    assert shower_after.default == Quantity(Decimal(48), "h")
    assert not shower_after.required
    assert guidance.goals[0].instruction_ids == ["keep-dry", "fever"]


def test_spans_point_at_the_yaml_text() -> None:
    guidance = read_authored(AUTHORED)
    for item in [*guidance.instructions, *guidance.warning_signs, *guidance.supplies]:
        quoted = AUTHORED[item.source.start : item.source.end]
        assert quoted == item.text, item.id
        assert AUTHORED.splitlines()[item.source.line - 1].strip().endswith(item.text)


def test_round_trip_of_a_leaflet_guidance() -> None:
    guidance = sample_guidance()
    written = write_authored(guidance)
    assert "source_text: |" in written
    assert read_authored(written) == guidance


def test_round_trip_of_an_authored_guidance_keeps_the_content() -> None:
    guidance = read_authored(AUTHORED)
    written = write_authored(guidance)
    assert "source_text" not in written
    again = read_authored(written)
    assert again.title == guidance.title
    for before, after in zip(guidance.instructions, again.instructions, strict=True):
        assert (before.id, before.kind, before.text, before.timing, before.prohibition) == (
            after.id,
            after.kind,
            after.text,
            after.timing,
            after.prohibition,
        )
        assert written[after.source.start : after.source.end] == after.text
    assert [w.condition for w in again.warning_signs] == [
        w.condition for w in guidance.warning_signs
    ]
    assert again.parameters == guidance.parameters
    assert again.goals == guidance.goals
    assert write_authored(again) == written


def problems(text: str) -> list[str]:
    with pytest.raises(GuidanceInvalid) as caught:
        read_authored(text)
    assert isinstance(caught.value, ValueError)
    return [f"{issue.path}: {issue.message}" for issue in caught.value.issues]


def test_every_problem_is_listed_with_its_field() -> None:
    found = problems(
        """\
title: Recovery
instructions:
  - kind: walking
    text: Walk a little.
    colour: blue
  - kind: diet
    text: no
  - kind: activity
    text: Rest.
    parameter: missing_one
    timing: {frequency: 2}
warning_signs:
  - text: Fever.
    urgency: soon
    condition: {measure: body-temperature, threshold: 38 kelvin}
goals:
  - text: Feel better.
    instructions: [nothing-here]
"""
    )
    assert any(p.startswith("instructions[0].kind: 'walking' is not one of") for p in found)
    assert any(p.startswith("instructions[0].colour: unknown field") for p in found)
    assert any(p.startswith("instructions[1].text: must be text") for p in found)
    assert any(p.startswith("instructions[2].parameter: no parameter named") for p in found)
    assert any(p.startswith("instructions[2].timing.period_unit: is required") for p in found)
    assert any(p.startswith("warning_signs[0].urgency: 'soon'") for p in found)
    assert any(p.startswith("warning_signs[0].condition.threshold: unit 'kelvin'") for p in found)
    assert any(p.startswith("goals[0].instructions[0]: no instruction") for p in found)
    assert len(found) == 8


def test_error_message_names_fields_and_lines() -> None:
    with pytest.raises(GuidanceInvalid) as caught:
        read_authored("title: Recovery\ninstructions:\n  - kind: walking\n    text: Walk.\n")
    message = str(caught.value)
    assert message.startswith("1 problem in the guidance: instructions[0].kind")
    assert "(line 3)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("title: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("procedure: Knee\n", "title: is required"),
        ("title: A\n---\ntitle: B\n", "not valid YAML"),
        ("title: A\ninstructions: {kind: diet}\n", "instructions: must be a list"),
        ("title: A\nsupplies:\n  - id: bad id\n    text: Gauze\n", "supplies[0].id"),
        (
            "title: A\nsupplies:\n  - {id: x, text: Gauze}\n  - {id: x, text: Tape}\n",
            "id 'x' is already used",
        ),
        (
            "title: A\nparameters:\n  - {name: 2fast, type: Quantity, description: d}\n",
            "parameters[0].name",
        ),
        (
            "title: A\nwarning_signs:\n"
            "  - text: Fever\n    condition: {measure: body-temperature}\n",
            "needs exactly one of threshold or parameter",
        ),
        (
            "title: A\nsource_text: Leaflet words.\ninstructions:\n"
            "  - {kind: diet, text: Drink water.}\n",
            "instructions[0].source: is required when source_text is given",
        ),
        (
            "title: A\nsource_text: Short.\ninstructions:\n"
            "  - {kind: diet, text: Short., source: {start: 0, end: 99, line: 1}}\n",
            "lies outside the source text",
        ),
    ],
)
def test_invalid_documents(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_source_text_locates_items_without_a_source() -> None:
    guidance = read_authored(
        "title: A\nsource_format: markdown\nsource_text: |\n  # A\n  Drink water.\n"
        "instructions:\n  - {kind: diet, text: Drink water.}\n"
    )
    assert guidance.source_format == "markdown"
    span = guidance.instructions[0].source
    assert guidance.source_text[span.start : span.end] == "Drink water."
    assert span.line == 2


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "guidance"
LEAFLETS = sorted(p for p in EXAMPLES.glob("*.*") if p.suffix in (".txt", ".md", ".html", ".htm"))


@pytest.mark.parametrize("path", LEAFLETS, ids=lambda p: p.name)
def test_round_trip_of_parsed_example_leaflets(path: Path) -> None:
    guidance = read_guidance(path.read_text(encoding="utf-8"), format_for_path(path))
    assert read_authored(write_authored(guidance)) == guidance
