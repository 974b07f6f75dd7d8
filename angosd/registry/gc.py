"""Online garbage collection: reclaim blob bytes nothing needs, while the daemon serves.

A blob is *garbage* when

- no namespace owns it: no reverse marker ``blobs/<alg>/<hh>/<hex>/owners/<ns>`` and no
  forward marker ``repositories/<ns>/_blobs/<alg>/<hex>`` anywhere; and
- no manifest revision anywhere references it: it is not a revision's own manifest, nor
  the config, a layer, a blob or a child manifest of any stored revision, in any
  namespace. A revision's ``subject`` is not a reference (a referrer does not keep its
  subject alive). References are read from the manifests themselves on every pass (no
  cache: memory must not grow with the store), so there is no reference record that
  could drift: a layer that namespace A revoked (``DELETE`` blob) stays as long as a
  manifest of A (or of anyone) still lists it. What a pass learns is kept in
  `DigestSet`s, 8 bytes a digest.

A pass never stops the world: it is a sequence of small atomic storage operations,
yielding to the reactor whenever it has worked for `SLICE` seconds, and parsing large
manifests on the ``cpu`` pool, so a request waits at most about one slice for it. It has
two phases per blob:

1. *Mark.* Garbage seen for the first time gets a candidate mark
   ``_gc/marks/<alg>/<hex>`` holding the time and a random token.
2. *Sweep.* A candidate whose mark is older than ``gc_grace_secs`` *and* older than
   this pass's reference scan is swept: the mark and the owners are re-read, the bytes
   are renamed into ``_gc/trash/``, then the mark and the owners are checked once more.
   If anything changed the bytes are put back; otherwise they are deleted, and the
   emptied blob directory is moved aside and deleted the same careful way.

Writers cooperate through `BlobStore.touch`: storing bytes, granting ownership and
pushing a manifest (for everything it references) first delete the mark. So a writer
that acts while a sweep decides is seen by the sweep's last check and the blob is put
back; a writer that acts after the last check re-creates the bytes it stores itself
(upload, manifest bytes), and `BlobStore.grant` refuses (an error, never a success)
when the bytes it grants are gone. The grace period covers the remaining case, a
manifest that references a blob nobody owns: it must land within ``gc_grace_secs`` of
the blob's last touch. A blob is therefore never deleted less than ``gc_grace_secs``
after its bytes were last written or touched, and a layer uploaded a second before its
manifest is never lost (it is owned from the moment its upload completes).

When the disk is full a mark cannot be written; the collector then keeps the mark in
memory (cleared by in-process touches), so a full store can still be collected.
Leftovers of a pass cut short (a trash entry, an orphan mark) are finished by the next
pass. Empty ``<hh>`` directories are left behind; blob directories are removed.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.concurrent import concurrently
from angosd.registry.digestset import DigestSet
from angosd.storage.errors import OutOfSpace, PathNotFound, StorageError
from angosd.storage.interface import IStorageDriver
from angosd.storage.pools import BoundedPool

_log = Logger()
T = TypeVar("T")

#: Seconds a pass works before it yields to the reactor (when it has a `Cooperate`).
SLICE = 0.00025
#: Manifests larger than this are parsed on the ``cpu`` pool (when the collector has one).
PARSE_INLINE_MAX = 16 * 1024

#: Candidates marked or swept at once (each is a few storage operations on its own blob).
CONCURRENT = 16

Cooperate = Callable[[], Awaitable[None]]


def interval_for(grace: int) -> float:
    """Seconds between two online passes for a grace period: the grace itself, 1 s to 1 h.

    A candidate is marked by one pass and swept by the first pass at least ``grace``
    later, so garbage goes within about twice the grace period.
    """
    return float(min(max(grace, 1), 3600))


def reactor_cooperator(clock: IReactorTime) -> Cooperate:
    """A `Cooperate` that lets the reactor run pending work before resuming."""
    def cooperate() -> Deferred[None]:
        return deferLater(clock, 0, lambda: None)

    return cooperate


#: Hears of each online pass: (report, None) when it completed, (None, failure) when it failed,
#: and (None, None) when it starts.
PassObserver = Callable[["GcReport | None", Any], None]


def collector_service(driver: IStorageDriver, blobs: BlobStore, clock: IReactorTime,
                      grace: Callable[[], int], observe: PassObserver | None = None,
                      cpu: BoundedPool | None = None) -> TimerService:
    """The daemon's online collector: a pass now and every `interval_for` the grace period
    (as configured at start) seconds, yielding to the reactor every `SLICE` and parsing
    large manifests on ``cpu``. ``observe`` hears of each pass (metrics)."""
    collector = GarbageCollector(driver, blobs, clock, grace, reactor_cooperator(clock), cpu=cpu)
    collector.observe = observe
    service = TimerService(interval_for(grace()), collector.collect_logged)
    service.clock = clock
    return service


# --------------------------------------------------------------------------- walking the store


async def namespaces(driver: IStorageDriver, step: Cooperate | None = None) -> list[str]:
    """Every namespace that has anything stored (manifests, blobs, referrers, uploads), sorted.
    ``step`` is awaited before each directory is listed."""
    found: list[str] = []

    async def visit(prefix: str, name: str) -> None:
        if step is not None:
            await step()
        children = await driver.children(prefix)
        if name and any(child.startswith("_") for child in children):
            found.append(name)
        for child in children:
            if not child.startswith("_"):
                await visit(f"{prefix}/{child}", f"{name}/{child}" if name else child)

    await visit(paths.REPOSITORIES, "")
    return sorted(found)


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One directory under ``blobs/``; ``digest`` is None when its name is not a digest."""

    key: str
    digest: Digest | None


