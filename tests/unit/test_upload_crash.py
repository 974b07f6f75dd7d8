"""Upload completion cut at every step: by a kill (the process stops after step k), by a
garbage collection pass, or by a scrub running between two steps.

After a kill, the client must be able to go on: either the session still answers with its
true offset (and repeating the PUT completes it) or the blob is owned and readable. Scrub
finds nothing to repair in any of these states, and a collection never loses the bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUploadUnknown
from angosd.registry import paths
from angosd.registry.gc import GarbageCollector
from angosd.registry.registry import Limits, Registry
from angosd.registry.scrub import Scrubber, ScrubReport
from angosd.registry.uploads import SETTLE_SECS
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import fired, run

START = 1_700_000_000
GRACE = 300
DATA = b"layer bytes " * 1000
DIGEST = Digest.of(DATA)


class Killed(Exception):
    """The process died here: this operation and everything after it never happened."""


class SteppedDriver(MemoryDriver):
    """A memory driver that numbers its mutations (write, delete, delete_tree, move).

    With ``budget`` set, the mutation after the first ``budget`` ones raises `Killed`
    without doing anything. ``between(n)`` runs before mutation ``n`` (1-based) once
    ``watching`` is on: another actor working between two steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[str] = []
        self.budget: int | None = None
        self.watching = False
        self.between: Callable[[int], None] = lambda _n: None

    def _step(self, description: str) -> None:
        if not self.watching:
            return
        if self.budget is not None and len(self.steps) >= self.budget:
            raise Killed(description)
        self.watching = False  # the other actor's own steps are not counted
        try:
            self.between(len(self.steps) + 1)
        finally:
            self.watching = True
        self.steps.append(description)

    def write(self, key: str, data: bytes) -> Deferred[None]:
        self._step(f"write {key}")
        return super().write(key, data)

    def delete(self, key: str) -> Deferred[None]:
        self._step(f"delete {key}")
        return super().delete(key)

    def delete_tree(self, prefix: str) -> Deferred[None]:
        self._step(f"delete_tree {prefix}")
        return super().delete_tree(prefix)

    def move(self, source: str, destination: str) -> Deferred[None]:
        self._step(f"move {source} -> {destination}")
        return super().move(source, destination)


class World:
    """A store with a fake clock; `restart` is a new process over the same storage."""

    def __init__(self, before: str) -> None:
        self.driver = SteppedDriver()
        self.clock = Clock()
        self.clock.advance(START)
        self.restart()
        if before in ("owned elsewhere", "garbage"):
            self.push("other", DATA)
        if before == "garbage":  # the bytes are there, nobody owns them, a collection marked them
            run(self.registry.blobs.revoke("other", DIGEST))
            self.collect()
            assert fired(self.driver.stat(paths.gc_mark(DIGEST))) is not None
            self.clock.advance(GRACE + 1)

    def restart(self) -> None:
        self.registry = Registry(self.driver, self.clock, Limits())
        self.collector = GarbageCollector(self.driver, self.registry.blobs, self.clock, lambda: GRACE)

    def collect(self) -> None:
        run(self.collector.collect())

    def scrub(self, dry_run: bool = False) -> ScrubReport:
        return run(Scrubber(self.registry, self.clock, dry_run, self.collector).run())

    def push(self, namespace: str, data: bytes) -> None:
        session = self.started(namespace, data)
        run(self.registry.uploads.complete(namespace, session, Digest.of(data)))

    def started(self, namespace: str, data: bytes) -> str:
        """A session holding ``data`` in two chunks, not completed."""
        uploads = self.registry.uploads
        session = run(uploads.start(namespace))
        for first, part in ((0, data[:1000]), (1000, data[1000:])):
            sink = run(uploads.open_sink(namespace, session, first))
            sink.write(part)
            run(sink.finish())
        return session

    def owned(self, namespace: str) -> bool:
        if not run(self.registry.blobs.owns(namespace, DIGEST)):
            return False
        handle = run(self.registry.blobs.open(namespace, DIGEST))
        assert fired(handle.read_all()) == DATA
        return True


def completion_steps(before: str) -> list[str]:
    world = World(before)
    session = world.started("ns", DATA)
    world.driver.watching = True
    run(world.registry.uploads.complete("ns", session, DIGEST))
    return world.driver.steps


def test_completion_writes_ownership_before_the_bytes_and_drops_the_session_last() -> None:
    steps = completion_steps("new")
    session = steps[-1].split("/")[-1]
    assert steps == [
        f"delete {paths.gc_mark(DIGEST)}",  # touch
        f"write {paths.blob_owner(DIGEST, 'ns')}",
        f"write {paths.owned_blob('ns', DIGEST)}",
        f"move {paths.upload_data('ns', session)} -> {paths.blob_data(DIGEST)}",
        f"delete_tree {paths.upload_dir('ns', session)}",
    ]


BEFORE = ["new", "owned elsewhere", "garbage"]


def crash_points() -> list[tuple[str, int]]:
    return [(before, k) for before in BEFORE for k in range(len(completion_steps(before)) + 1)]


