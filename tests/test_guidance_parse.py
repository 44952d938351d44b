"""The leaflet importer: structure, instructions, timing, prohibitions, warning signs, supplies.

Every leaflet here is a few lines we wrote ourselves for the test.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from careplan_fhir.guidance.model import (
    INSTRUCTION_KINDS,
    Instruction,
    Quantity,
    RecoveryGuidance,
    SourceSpan,
)
from careplan_fhir.guidance.parse import detect_format, parse_guidance
from careplan_fhir.guidance.timing import parse_timing


def _plain(fragment: str) -> str:
    """Source text with markup removed, for comparing with cleaned item text."""
    fragment = re.sub(r"<[^>]+>", " ", fragment)
    fragment = fragment.replace("&amp;", "&").replace("&rsquo;", "’").replace("&nbsp;", " ")
    fragment = re.sub(r"[*_`#]|\[|\]\([^)]*\)", "", fragment)
    return " ".join(fragment.split())


def _assert_span(text: str, span: SourceSpan, item: str) -> None:
    assert 0 <= span.start < span.end <= len(text)
    assert span.line == text.count("\n", 0, span.start) + 1
    expected = " ".join(item.split()).rstrip(".").lower()
    assert expected in _plain(text[span.start : span.end]).lower()


def _assert_all_spans(guidance: RecoveryGuidance) -> None:
    text = guidance.source_text
    for instruction in guidance.instructions:
        _assert_span(text, instruction.source, instruction.text)
    for supply in guidance.supplies:
        _assert_span(text, supply.source, supply.text)
    for sign in guidance.warning_signs:
        assert sign.source.start < sign.source.end


def _texts(guidance: RecoveryGuidance) -> list[str]:
    return [item.text for item in guidance.instructions]


def _by_text(guidance: RecoveryGuidance, fragment: str) -> Instruction:
    matches = [item for item in guidance.instructions if fragment in item.text]
    assert matches, f"no instruction containing {fragment!r} in {_texts(guidance)}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# Structure

QUESTION_LEAFLET = """\
Going Home After Your Knee Arthroscopy

What happens during the operation?

The surgeon looks inside the joint through small cuts. It usually takes under an hour.

What is recovery like?

Most people go home the same day. Keep your leg raised on pillows when you sit. Put an ice pack
on the knee for 20 minutes at a time, 3 to 4 times a day. You may feel some aching at first.

What should I have at home?

  • An ice pack or a bag of frozen peas
  • Extra pillows

When should I call my care team?

  • A temperature above 38.5 °C
  • Calf pain or swelling in one leg
  • Call 911 if you have chest pain or trouble breathing.
"""


def test_question_headings_sections_and_title() -> None:
    guidance = parse_guidance(QUESTION_LEAFLET)
    assert guidance.source_format == "text"
    assert guidance.title == "Going Home After Your Knee Arthroscopy"
    assert guidance.procedure == "arthroscopy"
    assert [section.title for section in guidance.sections] == [
        "What happens during the operation?",
        "What is recovery like?",
        "What should I have at home?",
        "When should I call my care team?",
    ]
    # Description and reassurance are not instructions.
    assert not any("surgeon looks" in text for text in _texts(guidance))
    assert not any("aching" in text for text in _texts(guidance))
    ice = _by_text(guidance, "ice pack on the knee")
    assert ice.section == "What is recovery like?"
    timing = ice.timing
    assert timing is not None
    assert (timing.frequency, timing.frequency_max, timing.period_unit) == (3, 4, "d")
    assert [supply.text for supply in guidance.supplies] == [
        "An ice pack or a bag of frozen peas",
        "Extra pillows",
    ]
    assert len(guidance.warning_signs) == 3
    _assert_all_spans(guidance)


def test_all_caps_and_colon_headings_give_section_priors() -> None:
    text = """\
HIP REPLACEMENT: CARE AT HOME

DIET
Choose soft meals for the first few days.
Have plenty of fluids.

Bathing:
Wait 48 hours before you get the dressing wet.
"""
    guidance = parse_guidance(text)
    assert [section.title for section in guidance.sections] == ["DIET", "Bathing"]
    assert guidance.procedure == "hip replacement"
    meals = _by_text(guidance, "soft meals")
    assert meals.kind == "diet"
    fluids = _by_text(guidance, "plenty of fluids")
    assert fluids.kind == "diet"
    wait = _by_text(guidance, "Wait 48 hours")
    assert wait.section == "Bathing"
    assert wait.timing is not None
    assert wait.timing.offset == Quantity(Decimal(48), "h")
    _assert_all_spans(guidance)


@pytest.mark.parametrize("marker", ["•", "-", "*", "1.", "1)", "▪"])
def test_bullet_styles(marker: str) -> None:
    text = f"""\