async def blob_entries(driver: IStorageDriver) -> AsyncIterator[BlobEntry]:
    """Every ``blobs/<alg>/<hh>/<name>`` directory, in key order."""
    for algorithm in await driver.children(paths.BLOBS):
        for prefix in await driver.children(f"{paths.BLOBS}/{algorithm}"):
            for name in await driver.children(f"{paths.BLOBS}/{algorithm}/{prefix}"):
                digest: Digest | None
                try:
                    digest = Digest(algorithm, name)
                except OciError:
                    digest = None
                if digest is not None and name[:2] != prefix:
                    digest = None
                yield BlobEntry(f"{paths.BLOBS}/{algorithm}/{prefix}/{name}", digest)


async def owned_digests(driver: IStorageDriver, namespace: str) -> list[Digest]:
    """The digests ``namespace`` holds forward ownership markers for (malformed names skipped)."""
    return await _digests_below(driver, paths.owned_blobs_dir(namespace))


async def revision_digests(driver: IStorageDriver, namespace: str) -> list[Digest]:
    """The digests of ``namespace``'s revision records (malformed names skipped)."""
    return await _digests_below(driver, paths.revisions_dir(namespace))


async def _digests_below(driver: IStorageDriver, base: str) -> list[Digest]:
    """Every valid ``<base>/<algorithm>/<hex>`` name as a digest."""
    found = []
    for algorithm in await driver.children(base):
        for name in await driver.children(f"{base}/{algorithm}"):
            try:
                found.append(Digest(algorithm, name))
            except OciError:
                continue
    return found


def manifest_references(body: bytes) -> frozenset[Digest]:
    """What a stored manifest keeps alive: every descriptor digest in it except its subject.

    Lenient on purpose (any ``digest`` member anywhere, config, layers, blobs, child
    manifests, even unknown fields), so the result is a superset of the references and
    a newer manifest shape cannot make the collector delete what it needs. Raises
    `ValueError` when the bytes are not a JSON object.
    """
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("a manifest is a JSON object")
    found: set[Digest] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            text = value.get("digest")
            if isinstance(text, str):
                with contextlib.suppress(OciError):
                    found.add(Digest.parse(text))
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    for key, value in document.items():
        if key != "subject":
            visit(value)
    return frozenset(found)


# --------------------------------------------------------------------------- the collector


