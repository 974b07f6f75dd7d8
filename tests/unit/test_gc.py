"""Garbage collection over the memory driver and a fake clock: what is garbage, the grace
period, marks, writers racing a sweep, full disks, leftovers of interrupted passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.names import Reference
from angosd.registry import gc, paths
from angosd.registry.gc import GarbageCollector, GcReport, interval_for, manifest_references
from angosd.registry.registry import Limits, Registry
from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.memory import MemoryDriver
from angosd.storage.pools import BoundedPool
from tests.unit.helpers import fired, push_blob, run

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
START = 1_700_000_000
GRACE = 300


class HookedDriver(MemoryDriver):
    """A memory driver that runs ``after_move(source, destination)`` after each move."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self.after_move: Callable[[str, str], None] = lambda _source, _destination: None

    def move(self, source: str, destination: str) -> Deferred[None]:
        result = super().move(source, destination)
        self.after_move(source, destination)
        return result


class Store:
    """A registry, its driver, a fake clock and a collector over them."""

    def __init__(self, grace: int = GRACE, capacity: int | None = None) -> None:
        self.driver = HookedDriver(capacity)
        self.clock = Clock()
        self.clock.advance(START)
        self.registry = Registry(self.driver, self.clock, Limits())
        self.grace = grace
        self.collector = GarbageCollector(self.driver, self.registry.blobs, self.clock, lambda: self.grace)

    def collect(self, dry_run: bool = False) -> GcReport:
        return run(self.collector.collect(dry_run))

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def collect_twice(self) -> GcReport:
        """Mark, wait out the grace period, sweep."""
        self.collect()
        self.later(self.grace + 1)
        return self.collect()

    def blob(self, namespace: str, data: bytes) -> Digest:
        return push_blob(self.registry, namespace, data)

    def manifest(self, namespace: str, reference: str, body: bytes, media_type: str = mt.OCI_MANIFEST) -> Digest:
        return run(self.registry.manifests.put(namespace, Reference.parse(reference), media_type, body)).digest

    def image(self, namespace: str, reference: str, layer: bytes, **extra: Any) -> Digest:
        self.blob(namespace, b"{}")
        self.blob(namespace, layer)
        return self.manifest(namespace, reference, image(layer, **extra))

    def exists(self, digest: Digest) -> bool:
        return fired(self.driver.stat(paths.blob_data(digest))) is not None

    def snapshot(self) -> dict[str, bytes]:
        """Every object of the store with its bytes."""
        return {f"{top}/{key}": fired(self.driver.read(f"{top}/{key}"))
                for top in ("blobs", "repositories", "_gc", "_quarantine")
                for key in fired(self.driver.walk(top))}

    def blob_bytes(self) -> int:
        """Sum of the sizes of every stored blob's data (what GC frees)."""
        return sum(fired(self.driver.stat(f"blobs/{key}")) or 0
                   for key in fired(self.driver.walk("blobs")) if key.endswith("/data"))


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)}


def image(layer: bytes, *, subject: bytes | None = None, config: bytes = b"{}") -> bytes:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                                "config": descriptor(CONFIG_TYPE, config), "layers": [descriptor(LAYER_TYPE, layer)]}
    if subject is not None:
        document["subject"] = descriptor(mt.OCI_MANIFEST, subject)
    return json.dumps(document, indent=1).encode()


def index(*children: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                       "manifests": [descriptor(mt.OCI_MANIFEST, child) for child in children]}).encode()


# What is garbage ---------------------------------------------------------------------------


def test_an_owned_blob_is_never_marked() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    report = store.collect_twice()
    assert (report.blobs, report.live, report.marked, report.reclaimed) == (1, 1, 0, 0)
    assert store.exists(digest)
    assert fired(store.driver.walk(paths.GC_MARKS)) == []


