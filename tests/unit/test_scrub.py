"""Scrub over the memory driver: every kind of damage is found, repaired or quarantined,
dry runs change nothing, and repairs that race a writer are undone."""

from __future__ import annotations

import json

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.scrub import Scrubber, ScrubReport
from angosd.registry.uploads import SETTLE_SECS, new_session_id, parse_session_id, session_created
from tests.unit.helpers import fired, run
from tests.unit.test_gc import Store, image, index


def scrub(store: Store, dry_run: bool = False, gc: bool = False) -> ScrubReport:
    return run(Scrubber(store.registry, store.clock, dry_run, store.collector if gc else None).run())


def kinds(report: ScrubReport) -> tuple[int, int, int]:
    return report.count("repair"), report.count("quarantine"), report.count("cleanup")


def healthy() -> Store:
    store = Store()
    child = image(b"child")
    store.image("app", str(Digest.of(child)), b"child")
    store.manifest("app", "multi", index(child), mt.OCI_INDEX)
    subject = image(b"subject")
    store.image("app", "v1", b"subject")
    store.image("app", "sig", b"signature", subject=subject)
    store.blob("other", b"just a blob")
    run(store.registry.uploads.start("app"))
    return store


def test_a_healthy_store_has_no_findings() -> None:
    store = healthy()
    progress: list[tuple[str, int, int]] = []
    report = run(Scrubber(store.registry, store.clock, False, store.collector,
                          lambda *event: progress.append(event)).run())
    assert report.findings == []
    assert (report.blobs, report.namespaces, report.revisions, report.tags) == (9, 2, 4, 3)
    assert report.gc is not None and report.gc.marked == 0
    assert progress[-1] == ("collecting garbage", 1, 1)
    assert ("verifying blobs", 9, 9) in progress
    assert "0 repaired, 0 quarantined, 0 cleaned up" in report.summary()


def test_a_corrupt_blob_is_quarantined_with_a_note_and_its_ownership_dropped() -> None:
    store = healthy()
    digest = Digest.of(b"just a blob")
    fired(store.driver.write(paths.blob_data(digest), b"just a blob, bit-rotted"))
    dry = scrub(store, dry_run=True)
    assert kinds(dry) == (1, 1, 0)
    assert "0 to repair" not in dry.summary() and "1 to quarantine" in dry.summary()
    assert store.exists(digest)

    report = scrub(store)
    assert kinds(report) == (1, 1, 0)
    assert not store.exists(digest)
    assert not run(store.registry.blobs.owns("other", digest))
    quarantined = fired(store.driver.walk(paths.QUARANTINE))
    assert sorted(key.rsplit("/", 1)[1] for key in quarantined) == ["note.json", "object"]
    slot = quarantined[0].split("/")[0]
    note = json.loads(fired(store.driver.read(f"{paths.QUARANTINE}/{slot}/note.json")))
    assert note["key"] == paths.blob_data(digest) and "hash" in note["reason"]
    assert scrub(store).findings == []


def test_dangling_tags_are_removed_and_dry_runs_change_nothing() -> None:
    store = healthy()
    fired(store.driver.write(paths.tag("app", "ghost"), str(Digest.of(b"nothing")).encode()))
    fired(store.driver.write(paths.tag("app", "garbled"), b"not a digest"))
    before = store.snapshot()
    assert kinds(scrub(store, dry_run=True)) == (2, 0, 0)
    assert store.snapshot() == before
    assert kinds(scrub(store)) == (2, 0, 0)
    assert run(store.registry.manifests.tags("app")) == ["multi", "sig", "v1"]
    assert fired(store.driver.walk("_gc")) == []


def test_missing_ownership_records_are_recreated() -> None:
    store = healthy()
    layer = Digest.of(b"child")
    v1 = run(store.registry.manifests.resolve("app", Reference(tag="v1")))
    fired(store.driver.delete(paths.blob_owner(layer, "app")))  # reverse record lost
    fired(store.driver.delete(paths.owned_blob("app", v1)))  # the revision's manifest not owned
    fired(store.driver.delete(paths.blob_owner(v1, "app")))
    assert kinds(scrub(store)) == (2, 0, 0)
    assert fired(store.driver.stat(paths.blob_owner(layer, "app"))) == 0
    assert run(store.registry.blobs.owns("app", v1))
    assert scrub(store).findings == []


def test_a_revision_whose_manifest_is_gone_is_quarantined_and_its_tag_removed() -> None:
    store = healthy()
    v1 = run(store.registry.manifests.resolve("app", Reference(tag="v1")))
    fired(store.driver.delete_tree(paths.blob_dir(v1)))
    report = scrub(store)
    # quarantined revision; repaired: its ownership, its tag, the referrer entry of "sig" stays valid
    assert report.count("quarantine") == 1
    assert fired(store.driver.stat(paths.revision("app", v1))) is None
    assert "v1" not in run(store.registry.manifests.tags("app"))
    assert scrub(store).findings == []


def test_referrer_entries_are_recreated_and_dangling_ones_removed() -> None:
    store = healthy()
    subject = Digest.of(image(b"subject"))
    signature = run(store.registry.manifests.resolve("app", Reference(tag="sig")))
    entry = paths.referrer("app", subject, signature)
    original = fired(store.driver.read(entry))
    fired(store.driver.delete(entry))
    fired(store.driver.write(paths.referrer("app", subject, Digest.of(b"no such")), original))
    assert kinds(scrub(store)) == (2, 0, 0)
    assert json.loads(fired(store.driver.read(entry))) == json.loads(original)
    assert [d.digest for d in run(store.registry.manifests.referrers("app", subject, None))] == [signature]


