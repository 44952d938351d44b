"""Load the FHIR resources under ``examples/`` into a database (idempotent).

Each ``*.json`` file holds a resource or a Bundle of resources, every one with a fixed id. A
resource already stored (and not deleted) is left alone, so loading twice adds no versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import SERVED_TYPES, validate_resource
from careplan_fhir.storage.db import begin_write
from careplan_fhir.storage.repository import Repository


def iter_resources(path: Path) -> Iterator[dict[str, Any]]:
    """Resources in one example file: the resource itself, or a Bundle's entries."""
    document = jsonio.loads(path.read_bytes())
    if document.get("resourceType") == "Bundle":
        for entry in document.get("entry") or []:
            if isinstance(entry.get("resource"), dict):
                yield entry["resource"]
    else:
        yield document


def load_examples(
    engine: Engine, folder: Path, *, now: Callable[[], datetime], new_id: Callable[[], str]
) -> tuple[int, int]:
    """Store every served resource found under ``folder``; returns (stored, already there)."""
    stored = skipped = 0
    files = sorted(folder.rglob("*.json"))
    with engine.connect() as connection:
        begin_write(connection)
        repository = Repository(connection, now=now, new_id=new_id)
        for path in files:
            for resource in iter_resources(path):
                if resource.get("resourceType") not in SERVED_TYPES or not resource.get("id"):
                    continue
                existing = repository.find(resource["resourceType"], resource["id"])
                if existing is not None and not existing.deleted:
                    skipped += 1
                    continue
                validate_resource(resource)
                repository.update(resource, resource["id"])
                stored += 1
        connection.commit()
    return stored, skipped