def test_an_unowned_unreferenced_blob_is_marked_then_reclaimed_after_the_grace_period() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))

    first = store.collect()
    assert (first.marked, first.reclaimed) == (1, 0)
    assert store.exists(digest)
    store.later(GRACE - 10)
    second = store.collect()
    assert (second.pending, second.reclaimed) == (1, 0)
    store.later(11)
    third = store.collect()
    assert (third.reclaimed, third.reclaimed_bytes) == (1, len(b"layer"))
    assert not store.exists(digest)
    # The whole directory goes, and the mark with it.
    assert fired(store.driver.children(f"blobs/sha256/{digest.hex[:2]}")) == []
    assert fired(store.driver.walk("_gc")) == []


def test_a_layer_revoked_by_its_namespace_stays_while_a_manifest_references_it() -> None:
    store = Store()
    store.image("a", "v1", b"layer-a")
    layer = Digest.of(b"layer-a")
    run(store.registry.blobs.revoke("a", layer))  # DELETE /v2/a/blobs/<layer>
    report = store.collect_twice()
    assert report.reclaimed == 0
    assert store.exists(layer)
    assert fired(store.driver.stat(paths.gc_mark(layer))) is None


def test_a_manifest_referenced_as_an_index_child_elsewhere_stays() -> None:
    store = Store()
    child = image(b"layer-c")
    child_digest = store.image("a", str(Digest.of(child)), b"layer-c")
    store.manifest("b", "multi", index(child), mt.OCI_INDEX)
    run(store.registry.manifests.delete("a", Reference(digest=child_digest)))
    assert store.collect_twice().reclaimed == 0
    assert store.exists(child_digest)


def test_deleting_a_manifest_frees_its_bytes_but_not_its_owned_layers() -> None:
    store = Store()
    digest = store.image("ns", "v1", b"layer")
    run(store.registry.manifests.delete("ns", Reference(digest=digest)))
    report = store.collect_twice()
    assert report.reclaimed == 1
    assert not store.exists(digest)
    assert store.exists(Digest.of(b"layer"))


def test_a_subject_is_not_kept_alive_by_its_referrer() -> None:
    store = Store()
    subject = image(b"subject-layer")
    subject_digest = store.image("ns", "v1", b"subject-layer")
    store.image("ns", "sig", b"signature", subject=subject)
    run(store.registry.manifests.delete("ns", Reference(digest=subject_digest)))
    store.collect_twice()
    assert not store.exists(subject_digest)


def test_manifest_references_are_config_layers_children_but_not_the_subject() -> None:
    body = image(b"l", subject=b"s")
    assert manifest_references(body) == {Digest.of(b"{}"), Digest.of(b"l")}
    assert manifest_references(index(b"x", b"y")) == {Digest.of(b"x"), Digest.of(b"y")}
    with pytest.raises(ValueError):
        manifest_references(b"not json")
    with pytest.raises(ValueError):
        manifest_references(b"[1]")


def test_an_unreadable_manifest_stops_sweeping_but_not_marking() -> None:
    store = Store()
    digest = store.blob("ns", b"orphan")
    run(store.registry.blobs.revoke("ns", digest))
    broken = store.manifest("ns", "v1", image(b"x"))
    fired(store.driver.write(paths.blob_data(broken), b"\x00garbage"))
    report = store.collect_twice()
    assert report.reclaimed == 0 and report.reclaimable == 1
    assert report.unreadable == [f"ns@{broken}"]
    assert store.exists(digest)


def test_dry_run_writes_nothing_and_counts_what_is_garbage_now() -> None:
    store = Store()
    digest = store.blob("ns", b"orphan")
    run(store.registry.blobs.revoke("ns", digest))
    before = store.snapshot()
    report = store.collect(dry_run=True)
    assert (report.reclaimable, report.reclaimable_bytes, report.marked) == (1, 6, 0)
    assert store.snapshot() == before


# Writers racing the collector ----------------------------------------------------------------


