#!/usr/bin/env python3
"""In-process cost of the US Core CarePlan search, without HTTP (run on demand, not a test).

``parse_search`` + ``run_search`` of ``CarePlan?patient=Patient/{pid}&category=assess-plan`` for
``--patients`` patients of the SQLite database bench/run.py loads, one connection, after a
warm-up round: the Python the server spends per search around SQLite's own work. Prints
milliseconds per search (best of ``--rounds``) for parse and run together, each alone, and the
statement cache's hits and misses. The database is opened read-only.

Figures only: nothing here asserts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from careplan_fhir.fhir.dates import utc_now  # noqa: E402
from careplan_fhir.storage.db import make_engine  # noqa: E402
from careplan_fhir.storage.repository import Repository  # noqa: E402
from careplan_fhir.storage.search import (  # noqa: E402
    parse_search,
    run_search,
    statement_cache_info,
)

BASE_URL = "http://127.0.0.1/fhir"


def _best(rounds: int, searches: int, work: Callable[[], object]) -> float:
    """Milliseconds per search of the fastest of ``rounds`` runs of ``work`` (after one more)."""
    work()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best / searches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--careplans", type=int, default=100_000, help="which bench database")
    parser.add_argument("--patients", type=int, default=2000, help="searches per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    database = BENCH / "results" / f"bench-{args.careplans}.db"
    manifest = BENCH / "results" / f"sqlite-{args.careplans}.manifest.json"
    if not database.exists() or not manifest.exists():
        sys.exit(
            f"{database.name} or {manifest.name} is missing: load it with "
            f"bench/run.py --backend sqlite --careplans {args.careplans} --load-only"
        )
    patients = json.loads(manifest.read_text())["patient_ids"][: args.patients]
    engine = make_engine(f"sqlite:///file:{database}?mode=ro&uri=true")

    def parse(patient_id: str) -> object:
        return parse_search(
            "CarePlan",
            [("patient", f"Patient/{patient_id}"), ("category", "assess-plan")],
            base_url=BASE_URL,
        )

    with engine.connect() as connection:
        repository = Repository(connection, now=utc_now, new_id=lambda: "unused")
        requests = [parse(p) for p in patients]
        matches = sum(len(run_search(repository, r).matches) for r in requests)

        def best(work: Callable[[], object]) -> float:
            return _best(args.rounds, len(patients), work)

        both = best(lambda: [run_search(repository, parse(p)) for p in patients])
        run = best(lambda: [run_search(repository, r) for r in requests])
        parsed = best(lambda: [parse(p) for p in patients])
    engine.dispose()
    info = statement_cache_info()
    print(
        f"{len(patients)} patients, {matches / len(patients):.1f} CarePlans each, {database.name}"
    )
    print(f"parse_search + run_search  {both:.3f} ms/search")
    print(f"run_search                 {run:.3f} ms/search")
    print(f"parse_search               {parsed:.3f} ms/search")
    print(f"statement cache            {info.hits} hits, {info.misses} misses, {info.size} kept")


if __name__ == "__main__":
    main()
