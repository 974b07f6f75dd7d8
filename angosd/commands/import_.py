"""``angosd import -c CONFIG bundle.tar [--namespace-prefix P]``: load an OCI layout archive.

Namespaces and tags come from the ``org.opencontainers.image.ref.name`` of index.json
entries: ``NAMESPACE:TAG`` (as `angosd export` writes), ``NAMESPACE@DIGEST`` (untagged),
or a plain ``TAG`` (as other tools write), which needs ``--namespace-prefix`` as its
namespace. With ``--namespace-prefix P`` every namespace becomes ``P/NAMESPACE``. An
untagged entry goes to its ``io.angosd.namespace`` annotation, else to the namespaces
holding its subject.

Order, so that nothing half-imported is visible:

1. The archive is checked before anything is written: member names and types, every
   manifest of every closure read, hashed and parsed, every referenced blob present with
   the size its descriptor gives. A bad archive is refused here with one line.
2. Blobs are streamed into upload sessions; `UploadSessions.complete` verifies each
   digest and renames it into place (a blob already in the store is shared, not copied).
3. Manifests are stored by digest, children before their index and subjects before their
   referrers; `ManifestStore.put` verifies each digest.
4. Tags are written last.

A failure in step 2 (a blob whose bytes do not match) stops before any manifest or tag is
written: blobs already verified stay as unreferenced content (garbage collection removes
them), and a rerun skips them, so an interrupted import resumes. Re-importing the same
archive writes nothing.

Signed bundles (``angosd export --set``: one or more volumes holding ``angosd-bundle.json``)
are imported by `angosd.commands.bundles` instead: signature against the trusted keys,
every volume, the base and every digest verified before anything is visible; ``--check``
verifies volumes without importing, ``--state FILE`` writes the store's state afterwards.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from angosd.archive.layout import (
    MAX_INDEX_SIZE,
    NAMESPACE_ANNOTATION,
    REF_NAME,
    ArchiveReader,
    LayoutError,
    blob_member,
    parse_ref_name,
)
from angosd.commands.bundles import is_bundle
from angosd.commands.mirror import CommandFailed, add_store_arguments, load_store_config, run_async, start_logging
from angosd.commands.progress import CountingConsumer, Progress, human_size
from angosd.oci.digest import Digest
from angosd.oci.errors import DigestInvalid, ManifestUnknown, OciError
from angosd.oci.manifest import Descriptor, parse_manifest
from angosd.oci.names import Reference
from angosd.storage.producers import FileRangeProducer

if TYPE_CHECKING:
    from angosd.config import Config
    from angosd.registry.registry import Registry

#: Deepest nesting of indexes accepted (a hostile archive could nest thousands).
MAX_DEPTH = 16
Advance = Callable[[int], None]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "import", help="load an OCI layout archive (tar) into the store, verifying every digest",
        description="Load an OCI image layout tar (as written by `angosd export` or skopeo oci-archive:) into the "
                    "store. Ref names NAMESPACE:TAG give namespace and tag; --namespace-prefix P puts them under "
                    "P/. Every digest is verified; a corrupt archive is refused and nothing of it gets tagged. "
                    "Idempotent and resumable.")
    add_store_arguments(parser)
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE",
                        help="the OCI layout tar to load, or every volume of a signed bundle (any order)")
    parser.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                        help="an Ed25519 public key (PEM) whose bundle signatures are accepted (repeatable; adds "
                             "to [bundle] trusted_keys)")
    parser.add_argument("--check", action="store_true",
                        help="only verify the given bundle volumes (signature, contents, every blob digest; "
                             "missing volumes allowed), e.g. after copying them to removable media; writes nothing")
    parser.add_argument("--state", metavar="FILE", help="after a bundle's import, write this store's state to FILE "
                                                        "(what `angosd export --since` needs)")
    parser.add_argument("--namespace-prefix", metavar="P", help="prefix every namespace with P/ (the namespace of "
                                                                 "plain-tag ref names)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("import", progress, lambda reactor: _import(reactor, args, progress), args=args)


@dataclass
class ImportPlan:
    """What the archive holds, per namespace, checked and in a safe order."""

    #: Manifest bytes and media types, read and verified.
    manifests: dict[Digest, tuple[str, bytes]] = field(default_factory=dict)
    #: namespace -> manifest digests, children before parents, subjects before referrers.
    order: dict[str, list[Digest]] = field(default_factory=dict)
    #: namespace -> blob digest -> size.
    blobs: dict[str, dict[Digest, int]] = field(default_factory=dict)
    #: (namespace, tag) -> manifest digest.
    tags: dict[tuple[str, str], Digest] = field(default_factory=dict)


@dataclass
class ImportResult:
    tags: int = 0
    manifests: int = 0
    blobs_streamed: int = 0
    blobs_shared: int = 0
    bytes_streamed: int = 0


async def _import(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.daemon.assembly import open_store

    config = load_store_config(args)
    registry, _cache = open_store(config, reactor)
    start_logging(progress)
    readers = [ArchiveReader.open(path, max_index_size=MAX_INDEX_SIZE) for path in args.archives]
    try:
        if any(is_bundle(reader) for reader in readers):
            return await _import_bundle(reactor, registry, config, readers, args, progress)
    finally:
        for reader in readers:
            reader.close()
    if len(args.archives) > 1:
        raise CommandFailed("several archives given, but they are not volumes of a signed bundle")
    args.archive = args.archives[0]
    with ArchiveReader.open(args.archive, max_index_size=MAX_INDEX_SIZE) as archive:
        plan = plan_import(archive, registry, args.namespace_prefix, config.global_.max_manifest_size)
        bar = progress.bar(f"import {args.archive}", 0)
        result = await run_import(registry, archive, plan, bar.grow, bar.advance)
    bar.close(f"{len(plan.order)} namespaces: {result.tags} tags and {result.manifests} manifests written, "
              f"{result.blobs_streamed} blobs imported ({human_size(result.bytes_streamed)}), "
              f"{result.blobs_shared} shared with content already stored")
    return 0


async def _import_bundle(reactor: Any, registry: Registry, config: Config, readers: list[ArchiveReader],
                         args: argparse.Namespace, progress: Progress) -> int:
    """A signed bundle (`angosd.commands.bundles`): verified whole before anything is visible."""
    from angosd.archive.bundle import BundleError
    from angosd.commands.bundles import apply_bundle, check_bundle, open_volumes, store_state, trusted_keys

    if args.check:
        return await _check_volumes(reactor, config, readers, args, progress)
    try:
        keys = trusted_keys([*config.bundle.trusted_keys, *args.trusted_key])
        bundle = open_volumes(readers, keys)
        await check_bundle(registry, bundle, config.global_.max_manifest_size)
        bar = progress.bar(f"import {len(readers)} volume(s)", 0)
        result = await apply_bundle(registry, bundle, bar.grow, bar.advance)
    except BundleError as exc:
        raise CommandFailed(f"bundle refused: {exc}") from None
    bar.close(f"bundle signed by {bundle.signer}: {result.tags} tags and {result.manifests} manifests written, "
              f"{result.blobs_streamed} blobs imported ({human_size(result.bytes_streamed)}), "
              f"{result.blobs_present} already in the store")
    if args.state:
        state = await store_state(registry)
        with open(f"{args.state}.partial", "wb") as out:
            out.write(state.to_json())
        os.replace(f"{args.state}.partial", args.state)
        progress.note(f"state written to {args.state} ({state.id})")
    return 0


async def _check_volumes(reactor: Any, config: Config, readers: list[ArchiveReader], args: argparse.Namespace,
                         progress: Progress) -> int:
    """``--check``: verify each given volume on its own (hashing in a thread); exits 1 naming every problem."""
    from twisted.internet.threads import deferToThreadPool

    from angosd.archive.bundle import BundleError
    from angosd.commands.bundles import hash_volume, open_volumes, trusted_keys

    try:
        bundle = open_volumes(readers, trusted_keys([*config.bundle.trusted_keys, *args.trusted_key]),
                              complete=False)
    except BundleError as exc:
        raise CommandFailed(f"bundle refused: {exc}") from None
    problems = []
    for number, reader in sorted(bundle.volumes.items()):
        blobs = bundle.contents.in_volume(number)
        bar = progress.bar(f"volume {number} of {bundle.contents.volumes} ({reader.path})", sum(blobs.values()))
        found = await deferToThreadPool(reactor, reactor.getThreadPool(), hash_volume, reader, blobs,
                                        functools.partial(reactor.callFromThread, bar.advance))
        problems += [f"{reader.path}: {problem}" for problem in found]
        bar.close(f"{len(blobs)} blobs, {len(found)} problems" if found else
                  f"{len(blobs)} blobs ({human_size(sum(blobs.values()))}) verified, signed by {bundle.signer}")
    if bundle.missing:
        progress.note(f"not given: volume{'s' if len(bundle.missing) > 1 else ''} "
                      f"{', '.join(map(str, bundle.missing))} of {bundle.contents.volumes}")
    if problems:
        raise CommandFailed(f"bundle refused: {'; '.join(problems[:10])}")
    return 0


# --------------------------------------------------------------------------- 1. plan (checks only)


def _namespace(registry: Registry, prefix: str | None, namespace: str | None, what: str) -> str:
    if namespace is None:
        if prefix is None:
            raise LayoutError(f"{what} names no namespace; give one with --namespace-prefix")
        namespace = prefix
    elif prefix is not None:
        namespace = f"{prefix.rstrip('/')}/{namespace}"
    try:
        return registry.check_namespace(namespace)
    except OciError as exc:
        raise LayoutError(f"{what}: namespace {namespace!r} cannot be used: {exc.message}") from None


def plan_import(archive: ArchiveReader, registry: Registry, prefix: str | None, max_manifest_size: int) -> ImportPlan:
    """Check ``archive`` completely and plan its import; raises `LayoutError`, writes nothing."""
    plan = ImportPlan()
    seen: dict[str, set[Digest]] = {}
    untagged: list[Descriptor] = []
    for root in archive.roots:
        annotations = root.annotations or {}
        ref = annotations.get(REF_NAME)
        if ref is None:
            if NAMESPACE_ANNOTATION not in annotations:
                untagged.append(root)
                continue
            namespace = _namespace(registry, prefix, annotations[NAMESPACE_ANNOTATION], f"entry {root.digest}")
            tag = None
        else:
            named, tag, digest = parse_ref_name(ref)
            if digest is not None and digest != root.digest:
                raise LayoutError(f"ref name {ref!r} names {digest}, but its entry is {root.digest}")
            namespace = _namespace(registry, prefix, named, f"ref name {ref!r}")
        _walk(archive, plan, seen, namespace, root, max_manifest_size, 0)
        if tag is not None:
            earlier = plan.tags.setdefault((namespace, tag), root.digest)
            if earlier != root.digest:
                raise LayoutError(f"{namespace}:{tag} is given twice, as {earlier} and {root.digest}")
    for root in untagged:  # foreign archives: referrers go where their subject went
        media_type, body = _manifest(archive, plan, root.digest, root.media_type, max_manifest_size)
        try:
            subject = parse_manifest(body, media_type, root.digest.algorithm).subject
        except OciError as exc:
            raise LayoutError(f"{archive.path}: {blob_member(root.digest)}: {exc}") from None
        homes = [ns for ns, digests in seen.items() if subject is not None and subject.digest in digests]
        if not homes:
            homes = [_namespace(registry, prefix, None, f"untagged entry {root.digest}")]
        for namespace in homes:
            _walk(archive, plan, seen, namespace, root, max_manifest_size, 0)
    return plan


def _manifest(archive: ArchiveReader, plan: ImportPlan, digest: Digest, media_type: str,
              limit: int) -> tuple[str, bytes]:
    known = plan.manifests.get(digest)
    if known is None:
        known = plan.manifests[digest] = (media_type, archive.read_blob(digest, limit))
    return known


def _walk(archive: ArchiveReader, plan: ImportPlan, seen: dict[str, set[Digest]], namespace: str,
          descriptor: Descriptor, limit: int, depth: int) -> None:
    """Add ``descriptor``'s closure in ``namespace`` to ``plan`` (children first)."""
    done = seen.setdefault(namespace, set())
    if descriptor.digest in done:
        return
    if depth > MAX_DEPTH:
        raise LayoutError(f"{archive.path}: indexes nested deeper than {MAX_DEPTH} levels")
    media_type, body = _manifest(archive, plan, descriptor.digest, descriptor.media_type, limit)
    try:
        manifest = parse_manifest(body, media_type, descriptor.digest.algorithm)
    except OciError as exc:
        raise LayoutError(f"{archive.path}: {blob_member(descriptor.digest)}: {exc}") from None
    if manifest.size != descriptor.size:
        raise LayoutError(f"{archive.path}: {blob_member(descriptor.digest)} has {manifest.size} bytes, its "
                          f"descriptor says {descriptor.size}")
    done.add(descriptor.digest)
    for child in manifest.manifests:
        _walk(archive, plan, seen, namespace, child, limit, depth + 1)
    blobs = plan.blobs.setdefault(namespace, {})
    for blob in manifest.referenced_blobs():
        size = archive.blob_size(blob.digest) if archive.has_blob(blob.digest) else None
        if size is None:
            raise LayoutError(f"{archive.path}: missing blob {blob.digest} (referenced by {descriptor.digest})")
        if size != blob.size:
            raise LayoutError(f"{archive.path}: {blob_member(blob.digest)} has {size} bytes, manifest "
                              f"{descriptor.digest} says {blob.size}")
        blobs[blob.digest] = size
    plan.order.setdefault(namespace, []).append(descriptor.digest)