def test_a_blob_reuploaded_after_it_was_marked_is_kept() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()  # marked
    store.later(GRACE + 1)
    store.blob("other", b"layer")  # touches: the mark goes
    assert fired(store.driver.stat(paths.gc_mark(digest))) is None
    assert store.collect().reclaimed == 0
    assert run(store.registry.blobs.owns("other", digest))


def test_a_manifest_push_touches_what_it_references() -> None:
    store = Store()
    layer = store.blob("ns", b"layer")
    config = store.blob("ns", b"{}")
    for digest in (layer, config):
        run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    assert fired(store.driver.stat(paths.gc_mark(layer))) is not None
    store.later(GRACE + 1)
    store.manifest("ns", "v1", image(b"layer"))  # references both without owning them
    assert fired(store.driver.walk(paths.GC_MARKS)) == []
    assert store.collect().reclaimed == 0
    assert store.exists(layer) and store.exists(config)


def test_a_mark_made_during_a_pass_is_not_swept_by_that_pass_even_with_no_grace() -> None:
    store = Store(grace=0)
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    assert store.collect().reclaimed == 0
    store.later(0.001)
    assert store.collect().reclaimed == 1


def test_an_upload_completing_while_the_sweep_decides_is_put_back() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    store.later(GRACE + 1)

    def upload_meanwhile(_source: str, destination: str) -> None:
        if destination.startswith(paths.GC_TRASH):
            store.driver.after_move = lambda _s, _d: None
            push_blob(store.registry, "late", b"layer")  # stores the bytes again, touches, grants

    store.driver.after_move = upload_meanwhile
    report = store.collect()
    assert (report.reclaimed, report.restored) == (0, 1)
    assert store.exists(digest)
    assert run(store.registry.blobs.owns("late", digest))
    assert fired(store.driver.walk(paths.GC_TRASH)) == []


def test_a_grant_while_the_blob_is_in_the_trash_merges_with_new_bytes() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    store.later(GRACE + 1)

    def rewrite_meanwhile(_source: str, destination: str) -> None:
        if destination.startswith(paths.GC_TRASH):
            store.driver.after_move = lambda _s, _d: None
            run(store.registry.blobs.store_small(digest, b"layer"))  # a writer stores the bytes again

    store.driver.after_move = rewrite_meanwhile
    assert store.collect().restored == 1
    assert fired(store.driver.read(paths.blob_data(digest))) == b"layer"
    assert fired(store.driver.walk(paths.GC_TRASH)) == []


def test_a_grant_while_the_blob_is_in_the_trash_fails_and_the_blob_comes_back() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    store.later(GRACE + 1)

    def mount_meanwhile(_source: str, destination: str) -> None:
        if destination.startswith(paths.GC_TRASH):
            store.driver.after_move = lambda _s, _d: None
            with pytest.raises(StorageError):  # never a success for bytes that are not there
                run(store.registry.blobs.grant("late", digest))

    store.driver.after_move = mount_meanwhile
    assert store.collect().restored == 1
    assert run(store.registry.blobs.owns("late", digest))  # the sweep saw the grant and put the bytes back


def test_bytes_stored_while_the_emptied_directory_is_removed_are_put_back() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    store.later(GRACE + 1)

    def store_meanwhile(source: str, destination: str) -> None:
        if source == paths.blob_dir(digest):  # the directory moved aside held new bytes and an owner
            store.driver.after_move = lambda _s, _d: None
            fired(store.driver.write(f"{destination}/data", b"layer"))
            fired(store.driver.write(f"{destination}/owners/late", b""))

    store.driver.after_move = store_meanwhile
    store.collect()
    assert store.exists(digest)
    assert fired(store.driver.children(paths.blob_owners(digest))) == ["late"]
    assert fired(store.driver.walk(paths.GC_TRASH)) == []


