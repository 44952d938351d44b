"""Paging of search results: links, stability under concurrent writes, going back.

https://hl7.org/fhir/R4/http.html#paging and search.html#count: the server returns ``self``,
``next`` and ``previous`` links; following ``next`` from the first page visits every match once.
Pages here are keyset-based, so writes between page reads shift nothing that is still to come.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient

from tests.factories import care_plan, goal, patient

BASE = "http://testserver/fhir"


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def get(client: TestClient, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def links(bundle: dict[str, Any]) -> dict[str, str]:
    relations = [link["relation"] for link in bundle["link"]]
    assert len(relations) == len(set(relations)), "one link per relation"
    return {link["relation"]: link["url"] for link in bundle["link"]}


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def walk(client: TestClient, url: str) -> list[list[str]]:
    """The match ids of every page, following ``next`` links from ``url``."""
    pages: list[list[str]] = []
    next_url: str | None = url
    while next_url:
        assert len(pages) < 100
        bundle = get(client, next_url)
        pages.append(ids(bundle))
        next_url = links(bundle).get("next")
    return pages


def _patients(client: TestClient, count: int) -> list[str]:
    return [create(client, patient(name=[{"family": f"Family{n:02d}"}])) for n in range(count)]


def test_first_page_links(client: TestClient) -> None:
    _patients(client, 5)
    bundle = get(client, "/fhir/Patient?_count=2&family=family")
    assert bundle["total"] == 5
    assert ids(bundle) == ["id1", "id2"]
    page_links = links(bundle)
    assert set(page_links) == {"self", "next"}
    assert page_links["self"] == f"{BASE}/Patient?_count=2&family=family"
    assert page_links["next"].startswith(f"{BASE}/Patient?")
    next_query = query_of(page_links["next"])
    assert next_query["_count"] == "2" and next_query["family"] == "family"
    assert "_after" in next_query


def test_single_page_has_only_self(client: TestClient) -> None:
    _patients(client, 3)
    bundle = get(client, "/fhir/Patient?_count=3")
    assert ids(bundle) == ["id1", "id2", "id3"]
    assert set(links(bundle)) == {"self"}


def test_walking_next_links_visits_every_match_once_in_order(client: TestClient) -> None:
    _patients(client, 7)
    create(client, goal("id1"))  # id8: another type, never a match
    pages = walk(client, "/fhir/Patient?_count=3")
    assert pages == [["id1", "id2", "id3"], ["id4", "id5", "id6"], ["id7"]]
    pages = walk(client, "/fhir/Patient?_count=1&_sort=-family")
    assert [p[0] for p in pages] == ["id7", "id6", "id5", "id4", "id3", "id2", "id1"]
    pages = walk(client, "/fhir/Patient?_count=7")
    assert pages == [["id1", "id2", "id3", "id4", "id5", "id6", "id7"]]


def test_later_pages_link_self_first_previous_next(client: TestClient) -> None:
    _patients(client, 6)
    first = get(client, "/fhir/Patient?_count=2")
    second = get(client, links(first)["next"])
    assert ids(second) == ["id3", "id4"]
    assert second["total"] == 6
    second_links = links(second)
    assert set(second_links) == {"self", "first", "next", "previous"}
    assert second_links["first"] == f"{BASE}/Patient?_count=2"
    # self names this very page: reading it again gives the same entries.
    assert ids(get(client, second_links["self"])) == ["id3", "id4"]
    last = get(client, second_links["next"])
    assert ids(last) == ["id5", "id6"]
    assert "next" not in links(last)


def test_previous_link_goes_back(client: TestClient) -> None:
    _patients(client, 7)
    pages = [get(client, "/fhir/Patient?_count=2")]
    while "next" in links(pages[-1]):
        pages.append(get(client, links(pages[-1])["next"]))
    assert [ids(p) for p in pages] == [["id1", "id2"], ["id3", "id4"], ["id5", "id6"], ["id7"]]
    # Walk back from the last page with previous links.
    back = [ids(pages[-1])]
    bundle = pages[-1]
    while "previous" in links(bundle):
        bundle = get(client, links(bundle)["previous"])
        back.append(ids(bundle))
    assert back == [["id7"], ["id5", "id6"], ["id3", "id4"], ["id1", "id2"]]
    # The first page, reached backwards, has no previous link but a next one that goes on.
    assert "previous" not in links(bundle)
    assert ids(get(client, links(bundle)["next"])) == ["id3", "id4"]


def test_previous_and_next_with_sort_on_ties_and_missing_values(client: TestClient) -> None:
    for family in ("B", "A", None, "B", "A", None, "C"):
        create(
            client, patient(name=[{"family": family}]) if family else {"resourceType": "Patient"}
        )
    expected = ["id2", "id5", "id1", "id4", "id7", "id3", "id6"]
    pages = walk(client, "/fhir/Patient?_sort=family&_count=2")
    assert [i for page in pages for i in page] == expected
    pages = walk(client, "/fhir/Patient?_sort=-family,-_id&_count=3")
    descending = ["id7", "id4", "id1", "id5", "id2", "id6", "id3"]
    assert [i for page in pages for i in page] == descending
    # Back from the last page of the ascending walk.
    bundle = get(client, "/fhir/Patient?_sort=family&_count=2")
    forward = [bundle]
    while "next" in links(forward[-1]):
        forward.append(get(client, links(forward[-1])["next"]))
    bundle = forward[-1]
    back = [ids(bundle)]
    while "previous" in links(bundle):
        bundle = get(client, links(bundle)["previous"])
        back.append(ids(bundle))
    assert [i for page in reversed(back) for i in page] == expected


def test_creates_and_deletes_between_pages_do_not_repeat_or_skip(client: TestClient) -> None:
    _patients(client, 8)  # id1..id8
    first = get(client, "/fhir/Patient?_count=3")
    assert ids(first) == ["id1", "id2", "id3"]
    # Others write while the client reads page one.
    assert client.delete("/fhir/Patient/id1").status_code in (200, 204)
    assert client.delete("/fhir/Patient/id2").status_code in (200, 204)
    new = create(client, patient())  # id9
    second = get(client, links(first)["next"])
    assert ids(second) == ["id4", "id5", "id6"]
    assert second["total"] == 7
    assert client.delete("/fhir/Patient/id7").status_code in (200, 204)
    rest = walk(client, links(second)["next"])
    assert [i for page in rest for i in page] == ["id8", new]


def test_creates_between_pages_with_a_sort(client: TestClient) -> None:
    for family in ("Adams", "Baker", "Clark", "Davis", "Evans", "Ford"):
        create(client, patient(name=[{"family": family}]))  # id1..id6
    first = get(client, "/fhir/Patient?_sort=family&_count=2")
    assert ids(first) == ["id1", "id2"]
    create(client, patient(name=[{"family": "Abbot"}]))  # id7: sorts before the cursor
    create(client, patient(name=[{"family": "Dean"}]))  # id8: sorts after it
    client.delete("/fhir/Patient/id3")
    rest = walk(client, links(first)["next"])
    assert [i for page in rest for i in page] == ["id4", "id8", "id5", "id6"]


def test_includes_follow_each_page(client: TestClient) -> None:
    create(client, patient())  # id1
    create(client, patient())  # id2
    create(client, care_plan("id1"))  # id3
    create(client, care_plan("id1"))  # id4
    create(client, care_plan("id2"))  # id5
    first = get(client, "/fhir/CarePlan?_include=CarePlan:subject&_count=2")
    assert ids(first) == ["id3", "id4"]
    assert ids(first, "include") == ["id1"]
    second = get(client, links(first)["next"])
    assert ids(second) == ["id5"]
    assert ids(second, "include") == ["id2"]
    assert query_of(links(first)["next"])["_include"] == "CarePlan:subject"


def test_paging_without_total(client: TestClient) -> None:
    _patients(client, 3)
    first = get(client, "/fhir/Patient?_count=2&_total=none")
    assert "total" not in first
    second = get(client, links(first)["next"])
    assert ids(second) == ["id3"]
    assert "total" not in second


def test_paging_links_in_post_search_continue_by_get(client: TestClient) -> None:
    _patients(client, 3)
    response = client.post("/fhir/Patient/_search", data={"_count": "2", "family": "family0"})
    assert response.status_code == 200
    first = response.json()
    assert ids(first) == ["id1", "id2"]
    assert ids(get(client, links(first)["next"])) == ["id3"]


def test_cursor_from_another_search_is_400(client: TestClient) -> None:
    _patients(client, 3)
    first = get(client, "/fhir/Patient?_count=1&_sort=family")
    cursor = query_of(links(first)["next"])["_after"]
    response = client.get(f"/fhir/Patient?_count=1&_after={cursor}")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