@dataclass(frozen=True, slots=True)
class Mark:
    """A candidate mark: when the blob was first seen as garbage, and a unique token."""

    since: float
    token: str

    def encode(self) -> bytes:
        return json.dumps({"since": self.since, "token": self.token}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Mark | None:
        try:
            record = json.loads(data)
            return cls(float(record["since"]), str(record["token"]))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(slots=True)
class Scan:
    """What a pass learnt from the namespaces before looking at blobs (a `DigestSet` may
    hold a digest never added: such a blob is kept, which is safe)."""

    started: float
    referenced: DigestSet = field(default_factory=DigestSet)
    owned: DigestSet = field(default_factory=DigestSet)
    #: Revisions whose manifest could not be read as JSON: nothing is swept while any exists.
    unreadable: list[str] = field(default_factory=list)


@dataclass(slots=True)
class GcReport:
    """What one pass saw and did."""

    blobs: int = 0
    live: int = 0
    marked: int = 0
    pending: int = 0
    reclaimed: int = 0
    reclaimed_bytes: int = 0
    reclaimable: int = 0
    reclaimable_bytes: int = 0
    restored: int = 0
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.blobs} blobs, {self.live} live, {self.marked} newly marked, {self.pending} in grace, "
                f"{self.reclaimed} reclaimed ({self.reclaimed_bytes} bytes)")
        if self.reclaimable:
            text += f", {self.reclaimable} reclaimable ({self.reclaimable_bytes} bytes)"
        if self.restored:
            text += f", {self.restored} kept after a concurrent write"
        if self.unreadable:
            text += f", sweeping skipped: {len(self.unreadable)} unreadable manifests"
        return text


