"""Recall and precision of the leaflet importer against hand-made gold annotations.

Each leaflet in ``examples/guidance/`` has a gold file in ``examples/guidance/gold/`` (its
conventions are in that folder's README). The importer's instructions, warning signs and supplies
are matched to the gold items by :func:`match_items`, a pure function tested here on synthetic data
first, so the figures the end-to-end test prints are themselves proven.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from careplan_fhir.guidance.model import INSTRUCTION_KINDS, RecoveryGuidance, SourceSpan
from careplan_fhir.guidance.parse import parse_guidance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "guidance"
GOLD = EXAMPLES / "gold"
ARTIFACT = ROOT / "test-artifacts" / "guidance-recall.txt"
FORMATS = {".txt": "text", ".md": "markdown", ".html": "html", ".yaml": "yaml"}
FIELDS = ("instructions", "warning_signs", "supplies")
#: Which attributes of a matched pair are compared, per field.
ATTRIBUTES = {
    "instructions": ("kind", "prohibition"),
    "warning_signs": ("urgency",),
    "supplies": (),
}
MIN_RECALL = 0.9

# -- the scorer (pure) ----------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")
_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str, *, markup: bool = False) -> str:
    """Case-folded words separated by single spaces; with ``markup``, HTML tags count as spaces."""
    if markup:
        text = html.unescape(_TAG.sub(" ", text))
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalised texts ("fever" is not in "feverish")."""
    return bool(needle) and f" {needle} " in f" {haystack} "


@dataclass(frozen=True)
class Item:
    """A gold or extracted item: its text, the source text its span covers, its attributes."""

    text: str
    span_text: str = ""
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def match_items(gold: Sequence[Item], extracted: Sequence[Item]) -> dict[int, int]:
    """Pair gold items with extracted items: ``{gold index: extracted index}``.

    An extracted item can match a gold item when the gold text (normalised) occurs in the
    extracted text or in the source text its span covers. Each extracted item matches at most one
    gold item and each gold item at most one extracted item; the pairing is a maximum one
    (augmenting paths), trying text matches before span matches and tighter items before looser
    ones, so a whole paragraph caught as one item cannot be counted for every sentence in it.
    """
    norm_extracted = [(normalise(e.text), normalise(e.span_text)) for e in extracted]
    candidates: list[list[int]] = []
    for g in gold:
        needle = normalise(g.text)
        ranked = []
        for index, (text, span) in enumerate(norm_extracted):
            if _contains(text, needle):
                ranked.append((0, len(text), index))
            elif _contains(span, needle):
                ranked.append((1, len(span), index))
        candidates.append([index for *_, index in sorted(ranked)])

    owner: dict[int, int] = {}  # extracted index → gold index

    def augment(g: int, seen: set[int]) -> bool:
        for e in candidates[g]:
            if e in seen:
                continue
            seen.add(e)
            if e not in owner or augment(owner[e], seen):
                owner[e] = g
                return True
        return False

    for g in range(len(gold)):
        augment(g, set())
    return {g: e for e, g in owner.items()}


