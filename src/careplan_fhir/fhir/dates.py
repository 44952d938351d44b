"""FHIR date, dateTime and instant values as half-open UTC ranges.

Search compares ranges, not points (https://hl7.org/fhir/R4/search.html#date): ``2024`` means
the whole year, ``2024-03-01T10:00`` the whole minute. Every value becomes ``[low, high)`` in naive
UTC; a value without a time zone is read as UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

MIN_DATETIME = datetime(1, 1, 1)
MAX_DATETIME = datetime(9999, 12, 31, 23, 59, 59)

_PATTERN = re.compile(
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2})(:(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d+)?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class DateFormatError(ValueError):
    """The text is not a FHIR date, dateTime or instant."""


def parse_range(text: str) -> tuple[datetime, datetime]:
    """Return ``[low, high)`` in naive UTC for a FHIR date/dateTime/instant text."""
    match = _PATTERN.match(text.strip())
    if not match:
        raise DateFormatError(f"{text!r} is not a FHIR date or dateTime")
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        if parts["month"] is None:
            low = datetime(year, 1, 1)
            return low, _add_months(low, 12)
        month = int(parts["month"])
        if parts["day"] is None:
            low = datetime(year, month, 1)
            return low, _add_months(low, 1)
        day = int(parts["day"])
        if parts["hour"] is None:
            low = datetime(year, month, day)
            return low, low + timedelta(days=1)
        hour = int(parts["hour"])
        minute = int(parts["minute"] or 0)
        second = int(parts["second"] or 0)
        fraction = parts["fraction"] or ""
        microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
        low = datetime(year, month, day, hour, minute, second, microsecond)
    except ValueError as exc:
        raise DateFormatError(f"{text!r}: {exc}") from None
    if parts["second"] is None and parts["minute"] is None:
        step = timedelta(hours=1)
    elif parts["second"] is None:
        step = timedelta(minutes=1)
    elif fraction:
        step = timedelta(microseconds=10 ** max(0, 6 - (len(fraction) - 1)))
    else:
        step = timedelta(seconds=1)
    tz = parts["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        low = low - sign * offset
    return low, low + step


def _add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    return moment.replace(year=moment.year + month_index // 12, month=month_index % 12 + 1)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def format_instant(moment: datetime) -> str:
    """Format an aware datetime as a FHIR instant with millisecond precision."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def to_naive_utc(moment: datetime) -> datetime:
    """Drop the time zone after converting to UTC (the form stored in index tables)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
