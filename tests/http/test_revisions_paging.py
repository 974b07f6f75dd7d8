"""Manifest summaries and the paging of ``_revisions`` and referrers, in memory."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from angosd.http.endpoints.digest_pages import DEFAULT_PAGE
from angosd.oci.digest import Digest
from angosd.registry import paths
from angosd.registry.summaries import ManifestSummary
from angosd.storage.errors import OutOfSpace
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest,
    image_manifest,
    push_blob,
    push_image,
    push_manifest,
)


def settled(deferred: Deferred[Any]) -> Any:
    """The result of a Deferred the memory driver has already fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the driver did not answer at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def summary_key(namespace: str, manifest_digest: str) -> str:
    return paths.summary(namespace, Digest.parse(manifest_digest))


def read_summary(d: InMemoryDaemon, namespace: str, manifest_digest: str) -> ManifestSummary:
    assert d.driver is not None
    return ManifestSummary.from_json(settled(d.driver.read(summary_key(namespace, manifest_digest))))


def push_tree(d: InMemoryDaemon, namespace: str) -> tuple[str, str]:
    """An image and an index listing it with a platform; returns (image, index) digests."""
    image = push_image(d, namespace, "image")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**descriptor(OCI_MANIFEST, image), "platform": {"architecture": "arm64", "os": "linux"}}]}).encode()
    return digest(image), push_manifest(d, namespace, "multi", index, OCI_INDEX)


def revisions_by_digest(d: InMemoryDaemon, namespace: str) -> dict[str, dict[str, Any]]:
    response = d.request("GET", f"/v2/_ext/{namespace}/_revisions")
    assert response.status == 200, response.body
    return {entry["digest"]: entry for entry in response.json()["revisions"]}


