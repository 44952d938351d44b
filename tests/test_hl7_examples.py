"""The official HL7 FHIR R4 examples of every served type round-trip exactly.

Each example in ``tests/data/hl7-r4-examples`` (from the ``hl7.fhir.r4.examples`` package, see the
README there) is stored with ``PUT /fhir/{type}/{id}`` (https://hl7.org/fhir/R4/http.html#update)
and read back: the served JSON must equal the example apart from ``meta.versionId`` and
``meta.lastUpdated``, which the server sets, and every decimal must keep its exact text
(https://hl7.org/fhir/R4/json.html#primitive: ``1.50`` is not ``1.5``).
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import simplejson
from fastapi.testclient import TestClient

from careplan_fhir.fhir.models import SERVED_TYPES

EXAMPLES_DIR = Path(__file__).parent / "data" / "hl7-r4-examples"
FHIR_JSON = "application/fhir+json"
SERVER_META = frozenset({"versionId", "lastUpdated"})

#: Examples that do not conform to FHIR R4 and are rightly refused, with the reason.
EXCLUDED: dict[str, str] = {
    # Questionnaire.item.linkId is 1..1 (https://hl7.org/fhir/R4/questionnaire.html), but the
    # 32 items of type "display" in this example (generated from the Account definition) have
    # no linkId. Kept here to prove the server refuses it, not to round-trip it.
    "Questionnaire-qs1.json": "display items without the mandatory Questionnaire.item.linkId",
}

ALL_FILES = sorted(EXAMPLES_DIR.glob("*.json"))
ROUND_TRIP_FILES = [path for path in ALL_FILES if path.name not in EXCLUDED]


def _load(raw: bytes) -> dict[str, Any]:
    document: dict[str, Any] = simplejson.loads(raw, use_decimal=True)
    return document


def _decimal_literals(raw: bytes) -> list[str]:
    """The text of every non-integer number literal, in document order."""
    literals: list[str] = []

    def keep(text: str) -> Decimal:
        literals.append(text)
        return Decimal(text)

    simplejson.loads(raw, parse_float=keep)
    return literals


def _has_number_literal(body: bytes, text: str) -> bool:
    """True when ``text`` occurs in ``body`` as a whole JSON number, not inside another one."""
    pattern = rb"[:,\[]\s*" + re.escape(text.encode()) + rb"\s*[,\]}]"
    return re.search(pattern, body) is not None


def _without_server_meta(document: dict[str, Any]) -> dict[str, Any]:
    stripped = dict(document)
    if "meta" in stripped:
        stripped["meta"] = {k: v for k, v in stripped["meta"].items() if k not in SERVER_META}
    return stripped


def test_examples_cover_every_served_type() -> None:
    types = {_load(path.read_bytes())["resourceType"] for path in ROUND_TRIP_FILES}
    assert types == set(SERVED_TYPES)
    assert set(EXCLUDED) <= {path.name for path in ALL_FILES}


@pytest.mark.parametrize("path", ROUND_TRIP_FILES, ids=[path.name for path in ROUND_TRIP_FILES])
def test_example_round_trips(client: TestClient, path: Path) -> None:
    raw = path.read_bytes()
    original = _load(raw)
    url = f"/fhir/{original['resourceType']}/{original['id']}"

    put = client.put(url, content=raw, headers={"content-type": FHIR_JSON})
    assert put.status_code == 201, put.text

    read = client.get(url)
    assert read.status_code == 200, read.text
    served = _load(read.content)
    assert served["meta"]["versionId"] == "1"
    assert served["meta"]["lastUpdated"] == put.json()["meta"]["lastUpdated"]
    if "meta" not in original:
        assert set(served["meta"]) == SERVER_META
        del served["meta"]
    assert _without_server_meta(served) == _without_server_meta(original)

    literals = _decimal_literals(raw)
    missing = [text for text in literals if not _has_number_literal(read.content, text)]
    assert not missing, f"decimal literals not served as written: {missing}"
    assert Counter(_decimal_literals(read.content)) == Counter(literals)


def test_questionnaire_qs1_is_refused_for_its_missing_link_ids(client: TestClient) -> None:
    raw = (EXAMPLES_DIR / "Questionnaire-qs1.json").read_bytes()
    response = client.put(
        "/fhir/Questionnaire/qs1", content=raw, headers={"content-type": FHIR_JSON}
    )
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    expressions = [issue["expression"][0] for issue in outcome["issue"]]
    assert len(expressions) == 32
    assert all(e.startswith("Questionnaire.item[") for e in expressions)
    assert all(e.endswith("].linkId") for e in expressions)
