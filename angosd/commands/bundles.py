"""Signed, incremental, multi-volume bundles (`angosd.archive.bundle`): export, import, state.

Export (``angosd export --set FILE [--since STATE] --sign-key KEY -o OUT``): the set file's
images, the local tags its filters select, their closures (children present in the store,
blobs, referrers) are walked; what STATE holds is left out (and listed as the base); the
rest is written in volumes of at most ``--max-volume-size`` bytes, each an OCI layout tar
with the signed contents manifest. A single volume without a base is a complete OCI
layout that ``skopeo copy oci-archive:`` reads. The record (the state the other side
will hold after importing) is written beside the output.

Import (``angosd import VOLUME...``), in this order, nothing visible before step 5:

1. every volume: the signature against the trusted keys, the same contents in all, its
   number, exactly its blobs with their sizes; missing volumes are named;
2. the base: every blob the bundle relies on is in this store, else refused naming them;
3. every manifest read (from the bundle or the store), hashed, parsed, its references
   checked against the contents;
4. blobs not yet in the store are streamed into upload sessions, hashed on the way and,
   when they match, moved into the content-addressed store owned by no namespace
   (invisible through the API; a `STAGING_OWNER` marker keeps garbage collection away,
   however long the import takes); a blob already stored is neither read nor written
   (this is what makes a killed import resume where it stopped);
5. ownership, then manifests (children and subjects first), then tags; then the staging
   markers go (they go too when a blob is refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from angosd.archive.bundle import (
    CONTENTS_MEMBER,
    MAX_DOCUMENT,
    SIGNATURE_MEMBER,
    VOLUME_MEMBER,
    BundleContents,
    BundleError,
    BundleManifestEntry,
    CarriedBlob,
    StoreState,
    canonical,
    key_id,
    load_private_key,
    load_public_key,
    verify,
)
from angosd.archive.layout import REF_NAME, ArchiveReader, ArchiveWriter, LayoutError, index_file, layout_file
from angosd.commands.mirror import CommandFailed
from angosd.commands.progress import CountingConsumer
from angosd.oci.digest import Digest, new_hasher
from angosd.oci.errors import ManifestUnknown, OciError
from angosd.oci.manifest import Descriptor, parse_manifest
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.storage.producers import FileRangeProducer

if TYPE_CHECKING:
    from angosd.proxy.imageset import ImageSet
    from angosd.registry.registry import Registry

Advance = Callable[[int], None]
#: The reverse-owner marker that keeps a staged blob from garbage collection until the import
#: grants it to its namespaces (not a namespace: nothing can read through it; scrub removes a
#: marker left by an import never finished).
STAGING_OWNER = "_bundle-import"
#: Deepest nesting followed (indexes in indexes, referrers of referrers).
MAX_DEPTH = 16
#: Tar bytes a blob costs beyond its content (PAX header + name + padding), for volume sizing.
_MEMBER_OVERHEAD = 3 * 512
#: Bytes kept free in each volume for the small members (layout, index, contents, signature).
_RESERVE_MARGIN = 64 * 1024


# --------------------------------------------------------------------------- walking a store


@dataclass
class Walk:
    """Closures of tagged manifests: what a bundle or a state file is made of."""

    order: list[tuple[str, Digest]] = field(default_factory=list)  # children, subjects first
    media_types: dict[Digest, str] = field(default_factory=dict)
    bodies: dict[Digest, bytes] = field(default_factory=dict)
    owned: dict[str, dict[Digest, int]] = field(default_factory=dict)  # namespace -> blob -> size
    tags: list[tuple[str, str, Digest]] = field(default_factory=list)
    roots: list[Descriptor] = field(default_factory=list)
    _seen: set[tuple[str, Digest]] = field(default_factory=set)

    async def tag(self, registry: Registry, namespace: str, tag: str) -> None:
        try:
            stored = await registry.manifests.get(namespace, Reference(tag=tag))
        except ManifestUnknown:
            raise CommandFailed(f"{namespace}:{tag}: not in the store") from None
        self.tags.append((namespace, tag, stored.digest))
        self.roots.append(Descriptor(stored.media_type, stored.digest, len(stored.body),
                                     annotations={REF_NAME: f"{namespace}:{tag}"}))
        await self.visit(registry, namespace, stored.digest, 0)

    async def visit(self, registry: Registry, namespace: str, digest: Digest, depth: int) -> bool:
        """Add ``digest``'s closure in ``namespace``; False when the store lacks the manifest."""
        if (namespace, digest) in self._seen:
            return True
        if depth > MAX_DEPTH:
            raise CommandFailed(f"{namespace}@{digest}: nested deeper than {MAX_DEPTH} levels")
        try:
            stored = await registry.manifests.get(namespace, Reference(digest=digest))
        except ManifestUnknown:
            return False
        self._seen.add((namespace, digest))
        manifest = parse_manifest(stored.body, stored.media_type, digest.algorithm)
        self.media_types[digest] = stored.media_type
        self.bodies[digest] = stored.body
        for child in manifest.manifests:  # a platform never mirrored is left out
            await self.visit(registry, namespace, child.digest, depth + 1)
        owned = self.owned.setdefault(namespace, {})
        owned[digest] = len(stored.body)
        for blob in manifest.referenced_blobs():
            try:
                size = await registry.blobs.size(namespace, blob.digest)
            except OciError:
                raise CommandFailed(f"{namespace}@{digest}: blob {blob.digest} is not in the store") from None
            owned[blob.digest] = size
        self.order.append((namespace, digest))
        for referrer in await registry.manifests.referrers(namespace, digest, None):
            await self.visit(registry, namespace, referrer.digest, depth + 1)
        return True

    def state(self) -> StoreState:
        manifests: dict[str, set[Digest]] = {}
        for namespace, digest in self.order:
            manifests.setdefault(namespace, set()).add(digest)
        tags: dict[str, dict[str, Digest]] = {}
        for namespace, tag, digest in self.tags:
            tags.setdefault(namespace, {})[tag] = digest
        blobs = {digest for owned in self.owned.values() for digest in owned}
        return StoreState(frozenset(blobs), {ns: frozenset(d) for ns, d in manifests.items()}, tags)