def test_leftovers_of_interrupted_writes_are_cleanups_not_repairs() -> None:
    store = healthy()
    orphan = Digest.of(b"just a blob")
    fired(store.driver.write(paths.blob_owner(orphan, "ghost"), b""))  # grant cut after the reverse record
    fired(store.driver.write(paths.blob_owner(orphan, "bad..name"), b""))
    fired(store.driver.write(paths.upload_info("app", "half-created"), b"{}"))  # kill before its data file
    report = scrub(store)
    assert kinds(report) == (0, 0, 3)
    assert fired(store.driver.children(paths.blob_owners(orphan))) == ["other"]
    assert "half-created" not in fired(store.driver.children(paths.uploads_dir("app")))


def test_a_malformed_blob_directory_is_quarantined() -> None:
    store = healthy()
    fired(store.driver.write("blobs/sha256/zz/not-a-digest/data", b"?"))
    assert kinds(scrub(store)) == (0, 1, 0)
    assert fired(store.driver.children("blobs/sha256/zz")) == []


def test_a_tag_repointed_while_scrub_removes_it_is_put_back() -> None:
    store = healthy()
    fired(store.driver.write(paths.tag("app", "racy"), str(Digest.of(b"nothing")).encode()))
    v1 = run(store.registry.manifests.resolve("app", Reference(tag="v1")))

    def repoint(source: str, _destination: str) -> None:
        if source == paths.tag("app", "racy"):
            store.driver.after_move = lambda _s, _d: None
            # the writer landed just before the move: what moved aside is now valid
            fired(store.driver.write(_destination, str(v1).encode()))

    store.driver.after_move = repoint
    scrub(store)
    assert run(store.registry.manifests.resolve("app", Reference(tag="racy"))) == v1


def test_scrub_runs_a_gc_pass() -> None:
    store = healthy()
    orphan = Digest.of(b"just a blob")
    run(store.registry.blobs.revoke("other", orphan))
    assert scrub(store, gc=True).gc.marked == 1  # type: ignore[union-attr]
    store.later(store.grace + 1)
    report = scrub(store, gc=True)
    assert report.gc is not None and report.gc.reclaimed == 1
    assert report.findings == []


def test_ownership_without_bytes_is_a_cleanup_unless_a_revision_needs_the_blob() -> None:
    store = healthy()
    interrupted = Digest.of(b"an upload killed between its claim and its rename")
    fired(store.driver.write(paths.blob_owner(interrupted, "app"), b""))
    fired(store.driver.write(paths.owned_blob("app", interrupted), b""))
    lost = Digest.of(b"child")  # a layer of a stored image: its bytes vanishing is damage
    fired(store.driver.delete(paths.blob_data(lost)))
    found: list[str] = []
    report = run(Scrubber(store.registry, store.clock, False, None,
                          found=lambda finding: found.append(finding.kind)).run())
    assert kinds(report) == (1, 0, 1)
    assert found == [finding.kind for finding in report.findings]
    assert next(f.message for f in report.findings if f.kind == "cleanup").startswith(
        f"app: ownership of {interrupted} without its bytes")
    assert not fired(store.driver.children(paths.blob_owners(interrupted)))
    assert fired(store.driver.stat(paths.owned_blob("app", interrupted))) is None
    assert scrub(store).findings == []


def test_an_unreadable_upload_session_is_left_alone_while_it_may_be_being_created() -> None:
    store = healthy()
    session = new_session_id(store.clock.seconds())
    fired(store.driver.write(paths.upload_info("app", session), b"{}"))  # the kill, or its data file comes next
    assert scrub(store).findings == []
    assert session in fired(store.driver.children(paths.uploads_dir("app")))
    store.later(SETTLE_SECS)
    assert kinds(scrub(store)) == (0, 0, 1)
    assert session not in fired(store.driver.children(paths.uploads_dir("app")))


def test_session_ids_are_uuid7_that_say_when_they_were_created() -> None:
    session = new_session_id(1_700_000_000.123)
    assert parse_session_id(session) == session
    assert session_created(session) == 1_700_000_000.123
    assert session_created("8c5f7a5e-0c4e-4b8e-9d6a-0a0b0c0d0e0f") is None  # a UUIDv4: no time
    assert len({new_session_id(1.0) for _ in range(1000)}) == 1000


def test_a_namespace_written_before_back_references_gets_them() -> None:
    store = healthy()
    manifests, driver = store.registry.manifests, store.registry.driver
    child = Digest.of(image(b"child"))
    multi = run(manifests.resolve("app", Reference(tag="multi")))
    v1 = run(manifests.resolve("app", Reference(tag="v1")))
    fired(driver.delete(paths.linked("app")))
    fired(driver.delete_tree(f"{paths.namespace_dir('app')}/_manifests/tagged"))
    fired(driver.delete_tree(f"{paths.namespace_dir('app')}/_manifests/parents"))
    assert scrub(store, dry_run=True).findings == []
    assert not run(manifests.is_linked("app"))
    assert scrub(store).findings == []
    assert run(manifests.is_linked("app"))
    assert run(manifests.tags_on("app", v1)) == ["v1"] and run(manifests.tags_on("app", multi)) == ["multi"]
    assert run(manifests.parents_of("app", child)) == [multi]
    assert not run(manifests.add_links("app"))  # once only
