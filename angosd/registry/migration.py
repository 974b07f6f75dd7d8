"""Turning a distribution 2.x store into an angosd store without copying blob bytes.

For each repository of the source (`angosd.registry.distribution`), one snapshot is read
(tags, then revisions, then layer links, then uploads), then written into the registry
in the order its own invariants need:

1. every blob the repository owns (its ``_layers`` links, and what its manifests
   reference): ownership claimed first (`BlobStore.claim`, which also withdraws the blob
   from garbage collection), then the bytes linked (`IStorageDriver.link_from`: a hard
   link, a shared object or a server-side copy), then the claim confirmed;
2. every revision, children of an index before the index, through `ManifestStore.put`
   (the manifest bytes, their ownership, the revision record, the referrer entry of an
   OCI 1.1 ``subject``);
3. every tag, through `ManifestStore.tag` (the last step of a push; tag immutability applies);
4. upload sessions in progress: their bytes linked, then their record written.

Each step is atomic and checked before it is done (a blob already stored is not hashed
nor linked again, an existing revision or a tag already pointing at its manifest is left
alone), so a run killed at any point is resumed by running it again, and a second run
over an unchanged source changes nothing. A blob is hashed before it is linked; an
entry that is corrupt or dangling (a link to missing bytes, bytes that do not match
their digest, a manifest that does not parse, a revision whose blobs or children are
missing, a tag whose revision is not carried) is reported as a `Problem` and skipped.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, DeferredSemaphore, FirstError, gatherResults

from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUploadUnknown, ManifestUnknown, OciError, TagImmutable
from angosd.oci.manifest import Manifest, parse_manifest
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.distribution import (
    REPOSITORIES,
    DistributionStore,
    Problem,
    RepositorySnapshot,
    Upload,
    blob_data,
)
from angosd.registry.registry import Registry
from angosd.registry.uploads import parse_session_id
from angosd.storage.errors import InvalidPath, PathNotFound, StorageError
from angosd.storage.interface import COPIED, LINKED, SERVER_COPIED

#: Blobs of one repository hashed and linked at the same time.
CONCURRENCY = 4
#: Repositories migrated at the same time (their writes wait on the filesystem or S3).
REPOSITORY_CONCURRENCY = 4


async def bounded(limit: int, work: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run ``work`` with at most ``limit`` at a time; the first failure is raised."""
    semaphore = DeferredSemaphore(limit)

    def start(one: Callable[[], Coroutine[Any, Any, None]]) -> Deferred[None]:
        return Deferred.fromCoroutine(one())

    try:
        await gatherResults([semaphore.run(start, one) for one in work], consumeErrors=True)
    except FirstError as exc:
        exc.subFailure.raiseException()


@dataclass
class MigrationReport:
    """What a run did (or, in a dry run, would do)."""

    repositories: int = 0
    tags: int = 0
    revisions: int = 0
    blobs: int = 0
    uploads: int = 0
    #: Already in the target (an earlier run, or pushed there): checked, not redone.
    tags_present: int = 0
    revisions_present: int = 0
    blobs_present: int = 0
    bytes_linked: int = 0
    bytes_server_copied: int = 0
    bytes_copied: int = 0
    bytes_present: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Carried:
    """What one repository's migration put into the target, for `verify`."""

    name: str
    tags: tuple[tuple[str, Digest], ...]
    revisions: tuple[Digest, ...]
    blobs: tuple[Digest, ...]