# --------------------------------------------------------------------------- 2-4. import


async def run_import(registry: Registry, archive: ArchiveReader, plan: ImportPlan, grow: Advance,
                     advance: Advance) -> ImportResult:
    """Carry out ``plan`` (blobs, then manifests, then tags; see the module doc)."""
    result = ImportResult()
    to_stream: list[tuple[str, Digest, int]] = []
    streaming: set[Digest] = set()
    after: list[tuple[str, Digest]] = []  # wanted by a second namespace: shared once streamed
    for namespace, blobs in plan.blobs.items():
        for digest, size in blobs.items():
            if await registry.blobs.owns(namespace, digest):
                continue
            if digest in streaming:
                after.append((namespace, digest))
            elif await registry.mount(namespace, digest, None, _anyone):
                result.blobs_shared += 1
            else:
                to_stream.append((namespace, digest, size))
                streaming.add(digest)
    grow(sum(size for _, _, size in to_stream))
    for namespace, digest, size in to_stream:
        await _stream_blob(registry, archive, namespace, digest, size, advance)
        result.blobs_streamed += 1
        result.bytes_streamed += size
    for namespace, digest in after:
        if not await registry.mount(namespace, digest, None, _anyone):
            raise CommandFailed(f"{namespace}: blob {digest} vanished while importing")
        result.blobs_shared += 1

    for namespace, digests in plan.order.items():
        for digest in digests:
            try:
                await registry.manifests.revision(namespace, digest)
                continue
            except ManifestUnknown:
                pass
            media_type, body = plan.manifests[digest]
            await registry.manifests.put(namespace, Reference(digest=digest), media_type, body, strict=False)
            result.manifests += 1

    for (namespace, tag), digest in plan.tags.items():
        try:
            if await registry.manifests.resolve(namespace, Reference(tag=tag)) == digest:
                continue
        except ManifestUnknown:
            pass
        media_type, body = plan.manifests[digest]
        await registry.manifests.put(namespace, Reference(tag=tag), media_type, body, strict=False)
        result.tags += 1
    return result


async def _anyone(_namespace: str) -> bool:
    return True


async def _stream_blob(registry: Registry, archive: ArchiveReader, namespace: str, digest: Digest, size: int,
                       advance: Advance) -> None:
    """Stream one blob from the archive into ``namespace``; verified by `complete`."""
    uploads = registry.uploads
    session = await uploads.start(namespace, digest.algorithm)
    try:
        sink = await uploads.open_sink(namespace, session, 0)
        try:
            await FileRangeProducer(archive.open_blob(digest), size, CountingConsumer(sink, None, advance)).start()
        except BaseException:
            sink.abort()
            raise
        await sink.finish()
        await uploads.complete(namespace, session, digest)
    except DigestInvalid as exc:
        await uploads.cancel(namespace, session)
        raise CommandFailed(f"{archive.path}: {blob_member(digest)} is corrupt ({exc.detail}); nothing was "
                            "tagged") from None
    except BaseException:
        await uploads.cancel(namespace, session)
        raise