Looking after your wound

{marker} Keep the dressing dry for 2 days.
{marker} Change the bandage if it gets wet
  or dirty.
{marker} Do not soak in a bath.
"""
    guidance = parse_guidance(text, "text")
    assert _texts(guidance) == [
        "Keep the dressing dry for 2 days.",
        "Change the bandage if it gets wet or dirty.",
        "Do not soak in a bath.",
    ]
    kinds = [item.kind for item in guidance.instructions]
    assert kinds[:2] == ["wound-care", "wound-care"]
    assert kinds[2] == "hygiene"
    assert [item.prohibition for item in guidance.instructions] == [False, False, True]
    _assert_all_spans(guidance)


def test_prose_paragraph_is_split_into_instruction_sentences() -> None:
    text = (
        "Caring for yourself\n\n"
        "The first days can be tiring. Rest when you feel tired. Walk around the house every "
        "hour while awake. Do not lift anything heavier than a full kettle for six weeks. Most "
        "people feel stronger by the second week.\n"
    )
    guidance = parse_guidance(text)
    assert _texts(guidance) == [
        "Rest when you feel tired.",
        "Walk around the house every hour while awake.",
        "Do not lift anything heavier than a full kettle for six weeks.",
    ]
    lift = guidance.instructions[2]
    assert lift.kind == "activity" and lift.prohibition
    assert lift.timing is not None and lift.timing.duration == Quantity(Decimal(6), "wk")
    _assert_all_spans(guidance)


def test_document_without_headings() -> None:
    text = (
        "You had a small port placed under the skin of your chest. Leave the bandage on for "
        "two days. After that you may shower. Do not swim until the skin has healed. Call your "
        "nurse if the area becomes red or hot.\n"
    )
    guidance = parse_guidance(text)
    assert guidance.sections == []
    # No heading names it: the title is made from the procedure, not the first sentence.
    assert guidance.procedure is not None and "port" in guidance.procedure
    assert guidance.title == f"Recovery at home after {guidance.procedure}"
    assert _texts(guidance) == [
        "Leave the bandage on for two days.",
        "After that you may shower.",
        "Do not swim until the skin has healed.",
    ]
    swim = guidance.instructions[2]
    assert swim.prohibition and swim.timing is not None
    assert swim.timing.until == "the skin has healed"
    assert [sign.text for sign in guidance.warning_signs] == ["The area becomes red or hot"]
    assert guidance.warning_signs[0].urgency == "urgent"
    _assert_all_spans(guidance)


MARKDOWN_LEAFLET = """\
# After your lumbar fusion

## Medicines

- Take your **pain medicine** as prescribed.
- Use a stool softener while you take opioids.

## Activity

1. Walk *three times a day*.
2. No driving for 2 weeks.

## Call us if you notice

- Fever over 101 °F
- Pain of 8 out of 10 or higher that does not ease with medicine
"""


def test_markdown_headings_inline_markup_and_spans() -> None:
    assert detect_format(MARKDOWN_LEAFLET) == "markdown"
    guidance = parse_guidance(MARKDOWN_LEAFLET)
    assert guidance.source_format == "markdown"
    assert guidance.title == "After your lumbar fusion"
    assert guidance.procedure == "lumbar fusion"
    assert [s.title for s in guidance.sections] == [
        "Medicines",
        "Activity",
        "Call us if you notice",
    ]
    assert _texts(guidance)[0] == "Take your pain medicine as prescribed."
    kinds = {item.text: item.kind for item in guidance.instructions}
    assert kinds["Take your pain medicine as prescribed."] == "medication"
    # Under a "Medicines" heading a stool softener is a medicine; it still serves the bowel goal.
    assert kinds["Use a stool softener while you take opioids."] == "medication"
    bowel_goal = next(goal for goal in guidance.goals if goal.id == "goal-bowel")
    assert bowel_goal.instruction_ids == ["inst-2"]
    assert kinds["Walk three times a day."] == "activity"
    driving = _by_text(guidance, "No driving")
    assert driving.prohibition is True
    fever, pain = guidance.warning_signs
    assert fever.condition is not None and fever.condition.measure == "body-temperature"
    assert fever.condition.threshold == Quantity(Decimal(101), "[degF]")
    assert fever.condition.comparator == ">"
    assert pain.condition is not None and pain.condition.measure == "pain-score"
    assert pain.condition.comparator == ">="
    assert pain.condition.threshold == Quantity(Decimal(8), "{score}")
    _assert_all_spans(guidance)


HTML_LEAFLET = """\
<!DOCTYPE html>
<html><head><title>Shoulder surgery care</title><style>p {color: red}</style></head>
<body>
<h1>Home care after shoulder replacement</h1>
<h2>Your sling</h2>
<p>Wear the sling when you are up &amp; about. Take it off to wash.</p>
<h2>Things to have at home</h2>
<ul><li>A shirt that buttons at the front</li><li>Ice packs</li></ul>
<h3>Get help right away</h3>
<p>Call your surgeon&rsquo;s office if:</p>
<ul>
  <li>Your fingers turn <b>cold</b> or blue</li>
  <li>You have a fever</li>
