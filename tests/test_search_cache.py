"""The statement cache of search (careplan_fhir.storage.search): per shape, never per value.

A search's statements are built once per shape (resource type, each criterion's form, sort keys,
cursor form) and run again with new values. These tests prove that the values of one search
never leak into another of the same shape, that different shapes never share a statement, that
the cache is actually used, and that a statement taken from the cache is the very SQL the same
search built with its values inline would run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from careplan_fhir.storage import search
from careplan_fhir.storage.db import make_engine
from careplan_fhir.storage.repository import Repository
from careplan_fhir.storage.search import (
    Criterion,
    clear_statement_cache,
    encode_cursor,
    parse_search,
    resource_table,
    run_search,
    statement_cache_info,
)
from tests.factories import ASSESS_PLAN, care_plan, patient
from tests.tokens import bearer, mint_token

BASE = "http://testserver/fhir"
CATEGORY_SYSTEM = ASSESS_PLAN["coding"][0]["system"]
OTHER = {"coding": [{"system": "http://example.org/cats", "code": "assess-plan"}]}
BARE = {"coding": [{"code": "assess-plan"}]}
EDUCATION = {"coding": [{"system": "http://example.org/cats", "code": "education"}]}


def put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def get(client: TestClient, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, (url, response.text)
    body: dict[str, Any] = response.json()
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def next_link(bundle: dict[str, Any], relation: str = "next") -> str | None:
    for link in bundle["link"]:
        if link["relation"] == relation:
            return str(link["url"]).removeprefix("http://testserver")
    return None


def _plans(client: TestClient) -> None:
    """Three patients with different plans: each search answer tells them apart."""
    for pid, plans in {
        "p1": [("p1-a", [ASSESS_PLAN]), ("p1-b", [ASSESS_PLAN]), ("p1-c", [EDUCATION])],
        "p2": [("p2-a", [ASSESS_PLAN]), ("p2-b", [OTHER]), ("p2-c", [BARE]), ("p2-d", [])],
        "p3": [("p3-a", [EDUCATION])],
    }.items():
        put(client, patient(id=pid))
        for plan_id, category in plans:
            plan = care_plan(pid, id=plan_id, category=category)
            if not category:
                del plan["category"]
            put(client, plan)


# -- through HTTP: behaviour -------------------------------------------------------------------


def test_one_shape_many_values_each_gets_its_own_answer(client: TestClient) -> None:
    _plans(client)
    expected = {"p1": ["p1-a", "p1-b"], "p2": ["p2-a", "p2-b", "p2-c"], "p3": []}
    clear_statement_cache()
    for _ in range(2):  # the second round runs entirely from the cache
        for pid, plans in expected.items():
            bundle = get(client, f"/fhir/CarePlan?patient=Patient/{pid}&category=assess-plan")
            assert ids(bundle) == plans, pid
            assert bundle["total"] == len(plans)
    info = statement_cache_info()
    assert info.misses == 1  # one shape, one page statement (every page held all its matches)
    assert info.hits == 5


def test_different_shapes_never_share_a_statement(client: TestClient) -> None:
    _plans(client)
    expected = {
        "category=assess-plan": ["p1-a", "p1-b", "p2-a", "p2-b", "p2-c"],
        f"category={CATEGORY_SYSTEM}|assess-plan": ["p1-a", "p1-b", "p2-a"],
        "category=|assess-plan": ["p2-c"],
        "category=http://example.org/cats|": ["p1-c", "p2-b", "p3-a"],
        "category:not=assess-plan": ["p1-c", "p2-d", "p3-a"],
        "category:missing=true": ["p2-d"],
        "category:missing=false": ["p1-a", "p1-b", "p1-c", "p2-a", "p2-b", "p2-c", "p3-a"],
        "category=education,|assess-plan": ["p1-c", "p2-c", "p3-a"],
        "category=education&category=http://example.org/cats|education": ["p1-c", "p3-a"],
        "patient=p2&category=assess-plan": ["p2-a", "p2-b", "p2-c"],
        "patient=Patient/p2&category=assess-plan": ["p2-a", "p2-b", "p2-c"],
        # Our own base is the relative reference: the same SQL as the line above, shared.
        f"patient={BASE}/Patient/p2&category=assess-plan": ["p2-a", "p2-b", "p2-c"],
        "patient=Patient/p1&category=assess-plan": ["p1-a", "p1-b"],  # shared too
        "patient=Group/p2&category=assess-plan": [],
        "subject:Group=p2": [],
        "_id=p1-a,p2-d": ["p1-a", "p2-d"],
        "_id=p2-d": ["p2-d"],
        "_id:not=p1-a&patient=p1": ["p1-b", "p1-c"],
        "patient=p1&_sort=-_id": ["p1-c", "p1-b", "p1-a"],
        "patient=p1&_sort=_id": ["p1-a", "p1-b", "p1-c"],
    }
    clear_statement_cache()
    for _ in range(2):
        for query, plans in expected.items():
            bundle = get(client, f"/fhir/CarePlan?{quote(query, safe='=&:|/,')}")
            assert ids(bundle) == plans, query
            assert bundle["total"] == len(plans), query
    info = statement_cache_info()
    assert info.misses == len(expected) - 2  # every first page held all its matches
    assert info.hits == len(expected) + 2


def test_totals_counts_and_page_sizes_from_the_cache(client: TestClient) -> None:
    _plans(client)
    for _ in range(2):
        for pid, total in (("p1", 2), ("p2", 3), ("p3", 0)):
            query = f"/fhir/CarePlan?patient={pid}&category=assess-plan"
            assert get(client, query + "&_summary=count")["total"] == total
            assert get(client, query + "&_count=0")["total"] == total
            page = get(client, query + "&_count=1")
            assert len(ids(page)) == min(total, 1)
            assert page["total"] == total  # more than one page: the count statement
            assert "total" not in get(client, query + "&_total=none&_count=1")


def test_paging_forward_and_back_for_interleaved_searches(client: TestClient) -> None:
    """Cursors with null and non-null sort values, for two patients read turn by turn."""
    for pid in ("p1", "p2"):
        put(client, patient(id=pid))
        for n in range(5):
            day = f"2026-03-0{n + 1}"
            plan = care_plan(pid, id=f"{pid}-{n}", period={"start": day, "end": day})
            if n % 2:
                del plan["period"]  # no date: a null sort key, sorted last
            put(client, plan)
    everything = {
        pid: ids(get(client, f"/fhir/CarePlan?patient={pid}&_sort=-date&_count=100"))
        for pid in ("p1", "p2")
    }
    assert everything["p1"] == ["p1-4", "p1-2", "p1-0", "p1-1", "p1-3"]
    urls: dict[str, str | None] = {
        pid: f"/fhir/CarePlan?patient={pid}&_sort=-date&_count=2" for pid in everything
    }
    pages: dict[str, list[dict[str, Any]]] = {pid: [] for pid in everything}
    while any(urls.values()):
        for pid, url in urls.items():
            if url:
                bundle = get(client, url)
                pages[pid].append(bundle)
                urls[pid] = next_link(bundle)
    for pid, walked in pages.items():
        assert [i for page in walked for i in ids(page)] == everything[pid]
        # ...and back from the last page, by the previous links
        back = []
        url = next_link(walked[-1], "previous")
        while url:
            bundle = get(client, url)
            back.insert(0, ids(bundle))
            url = next_link(bundle, "previous")
        assert back == [ids(page) for page in walked[:-1]]


def test_a_cursor_of_the_wrong_length_is_still_400(client: TestClient) -> None:
    _plans(client)
    cursor = encode_cursor([datetime(2026, 3, 1), 1])
    for _ in range(2):
        response = client.get(f"/fhir/CarePlan?patient=p1&_after={cursor}")
        assert response.status_code == 400
        assert "does not belong to this search" in response.text


def test_bad_values_of_a_cached_shape_are_still_400(client: TestClient) -> None:
    _plans(client)
    assert ids(get(client, "/fhir/CarePlan?date=ge2026-03-01&patient=p3")) == ["p3-a"]
    response = client.get("/fhir/CarePlan?date=ge2026-13-01&patient=p3")
    assert response.status_code == 400
    assert "date:" in response.text


def test_patients_share_the_compartment_statement(
    client: TestClient, signing_key_file: Path
) -> None:
    """A patient-confined search carries the compartment as a criterion with a shape: each
    patient sees only their own plans, through one cached statement."""
    _plans(client)
    clear_statement_cache()
    for _ in range(2):
        for pid, plans, total in (
            ("p1", ["p1-a", "p1-b"], 3),
            ("p2", ["p2-a", "p2-b", "p2-c"], 4),
        ):
            token = bearer(mint_token(signing_key_file, "patient/CarePlan.rs", patient=pid))
            bundle = get(client, "/fhir/CarePlan?category=assess-plan", headers=token)
            assert ids(bundle) == plans
            assert bundle["total"] == len(plans)
            assert get(client, "/fhir/CarePlan?_count=1", headers=token)["total"] == total
    info = statement_cache_info()
    assert info.misses == 3  # the category search; the _count=1 page and its count
    assert info.hits == 3 * 4 - 3


def test_granular_scope_queries_are_cached_too(client: TestClient, signing_key_file: Path) -> None:
    _plans(client)
    clear_statement_cache()
    scope = f"patient/CarePlan.rs?category={CATEGORY_SYSTEM}|assess-plan"
    for _ in range(2):
        for pid, plans in (("p1", ["p1-a", "p1-b"]), ("p2", ["p2-a"])):
            token = bearer(mint_token(signing_key_file, scope, patient=pid))
            assert ids(get(client, "/fhir/CarePlan", headers=token)) == plans
    info = statement_cache_info()
    assert (info.misses, info.hits) == (1, 3)


# -- directly: the cache itself ----------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    SQLModel.metadata.create_all(engine)
    clock = iter(range(10_000))
    with engine.begin() as connection:
        repository = Repository(
            connection,
            now=lambda: datetime(2026, 3, 1, tzinfo=UTC),
            new_id=lambda: f"id{next(clock)}",
        )
        for pid in ("p1", "p2"):
            repository.create(patient(id=pid), resource_id=pid)
            for n in range(3):
                repository.create(care_plan(pid, id=f"{pid}-{n}"), resource_id=f"{pid}-{n}")
    yield engine
    engine.dispose()


def _run(engine: Engine, resource_type: str, query: str, *extra: Criterion) -> list[str]:
    with engine.connect() as connection:
        repository = Repository(connection, now=lambda: datetime.now(UTC), new_id=lambda: "x")
        request = parse_search(resource_type, parse_qsl(query), base_url=BASE)
        request.conditions.extend(extra)
        return [m.id for m in run_search(repository, request).matches]


def test_the_cache_counts_hits_and_misses(engine: Engine) -> None:
    clear_statement_cache()
    assert _run(engine, "CarePlan", "patient=p1&status=active") == ["p1-0", "p1-1", "p1-2"]
    assert statement_cache_info() == search.StatementCacheInfo(hits=0, misses=1, size=1)
    assert _run(engine, "CarePlan", "patient=p2&status=active") == ["p2-0", "p2-1", "p2-2"]
    assert _run(engine, "CarePlan", "patient=p2&status=draft") == []
    assert statement_cache_info() == search.StatementCacheInfo(hits=2, misses=1, size=1)
    assert _run(engine, "CarePlan", "patient=p2&status:not=active") == []  # another shape
    assert _run(engine, "CarePlan", "patient=p2&_summary=count") == []  # a count statement
    assert statement_cache_info() == search.StatementCacheInfo(hits=2, misses=3, size=3)


def test_a_criterion_without_shape_is_built_afresh(engine: Engine) -> None:
    """A criterion made as an expression (no shape) still works; its search is not cached."""
    clear_statement_cache()
    only = Criterion(9, predicate=resource_table().c.res_id.in_(["p1-1", "p2-2"]))
    assert _run(engine, "CarePlan", "status=active", only) == ["p1-1", "p2-2"]
    assert _run(engine, "CarePlan", "status=active", only) == ["p1-1", "p2-2"]
    assert statement_cache_info().size == 0


def test_concurrent_searches_of_one_shape(engine: Engine) -> None:
    clear_statement_cache()
    wanted = [(pid, status) for pid in ("p1", "p2") for status in ("active", "draft")] * 25

    def one(case: tuple[str, str]) -> tuple[tuple[str, str], list[str]]:
        return case, _run(engine, "CarePlan", f"patient={case[0]}&status={case[1]}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        for (pid, status), found in pool.map(one, wanted):
            assert found == ([f"{pid}-{n}" for n in range(3)] if status == "active" else [])
    assert statement_cache_info().size == 1


#: One search per value form (search.html): each cached statement must be the very SQL the
#: search built with its values inline runs.
FORMS = [
    ("Patient", "gender=female"),
    ("Patient", "gender=male,other"),
    ("Patient", "gender:not=female"),
    ("Patient", "active:missing=true"),
    ("Patient", "identifier=http://x|123"),
    ("Patient", "identifier=http://x|"),
    ("Patient", "identifier=|456"),
    ("Patient", "identifier=a\\|b"),
    ("Patient", "_id=id1,id3"),
    ("Patient", "_id:not=id1"),
    ("CarePlan", "subject=Patient/id1"),
    ("CarePlan", "subject=id1"),
    ("CarePlan", "subject:Group=id1"),
    ("CarePlan", "subject:Group=Patient/id1"),
    ("CarePlan", f"subject={BASE}/Patient/id1"),
    ("CarePlan", "subject=http://other.example.org/fhir/Patient/id1"),
    ("CarePlan", "instantiates-canonical=http://e.org/PD/k|1.0"),
    ("CarePlan", "patient=Patient/p1&category=assess-plan&_count=5"),
    *[("Patient", f"birthdate={prefix}2026-03-01") for prefix in search._PREFIXES],
    *[("Patient", f"_lastUpdated={prefix}2026-03-01") for prefix in search._PREFIXES],
    *[("Observation", f"value-quantity={prefix}5.4") for prefix in search._PREFIXES],
    ("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg"),
    ("Observation", "value-quantity=ap-5||mg"),
    ("Patient", "name=sam"),
    ("Patient", "name:exact=Sam"),
    ("Patient", "name:contains=a_m%"),
    ("PlanDefinition", "url=http://e.org/PD/k"),
    ("PlanDefinition", "url:below=http://e.org/PD_%"),
    ("CarePlan", "_sort=-date,status,_lastUpdated"),
    ("CarePlan", "patient=p1&_sort=-date&_after=" + encode_cursor([datetime(2026, 1, 1), 5])),
    ("CarePlan", "patient=p1&_sort=-date&_after=" + encode_cursor([None, 5])),
    ("CarePlan", "patient=p1&_sort=-date&_before=" + encode_cursor([datetime(2026, 1, 1), 5])),
    ("CarePlan", "patient=p1&_sort=date&_before=" + encode_cursor([None, 5])),
]


@pytest.mark.parametrize(("resource_type", "query"), FORMS)
def test_a_cached_statement_is_the_sql_built_with_values_inline(
    resource_type: str, query: str
) -> None:
    """The statement of a shape, given a search's values, renders exactly as the statement the
    uncached path builds for that search (values inline), on both dialects, bind types included
    (psycopg renders a cast per type)."""
    request = parse_search(resource_type, parse_qsl(query), base_url=BASE)
    statements = search._Statements(request)
    assert statements.criteria is not None
    forward = request.before is None
    cursor = request.after if forward else request.before
    nulls = None if cursor is None else tuple(value is None for value in cursor)
    cached_page = search._cached_page(
        resource_type, statements.criteria, tuple(request.sort), nulls, forward
    )
    values = dict(statements.values, page_size=request.count + 1)
    values.update({f"c{i}": v for i, v in enumerate(cursor or ()) if v is not None})
    inline = [(c.rank, c.restriction()) for c in request.conditions]
    pairs = [
        (
            cached_page.params(values),
            search._page_statement(
                resource_type, inline, request.sort, cursor, forward, request.count + 1
            ),
        ),
        (
            search._cached_count(resource_type, statements.criteria).params(statements.values),
            search._count_statement(resource_type, inline),
        ),
    ]
    for cached, built in pairs:
        for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
            for options in ({"literal_binds": True}, {"render_postcompile": True}):
                assert _render(cached, dialect, options) == _render(built, dialect, options)


def _render(statement: Any, dialect: Any, options: dict[str, bool]) -> str:
    """The SQL text; bind names (``v0`` here, ``code_1`` there) do not matter, their places
    and types (``::VARCHAR``) do."""
    text = str(statement.compile(dialect=dialect, compile_kwargs=options))
    return re.sub(r"%\(\w+\)s", "%(p)s", text)
