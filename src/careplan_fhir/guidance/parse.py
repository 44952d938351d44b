"""Leaflet importer: recovery guidance as plain text, Markdown or HTML → :class:`RecoveryGuidance`.

:func:`parse_guidance` is the entry point. The source is split into headings, bullets and
paragraphs (:mod:`.blocks`), each heading or lead-in gives the items under it a role (care,
warning signs, supplies, description), and each sentence is read (:mod:`.classify`,
:mod:`.timing`) into instructions (kind, prohibition, timing, clinician parameter), warning signs
(urgency, measurable condition), supplies, and the clinician parameters the leaflet defers to
("ask your provider at what temperature you should call them"). Goals are implied by the kinds
of instruction found. Every item keeps the span of the source text it came from.

Ids are deterministic (``inst-1``, ``warn-1``, ``supply-1``, ``goal-pain``): the same text
always gives the same guidance. Pure: no clock, no IO. Authored YAML is delegated to
:func:`careplan_fhir.guidance.authored.read_authored`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .blocks import Block, html_title, span_of, split_blocks
from .classify import (
    FEVER_PARAMETER,
    Role,
    as_directed,
    calls_for_help,
    classify_kind,
    condition_of,
    context_role,
    defers_fever_threshold,
    is_descriptive,
    is_follow_up_statement,
    is_instruction,
    is_prohibition,
    split_clauses,
    split_sentences,
    supply_items,
    supply_list_in_sentence,
    topic_of,
    urgency_of,
    warning_in_sentence,
    warnings_in_sentence,
)
from .model import (
    GoalSpec,
    Instruction,
    Parameter,
    RecoveryGuidance,
    Section,
    SourceSpan,
    Supply,
    Timing,
    WarningSign,
)
from .timing import parse_timing

SourceFormat = Literal["text", "markdown", "html", "yaml"]
FORMATS: tuple[SourceFormat, ...] = ("text", "markdown", "html", "yaml")

# --------------------------------------------------------------------------------------------
# Format detection

_EXTENSIONS: dict[str, SourceFormat] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".yaml": "yaml",
    ".yml": "yaml",
}
#: "Any other questions or worries": an invitation to call, not a sign that something is wrong.
_NOT_A_SIGN = re.compile(
    r"^(?:(?:for\s+|with\s+)?any\s+(?:other\s+|more\s+)?)?"
    r"(?:questions?|concerns?|worr(?:y|ies))\b",
    re.IGNORECASE,
)
_HTML_START = re.compile(r"^\s*(?:<!doctype\s+html|<html\b|<\?xml)", re.IGNORECASE)
_HTML_TAG = re.compile(r"<(?:p|h[1-6]|ul|ol|li|div|br|body|section|article|table)\b[^>]*>", re.I)
_YAML_KEY = re.compile(
    r"^(?:title|procedure|instructions|warning_signs|supplies|goals|parameters|sections|"
    r"source_format|source_text|version|id)\s*:",
    re.MULTILINE,
)
_MARKDOWN = re.compile(
    r"^[ ]{0,3}#{1,6}[ \t]+\S|^\S.*\n[ ]{0,3}(?:=+|-+)[ \t]*$|\[[^\]\n]+\]\([^)\n]+\)"
    r"|(?:\*\*|__)\S[^\n]*?\S(?:\*\*|__)|^[ ]{0,3}(?:```|~~~)",
    re.MULTILINE,
)


def detect_format(text: str, filename: str | None = None) -> str:
    """``"text"``, ``"markdown"``, ``"html"`` or ``"yaml"``: by file extension when known,
    otherwise by content (HTML tags, authored-guidance YAML keys, Markdown syntax)."""
    if filename:
        lowered = filename.lower()
        for extension, fmt in _EXTENSIONS.items():
            if lowered.endswith(extension):
                return fmt
    if _HTML_START.match(text) or len(_HTML_TAG.findall(text)) >= 2:
        return "html"
    keys = {match.group(0).split(":")[0].strip() for match in _YAML_KEY.finditer(text)}
    if len(keys) >= 2 and keys & {"instructions", "warning_signs", "supplies"}:
        return "yaml"
    if _MARKDOWN.search(text):
        return "markdown"
    return "text"


# --------------------------------------------------------------------------------------------
# Title and procedure

_PROCEDURE_WORD = (
    r"[a-z]+(?:plasty|ectomy|otomy|ostomy|oscopy|scopy|pexy|desis|graphy|rrhaphy|lysis)"
)
_PROCEDURE_NOUNS = (
    r"replacement|fusion|repair|placement|biopsy|transplant|ablation|bypass|graft|"
    r"reconstruction|removal|release|implant"
)
_PROCEDURE_PHRASE = re.compile(
    rf"\b(?P<name>(?:[a-z]+\s+){{0,2}}{_PROCEDURE_WORD}"
    r"|(?:[a-z]+\s+){0,2}[a-z]+\s+(?:replacement|fusion|repair|placement|biopsy|transplant|"
    r"ablation|bypass|graft|reconstruction|removal|release|surgery|implant))\b",
    re.IGNORECASE,
)
_AFTER_YOUR = re.compile(
    r"\b(?:after|recovery\s+from|recovering\s+from|before)\s+(?:your|a|an|the)\s+"
    r"(?P<name>[a-z][a-z\- ]{2,40}?)(?:\s+(?:surgery|procedure|operation))?\b(?=[.,;:!?)]|\s+(?:is|"
    r"and|you|at|in|on|,|may|will|can)\b|$)",
    re.IGNORECASE,
)
_DONE_NOUNS = {
    "placed": "placement",
    "put in": "placement",
    "inserted": "insertion",
    "removed": "removal",
    "repaired": "repair",
    "replaced": "replacement",
    "done": "",
}
_HAD_DONE = re.compile(
    r"\b(?:you\s+(?:have\s+)?had|you\s+are\s+having)\s+(?:a|an|your)\s+"
    r"(?P<name>[a-z][a-z\- ]{2,30}?)\s+(?P<done>placed|put\s+in|inserted|removed|repaired|"
    r"replaced|done)\b",
    re.IGNORECASE,
)
_GENERIC = frozenset(
    {"surgery", "procedure", "operation", "treatment", "discharge", "stay", "visit", "hospital"}
)
_LEAD_WORDS = re.compile(
    r"^(?:(?:surgical|your|a|an|the|after|recovery|recovering|from|care|home|discharge|"
    r"instructions|for|of|surgery|procedure|having|had|going|you)\s+)+",
    re.IGNORECASE,
)


def _clean_procedure(name: str) -> str | None:
    words = _LEAD_WORDS.sub("", name.strip().lower()).split()
    while (
        len(words) > 1
        and words[-1] in _GENERIC
        and re.fullmatch(rf"{_PROCEDURE_WORD}|{_PROCEDURE_NOUNS}", words[-2])
    ):
        words.pop()
    cleaned = " ".join(words)
    if not cleaned or cleaned in _GENERIC:
        return None
    return cleaned


def find_procedure(title: str, text: str) -> str | None:
    """The procedure the guidance is about ("after your vertebroplasty" → ``vertebroplasty``)."""
    for candidate in (title,):
        suffixed = re.search(rf"\b{_PROCEDURE_WORD}\b", candidate, re.IGNORECASE)
        if suffixed is not None:
            return suffixed.group(0).lower()
        phrase = _PROCEDURE_PHRASE.search(candidate)
        if phrase is not None:
            cleaned = _clean_procedure(phrase["name"])
            if cleaned:
                return cleaned
    counts: dict[str, int] = {}
    for match in re.finditer(rf"\b{_PROCEDURE_WORD}\b", text, re.IGNORECASE):
        word = match.group(0).lower()
        counts[word] = counts.get(word, 0) + 1
    if counts:
        return max(counts, key=lambda word: (counts[word], -text.lower().find(word)))
    had = _HAD_DONE.search(text)
    if had is not None:
        name = _clean_procedure(had["name"])
        if name:
            return f"{name} {_DONE_NOUNS[had['done'].lower()]}".strip()
    for match in _AFTER_YOUR.finditer(text):
        cleaned = _clean_procedure(match["name"])
        if cleaned and len(cleaned.split()) <= 3:
            return cleaned
    return None


# --------------------------------------------------------------------------------------------
# Goals implied by instruction kinds

_GoalRule = tuple[str, str, frozenset[str], re.Pattern[str] | None]
GOAL_RULES: tuple[_GoalRule, ...] = (
    ("goal-pain", "Pain is controlled", frozenset({"medication"}), None),
    (
        "goal-wound",
        "Incision heals without infection",
        frozenset({"wound-care", "hygiene"}),
        re.compile(r"\bincisions?\b|\bwounds?\b", re.IGNORECASE),
    ),
    (
        "goal-bowel",
        "Regular bowel movements",
        frozenset({"bowel"}),
        re.compile(r"\bconstipat\w*|\bbowels?\b|\blaxatives?\b|\bstools?\b|\bfib(?:er|re)\b", re.I),
    ),
    (
        "goal-activity",
        "Gradual return to usual activity",
        frozenset({"activity", "exercise"}),
        None,
    ),
    ("goal-diet", "Eating and drinking enough to heal", frozenset({"diet"}), None),
    ("goal-monitoring", "Problems are noticed early", frozenset({"monitoring"}), None),
    ("goal-follow-up", "Follow-up visits are kept", frozenset({"follow-up"}), None),
)


def derive_goals(instructions: list[Instruction]) -> list[GoalSpec]:
    """One goal per outcome the instructions serve, listing the instruction ids that serve it."""
    goals: list[GoalSpec] = []
    for goal_id, text, kinds, cue in GOAL_RULES:
        ids = [
            item.id
            for item in instructions
            if item.kind in kinds or (cue is not None and cue.search(item.text))
        ]
        if ids:
            goals.append(GoalSpec(id=goal_id, text=text, instruction_ids=ids))
    return goals


# --------------------------------------------------------------------------------------------
# Reading blocks


@dataclass
class _Reader:
    """Accumulates what the blocks say, in document order."""

    source: str
    fever_deferred: bool
    instructions: list[Instruction] = field(default_factory=list)
    warning_signs: list[WarningSign] = field(default_factory=list)
    supplies: list[Supply] = field(default_factory=list)
    parameters: list[Parameter] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    section: str | None = None
    section_role: Role = "care"
    section_level: int = 0
    lead_in: str | None = None
    lead_in_role: Role | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _span(self, block: Block, start: int, end: int) -> SourceSpan:
        return span_of(self.source, block.offsets, start, end)

    def _parameter_named(self, name: str) -> Parameter | None:
        return next((item for item in self.parameters if item.name == name), None)

    def _unique_name(self, base: str) -> str:
        name, counter = base, 2
        while self._parameter_named(name) is not None:
            name = f"{base}_{counter}"
            counter += 1
        return name

    def add_fever_parameter(self, span: SourceSpan) -> None:
        if self._parameter_named(FEVER_PARAMETER) is None:
            self.parameters.append(
                Parameter(
                    name=FEVER_PARAMETER,
                    type="Quantity",
                    description=(
                        "Body temperature at which the patient should call the care team; "
                        "the leaflet leaves it to the clinician."
                    ),
                    required=True,
                    source=span,
                    units=("Cel", "[degF]"),
                )
            )

    # -- items -------------------------------------------------------------------------------

    def add_instruction(self, block: Block, start: int, end: int, context: str) -> None:
        text = block.text[start:end].strip()
        prohibition = is_prohibition(text)
        timing = parse_timing(text)
        kind = classify_kind(
            text,
            section=self.section,
            context=context,
            prohibition=prohibition,
        )
        span = self._span(block, start, end)
        parameter = self._parameter_for(text, kind, timing, span)
        self.instructions.append(
            Instruction(
                id=f"inst-{len(self.instructions) + 1}",
                kind=kind,
                text=text,
                source=span,
                section=self.section,
                prohibition=prohibition,
                timing=timing,
                parameter=parameter,
            )
        )

    def _parameter_for(
        self, text: str, kind: str, timing: Timing | None, span: SourceSpan
    ) -> str | None:
        """An optional clinician parameter where the leaflet gives a value "or as directed"."""
        if timing is None:
            return None
        topic = topic_of(text, kind)
        if as_directed(text) and (timing.offset is not None or timing.duration is not None):
            role = "after" if timing.offset is not None else "duration"
            default = timing.offset if timing.offset is not None else timing.duration
            name = self._unique_name(f"{topic}_{role}")
            self.parameters.append(
                Parameter(
                    name=name,
                    type="Quantity",
                    description=(
                        f"{'When' if role == 'after' else 'How long'} "
                        f"({topic.replace('_', ' ')}): the leaflet says {timing.text!r} "
                        "unless the clinician directs otherwise."
                    ),
                    required=False,
                    source=span,
                    units=("h", "d", "wk", "mo"),
                    default=default,
                )
            )
            return name
        return None

    def add_warning(
        self, block: Block, start: int, end: int, text: str, context: str, whole: str
    ) -> None:
        if _NOT_A_SIGN.match(text.strip()):
            return
        fever_parameter = FEVER_PARAMETER if self.fever_deferred else None
        condition = condition_of(text, fever_parameter=fever_parameter)
        self.warning_signs.append(
            WarningSign(
                id=f"warn-{len(self.warning_signs) + 1}",
                text=text,
                urgency=urgency_of(whole, context),
                source=self._span(block, start, end),
                condition=condition,
            )
        )

    def add_supply(self, block: Block, start: int, end: int) -> None:
        text = block.text[start:end].strip().rstrip(".;,").strip()
        if not text:
            return
        self.supplies.append(
            Supply(
                id=f"supply-{len(self.supplies) + 1}",
                text=text[0].upper() + text[1:],
                source=self._span(block, start, end),
            )
        )

    # -- blocks ------------------------------------------------------------------------------

    def heading(self, block: Block, is_title: bool) -> None:
        title = block.text.strip().rstrip(":").strip()
        role = context_role(block.text)
        level = block.level
        if role is None:
            inherits = (
                level > 0
                and self.section_level > 0
                and level > self.section_level
                and self.section_role in ("warning", "supplies")
            )
            role = self.section_role if inherits else "care"
        if not is_title:
            self.sections.append(Section(title=title, source=block.span(self.source)))
        self.section = None if is_title else title
        self.section_role = role
        self.section_level = level
        self.lead_in = None
        self.lead_in_role = None

    def paragraph(self, block: Block) -> None:
        sentences = split_sentences(block.text)
        lead_in: tuple[int, int] | None = None
        if sentences and block.text.rstrip().endswith(":"):
            lead_in = sentences[-1]
        for start, end in sentences:
            if (start, end) == lead_in:
                continue
            self.sentence(block, start, end, role=self.section_role, bullet=False)
        if lead_in is not None:
            text = block.text[lead_in[0] : lead_in[1]]
            self.lead_in = text
            self.lead_in_role = context_role(text) or (
                "care" if self.section_role == "descriptive" and "include" in text else None
            )
        else:
            self.lead_in = None
            self.lead_in_role = None

    def bullet(self, block: Block) -> None:
        role = self.lead_in_role or self.section_role
        context = f"{self.section or ''} {self.lead_in or ''}"
        if role == "supplies":
            self.add_supply(block, 0, len(block.text))
            return
        if role == "warning":
            self.warning_bullet(block, context)
            return
        for start, end in split_sentences(block.text):
            self.sentence(block, start, end, role=role, bullet=True)

    def warning_bullet(self, block: Block, context: str) -> None:
        kept: list[tuple[int, int]] = []
        for start, end in split_sentences(block.text):
            sentence = block.text[start:end]
            if defers_fever_threshold(sentence):
                self.add_fever_parameter(self._span(block, start, end))
                continue
            kept.append((start, end))
        if not kept:
            return
        start, end = kept[0][0], kept[-1][1]
        text = " ".join(block.text[s:e].strip() for s, e in kept).rstrip(".").strip()
        sign = warning_in_sentence(text) or text
        self.add_warning(block, 0, len(block.text), sign, context, block.text)
        _ = (start, end)

    def sentence(self, block: Block, start: int, end: int, *, role: Role, bullet: bool) -> None:
        text = block.text[start:end]
        context = f"{self.lead_in or ''} {block.text[:start]} {block.text[end:]}"
        warn_context = f"{self.section or ''} {self.lead_in or ''}"
        if defers_fever_threshold(text):
            parts = [(start + m.start(), start + m.end()) for m in re.finditer(r"[^;]+", text)]
            for part_start, part_end in parts:
                part = block.text[part_start:part_end]
                if not part.strip():
                    continue
                if defers_fever_threshold(part) or len(parts) == 1:
                    self.add_fever_parameter(self._span(block, part_start, part_end))
                else:
                    self.sentence(block, part_start, part_end, role=role, bullet=bullet)
            return
        signs = warnings_in_sentence(text)
        if signs:
            if len(signs) == 1:
                # One sign: its provenance is the whole sentence ("Call us if …"), which is
                # what a reviewer reads; several signs in one sentence each keep their piece.
                signs = [(signs[0][0], 0, end - start)]
            for sign, sign_start, sign_end in signs:
                self.add_warning(
                    block, start + sign_start, start + sign_end, sign, warn_context, text
                )
            return
        if role == "supplies":
            self.supply_sentence(block, start, end)
            return
        listed = supply_list_in_sentence(text)
        if listed is not None:
            offset = start + listed[0]
            for item_start, item_end in supply_items(block.text[offset : start + listed[1]]):
                self.add_supply(block, offset + item_start, offset + item_end)
            return
        if role != "warning" and is_follow_up_statement(text):
            self.add_instruction(block, start, end, context)
            return
        if role == "warning":
            if calls_for_help(text):
                return
            if is_instruction(text, bullet=bullet, role="care"):
                self.add_instruction(block, start, end, context)
                return
            words = text.split()
            if len(words) <= 14 and not is_descriptive(text):
                self.add_warning(block, start, end, text.strip().rstrip("."), warn_context, text)
            return
        for clause_start, clause_end in split_clauses(block.text, start, end):
            clause = block.text[clause_start:clause_end]
            if is_instruction(clause, bullet=bullet, role=role):
                self.add_instruction(block, clause_start, clause_end, context)

    def supply_sentence(self, block: Block, start: int, end: int) -> None:
        text = block.text[start:end]
        colon = text.find(":")
        if colon != -1 and text[colon + 1 :].strip():
            offset = start + colon + 1
            for item_start, item_end in supply_items(block.text[offset:end]):
                self.add_supply(block, offset + item_start, offset + item_end)
            return
        if is_instruction(text):
            self.add_instruction(block, start, end, "")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        stripped = " ".join(line.split())
        if stripped:
            return stripped[:120]
    return "Recovery guidance"


def _title_of(blocks: list[Block], text: str, fmt: SourceFormat) -> tuple[str, bool]:
    """The title and whether it is the first block (a heading that is not a section)."""
    if blocks and blocks[0].kind == "heading":
        return blocks[0].text.strip().rstrip(":").strip(), True
    if fmt == "html":
        found = html_title(text)
        if found:
            return found, False
    if blocks:
        first = split_sentences(blocks[0].text)
        if first:
            start, end = first[0]
            return blocks[0].text[start:end].strip()[:120], False
    return _first_line(text), False


def parse_guidance(
    text: str, fmt: str | None = None, *, title: str | None = None
) -> RecoveryGuidance:
    """Read a recovery leaflet into :class:`RecoveryGuidance`.

    ``fmt`` is ``"text"``, ``"markdown"``, ``"html"`` or ``"yaml"`` (authored guidance), or None
    to detect it. ``title`` overrides the title found in the text. Every instruction, warning
    sign and supply carries the span of ``text`` it came from.
    """
    chosen = fmt if fmt is not None else detect_format(text)
    if chosen not in FORMATS:
        raise ValueError(f"unknown guidance format {chosen!r}; expected one of {FORMATS}")
    if chosen == "yaml":
        from careplan_fhir.guidance.authored import read_authored

        return read_authored(text)
    source_format: Literal["text", "markdown", "html"] = (
        "html" if chosen == "html" else "markdown" if chosen == "markdown" else "text"
    )
    blocks = split_blocks(text, source_format)
    found_title, title_is_first_block = _title_of(blocks, text, source_format)
    reader = _Reader(
        source=text,
        fever_deferred=any(defers_fever_threshold(block.text) for block in blocks),
    )
    for index, block in enumerate(blocks):
        if block.kind == "heading":
            reader.heading(block, is_title=index == 0 and title_is_first_block)
        elif block.kind == "bullet":
            reader.bullet(block)
        else:
            reader.paragraph(block)
    final_title = title if title is not None else found_title
    if (
        title is None
        and not title_is_first_block
        and not (source_format == "html" and html_title(text))
    ):
        # No heading names the leaflet: its first sentence is not a title; the procedure is.
        procedure = find_procedure(found_title, text)
        if procedure:
            final_title = f"Recovery at home after {procedure}"
    return RecoveryGuidance(
        title=final_title,
        source_text=text,
        source_format=source_format,
        procedure=find_procedure(final_title, text),
        sections=reader.sections,
        instructions=reader.instructions,
        warning_signs=reader.warning_signs,
        supplies=reader.supplies,
        parameters=reader.parameters,
        goals=derive_goals(reader.instructions),
    )


__all__ = [
    "FORMATS",
    "GOAL_RULES",
    "derive_goals",
    "detect_format",
    "find_procedure",
    "parse_guidance",
]