def follow(d: InMemoryDaemon, path: str, key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every item of a paged listing, following ``Link`` headers; and the links followed."""
    items: list[dict[str, Any]] = []
    links: list[str] = []
    while True:
        response = d.request("GET", path)
        assert response.status == 200, response.body
        items += response.json()[key]
        link = response.headers.get("link")
        if link is None:
            return items, links
        assert link.startswith("<") and link.endswith('>; rel="next"'), link
        path = link[1:link.index(">")]
        links.append(path)
        assert len(links) < 50


# -- summaries -----------------------------------------------------------------------------


def test_a_push_writes_the_summary_beside_the_revision(daemon: InMemoryDaemon) -> None:
    image, index = push_tree(daemon, "sum/written")
    image_summary = read_summary(daemon, "sum/written", image)
    assert (image_summary.media_type, image_summary.children, image_summary.parsed) == (OCI_MANIFEST, (), True)
    assert image_summary.config_media_type == "application/vnd.oci.image.config.v1+json"
    index_summary = read_summary(daemon, "sum/written", index)
    assert [str(child.digest) for child in index_summary.children] == [image]
    assert index_summary.children[0].platform == {"architecture": "arm64", "os": "linux"}


def test_revisions_do_not_parse_manifests_that_have_a_summary(daemon: InMemoryDaemon,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _image, index = push_tree(daemon, "sum/noparse")

    def refuse(*_args: Any) -> Any:
        raise AssertionError("a stored manifest was parsed to list it")

    monkeypatch.setattr(daemon.app.registry.manifests.parser, "parse", refuse)  # type: ignore[attr-defined]
    listed = revisions_by_digest(daemon, "sum/noparse")
    assert len(listed[index]["children"]) == 1


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "wrong type", "other version"])
def test_a_missing_or_damaged_summary_is_computed_again_and_stored(daemon: InMemoryDaemon, damage: str) -> None:
    image, index = push_tree(daemon, "sum/lazy")
    assert daemon.driver is not None
    expected = revisions_by_digest(daemon, "sum/lazy")
    good = settled(daemon.driver.read(summary_key("sum/lazy", index)))
    for manifest_digest in (image, index):  # as a store written before summaries existed
        key = summary_key("sum/lazy", manifest_digest)
        if damage == "missing":
            settled(daemon.driver.delete(key))
        else:
            bad = {"garbage": b"\x00{not json", "truncated": good[:len(good) // 2],
                   "wrong type": good.replace(b'"size":', b'"size":"many","was":'),
                   "other version": good.replace(b'"version":1', b'"version":99')}[damage]
            settled(daemon.driver.write(key, bad))
    assert revisions_by_digest(daemon, "sum/lazy") == expected
    assert settled(daemon.driver.read(summary_key("sum/lazy", index))) == good
    assert read_summary(daemon, "sum/lazy", image).media_type == OCI_MANIFEST


def test_a_filesystem_store_written_before_summaries_is_listed(tmp_path: Any) -> None:
    """On disk, as a store written by an earlier version: no summaries at all."""
    root = str(tmp_path / "store")
    before = InMemoryDaemon(root=root)
    image, index = push_tree(before, "sum/disk")
    expected = revisions_by_digest(before, "sum/disk")
    summaries = tmp_path / "store" / "repositories" / "sum" / "disk" / "_manifests" / "summaries"
    assert sorted(p.name for p in summaries.rglob("*") if p.is_file()) == sorted([image[7:], index[7:]])
    for stored in summaries.rglob("*"):
        if stored.is_file():
            stored.unlink()
    after = InMemoryDaemon(root=root)
    assert revisions_by_digest(after, "sum/disk") == expected
    assert sorted(p.name for p in summaries.rglob("*") if p.is_file()) == sorted([image[7:], index[7:]])


def test_a_summary_that_cannot_be_written_still_lists(daemon: InMemoryDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    image, index = push_tree(daemon, "sum/full")
    expected = revisions_by_digest(daemon, "sum/full")
    driver = daemon.driver
    assert driver is not None
    for manifest_digest in (image, index):
        settled(driver.delete(summary_key("sum/full", manifest_digest)))
    real_write = driver.write

    def full(key: str, data: bytes) -> Deferred[None]:
        if "/_manifests/summaries/" in key:
            return fail(OutOfSpace(key))
        return real_write(key, data)

    monkeypatch.setattr(driver, "write", full)
    assert revisions_by_digest(daemon, "sum/full") == expected
    assert settled(driver.stat(summary_key("sum/full", index))) is None


def test_a_deleted_revision_loses_its_summary(daemon: InMemoryDaemon) -> None:
    image, index = push_tree(daemon, "sum/deleted")
    assert daemon.request("DELETE", f"/v2/sum/deleted/manifests/{index}").status == 202
    assert daemon.driver is not None
    assert settled(daemon.driver.stat(summary_key("sum/deleted", index))) is None
    assert settled(daemon.driver.stat(summary_key("sum/deleted", image))) is not None


# -- paging of _revisions ------------------------------------------------------------------


def push_many(d: InMemoryDaemon, namespace: str, count: int) -> list[str]:
    """``count`` manifests pushed one second apart; their digests, in the order of their text
    (the order of ``_revisions``)."""
    push_blob(d, namespace, b"{}")
    pushed = []
    for i in range(count):
        body = image_manifest(b"{}", config_type=OCI_EMPTY, artifactType="application/x.test",
                              annotations={"n": str(i)})
        pushed.append(push_manifest(d, namespace, digest(body), body))
        d.reactor.advance(1)
    return sorted(pushed)


def test_revisions_are_paged_with_link_headers(daemon: InMemoryDaemon) -> None:
    in_order = push_many(daemon, "page/rev", 7)
    whole = daemon.request("GET", "/v2/_ext/page/rev/_revisions")
    assert "link" not in whole.headers
    assert [r["digest"] for r in whole.json()["revisions"]] == in_order

    items, links = follow(daemon, "/v2/_ext/page/rev/_revisions?n=3", "revisions")
    assert [r["digest"] for r in items] == in_order
    assert [parse_qs(urlsplit(link).query) for link in links] == [
        {"n": ["3"], "last": [in_order[2]]}, {"n": ["3"], "last": [in_order[5]]}]
    assert all(urlsplit(link).path == "/v2/_ext/page/rev/_revisions" for link in links)
    exact = daemon.request("GET", "/v2/_ext/page/rev/_revisions?n=7")
    assert len(exact.json()["revisions"]) == 7 and "link" not in exact.headers


def test_revisions_have_a_default_page_size(daemon: InMemoryDaemon) -> None:
    in_order = push_many(daemon, "page/default", DEFAULT_PAGE + 1)
    first = daemon.request("GET", "/v2/_ext/page/default/_revisions")
    assert [r["digest"] for r in first.json()["revisions"]] == in_order[:DEFAULT_PAGE]
    assert f"last={in_order[DEFAULT_PAGE - 1]}" in first.headers["link"]


@pytest.mark.parametrize(("query", "status", "code"), [
    ("n=0", 400, "PAGINATION_NUMBER_INVALID"),
    ("n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ("n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("n=%EF%BC%91", 400, "PAGINATION_NUMBER_INVALID"),  # a fullwidth digit
    ("n=9999999999999999999999", 400, "PAGINATION_NUMBER_INVALID"),
    ("last=latest", 400, "DIGEST_INVALID"),
    ("last=sha256:" + "0" * 5000, 400, "DIGEST_INVALID"),
    ("last=sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
])
def test_hostile_revision_pages_are_refused(shared_daemon: InMemoryDaemon, query: str, status: int,
                                            code: str) -> None:
    push_many(shared_daemon, "page/hostile", 1)
    assert_error(shared_daemon.request("GET", f"/v2/_ext/page/hostile/_revisions?{query}"), status, code)


# -- paging of referrers -------------------------------------------------------------------


def push_referrers(d: InMemoryDaemon, namespace: str, count: int) -> tuple[str, list[str]]:
    """An image and ``count`` referrers of it (alternately of two artifact types); returns
    the subject digest and the referrers' digests sorted."""
    subject = push_image(d, namespace, "base")
    push_blob(d, namespace, b"{}")
    referrers = []
    for i in range(count):
        body = image_manifest(b"{}", config_type=OCI_EMPTY, subject=subject,
                              artifactType=f"application/x.{'sig' if i % 2 else 'sbom'}", annotations={"n": str(i)})
        referrers.append(push_manifest(d, namespace, digest(body), body))
    return digest(subject), sorted(referrers)


def test_referrers_are_paged_with_link_headers(daemon: InMemoryDaemon) -> None:
    subject, referrers = push_referrers(daemon, "page/refs", 7)
    items, links = follow(daemon, f"/v2/page/refs/referrers/{subject}?n=2", "manifests")
    assert [entry["digest"] for entry in items] == referrers
    assert len(links) == 3
    whole = daemon.request("GET", f"/v2/page/refs/referrers/{subject}")
    assert [entry["digest"] for entry in whole.json()["manifests"]] == referrers and "link" not in whole.headers


def test_filtered_referrer_pages_keep_the_filter(daemon: InMemoryDaemon) -> None:
    subject, _ = push_referrers(daemon, "page/filtered", 9)
    expected = sorted(entry["digest"] for entry in daemon.request(
        "GET", f"/v2/page/filtered/referrers/{subject}?artifactType=application/x.sig").json()["manifests"])
    assert len(expected) == 4
    items, links = follow(daemon, f"/v2/page/filtered/referrers/{subject}?artifactType=application/x.sig&n=3",
                          "manifests")
    assert [entry["digest"] for entry in items] == expected
    assert links and all(parse_qs(urlsplit(link).query)["artifactType"] == ["application/x.sig"] for link in links)


@pytest.mark.parametrize(("query", "code"), [
    ("n=0", "PAGINATION_NUMBER_INVALID"), ("n=x", "PAGINATION_NUMBER_INVALID"), ("n=%2B1", "PAGINATION_NUMBER_INVALID"),
    ("last=nope", "DIGEST_INVALID"), ("last=sha256:" + "g" * 64, "DIGEST_INVALID"),
])
def test_hostile_referrer_pages_are_refused(shared_daemon: InMemoryDaemon, query: str, code: str) -> None:
    assert_error(shared_daemon.request("GET", f"/v2/any/referrers/sha256:{'0' * 64}?{query}"), 400, code)


# -- large and hostile manifests -----------------------------------------------------------


def large_manifest(d: InMemoryDaemon, namespace: str) -> bytes:
    """A valid image manifest larger than the inline parsing limit."""
    push_blob(d, namespace, b"{}")
    return image_manifest(b"{}", config_type=OCI_EMPTY, artifactType="application/x.big",
                          annotations={f"key.{i}": "v" * 40 for i in range(2000)})


def test_a_large_manifest_is_hashed_and_parsed_on_the_io_pool(daemon: InMemoryDaemon,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    body = large_manifest(daemon, "big/pool")
    assert len(body) > 64 * 1024
    jobs: list[str] = []
    real = daemon.pools.io.run

    def recording(function: Any, *args: Any) -> Any:
        jobs.append(function.__name__)
        return real(function, *args)

    monkeypatch.setattr(daemon.pools.io, "run", recording)
    pushed = push_manifest(daemon, "big/pool", "big", body)
    assert pushed == digest(body)
    assert jobs == ["of", "parse_manifest"]
    small = image_manifest(b"{}", config_type=OCI_EMPTY, artifactType="application/x.small")
    push_manifest(daemon, "big/pool", "small", small)
    assert jobs == ["of", "parse_manifest"]  # small ones stay inline
    assert daemon.request("GET", "/v2/big/pool/manifests/big").body == body


@pytest.mark.parametrize("shape", ["deep", "deep and large", "deep and sparse", "dense lists", "dense in an object",
                                   "many objects"])
def test_nested_json_is_manifest_invalid(shared_daemon: InMemoryDaemon, shape: str) -> None:
    size = 1024 * 1024
    body = {
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "deep and large": b"[" * (size // 2) + b"]" * (size // 2),
        "deep and sparse": b'{"schemaVersion":2,"a":' + (b"[" + b" " * 100) * 5000 + b"]" * 5000 + b"}",
        "dense lists": b"[" + b"[]," * (size // 3) + b"[]]",
        "dense in an object": b'{"schemaVersion":2,"layers":[' + b"[[[]]]," * (size // 7) + b"[]]}",
        "many objects": b'{"schemaVersion":2,"layers":[' + b"{}," * (size // 3) + b"{}]}",
    }[shape]
    response = shared_daemon.request("PUT", "/v2/hostile/nested/manifests/latest", body,
                                     {"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_dense_body_is_refused_as_it_arrives(daemon: InMemoryDaemon,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     chunked: bool) -> None:
    jobs: list[str] = []
    real = daemon.pools.io.run

    def recording(function: Any, *args: Any) -> Any:
        jobs.append(function.__name__)
        return real(function, *args)

    monkeypatch.setattr(daemon.pools.io, "run", recording)
    body = b'{"schemaVersion":2,"layers":[' + b"[[]]," * 200_000 + b"[]]}"
    sent = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = daemon.request("PUT", "/v2/dense/early/manifests/latest", sent, {"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "MANIFEST_INVALID")
    assert jobs == []  # without a Content-Length, the size limit bounds the body: still certain
    assert daemon.request("GET", "/v2/dense/early/manifests/latest").status == 404


# -- tags and parents of a page, from back-references ---------------------------------------


def tags_by_digest(d: InMemoryDaemon, namespace: str) -> dict[str, list[str]]:
    return {key: entry["tags"] for key, entry in revisions_by_digest(d, namespace).items()}


def test_tags_follow_re_points_and_deletions(daemon: InMemoryDaemon) -> None:
    first = digest(push_image(daemon, "links/tags", "a", seed=1))
    second = digest(push_image(daemon, "links/tags", "b", seed=2))
    push_manifest(daemon, "links/tags", "c", push_image(daemon, "links/tags", "c", seed=1))
    assert tags_by_digest(daemon, "links/tags") == {first: ["a", "c"], second: ["b"]}
    push_manifest(daemon, "links/tags", "a", push_image(daemon, "links/tags", "b", seed=2))  # re-point a
    assert tags_by_digest(daemon, "links/tags") == {first: ["c"], second: ["a", "b"]}
    assert daemon.request("DELETE", "/v2/links/tags/manifests/b").status == 202
    assert tags_by_digest(daemon, "links/tags") == {first: ["c"], second: ["a"]}
    assert daemon.request("DELETE", f"/v2/links/tags/manifests/{second}").status == 202
    assert tags_by_digest(daemon, "links/tags") == {first: ["c"]}
    assert daemon.driver is not None
    tagged = paths.tagged_dir("links/tags", Digest.parse(second))
    assert settled(daemon.driver.children(tagged)) == []  # removed with the tags


def test_a_stale_back_reference_is_never_shown(daemon: InMemoryDaemon) -> None:
    """What a crash between the steps of a tag update leaves behind: a back-reference to a tag
    that points elsewhere, or to a tag that does not exist."""
    first = digest(push_image(daemon, "links/stale", "a", seed=1))
    second = digest(push_image(daemon, "links/stale", "b", seed=2))
    assert daemon.driver is not None
    settled(daemon.driver.write(paths.tagged("links/stale", Digest.parse(first), "b"), b""))
    settled(daemon.driver.write(paths.tagged("links/stale", Digest.parse(first), "gone"), b""))
    settled(daemon.driver.write(paths.parent("links/stale", Digest.parse(first), Digest.parse(second)), b""))
    listed = revisions_by_digest(daemon, "links/stale")
    assert listed[first]["tags"] == ["a"] and listed[second]["tags"] == ["b"]
    assert listed[first]["parent"] is None and listed[first]["parents"] == []


def test_a_deleted_index_is_no_parent(daemon: InMemoryDaemon) -> None:
    image, index = push_tree(daemon, "links/parent")
    listed = revisions_by_digest(daemon, "links/parent")
    assert listed[image]["parent"] == index
    assert listed[image]["platform"] == {"architecture": "arm64", "os": "linux"}
    assert daemon.request("DELETE", f"/v2/links/parent/manifests/{index}").status == 202
    assert revisions_by_digest(daemon, "links/parent")[image]["parent"] is None


def test_a_store_written_before_back_references_lists_the_same(daemon: InMemoryDaemon) -> None:
    image, index = push_tree(daemon, "links/old")
    attestation = image_manifest(b"{}", config_type=OCI_EMPTY)
    push_blob(daemon, "links/old", b"{}")
    attested = push_manifest(daemon, "links/old", digest(attestation), attestation)
    image_body = push_image(daemon, "links/old", "image")
    docker_index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, image_body), {**descriptor(OCI_MANIFEST, attestation),
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": image}}]}).encode()
    push_manifest(daemon, "links/old", "attested", docker_index, OCI_INDEX)
    push_image(daemon, "links/old", "also", seed=0)
    linked = revisions_by_digest(daemon, "links/old")
    assert linked[image]["tags"] == ["also", "image"] and linked[index]["tags"] == ["multi"]
    assert [r["digest"] for r in linked[image]["referrers"]] == [attested]  # as BuildKit writes them
    assert len(linked[image]["parents"]) == 2 and linked[attested]["parents"] != []
    assert daemon.driver is not None
    settled(daemon.driver.delete(paths.linked("links/old")))
    settled(daemon.driver.delete_tree(f"{paths.namespace_dir('links/old')}/_manifests/tagged"))
    settled(daemon.driver.delete_tree(f"{paths.namespace_dir('links/old')}/_manifests/parents"))
    assert revisions_by_digest(daemon, "links/old") == linked
    items, _ = follow(daemon, "/v2/_ext/links/old/_revisions?n=2", "revisions")
    assert {item["digest"]: item for item in items} == linked
    push_image(daemon, "links/old", "later", seed=0)  # an old namespace stays listed the old way
    assert revisions_by_digest(daemon, "links/old")[image]["tags"] == ["also", "image", "later"]


# -- namespace counts of _repositories -----------------------------------------------------


def test_repository_namespace_counts_are_bounded(daemon: InMemoryDaemon) -> None:
    from angosd.http.extensions import COUNT_LIMIT
    for i in range(COUNT_LIMIT + 1):
        push_image(daemon, f"many/n{i:02d}", "t")
    for i in range(2):
        push_image(daemon, f"few/n{i}", "t")
    listed = {r["name"]: r for r in daemon.request("GET", "/v2/_ext/_repositories").json()["repositories"]}
    assert (listed["many"]["namespaces"], listed["many"]["namespaces_more"]) == (COUNT_LIMIT, True)
    assert (listed["few"]["namespaces"], listed["few"]["namespaces_more"]) == (2, False)
