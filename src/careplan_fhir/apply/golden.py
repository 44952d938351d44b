"""The ``$apply`` golden files: each example template applied to one sample patient.

``examples/guidance/golden/<stem>.bundle.json`` (the importer's output, activated in memory) →
``examples/apply/golden/<stem>.json``, a Bundle (collection) of the CarePlan, Goals, Tasks and
Communication. The context is fixed (ids from a counter, fixed ``now`` and start, fever threshold
38.0 Cel where the template asks for one), so the files change only when the engine or the
importer does. ``make golden-apply`` rewrites them; ``tests/test_apply_golden.py`` checks them.
"""

from __future__ import annotations

import itertools
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from careplan_fhir.fhir import jsonio

from .engine import apply_plan_definition, parameter_specs
from .model import ApplyContext

URL_BASE = "https://careplan-fhir.org/fhir"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
#: Discharge: relative timing counts from here.
START = datetime(2026, 3, 1, 14, 30, tzinfo=UTC)
SUBJECT = "Patient/example-patient"
ENCOUNTER = "Encounter/example-discharge"
PRACTITIONER = "Practitioner/example-surgeon"
FEVER_THRESHOLD = {
    "value": Decimal("38.0"),
    "unit": "°C",
    "system": "http://unitsofmeasure.org",
    "code": "Cel",
}


def golden_context(plan_definition: dict[str, Any]) -> ApplyContext:
    """The fixed context; the fever threshold only where the template declares it."""
    counter = itertools.count(1)
    specs = parameter_specs(plan_definition)
    parameters = {"fever_threshold": FEVER_THRESHOLD} if "fever_threshold" in specs else {}
    return ApplyContext(
        subject=SUBJECT,
        now=NOW,
        start=START,
        new_id=lambda resource_type: f"{resource_type.lower()}-{next(counter)}",
        encounter=ENCOUNTER,
        practitioner=PRACTITIONER,
        parameters=parameters,
    )


def apply_example(artifacts: dict[str, Any], stem: str) -> dict[str, Any]:
    """Apply the PlanDefinition of an importer Bundle (activated) and bundle the outputs."""
    resources = [entry["resource"] for entry in artifacts["entry"]]
    plan = dict(resources[0]) | {"status": "active"}
    definitions: dict[str, dict[str, Any]] = {}
    for resource in resources:
        if resource["resourceType"] == "ActivityDefinition":
            definitions[resource["url"]] = resource
            definitions[f"{resource['url']}|{resource['version']}"] = resource
    result = apply_plan_definition(plan, definitions, golden_context(plan))
    return {
        "resourceType": "Bundle",
        "id": f"{stem}-applied",
        "type": "collection",
        "timestamp": NOW.isoformat().replace("+00:00", "Z"),
        "entry": [
            {"fullUrl": f"{URL_BASE}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in result.resources()
        ],
    }


def golden_bytes(source: Path) -> bytes:
    """The golden file's bytes for one importer Bundle."""
    stem = source.name.removesuffix(".bundle.json")
    bundle = apply_example(jsonio.loads(source.read_bytes()), stem)
    return jsonio.dumps(bundle, pretty=True) + b"\n"


def write_golden(source_folder: Path, target_folder: Path) -> list[Path]:
    """Rewrite ``target_folder/<stem>.json`` for every ``source_folder/<stem>.bundle.json``."""
    target_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(source_folder.glob("*.bundle.json")):
        target = target_folder / f"{source.name.removesuffix('.bundle.json')}.json"
        target.write_bytes(golden_bytes(source))
        written.append(target)
    return written


if __name__ == "__main__":  # pragma: no cover - used by `make golden-apply`
    for path in write_golden(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
