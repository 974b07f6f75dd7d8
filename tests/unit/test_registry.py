"""ManifestStore and Registry over the memory driver: tags, deletes, referrers, catalog, mounts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown, DigestInvalid, ManifestUnknown, NameUnknown
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.registry import Limits, Registry, paginate
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import fired, push_blob, run

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def make_registry(namespace_allowed: Callable[[str], bool] = lambda _name: True) -> tuple[Registry, MemoryDriver]:
    driver = MemoryDriver()
    clock = Clock()
    clock.advance(1_700_000_000)
    return Registry(driver, clock, Limits(), namespace_allowed), driver


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)}


def image(layer: bytes = b"layer", *, subject: bytes | None = None, artifact_type: str | None = None,
          config_type: str = CONFIG_TYPE, annotations: dict[str, str] | None = None) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config_type, b"{}"),
        "layers": [descriptor(LAYER_TYPE, layer)],
    }
    if subject is not None:
        document["subject"] = descriptor(mt.OCI_MANIFEST, subject)
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if annotations is not None:
        document["annotations"] = annotations
    # Unusual formatting on purpose: the stored bytes must be exactly these.
    return json.dumps(document, indent=3, sort_keys=False).encode()


def put(registry: Registry, namespace: str, reference: str, body: bytes,
        content_type: str | None = mt.OCI_MANIFEST) -> Digest:
    return run(registry.manifests.put(namespace, Reference.parse(reference), content_type, body)).digest


def get(registry: Registry, namespace: str, reference: str) -> bytes:
    return run(registry.manifests.get(namespace, Reference.parse(reference))).body


# Manifests ----------------------------------------------------------------------------


def test_put_and_get_by_tag_and_digest() -> None:
    registry, _ = make_registry()
    body = image()
    digest = put(registry, "library/app", "v1", body)
    assert digest == Digest.of(body)

    by_tag = run(registry.manifests.get("library/app", Reference(tag="v1")))
    by_digest = run(registry.manifests.get("library/app", Reference(digest=digest)))
    assert by_tag == by_digest
    assert (by_tag.digest, by_tag.media_type, by_tag.body) == (digest, mt.OCI_MANIFEST, body)

    revision = run(registry.manifests.revision("library/app", digest))
    assert revision.pushed_at == 1_700_000_000
    assert (revision.subject, revision.artifact_type) == (None, CONFIG_TYPE)
    assert run(registry.manifests.tags("library/app")) == ["v1"]
    assert run(registry.blobs.owns("library/app", digest))

    # The bytes exist, but another namespace has no revision of them.
    for reference in ("v1", str(digest)):
        with pytest.raises(ManifestUnknown):
            get(registry, "library/other", reference)
    with pytest.raises(ManifestUnknown):
        get(registry, "library/app", "missing")


def test_put_by_digest_does_not_tag() -> None:
    registry, _ = make_registry()
    body = image(b"untagged")
    digest = put(registry, "ns", str(Digest.of(body)), body)
    assert get(registry, "ns", str(digest)) == body
    assert run(registry.manifests.tags("ns")) == []
    assert run(registry.manifests.list_tags("ns")) == []  # exists: it has a revision
    assert run(registry.manifests.revisions("ns")) == [digest]


def test_put_by_sha512_digest() -> None:
    registry, _ = make_registry()
    body = image(b"five-twelve")
    digest = Digest.of(body, "sha512")
    assert put(registry, "ns", str(digest), body) == digest
    assert get(registry, "ns", str(digest)) == body
    assert run(registry.manifests.revisions("ns")) == [digest]


def test_put_with_mismatched_digest_stores_nothing() -> None:
    registry, driver = make_registry()
    body = image()
    with pytest.raises(DigestInvalid):
        put(registry, "ns", str(Digest.of(b"something else")), body)
    assert fired(driver.walk("blobs")) == []
    assert fired(driver.walk("repositories")) == []


def test_retagging_moves_the_tag() -> None:
    registry, _ = make_registry()
    first = put(registry, "ns", "latest", image(b"one"))
    second = put(registry, "ns", "latest", image(b"two"))
    assert run(registry.manifests.resolve("ns", Reference(tag="latest"))) == second
    assert get(registry, "ns", str(first)) == image(b"one")
    assert run(registry.manifests.tags_of("ns")) == {second: ["latest"]}


def test_delete_by_tag_removes_only_the_tag() -> None:
    registry, _ = make_registry()
    digest = put(registry, "ns", "v1", image())
    put(registry, "ns", "v1.0", image())
    run(registry.manifests.delete("ns", Reference(tag="v1")))
    assert run(registry.manifests.tags("ns")) == ["v1.0"]
    assert get(registry, "ns", str(digest)) == image()
    assert run(registry.blobs.owns("ns", digest))
    with pytest.raises(ManifestUnknown):
        run(registry.manifests.delete("ns", Reference(tag="v1")))


def test_delete_by_digest_removes_revision_tags_referrer_and_ownership() -> None:
    registry, _ = make_registry()
    subject = put(registry, "ns", "base", image(b"base"))
    subject_body = image(b"base")
    body = image(b"sig", subject=subject_body, artifact_type="application/vnd.example.sig")
    digest = put(registry, "ns", "sig-a", body)
    put(registry, "ns", "sig-b", body)
    assert [d.digest for d in run(registry.manifests.referrers("ns", subject, None))] == [digest]

    run(registry.manifests.delete("ns", Reference(digest=digest)))
    assert run(registry.manifests.tags("ns")) == ["base"]
    for reference in ("sig-a", "sig-b", str(digest)):
        with pytest.raises(ManifestUnknown):
            get(registry, "ns", reference)
    with pytest.raises(ManifestUnknown):
        run(registry.manifests.revision("ns", digest))
    assert run(registry.manifests.referrers("ns", subject, None)) == []
    assert not run(registry.blobs.owns("ns", digest))
    assert run(registry.manifests.revisions("ns")) == [subject]
    assert get(registry, "ns", "base") == subject_body
    with pytest.raises(ManifestUnknown):
        run(registry.manifests.delete("ns", Reference(digest=digest)))


def test_delete_by_digest_with_listed_tags_reads_only_those() -> None:
    registry, driver = make_registry()
    digest = put(registry, "ns", "a", image(b"gone"))
    put(registry, "ns", "b", image(b"gone"))
    for number in range(20):
        put(registry, "ns", f"other{number}", image(f"kept {number}".encode()))
    reads: list[str] = []
    read = driver.read

    def counting(key: str) -> Any:
        reads.append(key)
        return read(key)

    driver.read = counting  # type: ignore[method-assign]
    # "b" points at the revision but is not listed: a caller that lists tags answers for them.
    run(registry.manifests.delete("ns", Reference(digest=digest), tags=["a", "other3"]))
    # Each listed tag is read before its deletion and again before its back-reference goes.
    tag_reads = sorted({key for key in reads if "/_manifests/tags/" in key})
    assert tag_reads == [paths.tag("ns", "a"), paths.tag("ns", "other3")]
    assert run(registry.manifests.tags("ns")) == ["b", *sorted(f"other{number}" for number in range(20))]
    with pytest.raises(ManifestUnknown):
        run(registry.manifests.revision("ns", digest))


def test_delete_by_digest_keeps_other_namespaces() -> None:
    registry, _ = make_registry()
    body = image()
    digest = put(registry, "one", "v1", body)
    put(registry, "two", "v1", body)
    run(registry.manifests.delete("one", Reference(digest=digest)))
    assert get(registry, "two", "v1") == body
    assert run(registry.blobs.owns("two", digest))
    assert run(registry.blobs.owners(digest)) == ["two"]


def test_referrers_with_artifact_type_filter() -> None:
    registry, _ = make_registry()
    subject_body = image(b"subject")
    subject = put(registry, "ns", "v1", subject_body)
    sbom_body = image(b"sbom", subject=subject_body, artifact_type="application/vnd.example.sbom",
                      annotations={"org.example": "yes"})
    sbom = put(registry, "ns", str(Digest.of(sbom_body)), sbom_body)
    # Without artifactType, the config media type is the artifact type...
    sig_body = image(b"sig", subject=subject_body, config_type="application/vnd.example.sig")
    sig = put(registry, "ns", str(Digest.of(sig_body)), sig_body)
    # ...unless the config is the empty descriptor.
    plain_body = image(b"plain", subject=subject_body, config_type=mt.OCI_EMPTY)
    plain = put(registry, "ns", str(Digest.of(plain_body)), plain_body)

    everything = run(registry.manifests.referrers("ns", subject, None))
    by_digest = {d.digest: d for d in everything}
    assert set(by_digest) == {sbom, sig, plain}
    assert by_digest[sbom].artifact_type == "application/vnd.example.sbom"
    assert by_digest[sbom].annotations == {"org.example": "yes"}
    assert by_digest[sbom].size == len(sbom_body)
    assert by_digest[sbom].media_type == mt.OCI_MANIFEST
    assert by_digest[sig].artifact_type == "application/vnd.example.sig"
    assert by_digest[plain].artifact_type is None

    only_sbom = run(registry.manifests.referrers("ns", subject, "application/vnd.example.sbom"))
    assert [d.digest for d in only_sbom] == [sbom]
    assert run(registry.manifests.referrers("ns", subject, "application/none")) == []
    # Referrers are per namespace, and a subject need not exist.
    assert run(registry.manifests.referrers("other", subject, None)) == []
    assert run(registry.manifests.referrers("ns", Digest.of(b"nothing"), None)) == []


# Tags and catalog ---------------------------------------------------------------------


def test_list_tags() -> None:
    registry, _ = make_registry()
    with pytest.raises(NameUnknown):
        run(registry.manifests.list_tags("never/used"))

    # Uploads and blobs alone do not make a namespace exist.
    push_blob(registry, "blobs/only", b"data")
    run(registry.uploads.start("blobs/only"))
    with pytest.raises(NameUnknown):
        run(registry.manifests.list_tags("blobs/only"))

    for tag in ("v2", "V1", "latest", "_x", "1.0"):
        put(registry, "ns", tag, image())
    assert run(registry.manifests.list_tags("ns")) == sorted(["v2", "V1", "latest", "_x", "1.0"])


def test_list_tags_after_everything_was_deleted() -> None:
    registry, _ = make_registry()
    digest = put(registry, "ns", "v1", image())
    run(registry.manifests.delete("ns", Reference(digest=digest)))
    assert not run(registry.manifests.exists("ns"))
    assert run(registry.manifests.list_tags("ns")) == []  # as distribution answers; skopeo relies on it
    with pytest.raises(NameUnknown):
        run(registry.manifests.list_tags("never"))


def test_catalog_over_nested_namespaces() -> None:
    registry, _ = make_registry()
    for namespace in ("a/b/c", "a", "a/b", "x/y", "a-b", "a.b/c"):
        put(registry, namespace, "v1", image())
    run(registry.uploads.start("uploading"))  # only an upload session
    run(registry.uploads.start("x/uploading/deep"))
    push_blob(registry, "blob/only", b"a blob")  # only a blob
    gone = put(registry, "gone/now", "v1", image())  # pushed, then deleted
    run(registry.manifests.delete("gone/now", Reference(digest=gone)))
    untagged = image(b"untagged")
    put(registry, "untagged", str(Digest.of(untagged)), untagged)

    assert run(registry.catalog()) == sorted(["a", "a-b", "a.b/c", "a/b", "a/b/c", "untagged", "x/y"])


def test_catalog_only_lists_served_namespaces() -> None:
    registry, _ = make_registry(lambda name: name.startswith("pub"))
    for namespace in ("pub", "pub/inner", "private", "private/pub"):
        put(registry, namespace, "v1", image())
    assert run(registry.catalog()) == ["pub", "pub/inner"]


def test_catalog_of_an_empty_store() -> None:
    registry, _ = make_registry()
    assert run(registry.catalog()) == []


# Mounts -------------------------------------------------------------------------------


class ReadCheck:
    """A ``may_read`` callback that records who was asked about."""

    def __init__(self, readable: set[str]) -> None:
        self.readable = readable
        self.asked: list[str] = []

    async def __call__(self, namespace: str) -> bool:
        self.asked.append(namespace)
        return namespace in self.readable


def test_mount_from_a_named_source() -> None:
    registry, _ = make_registry()
    digest = push_blob(registry, "src", b"shared layer")

    denied = ReadCheck(set())
    assert not run(registry.mount("dst", digest, "src", denied))
    assert denied.asked == ["src"]
    assert not run(registry.blobs.owns("dst", digest))

    allowed = ReadCheck({"src"})
    assert run(registry.mount("dst", digest, "src", allowed))
    assert run(registry.blobs.owns("dst", digest))
    assert sorted(run(registry.blobs.owners(digest))) == ["dst", "src"]
    handle = run(registry.blobs.open("dst", digest))
    assert fired(handle.read_all()) == b"shared layer"

    # Already owned: no permission needed.
    again = ReadCheck(set())
    assert run(registry.mount("dst", digest, "src", again))
    assert again.asked == []


def test_mount_from_a_source_that_does_not_own_the_blob() -> None:
    registry, _ = make_registry()
    digest = push_blob(registry, "owner", b"layer")
    check = ReadCheck({"other", "owner"})
    assert not run(registry.mount("dst", digest, "other", check))
    assert not run(registry.blobs.owns("dst", digest))
    # Unknown digests are not mountable from anywhere.
    assert not run(registry.mount("dst", Digest.of(b"unknown"), "owner", check))
    assert not run(registry.mount("dst", Digest.of(b"unknown"), None, check))
    # A namespace cannot mount from itself what it does not own.
    assert not run(registry.mount("dst", digest, "dst", check))


def test_mount_without_source_tries_readable_owners() -> None:
    registry, _ = make_registry()
    digest = push_blob(registry, "secret", b"common base layer")
    push_blob(registry, "public", b"common base layer")

    check = ReadCheck({"public"})
    assert run(registry.mount("dst", digest, None, check))
    assert "public" in check.asked
    assert run(registry.blobs.owns("dst", digest))

    only_secret = ReadCheck({"elsewhere"})
    assert not run(registry.mount("dst2", digest, None, only_secret))
    assert sorted(only_secret.asked) == ["dst", "public", "secret"]
    assert not run(registry.blobs.owns("dst2", digest))


def test_mount_skips_namespaces_that_are_not_served() -> None:
    registry, _ = make_registry(lambda name: name != "hidden")
    digest = push_blob(registry, "hidden", b"layer")
    check = ReadCheck({"hidden"})
    assert not run(registry.mount("dst", digest, "hidden", check))
    assert not run(registry.mount("dst", digest, None, check))
    assert check.asked == []


def test_mount_ignores_stale_ownership_markers() -> None:
    registry, driver = make_registry()
    digest = push_blob(registry, "src", b"layer")
    # A crash during revoke leaves the reverse marker without the forward one.
    fired(driver.delete(paths.owned_blob("src", digest)))
    assert run(registry.blobs.owners(digest)) == ["src"]
    assert not run(registry.mount("dst", digest, None, ReadCheck({"src"})))
    assert not run(registry.mount("dst", digest, "src", ReadCheck({"src"})))

    # Ownership of bytes that are gone is not ownership either.
    other = push_blob(registry, "src", b"collected")
    fired(driver.delete(paths.blob_data(other)))
    assert not run(registry.mount("dst", other, "src", ReadCheck({"src"})))
    with pytest.raises(BlobUnknown):
        run(registry.blobs.open("src", other))


# Pagination ---------------------------------------------------------------------------


@given(items=st.lists(st.text(max_size=6), unique=True).map(sorted), n=st.integers(1, 12))
@example(items=[], n=1)
@example(items=["a"], n=1)
@example(items=["a", "b"], n=2)
@example(items=["a", "b", "c"], n=2)
def test_following_last_reproduces_the_list(items: list[str], n: int) -> None:
    collected: list[str] = []
    last: str | None = None
    for _ in range(len(items) + 2):
        page, more = paginate(items, n, last)
        assert len(page) <= n
        collected += page
        if not more:
            break
        assert len(page) == n
        last = page[-1]
    else:
        pytest.fail("pagination did not terminate")
    assert collected == items


@given(items=st.lists(st.text(max_size=6), unique=True).map(sorted), last=st.none() | st.text(max_size=6))
def test_paginate_without_n(items: list[str], last: str | None) -> None:
    page, more = paginate(items, None, last)
    assert not more
    assert page == [item for item in items if last is None or item > last]