class Migrator:
    """Migrates ``source`` into ``registry``; ``found`` hears each problem as it is found,
    ``advance(phase, done, total)`` the progress."""

    def __init__(self, source: DistributionStore, registry: Registry, dry_run: bool = False,
                 found: Callable[[Problem], None] = lambda _problem: None,
                 advance: Callable[[str, int, int], None] = lambda _phase, _done, _total: None) -> None:
        self.source = source
        self.registry = registry
        self.dry_run = dry_run
        self.report = MigrationReport()
        self.carried: list[Carried] = []
        self._found = found
        self._advance = advance
        self._counted: set[Digest] = set()  # blobs counted in the report (once per run)
        self._bad: dict[Digest, str] = {}  # blobs found corrupt or missing, and why
        self._locks: dict[Digest, DeferredLock] = {}  # one repository at a time per blob

    def problem(self, where: str, why: str) -> None:
        problem = Problem(where, why)
        self.report.problems.append(problem)
        self._found(problem)

    async def run(self) -> MigrationReport:
        """Migrate every repository; returns the report (also `report`)."""
        listing: list[Problem] = []
        names = await self.source.repositories(listing)
        for problem in listing:
            self.problem(problem.where, problem.why)
        done = 0
        self._advance("repositories", done, len(names))

        async def one(name: str) -> None:
            nonlocal done
            await self.repository(name)
            done += 1
            self._advance("repositories", done, len(names))

        await bounded(REPOSITORY_CONCURRENCY, [lambda name=name: one(name) for name in names])  # type: ignore[misc]
        return self.report

    async def repository(self, name: str) -> None:
        """Migrate one repository from a fresh snapshot."""
        snapshot = await self.source.snapshot(name)
        self.report.repositories += 1
        for problem in snapshot.problems:
            self.problem(problem.where, problem.why)
        manifests = await self._manifests(snapshot)
        wanted = set(snapshot.layers)
        for _body, manifest in manifests.values():
            wanted.update(descriptor.digest for descriptor in manifest.referenced_blobs())
        blobs = await self._blobs(name, sorted(wanted, key=str))
        valid = self._complete(name, manifests, blobs)
        order = sorted(valid, key=lambda digest: (manifests[digest][1].is_index, str(digest)))
        for digest in order:
            await self._revision(name, *manifests[digest])
        tags = []
        for tag, digest in snapshot.tags:
            if digest not in valid:
                self.problem(f"{name}:{tag}", f"its revision {digest} is not carried")
                continue
            if await self._tag(name, tag, manifests[digest][1]):
                tags.append((tag, digest))
        for upload in snapshot.uploads:
            await self._upload(name, upload)
        self.carried.append(Carried(name, tuple(tags), tuple(order), tuple(sorted(blobs, key=str))))

    # -- reading ------------------------------------------------------------------------

    async def _manifests(self, snapshot: RepositorySnapshot) -> dict[Digest, tuple[bytes, Manifest]]:
        """The revisions whose bytes verify and parse, with those bytes."""
        found: dict[Digest, tuple[bytes, Manifest]] = {}
        for digest in snapshot.revisions:
            try:
                body = await self.source.read_blob(digest, self.registry.manifests.max_manifest_size)
                found[digest] = (body, parse_manifest(body, None, digest.algorithm))
            except ValueError as exc:
                self.problem(f"{snapshot.name}@{digest}", f"{exc}")
            except OciError as exc:
                self.problem(f"{snapshot.name}@{digest}", f"{exc.message}: {exc.detail}")
        return found

    def _complete(self, name: str, manifests: dict[Digest, tuple[bytes, Manifest]],
                  blobs: set[Digest]) -> set[Digest]:
        """The revisions whose blobs are carried and whose children are themselves complete."""
        valid = set(manifests)
        changed = True
        while changed:
            changed = False
            for digest in sorted(valid, key=str):
                manifest = manifests[digest][1]
                missing = [d.digest for d in manifest.referenced_blobs() if d.digest not in blobs]
                missing += [d.digest for d in manifest.manifests if d.digest not in valid]
                if missing:
                    self.problem(f"{name}@{digest}", f"{missing[0]} is not carried"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
                    valid.discard(digest)
                    changed = True
        return valid

    # -- blobs --------------------------------------------------------------------------

    async def _blobs(self, name: str, digests: list[Digest]) -> set[Digest]:
        """Carry ``digests`` with ``name``'s ownership; the set of those carried."""
        carried: set[Digest] = set()

        async def one(digest: Digest) -> None:
            if await self._blob(name, digest):
                carried.add(digest)

        await bounded(CONCURRENCY, [lambda digest=digest: one(digest) for digest in digests])  # type: ignore[misc]
        return carried

    async def _blob(self, name: str, digest: Digest) -> bool:
        """Carry one blob with ``name``'s ownership; False (reported) when it cannot be.
        Repositories sharing a blob take turns, so its bytes are hashed and linked once."""
        if digest in self._bad:
            self.problem(f"{name}: blob {digest}", self._bad[digest])
            return False
        lock = self._locks.setdefault(digest, DeferredLock())
        await lock.acquire()
        try:
            return await self._blob_in_turn(name, digest)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(digest, None)

    async def _blob_in_turn(self, name: str, digest: Digest) -> bool:
        driver = self.registry.driver
        where = f"{name}: blob {digest}"
        if digest in self._bad:
            self.problem(where, self._bad[digest])
            return False
        present = await driver.stat(paths.blob_data(digest))
        if present is not None:  # stored and verified by an earlier run or a push
            if not self.dry_run:
                await self.registry.blobs.claim(name, digest)
                await self.registry.blobs.confirm(name, digest)
            if digest not in self._counted:
                self._counted.add(digest)
                self.report.blobs_present += 1
                self.report.bytes_present += present
            return True
        try:
            size = await self.source.blob_size(digest)
            if size is None:
                raise ValueError("its bytes are missing")
        except ValueError as exc:
            self._bad[digest] = str(exc)
            self.problem(where, str(exc))
            return False
        if self.dry_run:
            if digest not in self._counted:
                self._counted.add(digest)
                self.report.blobs += 1
                self.report.bytes_linked += size
            return True
        try:
            await self.source.check_blob(digest)
        except ValueError as exc:
            self._bad[digest] = str(exc)
            self.problem(where, str(exc))
            return False
        await self.registry.blobs.claim(name, digest)
        try:
            how = await driver.link_from(self.source.driver, blob_data(digest), paths.blob_data(digest))
        except (PathNotFound, InvalidPath):  # removed (or replaced by a symbolic link) meanwhile
            self.problem(where, "its bytes vanished from the source")
            return False
        await self.registry.blobs.confirm(name, digest)
        self._counted.add(digest)
        self.report.blobs += 1
        if how == LINKED:
            self.report.bytes_linked += size
        elif how == SERVER_COPIED:
            self.report.bytes_server_copied += size
        else:
            assert how == COPIED
            self.report.bytes_copied += size
        return True

    # -- manifests and tags ---------------------------------------------------------------

    async def _revision(self, name: str, body: bytes, manifest: Manifest) -> None:
        driver = self.registry.driver
        # Present when put's last step is: the referrer entry, else the revision record.
        if (await driver.stat(paths.revision(name, manifest.digest)) is not None
                and await driver.stat(paths.blob_data(manifest.digest)) is not None
                and (manifest.subject is None or await driver.stat(
                    paths.referrer(name, manifest.subject.digest, manifest.digest)) is not None)):
            self.report.revisions_present += 1
            return
        self.report.revisions += 1
        if not self.dry_run:
            await self.registry.manifests.put(name, Reference(digest=manifest.digest), manifest.media_type, body)

    async def _tag(self, name: str, tag: str, manifest: Manifest) -> bool:
        """Point ``tag`` at ``manifest`` unless it does; False when it may not be moved."""
        try:
            current = await self.registry.manifests.resolve(name, Reference(tag=tag))
        except ManifestUnknown:
            current = None
        if current == manifest.digest:
            self.report.tags_present += 1
            return True
        if not self.dry_run:
            try:
                await self.registry.manifests.tag(name, tag, manifest.digest)
            except TagImmutable:
                self.problem(f"{name}:{tag}", f"immutable here, where it points at {current}, not {manifest.digest}")
                return False
        self.report.tags += 1
        return True

    # -- uploads --------------------------------------------------------------------------

    async def _upload(self, name: str, upload: Upload) -> None:
        """Carry an upload in progress under its own id, so its client may go on with it."""
        where = f"{name}: upload {upload.session}"
        try:
            session = parse_session_id(upload.session)
        except BlobUploadUnknown:
            self.problem(where, "its id is not a UUID")
            return
        driver = self.registry.driver
        if (await driver.stat(paths.upload_info(name, session)) is not None
                and await driver.stat(paths.upload_data(name, session)) == upload.size):
            return
        self.report.uploads += 1
        if self.dry_run:
            return
        base = f"{REPOSITORIES}/{name}/_uploads/{session}"
        started = await self._started_at(f"{base}/startedat")
        try:
            how = await driver.link_from(self.source.driver, f"{base}/data", paths.upload_data(name, session))
        except (PathNotFound, InvalidPath):
            self.problem(where, "it ended (or was removed) meanwhile")
            self.report.uploads -= 1
            return
        if how == COPIED:
            self.report.bytes_copied += upload.size
        record = {"started_at": started, "algorithm": None}
        await driver.write(paths.upload_info(name, session), json.dumps(record).encode())

    async def _started_at(self, key: str) -> int:
        """When distribution started an upload (its ``startedat`` file, RFC 3339); 0 if unknown."""
        try:
            text = (await self.source.driver.read(key))[:100].decode("ascii").strip()
            return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except (PathNotFound, StorageError, UnicodeDecodeError, ValueError):
            return 0


async def verify(source: DistributionStore, registry: Registry, carried: list[Carried],
                 found: Callable[[Problem], None],
                 advance: Callable[[str, int, int], None] = lambda _phase, _done, _total: None) -> int:
    """Check that every carried tag and revision resolves in ``registry`` to the exact bytes
    the source holds, and that every carried blob is owned there and hashes to its digest.

    Each mismatch is reported to ``found``; returns how many there were.
    """
    failures = 0
    hashed: dict[Digest, bool] = {}

    def fail(where: str, why: str) -> None:
        nonlocal failures
        failures += 1
        found(Problem(where, why))

    limit = registry.manifests.max_manifest_size
    for done, repository in enumerate(carried):
        advance("verify", done, len(carried))
        name = repository.name
        references = [(f"{name}:{tag}", Reference(tag=tag), digest) for tag, digest in repository.tags]
        references += [(f"{name}@{digest}", Reference(digest=digest), digest) for digest in repository.revisions]
        for where, reference, digest in references:
            try:
                stored = await registry.manifests.get(name, reference)
                expected = await source.read_blob(digest, limit)
            except (OciError, ValueError, StorageError) as exc:
                fail(where, f"does not verify: {exc}")
                continue
            if stored.digest != digest or stored.body != expected:
                fail(where, f"resolves to {stored.digest}, not to the bytes of {digest}")
        for digest in repository.blobs:
            if not await registry.blobs.owns(name, digest):
                fail(f"{name}: blob {digest}", "not owned in the migrated store")
                continue
            if digest not in hashed:
                try:
                    actual = await registry.driver.hash_object(paths.blob_data(digest), digest.algorithm)
                    hashed[digest] = actual == digest.hex
                except StorageError:
                    hashed[digest] = False
            if not hashed[digest]:
                fail(f"{name}: blob {digest}", "its bytes in the migrated store do not hash to its digest")
    advance("verify", len(carried), len(carried))
    return failures