async def store_state(registry: Registry) -> StoreState:
    """What the store holds: every tag of every namespace, with its closure."""
    walk = Walk()
    for namespace in await registry.catalog():
        for tag in await registry.manifests.tags(namespace):
            await walk.tag(registry, namespace, tag)
    return walk.state()


async def walk_image_set(registry: Registry, image_set: ImageSet) -> Walk:
    """The closures of the local tags each image of ``image_set`` selects."""
    walk = Walk()
    for image in image_set.images:
        try:
            tags = image.tags.select(await registry.manifests.tags(image.namespace))
        except OciError:
            tags = []
        if not tags:
            raise CommandFailed(f"{image.namespace}: no tag in the store matches the set file "
                                "(run `angosd mirror --set` first)")
        for tag in tags:
            await walk.tag(registry, image.namespace, tag)
    return walk


# --------------------------------------------------------------------------- export


@dataclass(frozen=True, slots=True)
class ExportedBundle:
    contents: BundleContents
    paths: tuple[str, ...]
    record: StoreState


def volume_paths(output: str, volumes: int) -> list[str]:
    """``OUT`` for one volume; else ``OUT`` with ``.001``, ``.002``... before a ``.tar`` suffix."""
    if volumes == 1:
        return [output]
    stem, suffix = (output[:-4], ".tar") if output.endswith(".tar") else (output, "")
    width = max(3, len(str(volumes)))
    return [f"{stem}.{number:0{width}d}{suffix}" for number in range(1, volumes + 1)]