</ul>
<p>Ask your surgeon at what temperature you should call.</p>
</body></html>
"""


def test_html_structure_offsets_and_lead_in_lists() -> None:
    assert detect_format(HTML_LEAFLET) == "html"
    guidance = parse_guidance(HTML_LEAFLET)
    assert guidance.source_format == "html"
    assert guidance.title == "Home care after shoulder replacement"
    assert guidance.procedure == "shoulder replacement"
    assert [s.title for s in guidance.sections] == [
        "Your sling",
        "Things to have at home",
        "Get help right away",
    ]
    assert _texts(guidance) == [
        "Wear the sling when you are up & about.",
        "Take it off to wash.",
    ]
    assert [s.text for s in guidance.supplies] == ["A shirt that buttons at the front", "Ice packs"]
    assert [w.text for w in guidance.warning_signs] == [
        "Your fingers turn cold or blue",
        "You have a fever",
    ]
    fever = guidance.warning_signs[1]
    assert fever.condition is not None and fever.condition.parameter == "fever_threshold"
    assert fever.condition.threshold is None
    for sign in guidance.warning_signs:
        assert _plain(HTML_LEAFLET[sign.source.start : sign.source.end]) == sign.text
    _assert_all_spans(guidance)


def test_detect_format_by_filename_and_content() -> None:
    assert detect_format("anything", "leaflet.HTM") == "html"
    assert detect_format("anything", "leaflet.md") == "markdown"
    assert detect_format("anything", "guidance.yaml") == "yaml"
    assert detect_format("anything", "leaflet.txt") == "text"
    assert detect_format("Rest today.\n\nWalk tomorrow.\n") == "text"
    assert detect_format("<p>Rest.</p><p>Walk.</p>") == "html"
    assert detect_format("title: x\nprocedure: y\ninstructions:\n  - text: Rest\n") == "yaml"


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown guidance format"):
        parse_guidance("Rest.", "pdf")


# ---------------------------------------------------------------------------------------------
# Instructions, kinds and prohibitions

KIND_CASES = [
    ("Take one pain pill every 6 hours if you need it.", "medication"),
    ("Keep the incision covered with a clean dressing.", "wound-care"),
    ("You may shower after two days.", "hygiene"),
    ("Walk a little more each day.", "activity"),
    ("Do your stretching exercises twice a day.", "exercise"),
    ("Eat small meals and drink plenty of water.", "diet"),
    ("Use a laxative if you have not had a bowel movement in 3 days.", "bowel"),
    ("Check your temperature each evening.", "monitoring"),
    ("Call the clinic to schedule a follow-up appointment.", "follow-up"),
    ("Buy the supplies before your surgery.", "supplies"),
    ("Read the booklet about your new joint.", "education"),
    ("Limit yourself to light tasks.", "restriction"),
]


@pytest.mark.parametrize(("sentence", "kind"), KIND_CASES)
def test_instruction_kinds(sentence: str, kind: str) -> None:
    guidance = parse_guidance(f"Home care\n\n{sentence}\n")
    assert [item.kind for item in guidance.instructions] == [kind]
    assert kind in INSTRUCTION_KINDS


def test_section_prior_wins_unless_strongly_otherwise() -> None:
    text = (
        "Home after surgery\n\nDiet\n\n"
        "Have some soup.\nTry toast and rice.\nTake a stool softener for constipation.\n"
    )
    guidance = parse_guidance(text)
    assert [item.kind for item in guidance.instructions] == ["diet", "diet", "bowel"]


@pytest.mark.parametrize(
    ("sentence", "is_instruction"),
    [
        ("You may feel sore for a few days.", False),
        ("Your nurse will remove the drain.", False),
        ("It is normal to have some bruising.", False),
        ("You should sleep on your back.", True),
        ("You may shower tomorrow.", True),
        ("It is OK to climb stairs slowly.", True),
        ("Gentle walking is recommended.", True),
        ("Be sure to drink enough water.", True),
        ("Taking short walks helps recovery.", False),
    ],
)
def test_advisory_and_reassurance(sentence: str, is_instruction: bool) -> None:
    guidance = parse_guidance(f"At home\n\n{sentence}\n")
    assert bool(guidance.instructions) is is_instruction


def test_gerund_bullets_after_an_include_lead_in() -> None:
    text = (
        "Recovery\n\nYour plan will include:\n\n"
        "- Taking your medicine on time.\n- Avoiding constipation with fluids and fruit.\n"
    )
    guidance = parse_guidance(text)
    assert [item.kind for item in guidance.instructions] == ["medication", "bowel"]
    # Avoiding an outcome is not a do-not-perform action.
    assert [item.prohibition for item in guidance.instructions] == [False, False]


PROHIBITIONS = [
    ("Do not drive for 2 weeks.", "duration", Quantity(Decimal(2), "wk")),
    (
        "Don't lift anything over 10 pounds for three months.",
        "duration",
        Quantity(Decimal(3), "mo"),
    ),
    ("Avoid hot tubs until your team says so.", "until", "your team says so"),
    ("Never smoke near your oxygen.", None, None),
    ("No baths until your stitches are out.", "until", "your stitches are out"),
    ("Limit stairs to once a day for the first week.", "duration", Quantity(Decimal(1), "wk")),
    ("Stop taking aspirin until your doctor tells you to restart it.", "until", None),
    ("You should not bend at the waist for 6 weeks.", "duration", Quantity(Decimal(6), "wk")),
]


@pytest.mark.parametrize(("sentence", "lift", "value"), PROHIBITIONS)
def test_prohibitions_and_what_lifts_them(sentence: str, lift: str | None, value: object) -> None:
    guidance = parse_guidance(f"Care at home\n\n{sentence}\n")
    [instruction] = guidance.instructions
    assert instruction.prohibition is True
    if lift is None:
        return
    assert instruction.timing is not None
    if lift == "duration":
        assert instruction.timing.duration == value
    elif value is not None:
        assert instruction.timing.until == value
    else:
        assert instruction.timing.until


def test_clinician_lifted_prohibition_keeps_the_lift_as_words() -> None:
    guidance = parse_guidance("Bathing\n\nAvoid tub baths until your surgeon says it is safe.\n")
    [instruction] = guidance.instructions
    assert instruction.timing is not None
    assert instruction.timing.until == "your surgeon says it is safe"
    assert instruction.parameter is None and guidance.parameters == []


def test_semicolon_clauses_are_separate_instructions() -> None:
    guidance = parse_guidance("Washing\n\nAvoid baths for a week; short showers are allowed.\n")
    assert [(i.text, i.prohibition) for i in guidance.instructions] == [
        ("Avoid baths for a week", True),
        ("short showers are allowed.", False),
    ]


# ---------------------------------------------------------------------------------------------
# Timing

TIMING_CASES: list[tuple[str, dict[str, object]]] = [
    ("after 24 hours", {"offset": Quantity(Decimal(24), "h")}),
    ("for 2 weeks", {"duration": Quantity(Decimal(2), "wk")}),
    ("3 to 4 times a day", {"frequency": 3, "frequency_max": 4, "period": 1, "period_unit": "d"}),
    ("in the first week", {"duration": Quantity(Decimal(1), "wk")}),
    (
        "1 to 2 days after surgery",
        {"offset": Quantity(Decimal(1), "d"), "offset_max": Quantity(Decimal(2), "d")},
    ),
    ("every 4 to 6 hours", {"frequency": 1, "period": 4, "period_max": 6, "period_unit": "h"}),
    ("twice a day", {"frequency": 2, "period": 1, "period_unit": "d"}),
    ("once daily", {"frequency": 1, "period": 1, "period_unit": "d"}),
    ("for three months", {"duration": Quantity(Decimal(3), "mo")}),
    ("for twelve days", {"duration": Quantity(Decimal(12), "d")}),
    ("for 30 minutes", {"duration": Quantity(Decimal(30), "min")}),
    ("every day", {"frequency": 1, "period": 1, "period_unit": "d"}),
    ("for the first 48 hours", {"duration": Quantity(Decimal(48), "h")}),
    ("until your team says so", {"until": "your team says so"}),
    ("until 2 weeks after surgery", {"duration": Quantity(Decimal(2), "wk")}),
    ("five times a week", {"frequency": 5, "period": 1, "period_unit": "wk"}),
    ("wait one week", {"offset": Quantity(Decimal(1), "wk")}),
]


@pytest.mark.parametrize(("phrase", "expected"), TIMING_CASES)
def test_timing_phrases(phrase: str, expected: dict[str, object]) -> None:
    timing = parse_timing(f"Do it {phrase}.")
    assert timing is not None
    for name, value in expected.items():
        actual = getattr(timing, name)
        if isinstance(value, int) and not isinstance(value, bool) and name.startswith("period"):
            assert actual == Decimal(value), name
        else:
            assert actual == value, name
    assert timing.text


def test_vague_timing_gives_no_number() -> None:
    assert parse_timing("Do it a few times a day.") is None
    assert parse_timing("Rest when you can.") is None


# ---------------------------------------------------------------------------------------------
# Warning signs and clinician parameters

WARNING_LEAFLET = """\
When to get help

