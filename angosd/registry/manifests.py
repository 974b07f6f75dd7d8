"""Manifests, tags and referrers of a namespace.

A push writes, in this order: the manifest bytes (content-addressed), the namespace's
ownership of them, the revision record, the referrer entry, then the tag. Each step is
atomic, so a crash between steps leaves at most an untagged revision, never a tag that
points at a missing manifest. Deletion runs in the reverse order for the same reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    OciError,
    SizeInvalid,
    TagImmutable,
    TooLarge,
)
from angosd.oci.manifest import Descriptor, Manifest
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.concurrent import concurrently
from angosd.registry.parsing import ManifestParser
from angosd.registry.summaries import ManifestSummary
from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.interface import IStorageDriver


@dataclass(frozen=True, slots=True)
class StoredManifest:
    """A manifest as served: its exact bytes, media type and digest."""

    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Revision:
    """A namespace's record of a pushed manifest."""

    digest: Digest
    media_type: str
    pushed_at: int
    subject: Digest | None
    artifact_type: str | None


#: Stored records read between two pauses that let the event loop serve others (`breathe`).
BATCH = 16

#: Whether a caller may read blobs of a namespace (a mount source for a manifest's references).
ReadCheck = Callable[[str], Awaitable[bool]]


class ManifestStore:
    """``require_references(namespace)`` says whether a push into ``namespace`` must only
    reference content it has (else any reference is accepted: the opt-out); ``served``
    whether a namespace is served at all (others are never mount sources)."""

    def __init__(self, driver: IStorageDriver, blobs: BlobStore, clock: IReactorTime, max_manifest_size: int,
                 require_references: Callable[[str], bool] = lambda _namespace: False,
                 tag_immutable: Callable[[str, str], bool] = lambda _namespace, _tag: False,
                 served: Callable[[str], bool] = lambda _namespace: True,
                 parser: ManifestParser | None = None) -> None:
        """``parser`` parses and hashes large manifests off the event loop (default: inline)."""
        self._driver = driver
        self.parser = parser or ManifestParser()
        self._tag_immutable = tag_immutable
        self._blobs = blobs
        self._clock = clock
        self.max_manifest_size = max_manifest_size
        self._require_references = require_references
        self._served = served

    async def put(self, namespace: str, reference: Reference, content_type: str | None, body: bytes,
                  tags: Sequence[str] = (), may_read: ReadCheck | None = None, strict: bool = True) -> Manifest:
        """Validate and store a manifest; tag it with ``reference`` when that is a tag, and
        with every one of ``tags`` (validated tag names: the ``?tag=`` parameters of a push by
        digest).

        Unless the namespace opted out, the manifest's config and layers must be owned by
        the namespace, or be readable by the caller in another served namespace (``may_read``;
        they are then mounted), and its index children must be revisions of the namespace;
        layers with ``urls`` (non-distributable) are exempt.

        ``strict=False`` (the pull-through cache and imports, which store what another
        registry already validated, an index before its children) skips the references
        check and accepts a missing ``Content-Type``.

        Raises `ManifestInvalid` (also for a missing ``Content-Type``), `SizeInvalid` (a
        descriptor whose size is not the stored blob's), `DigestInvalid`
        (digest reference that does not match the body), `TooLarge`, `ManifestBlobUnknown`,
        or `TagImmutable` when a tag is immutable and already points at another manifest
        (the first push and a re-push of the same digest succeed). Nothing is written
        when it raises.
        """
        if len(body) > self.max_manifest_size:
            raise TooLarge(f"manifest exceeds {self.max_manifest_size} bytes")
        if strict and not mt.base_type(content_type):
            raise ManifestInvalid("Content-Type is required: the manifest's media type")
        algorithm = reference.digest.algorithm if reference.digest is not None else "sha256"
        manifest = await self.parser.parse(body, content_type, algorithm)
        if reference.digest is not None and manifest.digest != reference.digest:
            raise DigestInvalid(f"manifest hashes to {manifest.digest}, not {reference.digest}")
        mounts: list[Digest] = []
        if strict and self._require_references(namespace):
            mounts = await self._check_references(namespace, manifest, may_read)
        all_tags = list(dict.fromkeys(([reference.tag] if reference.tag is not None else []) + list(tags)))
        for tag in all_tags:
            if self._tag_immutable(namespace, tag):
                current = await self._tag_target(namespace, tag)
                if current is not None and current != manifest.digest:
                    raise TagImmutable(f"{namespace}:{tag} already points at {current}")

        for referenced in (*manifest.referenced_blobs(), *manifest.manifests):
            await self._blobs.touch(referenced.digest)  # a collection deciding about them now keeps them
        for digest in mounts:
            await self._blobs.grant(namespace, digest)
        await self._blobs.store_small(manifest.digest, body)
        await self._blobs.grant(namespace, manifest.digest)
        await self._mark_linked(namespace)
        for child in manifest.manifests:  # before the record: a listed index always has its links
            await self._driver.write(paths.parent(namespace, child.digest, manifest.digest), b"")
        record = {
            "media_type": manifest.media_type,
            "pushed_at": int(self._clock.seconds()),
            "subject": str(manifest.subject.digest) if manifest.subject else None,
            "artifact_type": manifest.as_referrer().artifact_type,
        }
        # Side by side (each write waits on the disk): the records and the tags' back-references,
        # which need only come before the tags themselves.
        writes = [self._driver.write(paths.summary(namespace, manifest.digest), ManifestSummary.of(manifest).to_json()),
                  self._driver.write(paths.revision(namespace, manifest.digest), json.dumps(record).encode())]
        if manifest.subject is not None:
            entry = json.dumps(manifest.as_referrer().to_json()).encode()
            referrer = paths.referrer(namespace, manifest.subject.digest, manifest.digest)
            writes.append(self._driver.write(referrer, entry))
        writes += [self._driver.write(paths.tagged(namespace, manifest.digest, tag), b"") for tag in all_tags]
        await concurrently(writes)
        for tag in all_tags:
            await self._set_tag(namespace, tag, manifest.digest, referenced=True)
        return manifest

    async def tag(self, namespace: str, tag: str, digest: Digest) -> None:
        """Point ``tag`` at the stored revision ``digest``: the last step of a push by tag
        whose manifest is already stored (what `put` writes last).

        Raises `ManifestUnknown` when ``namespace`` holds no such revision (or its bytes are
        gone), `TagImmutable` as `put` does. Nothing is written when it raises.
        """
        if (await self._driver.stat(paths.revision(namespace, digest)) is None
                or await self._driver.stat(paths.blob_data(digest)) is None):
            raise ManifestUnknown(str(digest))
        if self._tag_immutable(namespace, tag):
            current = await self._tag_target(namespace, tag)
            if current is not None and current != digest:
                raise TagImmutable(f"{namespace}:{tag} already points at {current}")
        await self._blobs.touch(digest)
        await self._mark_linked(namespace)
        await self._set_tag(namespace, tag, digest)

    async def _mark_linked(self, namespace: str) -> None:
        """Mark a namespace that holds nothing yet as one whose every tag and index child has
        its back-reference (`tags_on`, `parents_of`): from now on each is written before what it
        refers to. A namespace written before back-references existed stays unmarked."""
        if await self._driver.stat(paths.linked(namespace)) is None and not await self.exists(namespace):
            await self._driver.write(paths.linked(namespace), b"")

    async def add_links(self, namespace: str) -> bool:
        """Give a namespace written before back-references existed the back-references of its
        tags and index children, then its marker (`is_linked`); False when it had them already.

        Safe beside pushes: one that sets a tag or stores an index meanwhile writes its own
        back-reference first, and one written here for a tag re-pointed meanwhile is stale,
        which `tags_on` ignores.
        """
        if await self.is_linked(namespace):
            return False
        for count, tag in enumerate(await self.tags(namespace), 1):
            target = await self._tag_target(namespace, tag)
            if target is not None:
                await self._driver.write(paths.tagged(namespace, target, tag), b"")
            if count % BATCH == 0:
                await self.breathe()
        for count, digest in enumerate(await self.revisions(namespace), 1):
            if count % BATCH == 0:
                await self.breathe()
            try:
                if (await self.revision(namespace, digest)).media_type not in mt.INDEXES:
                    continue
                summary = await self.summary(namespace, digest)
            except ManifestUnknown:
                continue
            for child in summary.children:
                await self._driver.write(paths.parent(namespace, child.digest, digest), b"")
        await self._driver.write(paths.linked(namespace), b"")
        return True

    async def is_linked(self, namespace: str) -> bool:
        """Whether `tags_on` and `parents_of` are complete for ``namespace``."""
        return await self._driver.stat(paths.linked(namespace)) is not None

    async def _set_tag(self, namespace: str, tag: str, digest: Digest, referenced: bool = False) -> None:
        """Point ``tag`` at ``digest``: the back-reference first (unless the caller has
        ``referenced`` it already), then the tag, then the previous target's back-reference is
        removed. A crash between the steps leaves at most a stale back-reference, which
        `tags_on` ignores."""
        previous = await self._tag_target(namespace, tag)
        if not referenced:
            await self._driver.write(paths.tagged(namespace, digest, tag), b"")
        await self._driver.write(paths.tag(namespace, tag), str(digest).encode())
        if previous is not None and previous != digest:
            await self._unlink_tag(namespace, tag, previous)

    async def _unlink_tag(self, namespace: str, tag: str, digest: Digest) -> None:
        """Remove the back-reference from ``digest`` to ``tag`` unless the tag points at it
        again (set meanwhile by another push)."""
        if await self._tag_target(namespace, tag) != digest:
            await self._driver.delete(paths.tagged(namespace, digest, tag))

    async def tags_on(self, namespace: str, digest: Digest) -> list[str]:
        """The tags pointing at ``digest``, sorted, found from its back-references (each
        checked against the tag itself; complete only when `is_linked`)."""
        found = []
        for tag in await self._driver.children(paths.tagged_dir(namespace, digest)):
            if await self._tag_target(namespace, tag) == digest:
                found.append(tag)
        return found

    async def parents_of(self, namespace: str, digest: Digest) -> list[Digest]:
        """The stored revisions that have listed ``digest`` as an index child, sorted (from its
        back-references, each checked to be a revision still; complete only when `is_linked`).
        The caller checks the index's children if it needs more than a candidate."""
        found = []
        for name in await self._driver.children(paths.parents_dir(namespace, digest)):
            try:
                parent = Digest.parse(name.replace("-", ":", 1))
            except OciError:
                continue
            if await self._driver.stat(paths.revision(namespace, parent)) is not None:
                found.append(parent)
        return sorted(found, key=str)

    async def _check_references(self, namespace: str, manifest: Manifest, may_read: ReadCheck | None) -> list[Digest]:
        """Raise `ManifestBlobUnknown` for the first reference the namespace cannot have;
        return the blobs to mount from other namespaces (nothing is written here)."""
        mounts: list[Digest] = []
        for descriptor in manifest.referenced_blobs():
            if descriptor.urls:
                continue
            if await self._blobs.owns(namespace, descriptor.digest):
                stored = await self._blobs.size(namespace, descriptor.digest)
                if stored != descriptor.size:
                    raise SizeInvalid(f"{descriptor.digest} has {stored} bytes, the manifest says {descriptor.size}")
                continue
            if may_read is None or not await self._mountable(namespace, descriptor.digest, may_read):
                raise ManifestBlobUnknown(str(descriptor.digest))
            mounts.append(descriptor.digest)
        for child in manifest.manifests:
            if await self._driver.stat(paths.revision(namespace, child.digest)) is None:
                raise ManifestBlobUnknown(str(child.digest))
        return mounts

    async def _mountable(self, namespace: str, digest: Digest, may_read: ReadCheck) -> bool:
        for owner in await self._blobs.owners(digest):
            if owner != namespace and self._served(owner) and await self._blobs.owns(owner, digest) \
                    and await may_read(owner):
                return True
        return False

    async def resolve(self, namespace: str, reference: Reference) -> Digest:
        """The digest a reference names in ``namespace``; raises `ManifestUnknown`."""
        if reference.digest is not None:
            return reference.digest
        assert reference.tag is not None
        try:
            return Digest.parse((await self._driver.read(paths.tag(namespace, reference.tag))).decode())
        except (PathNotFound, OciError, UnicodeDecodeError):
            raise ManifestUnknown(str(reference)) from None

    async def revision(self, namespace: str, digest: Digest) -> Revision:
        """The stored revision record; raises `ManifestUnknown`."""
        try:
            record: dict[str, Any] = json.loads(await self._driver.read(paths.revision(namespace, digest)))
        except (PathNotFound, ValueError):
            raise ManifestUnknown(str(digest)) from None
        subject = record.get("subject")
        return Revision(digest, record["media_type"], int(record.get("pushed_at", 0)),
                        Digest.parse(subject) if subject else None, record.get("artifact_type"))

    async def get(self, namespace: str, reference: Reference) -> StoredManifest:
        """The manifest a reference names, with its exact bytes; raises `ManifestUnknown`."""
        digest = await self.resolve(namespace, reference)
        revision = await self.revision(namespace, digest)
        try:
            body = await self._driver.read(paths.blob_data(digest))
        except PathNotFound:
            raise ManifestUnknown(str(reference)) from None
        return StoredManifest(digest, revision.media_type, body)

    async def delete(self, namespace: str, reference: Reference, tags: Collection[str] | None = None) -> None:
        """By tag: remove the tag only. By digest: remove the revision and its tags: every tag
        pointing at it, or only those of ``tags`` when the caller has just listed them (a
        caller deleting many revisions of a namespace then reads its tags once, not once each)."""
        if reference.tag is not None:
            previous = await self._tag_target(namespace, reference.tag)
            if await self._driver.stat(paths.tag(namespace, reference.tag)) is None:
                raise ManifestUnknown(str(reference))
            await self._driver.delete(paths.tag(namespace, reference.tag))
            if previous is not None:
                await self._unlink_tag(namespace, reference.tag, previous)
            return
        assert reference.digest is not None
        digest = reference.digest
        revision = await self.revision(namespace, digest)
        for count, tag in enumerate(await self.tags(namespace) if tags is None else tags, 1):
            if await self._tag_target(namespace, tag) == digest:
                await self._driver.delete(paths.tag(namespace, tag))
                await self._unlink_tag(namespace, tag, digest)
            if count % BATCH == 0:
                await self.breathe()
        if revision.subject is not None:
            await self._driver.delete(paths.referrer(namespace, revision.subject, digest))
        await self._driver.delete(paths.revision(namespace, digest))
        await self._driver.delete(paths.summary(namespace, digest))
        await self._blobs.revoke(namespace, digest)

    async def breathe(self) -> None:
        """Let the event loop run what is ready before going on: a caller walking many
        revisions awaits this every few of them, so others' requests are not held up."""
        await deferLater(self._clock, 0, lambda: None)

    async def summary(self, namespace: str, digest: Digest) -> ManifestSummary:
        """What listings need of the revision ``digest``: its stored summary, or, when that is
        missing or unreadable, one computed from the manifest's bytes (parsed as `put` does,
        large ones off the event loop) and stored for the next time. Bytes that no longer
        parse give an unparsed summary (media type and size only); one that cannot be written
        (a full store) is returned all the same. Raises `ManifestUnknown` when the revision
        or its bytes are gone."""
        try:
            return ManifestSummary.from_json(await self._driver.read(paths.summary(namespace, digest)))
        except (PathNotFound, ValueError):
            pass
        revision = await self.revision(namespace, digest)
        try:
            body = await self._driver.read(paths.blob_data(digest))
        except PathNotFound:
            raise ManifestUnknown(str(digest)) from None
        try:
            summary = ManifestSummary.of(await self.parser.parse(body, revision.media_type, digest.algorithm))
        except ManifestInvalid:
            summary = ManifestSummary(revision.media_type, len(body), revision.subject, revision.artifact_type,
                                      parsed=False)
        with contextlib.suppress(StorageError):  # computed again next time
            await self._driver.write(paths.summary(namespace, digest), summary.to_json())
        return summary

    async def _tag_target(self, namespace: str, tag: str) -> Digest | None:
        try:
            return await self.resolve(namespace, Reference(tag=tag))
        except ManifestUnknown:
            return None

    async def tags(self, namespace: str) -> list[str]:
        """Every tag of ``namespace``, sorted."""
        return await self._driver.children(paths.tags_dir(namespace))

    async def tags_of(self, namespace: str) -> dict[Digest, list[str]]:
        """Tags grouped by the digest they point at."""
        grouped: dict[Digest, list[str]] = {}
        for count, tag in enumerate(await self.tags(namespace), 1):
            target = await self._tag_target(namespace, tag)
            if target is not None:
                grouped.setdefault(target, []).append(tag)
            if count % BATCH == 0:
                await self.breathe()
        return grouped

    async def revisions(self, namespace: str) -> list[Digest]:
        """Every revision digest of ``namespace``."""
        found = []
        for algorithm in await self._driver.children(paths.revisions_dir(namespace)):
            for hex_digest in await self._driver.children(f"{paths.revisions_dir(namespace)}/{algorithm}"):
                try:
                    found.append(Digest(algorithm, hex_digest))
                except OciError:
                    continue
        return found

    async def revisions_page(self, namespace: str, after: Digest | None,
                             limit: int | None) -> tuple[list[Digest], bool]:
        """Revision digests of ``namespace`` in the order of their text, after ``after``: at most
        ``limit`` (all when None), and whether more follow; only the names listed are read."""
        found: list[Digest] = []
        base = paths.revisions_dir(namespace)
        for algorithm in await self._driver.children_after(base, None, 16):
            if after is not None and algorithm < after.algorithm:
                continue
            cursor = after.hex if after is not None and algorithm == after.algorithm else None
            while True:
                wanted = 1000 if limit is None else limit + 1 - len(found)
                names = await self._driver.children_after(f"{base}/{algorithm}", cursor, wanted)
                for name in names:
                    with contextlib.suppress(OciError):
                        found.append(Digest(algorithm, name))
                if limit is not None and len(found) > limit:
                    return found[:limit], True
                if len(names) < wanted:
                    break
                cursor = names[-1]
        return found, False

    async def count_revisions(self, namespace: str) -> int:
        """How many revisions ``namespace`` has, counted a page at a time."""
        count = 0
        for algorithm in await self._driver.children_after(paths.revisions_dir(namespace), None, 16):
            count += await self._count(f"{paths.revisions_dir(namespace)}/{algorithm}")
        return count

    async def _count(self, directory: str) -> int:
        count, after = 0, None
        while True:
            page = await self._driver.children_after(directory, after, 1000)
            count += len(page)
            if len(page) < 1000:
                return count
            after = page[-1]

    async def exists(self, namespace: str) -> bool:
        """Whether ``namespace`` holds any revision or tag (a few entries read, whatever it holds)."""
        if await self._driver.children_after(paths.tags_dir(namespace), None, 1):
            return True
        # Deleting the last revision leaves its (empty) algorithm directory behind.
        for algorithm in await self._driver.children_after(paths.revisions_dir(namespace), None, 16):
            if await self._driver.children_after(f"{paths.revisions_dir(namespace)}/{algorithm}", None, 1):
                return True
        return False

    async def tags_page(self, namespace: str, after: str | None, limit: int) -> list[str]:
        """At most ``limit`` tags of ``namespace`` after ``after``, sorted."""
        return await self._driver.children_after(paths.tags_dir(namespace), after, limit)

    async def count_tags(self, namespace: str) -> int:
        """How many tags ``namespace`` has, counted a page at a time."""
        return await self._count(paths.tags_dir(namespace))

    async def list_tags(self, namespace: str) -> list[str]:
        """Tags for the tags/list endpoint; raises `NameUnknown` for a namespace that never
        held a manifest (one whose manifests were all deleted lists no tags, as distribution does)."""
        tags = await self.tags(namespace)
        if not tags:
            await self.check_listed(namespace)
        return tags

    async def list_tags_page(self, namespace: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """One page of `list_tags`: at most ``limit`` tags after ``after``, and whether more follow."""
        tags = await self.tags_page(namespace, after, limit + 1)
        if not tags:
            await self.check_listed(namespace)
        return tags[:limit], len(tags) > limit

    async def check_listed(self, namespace: str) -> None:
        """Raise `NameUnknown` for a namespace that never held a manifest."""
        if not await self.exists(namespace) \
                and not await self._driver.children_after(paths.revisions_dir(namespace), None, 1):
            raise NameUnknown(namespace)

    async def referrers(self, namespace: str, subject: Digest, artifact_type: str | None,
                        after: Digest | None = None, limit: int | None = None) -> list[Descriptor]:
        """Descriptors of manifests in ``namespace`` whose subject is ``subject``, in the
        order of their digests (as text): only those after ``after``, and at most ``limit``
        (only the entries needed for them are read)."""
        found: list[Descriptor] = []
        directory = paths.referrers_dir(namespace, subject)
        names = sorted(await self._driver.children(directory), key=lambda name: name.replace("-", ":", 1))
        for name in names:
            if limit is not None and len(found) >= limit:
                break
            if after is not None and name.replace("-", ":", 1) <= str(after):
                continue
            try:
                entry = json.loads(await self._driver.read(f"{directory}/{name}"))
                descriptor = Descriptor(entry["mediaType"], Digest.parse(entry["digest"]), int(entry["size"]),
                                        entry.get("artifactType"), entry.get("annotations"))
            except (PathNotFound, ValueError, KeyError, TypeError, OciError):
                continue
            if artifact_type is not None and descriptor.artifact_type != artifact_type:
                continue
            found.append(descriptor)
        return found
