"""Every listing that can grow is paged: ``_catalog`` (100 names when no ``n`` is given, as
distribution), ``tags/list`` (1,000), ``_ext/_repositories`` and ``_ext/<repo>/_namespaces``
(100): ``n`` and ``last`` as the distribution spec says, a ``Link`` to the next page, and a
malformed ``n`` or ``last`` refused with an OCI error. Following the links gives every item
once, sorted."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from angosd.oci.digest import Digest
from angosd.registry import paths
from tests.daemon import Response
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import assert_error, image_manifest, push_blob, push_manifest

DIGEST = Digest.of(b"listed")


def seed(daemon: InMemoryDaemon, namespace: str, tags: list[str] = ["t"]) -> None:  # noqa: B006 - never changed
    """Give ``namespace`` tags without pushing (the memory driver writes at once)."""
    assert daemon.driver is not None
    for tag in tags:
        daemon.driver.write(paths.tag(namespace, tag), str(DIGEST).encode())


def next_link(response: Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


def walk(daemon: InMemoryDaemon, path: str, key: str, field: str | None = None) -> list[list[Any]]:
    pages: list[list[Any]] = []
    next_path: str | None = path
    while next_path is not None:
        response = daemon.request("GET", next_path)
        assert response.status == 200, response.body
        items = response.json()[key]
        pages.append([item[field] for item in items] if field else items)
        next_path = next_link(response)
        assert len(pages) < 200
    return pages


@pytest.fixture(scope="module")
def big() -> InMemoryDaemon:
    """105 namespaces over three first components, and one namespace with 1,003 tags."""
    daemon = InMemoryDaemon()
    for number in range(105):
        seed(daemon, f"org{number % 3}/app{number:03d}")
    seed(daemon, "tagged", [f"v{number:04d}" for number in range(1003)])
    push_blob(daemon, "real/image", b"{}")
    push_manifest(daemon, "real/image", "latest", image_manifest(b"{}"))
    return daemon


def catalog_names() -> list[str]:
    return sorted([f"org{number % 3}/app{number:03d}" for number in range(105)] + ["real/image", "tagged"])


def test_catalog_without_n_answers_a_page_and_a_link(big: InMemoryDaemon) -> None:
    names = catalog_names()
    first = big.request("GET", "/v2/_catalog")
    assert first.json() == {"repositories": names[:100]}
    assert first.headers["link"] == f'</v2/_catalog?n=100&last={names[99]}>; rel="next"'
    assert walk(big, "/v2/_catalog", "repositories") == [names[:100], names[100:]]


@pytest.mark.parametrize("n", [1, 7, 50, 106, 107, 10_000, 99_999])
def test_catalog_pages_walk_everything(big: InMemoryDaemon, n: int) -> None:
    names = catalog_names()
    size = min(n, 10_000)
    assert walk(big, f"/v2/_catalog?n={n}", "repositories") == [names[i:i + size] for i in range(0, len(names), size)]


def test_catalog_n_zero_and_last(big: InMemoryDaemon) -> None:
    names = catalog_names()
    zero = big.request("GET", "/v2/_catalog?n=0")
    assert zero.json() == {"repositories": []}
    assert "link" not in zero.headers
    after = big.request("GET", "/v2/_catalog?n=3&last=org1/app050")
    assert after.json()["repositories"] == [name for name in names if name > "org1/app050"][:3]
    assert big.request("GET", "/v2/_catalog?last=zzz").json() == {"repositories": []}
    assert big.request("GET", "/v2/_catalog?n=2&last=").json() == {"repositories": names[:2]}
    assert big.request("GET", "/v2/_catalog?last=org2").json()["repositories"][0] == "org2/app002"


def test_tags_without_n_answer_a_thousand_and_a_link(big: InMemoryDaemon) -> None:
    tags = [f"v{number:04d}" for number in range(1003)]
    first = big.request("GET", "/v2/tagged/tags/list")
    assert first.json() == {"name": "tagged", "tags": tags[:1000]}
    assert first.headers["link"] == '</v2/tagged/tags/list?n=1000&last=v0999>; rel="next"'
    assert walk(big, "/v2/tagged/tags/list?n=300", "tags") == [tags[i:i + 300] for i in range(0, 1003, 300)]
    assert big.request("GET", "/v2/tagged/tags/list?n=2&last=v0500").json()["tags"] == ["v0501", "v0502"]
    assert big.request("GET", "/v2/tagged/tags/list?last=v1002").json()["tags"] == []
    assert_error(big.request("GET", "/v2/missing/tags/list?last=v1"), 404, "NAME_UNKNOWN")


def test_extension_repositories_are_paged(big: InMemoryDaemon) -> None:
    first = big.request("GET", "/v2/_ext/_repositories?n=2")
    assert [r["name"] for r in first.json()["repositories"]] == ["org0", "org1"]
    # 35 namespaces each: counted up to COUNT_LIMIT, so that a page costs O(page)
    assert [(r["namespaces"], r["namespaces_more"]) for r in first.json()["repositories"]] == [(10, True)] * 2
    assert first.headers["link"] == '</v2/_ext/_repositories?n=2&last=org1>; rel="next"'
    assert walk(big, "/v2/_ext/_repositories?n=2", "repositories", "name") == [
        ["org0", "org1"], ["org2", "real"], ["tagged"]]
    every = big.request("GET", "/v2/_ext/_repositories")
    assert "link" not in every.headers
    assert len(every.json()["repositories"]) == 5


def test_extension_namespaces_are_paged(big: InMemoryDaemon) -> None:
    names = [name for name in catalog_names() if name.startswith("org1/")]
    first = big.request("GET", "/v2/_ext/org1/_namespaces?n=10")
    assert [entry["name"] for entry in first.json()["namespaces"]] == names[:10]
    assert first.json()["namespaces"][0] == {"name": names[0], "manifests": 0, "uploads": 0, "tags": 1}
    assert first.headers["link"] == f'</v2/_ext/org1/_namespaces?n=10&last={names[9]}>; rel="next"'
    pages = walk(big, "/v2/_ext/org1/_namespaces?n=10", "namespaces", "name")
    assert pages == [names[i:i + 10] for i in range(0, len(names), 10)]
    tagged = big.request("GET", "/v2/_ext/tagged/_namespaces").json()["namespaces"]
    assert tagged == [{"name": "tagged", "manifests": 0, "uploads": 0, "tags": 1003}]
    real = big.request("GET", "/v2/_ext/real/_namespaces").json()["namespaces"]
    assert real == [{"name": "real/image", "manifests": 1, "uploads": 0, "tags": 1}]
    assert_error(big.request("GET", "/v2/_ext/nothing/_namespaces?last=a"), 404, "NAME_UNKNOWN")


def test_configured_repositories_are_paged() -> None:
    daemon = InMemoryDaemon('[repository."a"]\n[repository."b"]\n[repository."a/inner"]\n[repository."c"]\n')
    for namespace in ("a/x", "a/inner/y", "b/z", "c"):
        seed(daemon, namespace)
    assert walk(daemon, "/v2/_ext/_repositories?n=1", "repositories", "name") == [["a"], ["a/inner"], ["b"], ["c"]]
    assert walk(daemon, "/v2/_ext/a/_namespaces?n=1", "namespaces", "name") == [["a/x"]]


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/tagged/tags/list", "/v2/_ext/_repositories",
                                  "/v2/_ext/org1/_namespaces"])
@pytest.mark.parametrize("query", ["n=-1", "n=abc", "n=1e3", "n=99999999999999999999", "n=", "n=%00", "n=%C2%B2"])
def test_malformed_n_is_refused(big: InMemoryDaemon, path: str, query: str) -> None:
    assert_error(big.request("GET", f"{path}?{query}"), 400, "PAGINATION_NUMBER_INVALID")


@pytest.mark.parametrize(("path", "code"), [("/v2/_catalog", "NAME_INVALID"), ("/v2/tagged/tags/list", "TAG_INVALID"),
                                            ("/v2/_ext/_repositories", "NAME_INVALID"),
                                            ("/v2/_ext/org1/_namespaces", "NAME_INVALID")])
@pytest.mark.parametrize("last", ["%00", "a%0Ab", "%C3%A4", "x" * 513, "a%20b"])
def test_malformed_last_is_refused(big: InMemoryDaemon, path: str, code: str, last: str) -> None:
    assert_error(big.request("GET", f"{path}?last={last}"), 400, code)


NAMES = st.lists(st.sampled_from(["a", "a-b", "a.b", "b"]), min_size=1, max_size=3).map("/".join)


@settings(max_examples=25, deadline=None)
@given(names=st.lists(NAMES, unique=True, min_size=1, max_size=15), n=st.integers(1, 5))
def test_catalog_walk_is_the_sorted_set(names: list[str], n: int) -> None:
    daemon = InMemoryDaemon()
    for name in names:
        seed(daemon, name)
    pages = walk(daemon, f"/v2/_catalog?n={n}", "repositories")
    assert [name for page in pages for name in page] == sorted(names)
    assert all(len(page) == n for page in pages[:-1])
