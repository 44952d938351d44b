"""Reading grade of patient-facing text (Flesch-Kincaid grade level, via ``textstat``).

Patient education is commonly asked to read at grade 8 or below; the review table and the FHIR
extension ``reading-grade`` carry the grade of every text a patient sees, and
:func:`hard_to_read` lists those above :data:`GRADE_LIMIT`.

Flesch-Kincaid is a formula over words per sentence and syllables per word. On a label of one
or two words ("Thermometer") it says nothing useful (a single long word scores grade 30), so texts
shorter than :data:`MIN_WORDS` words get no grade (``None``) and are never flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

import textstat

from .model import RecoveryGuidance

#: Texts above this grade are flagged for review.
GRADE_LIMIT = 8
#: Texts with fewer words are labels, not prose: they get no grade.
MIN_WORDS = 3

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


@dataclass(frozen=True)
class GradedText:
    """One patient-facing text, where it comes from, and its reading grade."""

    item_id: str
    kind: str
    text: str
    grade: Decimal | None

    @property
    def too_hard(self) -> bool:
        return self.grade is not None and self.grade > GRADE_LIMIT


def reading_grade(text: str) -> Decimal | None:
    """Flesch-Kincaid grade of ``text``, to one decimal and never below 0; None for labels."""
    if len(_WORD.findall(text)) < MIN_WORDS:
        return None
    grade = Decimal(str(textstat.flesch_kincaid_grade(text))).quantize(Decimal("0.1"))
    return max(grade, Decimal("0.0"))


def grade_guidance(guidance: RecoveryGuidance) -> list[GradedText]:
    """The grade of every patient-facing text: instructions, warning signs, supplies, goals."""
    graded = [
        GradedText(i.id, i.kind, i.text, reading_grade(i.text)) for i in guidance.instructions
    ]
    graded += [
        GradedText(w.id, "warning-sign", w.text, reading_grade(w.text))
        for w in guidance.warning_signs
    ]
    graded += [
        GradedText(s.id, "supplies", s.text, reading_grade(s.text)) for s in guidance.supplies
    ]
    graded += [GradedText(g.id, "goal", g.text, reading_grade(g.text)) for g in guidance.goals]
    return graded


def hard_to_read(guidance: RecoveryGuidance, limit: int = GRADE_LIMIT) -> list[GradedText]:
    """The patient-facing texts whose grade is above ``limit`` (grade 8 by default)."""
    return [g for g in grade_guidance(guidance) if g.grade is not None and g.grade > limit]
