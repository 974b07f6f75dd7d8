"""Namespaces in name order a page at a time (`angosd.registry.listing`, `Registry.catalog_page`
and `Registry.namespaces_page`): walking the pages gives every name once, sorted as strings,
whatever the nesting ('a', 'a-b', 'a.b/c', 'a/b' interleave), on the memory and filesystem drivers."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from angosd.oci.digest import Digest
from angosd.registry import paths
from angosd.registry.registry import Limits, Registry
from angosd.storage.fs import FilesystemDriver
from angosd.storage.interface import IStorageDriver
from angosd.storage.memory import MemoryDriver
from tests.pools import started_pools

COMPONENT = st.sampled_from(["a", "b", "a-b", "a.b", "ab", "b-a", "ba", "a-a", "a.a", "a0", "a_b"])
NAME = st.lists(COMPONENT, min_size=1, max_size=3).map("/".join)
DIGEST = Digest.of(b"listed")


def settle(work: Any) -> Any:
    """The result of a coroutine or Deferred that completes at once (memory driver; filesystem
    directories this small are listed inline)."""
    results: list[Any] = []
    ensureDeferred(work).addBoth(results.append)
    assert results, "the listing did not complete synchronously"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def put(driver: IStorageDriver, key: str, data: bytes) -> None:
    if isinstance(driver, FilesystemDriver):  # its writes run on a thread pool; these are synchronous
        path = driver.local_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)
    else:
        settle(driver.write(key, data))


def store(driver: IStorageDriver, tagged: list[str], uploading: list[str], empty: list[str]) -> Registry:
    for name in tagged:
        put(driver, paths.tag(name, "t"), str(DIGEST).encode())
    for name in uploading:
        put(driver, f"{paths.upload_dir(name, 'u')}/info", b"{}")
    for name in empty:  # a namespace whose last revision was deleted holds nothing
        put(driver, f"{paths.revisions_dir(name)}/sha256/.tmp-gone", b"")
    return Registry(driver, Clock(), Limits(), namespace_allowed=lambda name: not name.endswith("b-a"))


def walk(page: Any, n: int) -> list[str]:
    found: list[str] = []
    last = None
    while True:
        names, more = settle(page(last, n))
        assert len(names) <= n
        found += names
        if not more:
            return found
        assert names, "more follow, yet the page is empty"
        last = names[-1]


KINDS = ("memory", "fs")


def make(kind: str, directory: str) -> IStorageDriver:
    return MemoryDriver() if kind == "memory" else FilesystemDriver(directory, started_pools(reactor).io)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), tagged=st.lists(NAME, unique=True, max_size=25),
       uploading=st.lists(NAME, max_size=4), empty=st.lists(NAME, max_size=4), n=st.integers(1, 6))
def test_pages_walk_every_name_in_order(kind: str, tagged: list[str], uploading: list[str], empty: list[str],
                                        n: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        registry = store(make(kind, directory), tagged, uploading, empty)
        served = [name for name in tagged if not name.endswith("b-a")]
        assert walk(lambda last, n: registry.catalog_page(last, n), n) == sorted(served)
        with_uploads = sorted(set(served) | {name for name in uploading if not name.endswith("b-a")})
        assert walk(lambda last, n: registry.namespaces_page(None, last, n), n) == with_uploads
        for under in {name.split("/")[0] for name in tagged}:
            below = [name for name in with_uploads if name == under or name.startswith(under + "/")]
            assert walk(lambda last, n, under=under: registry.namespaces_page(under, last, n), n) == below


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), tagged=st.lists(NAME, unique=True, min_size=1, max_size=20),
       last=NAME | st.text("ab-./~_0", max_size=6))
def test_a_page_starts_after_any_marker(kind: str, tagged: list[str], last: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        registry = store(make(kind, directory), tagged, [], [])
        expected = sorted(name for name in tagged if name > last and not name.endswith("b-a"))
        assert settle(registry.catalog_page(last, 3)) == (expected[:3], len(expected) > 3)
        assert settle(registry.catalog_page(last, None)) == (expected, False)


def test_visibility_is_asked_only_for_the_page() -> None:
    names = [f"n{i:02d}" for i in range(30)]
    registry = store(MemoryDriver(), names, [], [])
    asked: list[str] = []

    def visible(name: str) -> bool:
        asked.append(name)
        return name != "n03"

    assert settle(registry.catalog_page("n01", 3, visible)) == (["n02", "n04", "n05"], True)
    assert asked == ["n02", "n03", "n04", "n05", "n06"]