@pytest.mark.parametrize(("before", "budget"), crash_points())
@pytest.mark.parametrize("client", ["retries", "gives up"])
def test_a_kill_after_any_step_of_completion_leaves_a_resumable_upload_or_a_visible_blob(
        before: str, budget: int, client: str) -> None:
    world = World(before)
    session = world.started("ns", DATA)
    world.driver.budget = budget
    world.driver.watching = True
    completed = True
    try:
        run(world.registry.uploads.complete("ns", session, DIGEST))
    except Killed:
        completed = False
    world.driver.watching = False
    world.restart()  # hash states and in-memory marks are gone

    try:
        info = run(world.registry.uploads.info("ns", session))
    except BlobUploadUnknown:
        assert world.owned("ns"), "upload lost: the session is gone and the blob is not visible"
        resumable = False
    else:
        assert not completed
        assert info.size == len(DATA), "the session must report its true offset"
        resumable = True
        if before == "new":
            assert not world.owned("ns"), "a blob is visible before its bytes are stored"
    visible_after_kill = world.owned("ns")

    dry = world.scrub(dry_run=True)
    assert (dry.count("repair"), dry.count("quarantine")) == (0, 0), dry.findings

    if resumable and client == "retries":  # the client asks the offset (all there) and repeats the PUT
        assert run(world.registry.uploads.complete("ns", session, DIGEST)) == len(DATA)
        resumable = False
    if not resumable:
        assert world.owned("ns")
    for wait in (GRACE + 1, GRACE + 1, SETTLE_SECS):  # past the grace period, and until a remnant
        report = world.scrub()                       # of the session may be cleaned up
        assert (report.count("repair"), report.count("quarantine")) == (0, 0), report.findings
        world.clock.advance(wait)
    report = world.scrub()
    assert (report.count("repair"), report.count("quarantine")) == (0, 0), report.findings
    assert world.scrub().findings == []
    # Scrub and collection changed nothing visible. (An abandoned session's claim counts
    # where the bytes are stored anyway: they are the bytes the session verified.)
    assert world.owned("ns") == (not resumable or visible_after_kill)
    assert world.owned("other") == (before == "owned elsewhere")
    if resumable:  # abandoned: the session is still whole (prune --uploads removes it) ...
        assert run(world.registry.uploads.info("ns", session)).size == len(DATA)
        # ... and completing it even now works
        assert run(world.registry.uploads.complete("ns", session, DIGEST)) == len(DATA)
        assert world.owned("ns")


@pytest.mark.parametrize(("before", "step"), crash_points())
def test_a_collection_between_any_two_steps_of_completion_keeps_the_blob(before: str, step: int) -> None:
    world = World(before)
    session = world.started("ns", DATA)

    def collect_now(n: int) -> None:
        if n == step:
            world.collect()
            world.clock.advance(GRACE + 1)
            world.collect()

    world.driver.between = collect_now
    world.driver.watching = True
    assert run(world.registry.uploads.complete("ns", session, DIGEST)) == len(DATA)
    world.driver.watching = False
    for _ in range(3):
        world.collect()
        world.clock.advance(GRACE + 1)
    assert world.owned("ns")
    assert world.scrub().findings == []


@pytest.mark.parametrize(("before", "step"), crash_points())
def test_a_scrub_between_any_two_steps_of_completion_keeps_the_blob_owned(before: str, step: int) -> None:
    world = World(before)
    session = world.started("ns", DATA)

    def scrub_now(n: int) -> None:
        if n == step:
            report = world.scrub()
            assert (report.count("repair"), report.count("quarantine")) == (0, 0), report.findings

    world.driver.between = scrub_now
    world.driver.watching = True
    assert run(world.registry.uploads.complete("ns", session, DIGEST)) == len(DATA)
    world.driver.watching = False
    assert world.owned("ns")
    assert world.scrub().findings == []
    assert world.owned("ns")


def sweep_steps() -> int:
    world = World("garbage")
    world.driver.watching = True
    world.collect()
    assert fired(world.driver.stat(paths.blob_data(DIGEST))) is None  # reclaimed
    return len(world.driver.steps)


@pytest.mark.parametrize("step", range(1, sweep_steps() + 2))
def test_an_upload_completing_between_any_two_steps_of_a_sweep_keeps_its_blob(step: int) -> None:
    world = World("garbage")
    session = world.started("ns", DATA)
    completed: list[int] = []

    def complete_now(n: int) -> None:
        if n == step:
            completed.append(run(world.registry.uploads.complete("ns", session, DIGEST)))

    world.driver.between = complete_now
    world.driver.watching = True
    world.collect()
    world.driver.watching = False
    if not completed:  # after the sweep's last step
        completed.append(run(world.registry.uploads.complete("ns", session, DIGEST)))
    assert completed == [len(DATA)]
    for _ in range(3):
        world.collect()
        world.clock.advance(GRACE + 1)
    assert world.owned("ns")
    assert fired(world.driver.walk(paths.GC_TRASH)) == []
