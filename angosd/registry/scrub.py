"""Scrub: verify the whole store, repair what can be repaired, quarantine the rest.

Checks, in order:

1. every blob: its bytes hash to its digest (else the bytes are *quarantined*); a
   directory under ``blobs/`` whose name is not a digest is quarantined too;
2. every namespace:
   - ownership markers: a forward marker whose blob bytes are gone is removed (a *repair*
     when a revision of the namespace references the blob or its bytes were quarantined;
     otherwise a *cleanup*: upload completion writes ownership before it renames the bytes
     into place, so a kill between the two leaves this, and repeating the PUT completes
     it); one without its reverse marker gets it back (*repair*);
   - revisions: an unreadable record, or one whose manifest bytes are gone, is
     quarantined; a revision whose manifest the namespace does not own is granted it;
     a referrer whose entry under its subject is missing gets it back;
   - tags pointing at a missing revision are removed; referrer entries of a missing
     revision are removed;
   - upload sessions without readable state (a kill while one was being created, or
     after its completion renamed the bytes into place) are removed (*cleanup*:
     leftovers, not corruption) once their id says they are older than
     `angosd.registry.uploads.SETTLE_SECS` (a younger one may be being created now);
3. reverse markers without a forward marker (a grant or revoke cut short) are removed
   (cleanup); 4. one garbage collection pass (`angosd.registry.gc`), a dry one with
   ``dry_run``.

Scrub may run while the daemon serves: every change is one atomic operation, each
decision is confirmed against the live store just before acting, and removals that a
concurrent writer could make wrong are checked after the fact and undone (a removed tag
is moved aside, re-read, and put back if its revision exists by then). ``dry_run``
reports the same findings and changes nothing. Temporary files of interrupted writes
are invisible to the driver and therefore not findings.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.oci.manifest import parse_manifest
from angosd.oci.names import is_valid_name
from angosd.registry import paths
from angosd.registry.gc import (
    BlobEntry,
    GarbageCollector,
    GcReport,
    blob_entries,
    manifest_references,
    namespaces,
    owned_digests,
    revision_digests,
)
from angosd.registry.registry import Registry
from angosd.registry.uploads import may_be_in_creation
from angosd.storage.errors import PathNotFound, StorageError

Kind = Literal["repair", "quarantine", "cleanup"]
#: Blobs checked (hashed) at once.
HASH_BATCH = 16
#: ``progress(phase, done, total)``: how far a phase is.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    message: str


@dataclass(slots=True)
class ScrubReport:
    dry_run: bool
    findings: list[Finding] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    namespaces: int = 0
    revisions: int = 0
    tags: int = 0
    gc: GcReport | None = None

    def count(self, kind: Kind) -> int:
        return sum(1 for finding in self.findings if finding.kind == kind)

    def summary(self) -> str:
        """One line; ``"N to repair, M to quarantine"`` in a dry run."""
        verb = ("to repair", "to quarantine", "to clean up") if self.dry_run else \
            ("repaired", "quarantined", "cleaned up")
        text = (f"checked {self.blobs} blobs ({self.bytes} bytes), {self.namespaces} namespaces, "
                f"{self.revisions} revisions, {self.tags} tags: {self.count('repair')} {verb[0]}, "
                f"{self.count('quarantine')} {verb[1]}, {self.count('cleanup')} {verb[2]}")
        if self.gc is not None:
            text += f"; gc: {self.gc.summary()}"
        return text


class Scrubber:
    """One scrub of ``registry``'s store. ``collector`` (optional) runs the GC pass."""

    def __init__(self, registry: Registry, clock: IReactorTime, dry_run: bool,
                 collector: GarbageCollector | None = None,
                 progress: ProgressCallback = lambda _phase, _done, _total: None,
                 found: Callable[[Finding], None] = lambda _finding: None) -> None:
        self._registry = registry
        self._driver = registry.driver
        self._clock = clock
        self._dry_run = dry_run
        self._collector = collector
        self._progress = progress
        #: Called with each finding as it is made, so a run that fails half-way has still
        #: reported what it found (and did) until then.
        self._on_found = found
        self._report = ScrubReport(dry_run)
        #: Blobs and revisions quarantined by this run (also when only reported).
        self._gone_blobs: set[Digest] = set()
        self._gone_revisions: set[tuple[str, Digest]] = set()
        #: Reverse ownership records whose forward marker was missing when their blob was
        #: checked (few: only broken ones); judged again once every namespace was checked.
        self._suspect_reverse: set[tuple[str, Digest]] = set()

    def _found(self, kind: Kind, message: str) -> None:
        finding = Finding(kind, message)
        self._report.findings.append(finding)
        self._on_found(finding)

    async def run(self) -> ScrubReport:
        """Check everything; returns the findings (acted upon unless ``dry_run``)."""
        total = 0
        async for _entry in blob_entries(self._driver):  # counted first, so memory stays flat
            total += 1
        done = 0
        batch: list[BlobEntry] = []
        async for entry in blob_entries(self._driver):
            batch.append(entry)
            if len(batch) >= HASH_BATCH:
                done += await self._check_blobs(batch)
                self._progress("verifying blobs", done, total)
                batch = []
        if batch:
            done += await self._check_blobs(batch)
            self._progress("verifying blobs", done, total)
        names = await namespaces(self._driver)
        self._report.namespaces = len(names)
        for done, namespace in enumerate(names, 1):
            await self._check_namespace(namespace)
            self._progress("checking namespaces", done, len(names))
        await self._check_reverse_markers()
        if self._collector is not None:
            self._progress("collecting garbage", 0, 1)
            self._report.gc = await self._collector.collect(dry_run=self._dry_run)
            self._progress("collecting garbage", 1, 1)
        return self._report

    # -- helpers -----------------------------------------------------------------------------

    async def _blob_present(self, digest: Digest) -> bool:
        return digest not in self._gone_blobs and await self._driver.stat(paths.blob_data(digest)) is not None

    async def _revision_present(self, namespace: str, digest: Digest) -> bool:
        if (namespace, digest) in self._gone_revisions:
            return False
        return await self._driver.stat(paths.revision(namespace, digest)) is not None

    async def _quarantine(self, key: str, reason: str) -> str:
        """Move ``key`` (object or prefix) to ``_quarantine/<stamp>-<id>/object`` with a note."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.seconds()))
        slot = f"{paths.QUARANTINE}/{stamp}-{uuid.uuid4().hex[:12]}"
        await self._driver.move(key, f"{slot}/object")
        note = {"key": key, "reason": reason, "at": int(self._clock.seconds())}
        with contextlib.suppress(StorageError):  # the object is safe; a note is a courtesy
            await self._driver.write(f"{slot}/note.json", json.dumps(note, indent=2).encode())
        return slot

    # -- blobs -------------------------------------------------------------------------------

    async def _check_blobs(self, batch: list[BlobEntry]) -> int:
        """Check distinct blobs concurrently (their hashing overlaps on the io pool); raises
        the first failure once all are done. Returns how many were checked."""
        results = await DeferredList([ensureDeferred(self._check_blob(entry)) for entry in batch],
                                     consumeErrors=True)
        for succeeded, result in results:
            if not succeeded:
                cast(Failure, result).raiseException()
        return len(batch)

    async def _check_blob(self, entry: BlobEntry) -> None:
        digest = entry.digest
        if digest is None:
            self._found("quarantine", f"{entry.key}: not a digest")
            if not self._dry_run:
                await self._quarantine(entry.key, "the name under blobs/ is not a digest")
            return
        for owner in await self._driver.children(paths.blob_owners(digest)):
            if is_valid_name(paths.owner_namespace(owner)):
                namespace = paths.owner_namespace(owner)
                if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
                    self._suspect_reverse.add((namespace, digest))
                continue
            self._found("cleanup", f"{digest}: reverse ownership record {owner!r} names no namespace: removed")
            if not self._dry_run:
                await self._driver.delete(f"{paths.blob_owners(digest)}/{owner}")
        key = paths.blob_data(digest)
        size = await self._driver.stat(key)
        if size is None:
            return
        try:
            actual = await self._driver.hash_object(key, digest.algorithm)
        except PathNotFound:
            return  # reclaimed meanwhile
        self._report.blobs += 1
        self._report.bytes += size
        if actual == digest.hex:
            return
        self._gone_blobs.add(digest)
        message = f"blob {digest}: its bytes hash to {digest.algorithm}:{actual}"
        if self._dry_run:
            self._found("quarantine", message)
            return
        try:
            slot = await self._quarantine(key, f"the bytes hash to {digest.algorithm}:{actual}, not {digest}")
        except PathNotFound:
            self._gone_blobs.discard(digest)
            return
        # A writer may have stored good bytes between the hash and the move: check what moved.
        if await self._driver.hash_object(f"{slot}/object", digest.algorithm) == digest.hex:
            self._gone_blobs.discard(digest)
            if await self._driver.stat(key) is None:
                await self._driver.move(f"{slot}/object", key)
            await self._driver.delete_tree(slot)
            return
        self._found("quarantine", f"{message}; moved to {slot}")

    # -- namespaces --------------------------------------------------------------------------

    async def _check_namespace(self, namespace: str) -> None:
        if not is_valid_name(namespace):
            return  # never served; not ours to judge
        await self._check_ownership(namespace)
        await self._check_revisions(namespace)
        await self._check_tags(namespace)
        await self._check_referrers(namespace)
        await self._check_uploads(namespace)
        if not self._dry_run:  # not damage: a namespace written before back-references existed
            await self._registry.manifests.add_links(namespace)

    async def _check_ownership(self, namespace: str) -> None:
        referenced: set[Digest] | None = None
        for digest in await owned_digests(self._driver, namespace):
            self._suspect_reverse.discard((namespace, digest))
            if not await self._blob_present(digest):
                if referenced is None:
                    referenced = await self._references(namespace)
                if digest in self._gone_blobs or digest in referenced:
                    self._found("repair", f"{namespace}: owns {digest}, whose bytes are missing or quarantined: "
                                          "ownership removed")
                else:  # an upload completion cut between its ownership markers and its rename
                    self._found("cleanup", f"{namespace}: ownership of {digest} without its bytes (an interrupted "
                                           "upload; repeating its PUT completes it): removed")
                if not self._dry_run:
                    await self._drop_ownership(namespace, digest)
            elif await self._driver.stat(paths.blob_owner(digest, namespace)) is None:
                self._found("repair", f"{namespace}: reverse ownership record of {digest} recreated")
                if not self._dry_run:
                    await self._driver.write(paths.blob_owner(digest, namespace), b"")

    async def _references(self, namespace: str) -> set[Digest]:
        """What the revisions of ``namespace`` reference (their own digests included); an
        unreadable manifest counts as referencing everything its namespace owns."""
        found: set[Digest] = set()
        for revision in await revision_digests(self._driver, namespace):
            found.add(revision)
            try:
                found.update(manifest_references(await self._driver.read(paths.blob_data(revision))))
            except PathNotFound:
                continue
            except ValueError:
                found.update(await owned_digests(self._driver, namespace))
        return found

    async def _drop_ownership(self, namespace: str, digest: Digest) -> None:
        """Remove both markers; put them back if the bytes appeared meanwhile (an upload)."""
        await self._driver.delete(paths.owned_blob(namespace, digest))
        await self._driver.delete(paths.blob_owner(digest, namespace))
        if await self._driver.stat(paths.blob_data(digest)) is not None and digest not in self._gone_blobs:
            await self._driver.write(paths.blob_owner(digest, namespace), b"")
            await self._driver.write(paths.owned_blob(namespace, digest), b"")

    async def _check_revisions(self, namespace: str) -> None:
        manifests = self._registry.manifests
        base = paths.revisions_dir(namespace)
        for algorithm in await self._driver.children(base):
            for name in await self._driver.children(f"{base}/{algorithm}"):
                key = f"{base}/{algorithm}/{name}"
                try:
                    digest = Digest(algorithm, name)
                except OciError:
                    await self._quarantine_revision(namespace, None, key, "the name is not a digest")
                    continue
                self._report.revisions += 1
                try:
                    revision = await manifests.revision(namespace, digest)
                except (OciError, KeyError, TypeError, ValueError):
                    if await self._driver.stat(key) is not None:  # else: deleted meanwhile
                        await self._quarantine_revision(namespace, digest, key, "the record is unreadable")
                    continue
                if not await self._blob_present(digest):
                    if await self._driver.stat(key) is not None:
                        await self._quarantine_revision(namespace, digest, key, "its manifest bytes are gone")
                    continue
                if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
                    self._found("repair", f"{namespace}@{digest}: ownership of its manifest recreated")
                    if not self._dry_run:
                        await self._regrant(namespace, digest)
                if revision.subject is not None:
                    await self._check_referrer_entry(namespace, digest, revision.subject, revision.media_type)

    async def _quarantine_revision(self, namespace: str, digest: Digest | None, key: str, reason: str) -> None:
        if digest is not None:
            self._gone_revisions.add((namespace, digest))
        self._found("quarantine", f"{namespace}: revision {digest or key}: {reason}")
        if not self._dry_run:
            with contextlib.suppress(PathNotFound):
                await self._quarantine(key, f"revision of {namespace}: {reason}")

    async def _regrant(self, namespace: str, digest: Digest) -> None:
        """Grant the manifest back; undo if the revision was deleted meanwhile."""
        try:
            await self._registry.blobs.grant(namespace, digest)
        except StorageError:
            return
        if await self._driver.stat(paths.revision(namespace, digest)) is None:
            await self._driver.delete(paths.owned_blob(namespace, digest))
            await self._driver.delete(paths.blob_owner(digest, namespace))

    async def _check_referrer_entry(self, namespace: str, digest: Digest, subject: Digest, media_type: str) -> None:
        key = paths.referrer(namespace, subject, digest)
        if await self._driver.stat(key) is not None:
            return
        self._found("repair", f"{namespace}@{digest}: referrer entry under {subject} recreated")
        if self._dry_run:
            return
        try:
            body = await self._driver.read(paths.blob_data(digest))
            entry = parse_manifest(body, media_type, digest.algorithm).as_referrer().to_json()
        except (PathNotFound, OciError):
            return
        await self._driver.write(key, json.dumps(entry).encode())
        if not await self._revision_present(namespace, digest):
            await self._driver.delete(key)  # deleted meanwhile

    async def _check_tags(self, namespace: str) -> None:
        for tag in await self._driver.children(paths.tags_dir(namespace)):
            self._report.tags += 1
            key = paths.tag(namespace, tag)
            target = await self._tag_target(key)
            if target is not None and await self._revision_present(namespace, target):
                continue
            if await self._driver.stat(key) is None:
                continue
            self._found("repair", f"{namespace}:{tag} points at {target or 'nothing readable'}, "
                                  "which is not a revision: tag removed")
            if not self._dry_run:
                await self._remove_tag(namespace, key)

    async def _tag_target(self, key: str) -> Digest | None:
        try:
            return Digest.parse((await self._driver.read(key)).decode())
        except (PathNotFound, OciError, UnicodeDecodeError):
            return None

    async def _remove_tag(self, namespace: str, key: str) -> None:
        """Move the tag aside, then put it back if what moved points at a revision by now."""
        aside = f"{paths.SCRUB_ASIDE}/{uuid.uuid4().hex}"
        try:
            await self._driver.move(key, aside)
        except PathNotFound:
            return
        target = await self._tag_target(aside)
        if target is not None and await self._revision_present(namespace, target) \
                and await self._driver.stat(key) is None:
            await self._driver.move(aside, key)
        else:
            await self._driver.delete(aside)

    async def _check_referrers(self, namespace: str) -> None:
        base = f"{paths.namespace_dir(namespace)}/_referrers"
        for algorithm in await self._driver.children(base):
            for subject in await self._driver.children(f"{base}/{algorithm}"):
                for name in await self._driver.children(f"{base}/{algorithm}/{subject}"):
                    key = f"{base}/{algorithm}/{subject}/{name}"
                    referrer_algorithm, _, referrer_hex = name.partition("-")
                    try:
                        referrer = Digest(referrer_algorithm, referrer_hex)
                    except OciError:
                        referrer = None
                    if referrer is not None and await self._revision_present(namespace, referrer):
                        continue
                    self._found("repair", f"{namespace}: referrer entry {name} under {algorithm}:{subject} "
                                          "names no revision: removed")
                    if not self._dry_run:
                        await self._remove_referrer_entry(namespace, key, referrer)

    async def _remove_referrer_entry(self, namespace: str, key: str, referrer: Digest | None) -> None:
        try:
            entry = await self._driver.read(key)
        except PathNotFound:
            return
        await self._driver.delete(key)
        if referrer is not None and await self._revision_present(namespace, referrer):
            await self._driver.write(key, entry)  # pushed meanwhile

    async def _check_uploads(self, namespace: str) -> None:
        for session in await self._driver.children(paths.uploads_dir(namespace)):
            if await self._session_readable(namespace, session) or \
                    may_be_in_creation(session, self._clock.seconds()):
                continue
            # Unreadable and old enough not to be one being created; look once more right before.
            if await self._session_readable(namespace, session):
                continue
            self._found("cleanup", f"{namespace}: upload session {session} has no readable state: removed")
            if not self._dry_run:
                await self._driver.delete_tree(paths.upload_dir(namespace, session))

    async def _session_readable(self, namespace: str, session: str) -> bool:
        try:
            record = json.loads(await self._driver.read(paths.upload_info(namespace, session)))
            return isinstance(record, dict) and \
                await self._driver.stat(paths.upload_data(namespace, session)) is not None
        except (PathNotFound, ValueError):
            return False

    # -- reverse index -----------------------------------------------------------------------

    async def _check_reverse_markers(self) -> None:
        for namespace, digest in sorted(self._suspect_reverse, key=lambda item: (item[0], str(item[1]))):
            if await self._driver.stat(paths.owned_blob(namespace, digest)) is not None:
                continue  # granted meanwhile
            if await self._driver.stat(paths.blob_owner(digest, namespace)) is None:
                continue
            self._found("cleanup", f"{digest}: reverse ownership record of {namespace} without ownership: removed")
            if not self._dry_run:
                await self._driver.delete(paths.blob_owner(digest, namespace))
                if await self._driver.stat(paths.owned_blob(namespace, digest)) is not None:
                    await self._driver.write(paths.blob_owner(digest, namespace), b"")
