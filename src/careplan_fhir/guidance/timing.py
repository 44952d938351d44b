"""Timing phrases in patient wording → :class:`~careplan_fhir.guidance.model.Timing`.

Reads the phrases recovery leaflets use ("after 24 hours", "for 2 weeks", "3 to 4 times a day",
"in the first week", "1 to 2 days after", "every 4 to 6 hours", "twice a day", "until your team
says so") into the parts of a FHIR ``Timing`` (https://hl7.org/fhir/R4/datatypes.html#Timing):
an offset from discharge, a duration, a frequency per period, or what lifts a prohibition.
Units are UCUM units of time (``min``, ``h``, ``d``, ``wk``, ``mo``). Numbers come only from the
text: a vague phrase ("a few times a day") gives no number. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from .model import Quantity, Timing

#: Number words leaflets spell out.
NUMBER_WORDS: dict[str, int] = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "a": 1,
    "an": 1,
    "a single": 1,
}

#: Time words → UCUM units of time (the FHIR value set ``units-of-time``).
UNIT_WORDS: dict[str, str] = {
    "minute": "min",
    "minutes": "min",
    "min": "min",
    "mins": "min",
    "hour": "h",
    "hours": "h",
    "hr": "h",
    "hrs": "h",
    "day": "d",
    "days": "d",
    "week": "wk",
    "weeks": "wk",
    "wk": "wk",
    "wks": "wk",
    "month": "mo",
    "months": "mo",
}

#: Adverbs of frequency → (times, per period, unit).
_ADVERB_FREQUENCIES: dict[str, tuple[int, int, str]] = {
    "once": (1, 1, "d"),
    "twice": (2, 1, "d"),
    "thrice": (3, 1, "d"),
}

_NUM = r"(?:\d+(?:\.\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_NUM_OR_A = rf"(?:{_NUM}|a single|an|a)"
_UNIT = r"(?:minutes?|mins?|hours?|hrs?|days?|weeks?|wks?|months?)"
_RANGE_SEP = r"\s*(?:to|-|–|—|or)\s*"
_QTY = rf"(?P<n1>{_NUM_OR_A})(?:{_RANGE_SEP}(?P<n2>{_NUM}))?\s*(?P<unit>{_UNIT})\b"

_OFFSET_AFTER = re.compile(rf"\b{_QTY}\s+(?:after|following|from)\b", re.IGNORECASE)
_OFFSET_PREFIX = re.compile(
    rf"\b(?:after|wait(?:\s+at\s+least)?|starting|beginning|once|in|about|at least)\s+"
    rf"(?:at\s+least\s+|about\s+|around\s+)?{_QTY}(?!\s+(?:after|following|from)\b)",
    re.IGNORECASE,
)
_DURATION = re.compile(
    rf"\b(?:for|during|within|in|over|until)\s+(?:at\s+least\s+|about\s+|around\s+|up\s+to\s+)?"
    rf"(?:the\s+)?(?:first|next|following|coming)?\s*{_QTY}",
    re.IGNORECASE,
)
_DURATION_FIRST_UNIT = re.compile(
    r"\b(?:for|during|within|in|over)\s+(?:the\s+)?(?:first|next|following|coming)\s+"
    r"(?P<unit>minute|hour|day|week|month)\b",
    re.IGNORECASE,
)
_TIMES_PER = re.compile(
    rf"\b(?P<n1>{_NUM})(?:{_RANGE_SEP}(?P<n2>{_NUM}))?\s+times?\s+"
    rf"(?:a|an|per|each|every)\s+(?P<unit>minute|hour|day|week|month)\b",
    re.IGNORECASE,
)
_ADVERB_PER = re.compile(
    r"\b(?P<adverb>once|twice|thrice)\s+(?:a|an|per|each|every)\s+"
    r"(?P<unit>minute|hour|day|week|month)\b",
    re.IGNORECASE,
)
_ADVERB_DAILY = re.compile(r"\b(?P<adverb>once|twice|thrice)\s+daily\b", re.IGNORECASE)
_EVERY = re.compile(
    rf"\bevery\s+(?:(?P<n1>{_NUM})(?:{_RANGE_SEP}(?P<n2>{_NUM}))?\s+)?"
    rf"(?P<unit>minutes?|hours?|days?|weeks?|months?)\b",
    re.IGNORECASE,
)
_DAILY = re.compile(r"\b(?:daily|every\s+day|each\s+day)\b", re.IGNORECASE)
_HOURLY = re.compile(r"\b(?P<word>hourly|weekly)\b", re.IGNORECASE)
_UNTIL_BEFORE = re.compile(r"\b(?:until|for|during|within)\s+(?:at\s+least\s+|about\s+)?$", re.I)
_UNTIL = re.compile(r"\buntil\s+(?P<what>[^.;:!?]+)", re.IGNORECASE)
_UNTIL_CLAUSE_END = re.compile(r",\s*(?:and|but|or|then)\b|,\s*(?=[a-z]+ing\b)", re.IGNORECASE)


@dataclass(frozen=True)
class _Found:
    start: int
    end: int


def parse_number(word: str) -> Decimal | None:
    """A number written as digits or as a word ("one" … "twelve", "a"/"an" meaning one)."""
    lowered = word.strip().lower()
    if lowered in NUMBER_WORDS:
        return Decimal(NUMBER_WORDS[lowered])
    try:
        return Decimal(lowered)
    except ArithmeticError:
        return None


def parse_unit(word: str) -> str | None:
    """The UCUM unit of time for a time word ("hours" → ``h``), or None."""
    return UNIT_WORDS.get(word.strip().lower())


def _quantity(number: str | None, unit_word: str) -> Quantity | None:
    if number is None:
        return None
    value = parse_number(number)
    unit = parse_unit(unit_word)
    if value is None or unit is None:
        return None
    return Quantity(value=value, unit=unit)


def _frequency_count(word: str | None) -> int | None:
    if word is None:
        return None
    value = parse_number(word)
    if value is None or value != value.to_integral_value():
        return None
    return int(value)


def _overlaps(found: list[_Found], start: int, end: int) -> bool:
    return any(start < item.end and item.start < end for item in found)


def _clean_until(what: str) -> str:
    clause = _UNTIL_CLAUSE_END.split(what, maxsplit=1)[0]
    return clause.strip().rstrip(",").strip()


def parse_timing(sentence: str) -> Timing | None:
    """Read the timing phrases of one instruction sentence; None when it has none.

    Ranges keep both ends ("1 to 2 days after" → offset 1 d, offset_max 2 d); frequencies keep
    their period ("every 4 to 6 hours" → once per 4–6 h). ``Timing.text`` joins the phrases read.
    """
    timing = Timing(text="")
    found: list[_Found] = []

    for match in _TIMES_PER.finditer(sentence):
        timing.frequency = _frequency_count(match["n1"])
        timing.frequency_max = _frequency_count(match["n2"])
        timing.period = Decimal(1)
        timing.period_unit = parse_unit(match["unit"])
        found.append(_Found(match.start(), match.end()))
        break
    if timing.frequency is None:
        for pattern in (_ADVERB_PER, _ADVERB_DAILY):
            adverb = pattern.search(sentence)
            if adverb is not None:
                times, period, unit = _ADVERB_FREQUENCIES[adverb["adverb"].lower()]
                timing.frequency = times
                timing.period = Decimal(period)
                named_unit = adverb.groupdict().get("unit")
                timing.period_unit = parse_unit(named_unit) if named_unit else unit
                found.append(_Found(adverb.start(), adverb.end()))
                break
    if timing.frequency is None:
        every = _EVERY.search(sentence)
        if every is not None and not _overlaps(found, every.start(), every.end()):
            timing.frequency = 1
            timing.period = parse_number(every["n1"]) if every["n1"] else Decimal(1)
            timing.period_max = parse_number(every["n2"]) if every["n2"] else None
            timing.period_unit = parse_unit(every["unit"])
            found.append(_Found(every.start(), every.end()))
    if timing.frequency is None:
        daily = _DAILY.search(sentence)
        if daily is not None:
            timing.frequency, timing.period, timing.period_unit = 1, Decimal(1), "d"
            found.append(_Found(daily.start(), daily.end()))
        else:
            hourly = _HOURLY.search(sentence)
            if hourly is not None:
                timing.frequency, timing.period = 1, Decimal(1)
                timing.period_unit = "h" if hourly["word"].lower() == "hourly" else "wk"
                found.append(_Found(hourly.start(), hourly.end()))

    for match in _OFFSET_AFTER.finditer(sentence):
        if _overlaps(found, match.start(), match.end()) or _UNTIL_BEFORE.search(
            sentence[: match.start()]
        ):
            continue
        timing.offset = _quantity(match["n1"], match["unit"])
        timing.offset_max = _quantity(match["n2"], match["unit"])
        found.append(_Found(match.start(), match.end()))
        break
    for match in _DURATION.finditer(sentence):
        if _overlaps(found, match.start(), match.end()):
            continue
        keyword = match.group(0).split()[0].lower()
        # "in 2 weeks" names a moment (an offset); "in the first 2 weeks" a duration.
        is_moment = keyword == "in" and not re.search(
            r"\b(?:first|next|following|coming)\b", match.group(0), re.IGNORECASE
        )
        quantity = _quantity(match["n1"], match["unit"])
        upper = _quantity(match["n2"], match["unit"])
        if is_moment:
            if timing.offset is None:
                timing.offset, timing.offset_max = quantity, upper
                found.append(_Found(match.start(), match.end()))
            continue
        if timing.duration is None:
            timing.duration = upper or quantity
            found.append(_Found(match.start(), match.end()))
    if timing.duration is None:
        first = _DURATION_FIRST_UNIT.search(sentence)
        if first is not None and not _overlaps(found, first.start(), first.end()):
            timing.duration = Quantity(value=Decimal(1), unit=UNIT_WORDS[first["unit"].lower()])
            found.append(_Found(first.start(), first.end()))
    if timing.offset is None:
        for match in _OFFSET_PREFIX.finditer(sentence):
            if _overlaps(found, match.start(), match.end()):
                continue
            timing.offset = _quantity(match["n1"], match["unit"])
            timing.offset_max = _quantity(match["n2"], match["unit"])
            found.append(_Found(match.start(), match.end()))
            break

    until = _UNTIL.search(sentence)
    if until is not None and not _overlaps(found, until.start(), until.end()):
        what = _clean_until(until["what"])
        if what:
            timing.until = what
            found.append(_Found(until.start(), until.start() + len("until ") + len(what)))

    if not found:
        return None
    found.sort(key=lambda item: item.start)
    timing.text = "; ".join(sentence[item.start : item.end].strip() for item in found)
    return timing


__all__ = ["NUMBER_WORDS", "UNIT_WORDS", "parse_number", "parse_timing", "parse_unit"]