Call your doctor right away if you have:
- A fever of 38 C or higher
- Redness spreading around the cut
- Questions about your medicines

Go to the emergency room if you have:
- Sudden weakness in both legs

If you have chest pain, call 911.
Keep taking your medicines as usual.
"""


def test_warning_signs_urgency_and_conditions() -> None:
    guidance = parse_guidance(WARNING_LEAFLET)
    signs = [(sign.text, sign.urgency) for sign in guidance.warning_signs]
    assert signs == [
        ("A fever of 38 C or higher", "urgent"),
        ("Redness spreading around the cut", "urgent"),
        # "Questions about your medicines" is an invitation to call, not a warning sign.
        ("Sudden weakness in both legs", "stat"),
        ("Chest pain", "stat"),
    ]
    fever = guidance.warning_signs[0].condition
    assert fever is not None
    assert (fever.measure, fever.comparator) == ("body-temperature", ">=")
    assert fever.threshold == Quantity(Decimal(38), "Cel")
    assert fever.parameter is None
    # Warning signs are not also instructions; the advice after them is.
    assert _texts(guidance) == ["Keep taking your medicines as usual."]
    assert guidance.parameters == []


def test_fever_threshold_deferred_to_the_clinician() -> None:
    text = (
        "Call your provider if you have any of these:\n\n"
        "* Fever. Ask your provider what temperature is too high.\n"
        "* Swelling in your leg\n"
    )
    guidance = parse_guidance(text)
    [parameter] = guidance.parameters
    assert parameter.name == "fever_threshold"
    assert parameter.required is True and parameter.type == "Quantity"
    assert parameter.units == ("Cel", "[degF]")
    assert parameter.default is None
    assert parameter.source is not None
    assert "temperature" in text[parameter.source.start : parameter.source.end]
    fever, swelling = guidance.warning_signs
    assert fever.text == "Fever"
    assert fever.condition is not None
    assert fever.condition.parameter == "fever_threshold" and fever.condition.threshold is None
    assert swelling.condition is None
    assert guidance.instructions == []


def test_fever_without_number_or_deferral_has_no_condition() -> None:
    guidance = parse_guidance("Call your nurse if you have:\n\n- A fever\n- Chills\n")
    assert [sign.condition for sign in guidance.warning_signs] == [None, None]
    assert guidance.parameters == []


def test_as_directed_with_a_value_gets_an_optional_parameter() -> None:
    guidance = parse_guidance("Activity\n\nStart walking outside after 3 days or as directed.\n")
    [instruction] = guidance.instructions
    assert instruction.parameter == "walking_after"
    [parameter] = guidance.parameters
    assert parameter.required is False
    assert parameter.default == Quantity(Decimal(3), "d")


def test_as_directed_without_a_value_invents_nothing() -> None:
    guidance = parse_guidance("Medicines\n\nTake your pain medicine as directed.\n")
    [instruction] = guidance.instructions
    assert instruction.parameter is None
    assert guidance.parameters == []


# ---------------------------------------------------------------------------------------------
# Supplies, goals, ids


def test_supplies_list_and_inline_supply_list() -> None:
    text = (
        "You will need:\n\n- Gauze pads\n- Medical tape\n\n"
        "Supplies\n\nKeep these nearby: a thermometer, a pill box and a night light.\n"
    )
    guidance = parse_guidance(text)
    assert [supply.text for supply in guidance.supplies] == [
        "Gauze pads",
        "Medical tape",
        "A thermometer",
        "A pill box",
        "A night light",
    ]
    assert [supply.id for supply in guidance.supplies][:2] == ["supply-1", "supply-2"]
    assert guidance.instructions == []
    _assert_all_spans(guidance)


def test_goals_follow_instruction_kinds_and_ids_are_deterministic() -> None:
    text = (
        "At home\n\n- Take your pain medicine with food.\n- Keep the incision dry.\n"
        "- Drink water and eat fiber to avoid constipation.\n- Walk every day.\n"
    )
    first = parse_guidance(text)
    second = parse_guidance(text)
    assert first == second
    assert [item.id for item in first.instructions] == ["inst-1", "inst-2", "inst-3", "inst-4"]
    goals = {goal.id: goal for goal in first.goals}
    assert set(goals) >= {"goal-pain", "goal-wound", "goal-bowel", "goal-activity"}
    assert goals["goal-pain"].instruction_ids == ["inst-1"]
    assert goals["goal-wound"].instruction_ids == ["inst-2"]
    assert "inst-3" in goals["goal-bowel"].instruction_ids
    assert goals["goal-activity"].instruction_ids == ["inst-4"]
    assert all(goal.text for goal in first.goals)


def test_title_override_and_yaml_delegation() -> None:
    guidance = parse_guidance("Rest today.\n", "text", title="Our title")
    assert guidance.title == "Our title"


def test_prose_warning_sentence_with_several_if_clauses() -> None:
    text = (
        "Getting help\n\n"
        "Phone the ward if you have a fever; ask the ward what temperature counts. Also call if "
        "the wound leaks, if the stitches come apart, or if your foot turns pale. Call 911 if "
        "you faint.\n"
    )
    guidance = parse_guidance(text)
    assert [(sign.text, sign.urgency) for sign in guidance.warning_signs] == [
        ("A fever", "urgent"),
        ("The wound leaks", "urgent"),
        ("The stitches come apart", "urgent"),
        ("Your foot turns pale", "urgent"),
        ("You faint", "stat"),
    ]
    fever = guidance.warning_signs[0].condition
    assert fever is not None and fever.parameter == "fever_threshold"
    assert [parameter.name for parameter in guidance.parameters] == ["fever_threshold"]
    for sign in guidance.warning_signs:
        assert sign.text.lower() in text[sign.source.start : sign.source.end].lower()


def test_permission_after_a_short_phrase_and_going_back() -> None:
    text = (
        "Daily life\n\n"
        "For a mild headache you can use paracetamol. Most people can go back to office work "
        "after one week. It may take a while before you feel like yourself.\n"
        "Before you leave the ward, make sure you have clean dressings, tape and a thermometer.\n"
    )
    guidance = parse_guidance(text)
    assert _texts(guidance) == [
        "For a mild headache you can use paracetamol.",
        "Most people can go back to office work after one week.",
    ]
    assert guidance.instructions[1].timing is not None
    assert guidance.instructions[1].timing.offset == Quantity(Decimal(1), "wk")
    assert [supply.text for supply in guidance.supplies] == [
        "Clean dressings",
        "Tape",
        "A thermometer",
    ]
    _assert_all_spans(guidance)


def test_second_prohibition_joined_by_and_is_its_own_instruction() -> None:
    guidance = parse_guidance(
        "Activity\n\nDo not carry shopping bags for a month, and avoid contact sports.\n"
    )
    assert [(item.text, item.prohibition) for item in guidance.instructions] == [
        ("Do not carry shopping bags for a month", True),
        ("avoid contact sports.", True),
    ]


def test_gerund_subject_is_not_an_instruction_unless_advised() -> None:
    text = (
        "Recovery\n\n- Walking helps your bowels wake up.\n"
        "- Avoid soaking in a bath; showering is recommended instead.\n"
    )
    guidance = parse_guidance(text)
    assert [(item.text, item.kind, item.prohibition) for item in guidance.instructions] == [
        ("Avoid soaking in a bath", "hygiene", True),
        ("showering is recommended instead.", "hygiene", False),
    ]
