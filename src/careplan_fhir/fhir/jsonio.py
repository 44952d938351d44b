"""JSON parsing and writing that keeps FHIR decimals exactly as written.

FHIR decimals carry their precision in their text (``1.50`` is not ``1.5``). Parsing into
``Decimal`` and writing ``Decimal`` back as a bare number keeps them byte-for-byte.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import simplejson


class JsonError(ValueError):
    """The bytes are not a JSON document."""


def loads(data: bytes | str) -> Any:
    """Parse JSON, keeping every non-integer number as a :class:`~decimal.Decimal`."""
    try:
        return simplejson.loads(data, use_decimal=True)
    except (simplejson.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonError(str(exc)) from exc


def _default(value: Any) -> Any:
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(document: Any, *, pretty: bool = False) -> bytes:
    """Serialise a document, writing decimals exactly as they were read."""
    if not pretty:
        # Most documents hold no decimal: orjson takes them at once and refuses the others
        # (``_default`` raises on a Decimal), which is cheaper than looking first.
        try:
            return orjson.dumps(document, default=_default)
        except TypeError:
            pass
    if _has_decimal(document):
        text: str = simplejson.dumps(
            document,
            use_decimal=True,
            ensure_ascii=False,
            separators=(",", ": ") if pretty else (",", ":"),
            indent=2 if pretty else None,
        )
        return text.encode("utf-8")
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(document, option=option, default=_default)


def _has_decimal(value: Any) -> bool:
    if isinstance(value, Decimal):
        return True
    if isinstance(value, dict):
        return any(_has_decimal(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_decimal(v) for v in value)
    return False


def fast_loads(data: bytes | str) -> Any:
    """Parse JSON written by this server, where decimals do not matter (index, rewriting)."""
    return orjson.loads(data)


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number (or numeric string) as a finite Decimal; None for anything else.

    Booleans are not numbers here, although Python counts them as ints.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int | float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None
