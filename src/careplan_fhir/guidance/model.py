"""RecoveryGuidance: what a leaflet says, independent of its format and of FHIR.

Parsers (plain text, Markdown, HTML, authored YAML) produce it; the FHIR builder turns it into a
PlanDefinition, a Questionnaire and a DocumentReference. Every extracted item keeps the span of
the source text it came from, so a reviewer can see why it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

#: Codes of the project's CodeSystem ``instruction-kind`` (profiles/CodeSystem-instruction-kind).
InstructionKind = Literal[
    "medication",
    "activity",
    "exercise",
    "wound-care",
    "hygiene",
    "diet",
    "bowel",
    "monitoring",
    "supplies",
    "follow-up",
    "restriction",
    "education",
    "other",
    "warning-sign",
]
INSTRUCTION_KINDS: tuple[str, ...] = InstructionKind.__args__  # type: ignore[attr-defined]

#: FHIR request-priority codes used for warning signs: call 911 → stat, call now → urgent.
Urgency = Literal["stat", "urgent", "routine"]


@dataclass(frozen=True)
class SourceSpan:
    """Character offsets ``[start, end)`` into the source text, and its 1-based line."""

    start: int
    end: int
    line: int


@dataclass(frozen=True)
class Quantity:
    """A value with a UCUM unit (``Cel``, ``[degF]``, ``h``, ``d``, ``wk``, ``mo``)."""

    value: Decimal
    unit: str


@dataclass
class Timing:
    """When an instruction applies, as read from its wording."""

    text: str
    #: Starts this long after discharge ("after 24 hours", "1 to 2 days after").
    offset: Quantity | None = None
    offset_max: Quantity | None = None
    #: Lasts this long ("for 2 weeks", "in the first week").
    duration: Quantity | None = None
    #: Repeats ``frequency``(–``frequency_max``) times per ``period`` ``period_unit``.
    frequency: int | None = None
    frequency_max: int | None = None
    period: Decimal | None = None
    period_unit: str | None = None
    #: What lifts a prohibition when it is not a duration ("until your team says so").
    until: str | None = None
    #: Upper bound of ``period`` for ranges such as "every 4 to 6 hours".
    period_max: Decimal | None = None


@dataclass
class Instruction:
    """One thing the patient should (or must not) do."""

    id: str
    kind: InstructionKind
    text: str
    source: SourceSpan
    section: str | None = None
    prohibition: bool = False
    timing: Timing | None = None
    #: Name of a clinician parameter the instruction depends on, if any.
    parameter: str | None = None


@dataclass
class Condition:
    """A measurable warning sign: ``measure comparator threshold`` (threshold or parameter)."""

    measure: Literal["body-temperature", "pain-score"]
    comparator: Literal[">", ">="]
    threshold: Quantity | None = None
    parameter: str | None = None


@dataclass
class WarningSign:
    """A sign that the patient must get help, and how urgently."""

    id: str
    text: str
    urgency: Urgency
    source: SourceSpan
    condition: Condition | None = None


@dataclass
class Supply:
    """Something to have at home."""

    id: str
    text: str
    source: SourceSpan


@dataclass
class Parameter:
    """A value the clinician sets when applying the plan (e.g. the fever threshold)."""

    name: str
    type: Literal["Quantity", "string", "dateTime", "integer"]
    description: str
    required: bool
    source: SourceSpan | None = None
    units: tuple[str, ...] = ()
    default: Quantity | None = None


@dataclass
class GoalSpec:
    """An outcome the instructions serve."""

    id: str
    text: str
    instruction_ids: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    source: SourceSpan


@dataclass
class RecoveryGuidance:
    """Everything the importer found in one guidance document."""

    title: str
    source_text: str
    source_format: Literal["text", "markdown", "html", "yaml"]
    procedure: str | None = None
    sections: list[Section] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)
    warning_signs: list[WarningSign] = field(default_factory=list)
    supplies: list[Supply] = field(default_factory=list)
    parameters: list[Parameter] = field(default_factory=list)
    goals: list[GoalSpec] = field(default_factory=list)