@dataclass
class FieldScore:
    """Counts for one field, over one leaflet or summed over several."""

    gold: int = 0
    extracted: int = 0
    matched: int = 0
    #: attribute → [agreeing pairs, compared pairs]
    agreement: dict[str, list[int]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.matched / self.gold if self.gold else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.extracted if self.extracted else 1.0

    def accuracy(self, attribute: str) -> float | None:
        agree, total = self.agreement.get(attribute, [0, 0])
        return agree / total if total else None

    def add(self, other: FieldScore) -> None:
        self.gold += other.gold
        self.extracted += other.extracted
        self.matched += other.matched
        for name, (agree, total) in other.agreement.items():
            counts = self.agreement.setdefault(name, [0, 0])
            counts[0] += agree
            counts[1] += total
        self.missed += other.missed
        self.spurious += other.spurious
        self.disagreements += other.disagreements


def score_field(
    gold: Sequence[Item], extracted: Sequence[Item], attributes: Sequence[str] = ()
) -> FieldScore:
    """Recall, precision and attribute agreement of ``extracted`` against ``gold``."""
    pairs = match_items(gold, extracted)
    result = FieldScore(gold=len(gold), extracted=len(extracted), matched=len(pairs))
    for name in attributes:
        counts = result.agreement.setdefault(name, [0, 0])
        for g, e in pairs.items():
            expected = gold[g].attributes.get(name)
            if expected is None:
                continue
            found = extracted[e].attributes.get(name)
            counts[1] += 1
            if found == expected:
                counts[0] += 1
            else:
                result.disagreements.append(
                    f"{name}: gold {expected!r}, found {found!r} — {gold[g].text}"
                )
    result.missed = [g.text for index, g in enumerate(gold) if index not in pairs]
    used = set(pairs.values())
    result.spurious = [e.text for index, e in enumerate(extracted) if index not in used]
    return result


# -- unit tests of the scorer ---------------------------------------------------------------------


def test_normalise_ignores_case_whitespace_and_punctuation() -> None:
    assert normalise("  No tub-baths,\n  UNTIL your team says so! ") == (
        "no tub baths until your team says so"
    )
    assert normalise("Surgeon’s office") == normalise("surgeon's office") == "surgeon s office"
    assert normalise("38.0 °C (100.4 °F)") == "38 0 c 100 4 f"
    assert normalise("<li>Walk <b>daily</b> &amp; rest</li>", markup=True) == "walk daily rest"
    assert normalise("<li>x</li>") == "li x li"


def test_gold_text_in_extracted_text_matches() -> None:
    gold = [Item("Do not drive"), Item("Shower after 24 hours")]
    extracted = [Item("You may SHOWER after 24   hours."), Item("Do not drive, or drink.")]
    assert match_items(gold, extracted) == {0: 1, 1: 0}


def test_match_is_on_whole_words() -> None:
    assert match_items([Item("fever")], [Item("feverish and tired")]) == {}
    assert match_items([Item("a fever")], [Item("You have a fever.")]) == {0: 0}


def test_span_covering_the_gold_text_matches() -> None:
    # The parser rephrased the item, but its span covers the sentence the gold text is from.
    extracted = [Item("Avoid tub baths (until cleared)", span_text="No tub baths until told.")]
    assert match_items([Item("no tub baths until told")], extracted) == {0: 0}
    # Neither the text nor the span contains it: no match.
    assert match_items([Item("no tub baths")], [Item("Avoid baths", span_text="Avoid baths")]) == {}


def test_extracted_item_matches_at_most_one_gold_item() -> None:
    paragraph = "Keep it dry. Do not swim. Walk daily."
    gold = [Item("Keep it dry"), Item("Do not swim"), Item("Walk daily")]
    pairs = match_items(gold, [Item(paragraph, span_text=paragraph)])
    assert len(pairs) == 1
    score = score_field(gold, [Item(paragraph, span_text=paragraph)])
    assert (score.matched, score.recall, score.precision) == (1, 1 / 3, 1.0)
    assert len(score.missed) == 2


def test_each_gold_item_is_matched_once() -> None:
    gold = [Item("Do not drive")]
    extracted = [Item("Do not drive."), Item("Do not drive while on opioids.")]
    score = score_field(gold, extracted)
    assert (score.matched, score.recall, score.precision) == (1, 1.0, 0.5)
    assert score.spurious == ["Do not drive while on opioids."]


def test_matching_is_maximum_not_greedy() -> None:
    # Gold 0 fits both extracted items; gold 1 fits only the first (the tighter one for gold 0).
    # A greedy pairing would give gold 0 the first item and leave gold 1 unmatched.
    gold = [Item("walk"), Item("walk daily")]
    extracted = [Item("Walk daily."), Item("Walk slowly, and walk more each day.")]
    assert match_items(gold, extracted) == {0: 1, 1: 0}


def test_text_matches_are_preferred_over_span_matches() -> None:
    gold = [Item("Do not swim")]
    extracted = [
        Item("Keep the site dry.", span_text="Keep the site dry. Do not swim."),
        Item("Do not swim."),
    ]
    assert match_items(gold, extracted) == {0: 1}


def test_attribute_accuracy_counts_matched_pairs_only() -> None:
    gold = [
        Item("No tub baths", attributes={"kind": "hygiene", "prohibition": True}),
        Item("Walk daily", attributes={"kind": "activity", "prohibition": False}),
        Item("Eat fibre", attributes={"kind": "bowel", "prohibition": False}),
    ]
    extracted = [
        Item("No tub baths.", attributes={"kind": "restriction", "prohibition": True}),
        Item("Walk daily.", attributes={"kind": "activity", "prohibition": False}),
        Item("Call us.", attributes={"kind": "follow-up", "prohibition": False}),
    ]
    score = score_field(gold, extracted, ("kind", "prohibition"))
    assert (score.recall, score.precision) == (2 / 3, 2 / 3)
    assert score.accuracy("kind") == 0.5
    assert score.accuracy("prohibition") == 1.0
    assert score.disagreements == ["kind: gold 'hygiene', found 'restriction' — No tub baths"]
    assert score_field([], [], ("kind",)).accuracy("kind") is None


def test_empty_fields_score_as_perfect_and_sums_are_micro_averages() -> None:
    empty = score_field([], [])
    assert (empty.recall, empty.precision) == (1.0, 1.0)
    total = FieldScore()
    total.add(score_field([Item("a"), Item("b")], [Item("a")]))
    total.add(score_field([Item("c")], [Item("c"), Item("d")]))
    assert (total.gold, total.extracted, total.matched) == (3, 3, 2)
    assert total.recall == total.precision == 2 / 3


# -- the gold annotations -------------------------------------------------------------------------


def leaflets() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in FORMATS and p.is_file())