def test_a_driver_without_directories_still_reclaims() -> None:
    class Flat(HookedDriver):
        def move(self, source: str, destination: str) -> Deferred[None]:
            if fired(self.stat(source)) is None:
                return fail(PathNotFound(source))  # like S3: a prefix is not an object
            return super().move(source, destination)

    store = Store()
    store.driver.__class__ = Flat
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    assert store.collect_twice().reclaimed == 1
    assert not store.exists(digest)
    assert fired(store.driver.walk("_gc")) == []


def test_grant_refuses_when_the_bytes_are_gone() -> None:
    store = Store()
    with pytest.raises(StorageError, match="reclaimed"):
        run(store.registry.blobs.grant("ns", Digest.of(b"never stored")))


# Full disks and interrupted passes -----------------------------------------------------------


def test_a_full_disk_keeps_marks_in_memory_and_still_reclaims() -> None:
    store = Store(capacity=4096)
    store.blob("ns", b"x" * 3000)
    digest = Digest.of(b"x" * 3000)
    run(store.registry.blobs.revoke("ns", digest))
    store.driver.capacity = store.driver._usage()  # nothing more fits
    assert store.collect().marked == 1
    assert fired(store.driver.stat(paths.gc_mark(digest))) is None  # could not be written
    store.later(GRACE + 1)
    assert store.collect().reclaimed == 1
    assert not store.exists(digest)


def test_a_memory_mark_is_withdrawn_by_a_touch() -> None:
    store = Store(capacity=4096)
    digest = store.blob("ns", b"x" * 3000)
    run(store.registry.blobs.revoke("ns", digest))
    store.driver.capacity = store.driver._usage()
    store.collect()
    run(store.registry.blobs.touch(digest))
    store.later(GRACE + 1)
    report = store.collect()
    assert (report.reclaimed, report.marked) == (0, 1)


def test_a_sweep_cut_short_is_finished_by_the_next_pass() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    mark = json.loads(fired(store.driver.read(paths.gc_mark(digest))))
    fired(store.driver.move(paths.blob_dir(digest), paths.gc_trash(digest, mark["token"])))  # then: kill -9
    store.collect()
    assert fired(store.driver.walk("_gc")) == []
    assert not store.exists(digest)


def test_a_trashed_blob_that_gained_an_owner_is_put_back_by_the_next_pass() -> None:
    store = Store()
    digest = store.blob("ns", b"layer")
    run(store.registry.blobs.revoke("ns", digest))
    store.collect()
    mark = json.loads(fired(store.driver.read(paths.gc_mark(digest))))
    trash = paths.gc_trash(digest, mark["token"])
    fired(store.driver.move(paths.blob_dir(digest), trash))
    fired(store.driver.write(f"{trash}/owners/late", b""))  # a grant landed in the moved directory
    fired(store.driver.write(paths.owned_blob("late", digest), b""))
    store.collect()
    assert store.exists(digest)
    assert run(store.registry.blobs.owns("late", digest))
    assert fired(store.driver.walk(paths.GC_TRASH)) == []


def test_an_orphan_mark_is_forgotten() -> None:
    store = Store()
    digest = Digest.of(b"gone")
    fired(store.driver.write(paths.gc_mark(digest), b'{"since": 1, "token": "t"}'))
    store.collect()
    assert fired(store.driver.walk("_gc")) == []


def test_reclaimed_bytes_are_exactly_the_unreferenced_ones() -> None:
    store = Store()
    kept = store.image("ns", "keep", b"kept-layer")
    dropped = store.image("ns", "drop", b"dropped-layer-bytes")
    for digest in (dropped, Digest.of(b"dropped-layer-bytes")):
        run(store.registry.blobs.revoke("ns", digest))
    run(store.registry.manifests.delete("ns", Reference(tag="drop")))
    fired(store.driver.delete(paths.revision("ns", dropped)))
    before = store.blob_bytes()
    expected = len(image(b"dropped-layer-bytes")) + len(b"dropped-layer-bytes")
    report = store.collect_twice()
    assert report.reclaimed_bytes == expected
    assert before - store.blob_bytes() == expected
    assert store.exists(kept)