def plan_bundle(walk: Walk, since: StoreState | None, max_volume: int | None, created: int) -> BundleContents:
    """Which blobs the bundle carries (what ``since`` lacks), in which volume, and its base."""
    have = since.blobs if since is not None else frozenset()
    sizes: dict[Digest, int] = {}
    for owned in walk.owned.values():
        sizes.update(owned)
    carried_digests = [d for d in sizes if d not in have]
    carried_digests.sort(key=lambda d: (d not in walk.bodies, str(d)))  # manifests first
    base = tuple(sorted((d for d in sizes if d in have), key=str))
    owned_blobs = {ns: tuple(sorted(blobs, key=str)) for ns, blobs in walk.owned.items()}
    manifests = tuple(BundleManifestEntry(ns, d, walk.media_types[d]) for ns, d in walk.order)

    def contents(blobs: tuple[CarriedBlob, ...], volumes: int) -> BundleContents:
        return BundleContents(volumes, created, since.id if since is not None else None, base, blobs, manifests,
                              owned_blobs, tuple(walk.tags))

    single = tuple(CarriedBlob(d, sizes[d], 1) for d in carried_digests)
    if max_volume is None:
        return contents(single, 1)
    index_size = len(index_file(walk.roots))
    reserve = 2 * len(contents(single, 1).to_json()) + index_size + _RESERVE_MARGIN + 8 * 512
    room = max_volume - reserve
    if room <= 0:
        raise CommandFailed(f"--max-volume-size {max_volume} leaves no room beside the bundle's own files "
                            f"({reserve} bytes)")
    assigned: list[CarriedBlob] = []
    volume, used = 1, 0
    for digest in carried_digests:
        cost = _MEMBER_OVERHEAD + -(-sizes[digest] // 512) * 512
        if cost > room:
            raise CommandFailed(f"blob {digest} ({sizes[digest]} bytes) does not fit in a volume of {max_volume} "
                                "bytes; raise --max-volume-size")
        if used + cost > room:
            volume, used = volume + 1, 0
        used += cost
        assigned.append(CarriedBlob(digest, sizes[digest], volume))
    return contents(tuple(assigned), volume)


async def write_bundle(registry: Registry, walk: Walk, contents: BundleContents, output: str, key_path: str,
                       advance: Advance, clock: Any) -> ExportedBundle:
    """Write ``contents`` as signed volumes next to ``output`` (each to ``.partial``, then renamed)."""
    key = load_private_key(key_path)
    document = contents.to_json()
    signature = key.sign(document)
    owner = {d: ns for ns, owned in walk.owned.items() for d in owned}
    written: list[str] = []
    for number, path in enumerate(volume_paths(output, contents.volumes), start=1):
        temporary = f"{path}.partial"
        try:
            with open(temporary, "wb") as out:
                writer = ArchiveWriter(out)
                writer.add_file("oci-layout", layout_file())
                writer.add_file("index.json", index_file(walk.roots))
                writer.add_file(CONTENTS_MEMBER, document)
                writer.add_file(SIGNATURE_MEMBER, signature)
                writer.add_file(VOLUME_MEMBER, canonical({"volume": number}))
                for digest, size in contents.in_volume(number).items():
                    if digest in walk.bodies:
                        writer.add_blob(digest, walk.bodies[digest])
                        advance(size)
                        continue
                    handle = await registry.blobs.open(owner[digest], digest)
                    if handle.size != size:
                        handle.close()
                        raise CommandFailed(f"blob {digest} changed size while exporting")
                    entry = writer.begin_blob(digest, size)
                    if size:
                        await handle.write_to(CountingConsumer(entry, None, advance, clock), 0, size - 1)
                    else:
                        handle.close()
                    entry.finish()
                writer.close()
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        written.append(path)
    return ExportedBundle(contents, tuple(written), walk.state())


# --------------------------------------------------------------------------- import


@dataclass
class BundleImport:
    """A bundle checked by `check_bundle` (steps 1-3), ready for `apply_bundle`."""

    contents: BundleContents
    volumes: dict[int, ArchiveReader]
    signer: str
    manifests: dict[Digest, bytes] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # volume numbers not given (`open_volumes(complete=False)`)

    def close(self) -> None:
        for reader in self.volumes.values():
            reader.close()


@dataclass
class BundleResult:
    blobs_streamed: int = 0
    blobs_present: int = 0
    bytes_streamed: int = 0
    manifests: int = 0
    tags: int = 0


def is_bundle(reader: ArchiveReader) -> bool:
    return reader.has_member(CONTENTS_MEMBER)


def trusted_keys(paths_: list[str]) -> list[tuple[str, Any]]:
    keys = []
    for path in paths_:
        key = load_public_key(path)
        keys.append((f"{os.path.basename(path)} ({key_id(key)})", key))
    return keys


def open_volumes(readers: list[ArchiveReader], keys: list[tuple[str, Any]], complete: bool = True) -> BundleImport:
    """Step 1 (see the module doc); raises `BundleError` naming the problem. With ``complete``
    false, missing volumes are allowed (`BundleImport.missing` names them)."""
    document: bytes | None = None
    signer = ""
    volumes: dict[int, ArchiveReader] = {}
    contents: BundleContents | None = None
    for reader in readers:
        if not reader.has_member(CONTENTS_MEMBER) or not reader.has_member(SIGNATURE_MEMBER):
            raise BundleError(f"{reader.path}: not a signed angosd bundle volume (no {CONTENTS_MEMBER} or "
                              f"{SIGNATURE_MEMBER})")
        data = reader.read_member(CONTENTS_MEMBER, MAX_DOCUMENT)
        if document is None:
            signer = verify(data, reader.read_member(SIGNATURE_MEMBER, 1024), keys)
            contents = BundleContents.parse(data)
            document = data
        elif data != document:
            raise BundleError(f"{reader.path}: belongs to another bundle than {readers[0].path}")
        elif reader.read_member(SIGNATURE_MEMBER, 1024) != readers[0].read_member(SIGNATURE_MEMBER, 1024):
            verify(data, reader.read_member(SIGNATURE_MEMBER, 1024), keys)
        assert contents is not None
        try:
            number = _volume_number(reader.read_member(VOLUME_MEMBER, 1024))
        except LayoutError:
            raise BundleError(f"{reader.path}: no {VOLUME_MEMBER}") from None
        if not 1 <= number <= contents.volumes:
            raise BundleError(f"{reader.path}: volume {number} of a bundle of {contents.volumes}")
        if number in volumes:
            raise BundleError(f"{reader.path} and {volumes[number].path} are both volume {number}")
        expected = contents.in_volume(number)
        present = reader.blob_sizes()
        for digest, size in expected.items():
            if digest not in present:
                raise BundleError(f"{reader.path} (volume {number}) lacks blob {digest} that the signed contents "
                                  "list")
            if present[digest] != size:
                raise BundleError(f"{reader.path}: blob {digest} has {present[digest]} bytes, the signed contents "
                                  f"say {size}")
        extra = next((d for d in present if d not in expected), None)
        if extra is not None:
            raise BundleError(f"{reader.path}: blob {extra} is not in the signed contents of volume {number}")
        volumes[number] = reader
    assert contents is not None
    missing = [n for n in range(1, contents.volumes + 1) if n not in volumes]
    if missing and complete:
        raise BundleError(f"missing volume{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing[:50]))} of "
                          f"{contents.volumes}; give every volume of the bundle (in any order)")
    return BundleImport(contents, volumes, signer, missing=missing)


def _volume_number(data: bytes) -> int:
    """The number in an ``angosd-volume.json``; raises `BundleError`."""
    try:
        number = json.loads(data).get("volume")
    except (ValueError, AttributeError, RecursionError):
        number = None
    if not isinstance(number, int) or isinstance(number, bool):
        raise BundleError(f"{VOLUME_MEMBER} has no volume number")
    return number


async def check_bundle(registry: Registry, bundle: BundleImport, max_manifest_size: int) -> None:
    """Steps 2 and 3 (see the module doc); raises `BundleError`."""
    contents = bundle.contents
    missing = [digest for digest in contents.base if not await registry.blobs.exists(digest)]
    if missing:
        state = f" (state {contents.base_state})" if contents.base_state else ""
        raise BundleError(f"this store lacks {len(missing)} of the {len(contents.base)} blobs of the bundle's "
                          f"base{state}, e.g. {', '.join(map(str, missing[:3]))}: import the bundles before this "
                          "one first (or export with --since this store's state)")
    for namespace in {entry.namespace for entry in contents.manifests} | {ns for ns, _tag, _d in contents.tags}:
        try:
            registry.check_namespace(namespace)
        except OciError as exc:
            raise BundleError(f"namespace {namespace}: {exc.message}") from None
    for entry in contents.manifests:
        digest = entry.digest
        if digest not in bundle.manifests:
            carried = contents.carried.get(digest)
            if carried is not None:
                reader = bundle.volumes[carried.volume]
                try:
                    body = reader.read_blob(digest, max_manifest_size)
                except LayoutError as exc:
                    raise BundleError(f"manifest {digest}: {exc}") from None
            else:
                body = await registry.blobs.read_small(digest)
                if Digest.of(body, digest.algorithm) != digest:
                    raise BundleError(f"manifest {digest} of the base is corrupt in this store")
            bundle.manifests[digest] = body
        try:
            manifest = parse_manifest(bundle.manifests[digest], entry.media_type, digest.algorithm)
        except OciError as exc:
            raise BundleError(f"manifest {digest}: {exc}") from None
        owned = set(contents.owned.get(entry.namespace, ()))
        stray = next((b.digest for b in manifest.referenced_blobs() if b.digest not in owned), None)
        if stray is not None:
            raise BundleError(f"manifest {digest} references blob {stray}, which the bundle does not give "
                              f"{entry.namespace}")


async def apply_bundle(registry: Registry, bundle: BundleImport, grow: Advance, advance: Advance) -> BundleResult:
    """Steps 4 and 5 (see the module doc)."""
    result = BundleResult()
    contents = bundle.contents
    first_owner = {d: ns for ns, owned in contents.owned.items() for d in owned}
    to_stream = []
    for blob in contents.blobs:
        if blob.digest in bundle.manifests:
            continue  # stored by the manifest store, already verified
        if await registry.blobs.exists(blob.digest):
            result.blobs_present += 1
        else:
            to_stream.append(blob)
    grow(sum(blob.size for blob in to_stream))
    try:
        for blob in to_stream:
            await _stage_blob(registry, bundle.volumes[blob.volume], first_owner.get(blob.digest, "_bundle"), blob,
                              advance)
            result.blobs_streamed += 1
            result.bytes_streamed += blob.size
    except BundleError:
        await _unstage(registry, contents)  # refused: what was staged may be collected
        raise
    for namespace, digests in contents.owned.items():
        for digest in digests:
            if digest not in bundle.manifests:
                await registry.blobs.grant(namespace, digest)
    for entry in contents.manifests:
        try:
            await registry.manifests.revision(entry.namespace, entry.digest)
            continue
        except ManifestUnknown:
            pass
        await registry.manifests.put(entry.namespace, Reference(digest=entry.digest), entry.media_type,
                                     bundle.manifests[entry.digest])
        result.manifests += 1
    for namespace, tag, digest in contents.tags:  # last: a tag never shows incomplete content
        try:
            if await registry.manifests.resolve(namespace, Reference(tag=tag)) == digest:
                continue
        except ManifestUnknown:
            pass
        media_type = next(e.media_type for e in contents.manifests if e.digest == digest)
        await registry.manifests.put(namespace, Reference(tag=tag), media_type, bundle.manifests[digest])
        result.tags += 1
    await _unstage(registry, contents)
    return result


async def _unstage(registry: Registry, contents: BundleContents) -> None:
    """Remove the staging markers of the bundle's blobs (owned now, or to be collected)."""
    for blob in contents.blobs:
        await registry.driver.delete(paths.blob_owner(blob.digest, STAGING_OWNER))


async def _stage_blob(registry: Registry, reader: ArchiveReader, namespace: str, blob: CarriedBlob,
                      advance: Advance) -> None:
    """Stream one blob into an upload session, hashing it; when it matches, move it into the
    content-addressed store without any owner (invisible until step 5 grants it)."""
    uploads = registry.uploads
    session = await uploads.start(namespace, blob.digest.algorithm)
    hasher = new_hasher(blob.digest.algorithm)
    try:
        sink = await uploads.open_sink(namespace, session, 0)
        try:
            consumer = CountingConsumer(sink, hasher, advance)
            await FileRangeProducer(reader.open_blob(blob.digest), blob.size, consumer).start()
        except BaseException:
            sink.abort()
            raise
        await sink.finish()
        if hasher.hexdigest() != blob.digest.hex:
            raise BundleError(f"{reader.path}: blob {blob.digest} is corrupt (its bytes hash to "
                              f"{blob.digest.algorithm}:{hasher.hexdigest()}); nothing of the bundle was made "
                              "visible")
        await registry.blobs.touch(blob.digest)
        await registry.driver.write(paths.blob_owner(blob.digest, STAGING_OWNER), b"")  # kept until granted
        await registry.driver.move(paths.upload_data(namespace, session), paths.blob_data(blob.digest))
    finally:
        await uploads.cancel(namespace, session)


def hash_volume(reader: ArchiveReader, blobs: dict[Digest, int], advance: Advance) -> list[str]:
    """Hash every blob of one volume (blocking: run it in a thread); the problems found, by blob."""
    problems = []
    for digest, size in blobs.items():
        hasher = new_hasher(digest.algorithm)
        read = 0
        with reader.open_blob(digest) as source:
            while chunk := source.read(1024 * 1024):
                hasher.update(chunk)
                read += len(chunk)
                advance(len(chunk))
        if read != size:
            problems.append(f"blob {digest}: {read} bytes, the signed contents say {size}")
        elif hasher.hexdigest() != digest.hex:
            problems.append(f"blob {digest} is corrupt (its bytes hash to {digest.algorithm}:{hasher.hexdigest()})")
    return problems


def now() -> int:
    return int(time.time())