def load_gold(leaflet: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((GOLD / f"{leaflet.stem}.yaml").read_text("utf-8"))
    return data


def gold_items(data: dict[str, Any], name: str) -> list[Item]:
    return [
        Item(entry["text"], attributes={k: v for k, v in entry.items() if k != "text"})
        for entry in data.get(name) or []
    ]


def test_every_leaflet_has_a_well_formed_gold_file() -> None:
    found = leaflets()
    assert len(found) >= 5
    assert {p.stem for p in found} == {p.stem for p in GOLD.glob("*.yaml")}
    for leaflet in found:
        data = load_gold(leaflet)
        assert set(data) <= {"title", "procedure", *FIELDS, "parameters"}, leaflet.name
        source = normalise(leaflet.read_text("utf-8"), markup=leaflet.suffix == ".html")
        for name in FIELDS:
            texts = [item.text for item in gold_items(data, name)]
            assert len(set(map(normalise, texts))) == len(texts), f"{leaflet.name}: duplicate"
            for text in texts:
                assert _contains(source, normalise(text)), f"{leaflet.name}: {text!r} not found"
        for entry in data["instructions"]:
            assert entry["kind"] in INSTRUCTION_KINDS, entry
            assert isinstance(entry["prohibition"], bool), entry
        for entry in data["warning_signs"]:
            assert entry["urgency"] in ("stat", "urgent"), entry
        assert data["procedure"], leaflet.name


# -- end to end: the importer against the gold ----------------------------------------------------


def extracted_items(guidance: RecoveryGuidance, name: str, markup: bool) -> list[Item]:
    def covered(span: SourceSpan) -> str:
        text = guidance.source_text[span.start : span.end]
        return html.unescape(_TAG.sub(" ", text)) if markup else text

    if name == "instructions":
        return [
            Item(i.text, covered(i.source), {"kind": i.kind, "prohibition": i.prohibition})
            for i in guidance.instructions
        ]
    if name == "warning_signs":
        return [
            Item(w.text, covered(w.source), {"urgency": w.urgency}) for w in guidance.warning_signs
        ]
    return [Item(s.text, covered(s.source)) for s in guidance.supplies]


def _fmt(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.2f}"


def render(rows: list[tuple[str, dict[str, FieldScore]]], notes: list[str]) -> str:
    header = (
        f"{'leaflet':<36} {'field':<14} {'gold':>4} {'found':>5} {'match':>5} "
        f"{'recall':>6} {'prec':>5} {'kind':>5} {'prohib':>6} {'urgency':>7}"
    )
    lines = [header, "-" * len(header)]
    for label, scores in rows:
        for name in FIELDS:
            s = scores[name]
            lines.append(
                f"{label:<36} {name:<14} {s.gold:>4} {s.extracted:>5} {s.matched:>5} "
                f"{s.recall:>6.2f} {s.precision:>5.2f} {_fmt(s.accuracy('kind')):>5} "
                f"{_fmt(s.accuracy('prohibition')):>6} {_fmt(s.accuracy('urgency')):>7}"
            )
            label = ""
        lines.append("")
    return "\n".join(lines + notes) + "\n"


def test_importer_recall_and_precision_against_gold() -> None:
    rows: list[tuple[str, dict[str, FieldScore]]] = []
    totals = {name: FieldScore() for name in FIELDS}
    # The authored YAML states its items outright; the leaflets are what the parser must read.
    parsed = {name: FieldScore() for name in FIELDS}
    notes: list[str] = []
    for leaflet in leaflets():
        fmt = FORMATS[leaflet.suffix]
        gold = load_gold(leaflet)
        guidance = parse_guidance(leaflet.read_text("utf-8"), fmt)
        scores = {}
        for name in FIELDS:
            scores[name] = score_field(
                gold_items(gold, name),
                extracted_items(guidance, name, markup=fmt == "html"),
                ATTRIBUTES[name],
            )
            totals[name].add(scores[name])
            if fmt != "yaml":
                parsed[name].add(scores[name])
        rows.append((leaflet.name, scores))
        found_parameters = {p.name for p in guidance.parameters}
        notes.append(f"== {leaflet.name}")
        notes.append(f"   title: {guidance.title!r} (gold {gold.get('title')!r})")
        notes.append(f"   procedure: {guidance.procedure!r} (gold {gold.get('procedure')!r})")
        notes.append(
            f"   parameters: {sorted(found_parameters)} (gold {sorted(gold['parameters'])})"
        )
        for name in FIELDS:
            for text in scores[name].missed:
                notes.append(f"   missed {name}: {text}")
            for text in scores[name].spurious:
                notes.append(f"   extra {name}: {text[:110]}")
            for text in scores[name].disagreements:
                notes.append(f"   {name} {text}")
    rows.append(("ALL (micro-average)", totals))
    rows.append(("ALL but authored YAML", parsed))
    report = render(rows, notes)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(report, "utf-8")
    print("\n" + report)
    for label, scores in rows[-2:]:
        for name in ("instructions", "warning_signs"):
            assert scores[name].recall >= MIN_RECALL, (
                f"{label}: {name} recall {scores[name].recall:.2f} < {MIN_RECALL} (see {ARTIFACT})"
            )