def test_the_collector_yields_to_the_reactor_and_runs_one_pass_at_a_time() -> None:
    store = Store()
    for n in range(450):
        store.blob("ns", b"blob %d" % n)
    yields: list[Deferred[None]] = []

    def cooperate() -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        yields.append(waiting)
        return waiting

    collector = GarbageCollector(store.driver, store.registry.blobs, store.clock, lambda: 0, cooperate)
    passing = Deferred.fromCoroutine(collector.collect())
    assert yields and not passing.called
    with pytest.raises(RuntimeError):
        run(collector.collect())
    while not passing.called:
        yields.pop(0).callback(None)
    assert fired(passing).live == 450


def test_interval_follows_the_grace_period_within_bounds() -> None:
    assert interval_for(0) == 1.0
    assert interval_for(300) == 300.0
    assert interval_for(86400) == 3600.0


# Sharing the reactor -------------------------------------------------------------------------


class SlowDriver(HookedDriver):
    """A memory driver whose every look costs ``cost`` seconds of a virtual clock."""

    def __init__(self, cost: float) -> None:
        super().__init__()
        self.now = 0.0
        self.cost = cost

    def read(self, key: str) -> Deferred[bytes]:
        self.now += self.cost
        return super().read(key)

    def stat(self, key: str) -> Deferred[int | None]:
        self.now += self.cost
        return super().stat(key)

    def children(self, prefix: str) -> Deferred[list[str]]:
        self.now += self.cost
        return super().children(prefix)


def test_a_pass_yields_whenever_it_has_worked_a_slice() -> None:
    store = Store()
    driver = SlowDriver(gc.SLICE / 4)
    store.driver = driver
    store.registry = Registry(driver, store.clock, Limits())
    for n in range(40):
        store.image(f"team{n % 4}/app{n}", "v1", f"layer {n}".encode())
        store.blob(f"team{n % 4}/app{n}", f"loose {n}".encode())
    stretches: list[float] = []
    last = [driver.now]

    async def cooperate() -> None:
        stretches.append(driver.now - last[0])
        last[0] = driver.now

    collector = GarbageCollector(driver, store.registry.blobs, store.clock, lambda: 0, cooperate,
                                 timer=lambda: driver.now)
    started = last[0] = driver.now
    report = run(collector.collect())
    assert report.blobs == 3 * 40 + 1  # manifests, layers, loose blobs, and the shared "{}"
    assert collector.yields == len(stretches) >= (driver.now - started) / (2 * gc.SLICE)
    # Between two yields: one slice, plus the few looks of the step that crossed it (and of
    # the phase changes); a loop over the 40 namespaces or 121 blobs without steps is far more.
    assert max(stretches) <= gc.SLICE + 8 * driver.cost


def test_large_manifests_are_parsed_on_the_cpu_pool() -> None:
    store = Store()
    big_layer = b"x" * 10
    store.blob("ns", b"{}")
    store.blob("ns", big_layer)
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": descriptor(CONFIG_TYPE, b"{}"),
                       "layers": [descriptor(LAYER_TYPE, big_layer)],
                       "annotations": {"padding": "p" * gc.PARSE_INLINE_MAX}}).encode()
    big = store.manifest("ns", "big", body)
    small = store.image("ns", "small", b"small layer")
    parsed: list[bytes] = []

    class Pool:
        def run(self, function: Callable[[bytes], Any], data: bytes) -> Deferred[Any]:
            parsed.append(data)
            return succeed(function(data))

    collector = GarbageCollector(store.driver, store.registry.blobs, store.clock, lambda: 0,
                                 cpu=cast(BoundedPool, Pool()))
    assert run(collector.scan()).referenced.__contains__(Digest.of(big_layer))
    assert parsed == [body]
    assert big in run(collector.scan()).referenced and small in run(collector.scan()).referenced