class GarbageCollector:
    """Mark-and-sweep over a store that is in use (see the module docstring).

    ``grace`` is asked at the start of every pass (it may follow a reloaded
    configuration). ``cooperate`` is awaited whenever the pass has worked `SLICE` seconds
    (measured with ``timer``) since it last yielded; None never yields (tests on a fake
    clock, maintenance commands). Manifests above `PARSE_INLINE_MAX` bytes are parsed on
    ``cpu`` when given. One pass runs at a time per collector.
    """

    def __init__(self, driver: IStorageDriver, blobs: BlobStore, clock: IReactorTime, grace: Callable[[], int],
                 cooperate: Cooperate | None = None, cpu: BoundedPool | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._driver = driver
        self._clock = clock
        self._grace = grace
        self._cooperate = cooperate
        self._cpu = cpu
        self._timer = timer
        self._memory_marks: dict[Digest, Mark] = {}
        self._running = False
        self.observe: PassObserver | None = None
        self._slice_started = timer()
        #: Times this collector yielded to the reactor (for tests and figures).
        self.yields = 0
        blobs.touch_listeners.append(self._touched)

    def _touched(self, digest: Digest) -> None:
        self._memory_marks.pop(digest, None)

    async def _step(self) -> None:
        if self._cooperate is None or self._timer() - self._slice_started < SLICE:
            return
        self.yields += 1
        await self._cooperate()
        self._slice_started = self._timer()

    # -- one pass ----------------------------------------------------------------------------

    async def collect(self, dry_run: bool = False) -> GcReport:
        """Run one pass. With ``dry_run`` nothing is written: candidates that a real pass
        would sweep now, or mark, are counted as reclaimable (grace ignored)."""
        if self._running:
            raise RuntimeError("a garbage collection pass is already running")
        self._running = True
        try:
            return await self._collect(dry_run)
        finally:
            self._running = False

    def collect_logged(self) -> Deferred[None]:
        """A pass whose failure is logged, never raised (for a `TimerService`); ``observe``
        (when set) hears of its start and of its report or failure."""
        observe = self.observe
        if observe is not None:
            observe(None, None)

        def done(report: GcReport) -> None:
            if report.reclaimed or report.restored or report.unreadable:
                _log.info("garbage collection: {summary}", summary=report.summary())
            if observe is not None:
                observe(report, None)

        def failed(failure: Any) -> None:
            _log.failure("garbage collection pass failed", failure)
            if observe is not None:
                observe(None, failure)

        return ensureDeferred(self.collect()).addCallbacks(done, failed)

    async def _collect(self, dry_run: bool) -> GcReport:
        report = GcReport()
        grace = max(0, int(self._grace()))
        scan = await self.scan()
        report.unreadable = scan.unreadable
        marks = await self._read_marks()
        for marked, memory_mark in self._memory_marks.items():
            marks.setdefault(marked, memory_mark)
        if not dry_run:
            await self._recover_trash(scan, marks)
        now = self._clock.seconds()
        unseen_marks = set(marks)
        to_mark: list[Digest] = []
        to_sweep: list[tuple[Digest, Mark, int]] = []
        async for entry in blob_entries(self._driver):
            await self._step()
            if entry.digest is None:
                continue
            digest = entry.digest
            size = await self._driver.stat(paths.blob_data(digest))
            if size is None:
                continue
            unseen_marks.discard(digest)
            report.blobs += 1
            owners = await self._driver.children(paths.blob_owners(digest))
            if owners or digest in scan.referenced or digest in scan.owned:
                report.live += 1
                if digest in marks and not dry_run:
                    await self._unmark(digest)
                continue
            mark = marks.get(digest)
            if dry_run:
                report.reclaimable += 1
                report.reclaimable_bytes += size
                continue
            if mark is None:
                to_mark.append(digest)
                if len(to_mark) >= CONCURRENT:
                    await self._mark_all(to_mark, now, report)
            elif mark.since + grace > now or mark.since >= scan.started:
                report.pending += 1
            elif scan.unreadable:
                report.reclaimable += 1
                report.reclaimable_bytes += size
            else:
                to_sweep.append((digest, mark, size))
                if len(to_sweep) >= CONCURRENT:
                    await self._sweep_all(to_sweep, report)
        await self._mark_all(to_mark, now, report)
        await self._sweep_all(to_sweep, report)
        if not dry_run:
            for digest in sorted(unseen_marks, key=str):
                await self._step()
                if await self._driver.stat(paths.blob_data(digest)) is None:
                    await self._unmark(digest)
        return report

    async def _mark_all(self, digests: list[Digest], now: float, report: GcReport) -> None:
        """Mark distinct candidates concurrently (their writes overlap on the io pool); empties ``digests``."""
        batch = list(digests)
        digests.clear()
        await concurrently([self._mark(digest, now) for digest in batch])
        report.marked += len(batch)

    async def _sweep_all(self, candidates: list[tuple[Digest, Mark, int]], report: GcReport) -> None:
        """Sweep distinct candidates concurrently; empties ``candidates``."""
        batch = list(candidates)
        candidates.clear()
        outcomes = await concurrently([self._sweep(digest, mark) for digest, mark, _size in batch])
        for (_digest, _mark, size), outcome in zip(batch, outcomes, strict=True):
            if outcome == "reclaimed":
                report.reclaimed += 1
                report.reclaimed_bytes += size
            elif outcome == "restored":
                report.restored += 1

    async def scan(self) -> Scan:
        """Every referenced and every owned digest, from all namespaces' revisions and markers."""
        scan = Scan(self._clock.seconds())
        for namespace in await namespaces(self._driver, self._step):
            await self._step()
            scan.owned.update(await owned_digests(self._driver, namespace))
            for revision in await revision_digests(self._driver, namespace):
                await self._step()
                scan.referenced.add(revision)
                references = await self._references_of(revision)
                if references is None:
                    scan.unreadable.append(f"{namespace}@{revision}")
                else:
                    scan.referenced.update(references)
        return scan

    async def _references_of(self, manifest: Digest) -> frozenset[Digest] | None:
        """The manifest's references; empty when its bytes are gone, None when unreadable."""
        try:
            body = await self._driver.read(paths.blob_data(manifest))
        except PathNotFound:
            return frozenset()  # lost bytes reference nothing we could know; scrub reports it
        try:
            if self._cpu is not None and len(body) > PARSE_INLINE_MAX:
                return await self._cpu.run(manifest_references, body)
            return manifest_references(body)
        except ValueError:
            return None

    # -- marks -------------------------------------------------------------------------------

    async def _read_marks(self) -> dict[Digest, Mark]:
        marks: dict[Digest, Mark] = {}
        for algorithm in await self._driver.children(paths.GC_MARKS):
            for name in await self._driver.children(f"{paths.GC_MARKS}/{algorithm}"):
                await self._step()
                try:
                    digest = Digest(algorithm, name)
                except OciError:
                    continue
                mark = await self._mark_of(digest, memory=False)
                if mark is not None:
                    marks[digest] = mark
        return marks

    async def _mark_of(self, digest: Digest, memory: bool = True) -> Mark | None:
        """The current mark of ``digest``: the stored one, else the in-memory one."""
        try:
            stored = Mark.decode(await self._driver.read(paths.gc_mark(digest)))
        except PathNotFound:
            stored = None
        if stored is not None or not memory:
            return stored
        return self._memory_marks.get(digest)

    async def _mark(self, digest: Digest, now: float) -> None:
        mark = Mark(now, uuid.uuid4().hex)
        try:
            await self._driver.write(paths.gc_mark(digest), mark.encode())
        except OutOfSpace:
            self._memory_marks[digest] = mark

    async def _unmark(self, digest: Digest) -> None:
        self._memory_marks.pop(digest, None)
        await self._driver.delete(paths.gc_mark(digest))

    # -- sweeping ----------------------------------------------------------------------------

    async def _sweep(self, digest: Digest, mark: Mark) -> str:
        """Reclaim one candidate; returns "reclaimed", "restored" or "kept"."""
        if await self._mark_of(digest) != mark or await self._driver.children(paths.blob_owners(digest)):
            return "kept"
        trash = paths.gc_trash(digest, mark.token)
        try:
            await self._driver.move(paths.blob_data(digest), f"{trash}/data")
        except PathNotFound:
            return "kept"
        except StorageError:
            return await self._sweep_in_place(digest, mark)
        if await self._alive(digest, mark, trash):
            await self._restore(digest, trash)
            return "restored"
        await self._driver.delete_tree(trash)
        await self._unmark(digest)
        await self._remove_directory(digest, trash)
        return "reclaimed"

    async def _sweep_in_place(self, digest: Digest, mark: Mark) -> str:
        """Fallback when the bytes cannot be moved aside (e.g. no room to create ``_gc/trash``):
        delete them after a last check; a writer racing with it gets an error from
        `BlobStore.grant`, never a false success."""
        if await self._mark_of(digest) != mark or await self._driver.children(paths.blob_owners(digest)):
            return "kept"
        await self._driver.delete(paths.blob_data(digest))
        await self._unmark(digest)
        return "reclaimed"

    async def _remove_directory(self, digest: Digest, trash: str) -> None:
        """Remove what is left of a reclaimed blob's directory (an empty ``owners/``): move it
        aside whole, then put back anything a writer created in it meanwhile. A driver
        without directories has nothing left to remove."""
        try:
            await self._driver.move(paths.blob_dir(digest), trash)
        except StorageError:
            return
        if await self._driver.stat(f"{trash}/data") is not None or \
                await self._driver.children(f"{trash}/owners"):
            await self._restore(digest, trash)
        else:
            await self._driver.delete_tree(trash)

    async def _alive(self, digest: Digest, mark: Mark | None, trash: str) -> bool:
        """Whether a writer touched or granted ``digest`` since ``mark`` was checked."""
        if mark is None or await self._mark_of(digest) != mark:
            return True
        if await self._driver.children(f"{trash}/owners"):
            return True
        return bool(await self._driver.children(paths.blob_owners(digest)))

    async def _restore(self, digest: Digest, trash: str) -> None:
        """Put trashed bytes (and owners) back, object by object, keeping whatever a writer
        stored meanwhile (the bytes are the same: they are content-addressed)."""
        if await self._driver.stat(paths.blob_data(digest)) is None:
            with contextlib.suppress(PathNotFound):
                await self._driver.move(f"{trash}/data", paths.blob_data(digest))
        for owner in await self._driver.children(f"{trash}/owners"):
            await self._driver.write(paths.blob_owner(digest, paths.owner_namespace(owner)), b"")
        await self._driver.delete_tree(trash)

    async def _recover_trash(self, scan: Scan, marks: dict[Digest, Mark]) -> None:
        """Finish sweeps a previous pass (or process) did not: put back or delete."""
        for name in await self._driver.children(paths.GC_TRASH):
            algorithm, _, rest = name.partition("-")
            hex_digest, _, token = rest.partition("-")
            trash = f"{paths.GC_TRASH}/{name}"
            try:
                digest = Digest(algorithm, hex_digest)
            except OciError:
                await self._driver.delete_tree(trash)
                continue
            mark = marks.get(digest)
            if mark is not None and mark.token != token:
                mark = None
            if digest in scan.referenced or digest in scan.owned or await self._alive(digest, mark, trash):
                await self._restore(digest, trash)
            else:
                await self._driver.delete_tree(trash)
                await self._unmark(digest)
