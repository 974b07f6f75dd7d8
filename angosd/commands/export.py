"""``angosd export -c CONFIG NAMESPACE[:TAG]... -o bundle.tar``: write an OCI layout archive.

The archive is a standard OCI image layout in a tar (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``) that ``skopeo copy oci-archive:bundle.tar:REF ...`` reads and
``angosd import`` loads. Each exported tag is one index.json entry whose
``org.opencontainers.image.ref.name`` is ``NAMESPACE:TAG`` (``NAMESPACE@DIGEST`` when a
digest was asked for), so several namespaces fit in one archive. A NAMESPACE without
``:TAG`` exports all its tags. Indexes bring every platform; referrers (signatures,
SBOMs...) of everything exported come along as untagged entries annotated with
``io.angosd.namespace``.

Blobs are streamed from the store into the tar (never whole in memory) and verified on
the way. The archive is written to ``OUTPUT.partial`` and renamed when complete, so an
interrupted export never leaves a truncated ``OUTPUT``; ``-o -`` writes to stdout.

With ``--set FILE --sign-key KEY`` it writes a signed bundle instead (incremental with
``--since STATE``, in volumes with ``--max-volume-size``): see `angosd.commands.bundles`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from angosd.archive.layout import NAMESPACE_ANNOTATION, REF_NAME, ArchiveWriter, index_file, layout_file, parse_ref_name
from angosd.commands.mirror import (
    CommandFailed,
    UsageError,
    add_store_arguments,
    load_store_config,
    run_async,
    start_logging,
)
from angosd.commands.progress import CountingConsumer, Progress, human_size
from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown, ManifestUnknown
from angosd.oci.manifest import Descriptor, parse_manifest
from angosd.oci.names import Reference

if TYPE_CHECKING:
    from angosd.registry.manifests import StoredManifest
    from angosd.registry.registry import Registry

Advance = Callable[[int], None]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export", help="write images of the store to an OCI layout archive (tar)",
        description="Write NAMESPACE:TAG (or every tag of NAMESPACE) with all platforms and referrers to an OCI "
                    "image layout tar. Ref names are NAMESPACE:TAG, e.g. "
                    "skopeo copy oci-archive:bundle.tar:apps/web:v1 docker://host/apps/web:v1")
    add_store_arguments(parser)
    parser.add_argument("targets", nargs="*", metavar="NAMESPACE[:TAG]", help="what to export (no tag: all tags)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (- for stdout)")
    bundle = parser.add_argument_group(
        "signed bundles", "With --set: a signed bundle of what the set file selects in the store, leaving out what "
                          "--since STATE holds, in volumes of at most --max-volume-size (see docs/air-gap.md)")
    bundle.add_argument("--set", dest="image_set", metavar="FILE", help="the image-set file")
    bundle.add_argument("--since", metavar="STATE", help="a state file of the importing side, or the record of the "
                                                         "previous export: what it holds is left out")
    bundle.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (PEM) signing the bundle "
                                                          "(`angosd keygen`)")
    bundle.add_argument("--max-volume-size", metavar="SIZE", help="split into numbered volumes of at most SIZE "
                                                                  "(e.g. 4GiB)")
    bundle.add_argument("--record", metavar="FILE", help="where to write the state the importing side will hold "
                                                         "(default: OUTPUT.state.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("export", progress, lambda reactor: _export(reactor, args, progress),
                     interrupted="interrupted; no archive was written", args=args)


@dataclass
class ExportPlan:
    """What goes into the archive: index entries, manifest bytes, and where each blob is."""

    roots: list[Descriptor] = field(default_factory=list)  # index.json entries, annotations included
    manifests: dict[Digest, bytes] = field(default_factory=dict)
    blobs: dict[Digest, tuple[str, int]] = field(default_factory=dict)  # -> (a namespace owning it, size)


async def _export(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.daemon.assembly import open_store

    if args.image_set or args.sign_key or args.since or args.max_volume_size:
        return await _export_bundle(reactor, args, progress)
    if not args.targets:
        raise UsageError("nothing to export: give NAMESPACE[:TAG] arguments or --set FILE")
    config = load_store_config(args)
    registry, _cache = open_store(config, reactor)
    start_logging(progress)
    plan = await plan_export(registry, args.targets)
    total = sum(len(body) for body in plan.manifests.values()) + sum(size for _, size in plan.blobs.values())
    bar = progress.bar(f"export to {args.output}", total)
    if args.output == "-":
        await write_archive(registry, plan, sys.stdout.buffer, bar.advance, reactor)
    else:
        temporary = f"{args.output}.partial"

        def interrupted() -> None:  # the coroutine will not resume: clean up now
            with contextlib.suppress(OSError):
                os.unlink(temporary)

        trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        try:
            with open(temporary, "wb") as out:
                await write_archive(registry, plan, out, bar.advance, reactor)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, args.output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        finally:
            reactor.removeSystemEventTrigger(trigger)
    tags = sum(1 for root in plan.roots if REF_NAME in (root.annotations or {}))
    bar.close(f"{tags} tags, {len(plan.manifests)} manifests, {len(plan.blobs)} blobs, {human_size(total)}")
    return 0


async def _export_bundle(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    """``--set``: a signed, possibly incremental, possibly multi-volume bundle (`angosd.commands.bundles`)."""
    from angosd.archive.bundle import BundleError, read_state
    from angosd.commands.bundles import now, plan_bundle, walk_image_set, write_bundle
    from angosd.config import ConfigError, parse_size
    from angosd.daemon.assembly import open_store
    from angosd.proxy.imageset import ImageSetError, read_image_set

    if not args.image_set or not args.sign_key:
        raise UsageError("a bundle needs --set FILE and --sign-key KEY")
    if args.targets or args.output == "-":
        raise UsageError("--set takes no NAMESPACE arguments and writes files (not -o -)")
    try:
        max_volume = parse_size(args.max_volume_size) if args.max_volume_size else None
        image_set = read_image_set(args.image_set)
        since = read_state(args.since) if args.since else None
    except (ValueError, ImageSetError, BundleError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    registry, _cache = open_store(load_store_config(args), reactor)
    start_logging(progress)
    walk = await walk_image_set(registry, image_set)
    contents = plan_bundle(walk, since, max_volume, now())
    bar = progress.bar(f"export to {args.output}", contents.size)
    try:
        exported = await write_bundle(registry, walk, contents, args.output, args.sign_key, bar.advance, reactor)
    except BundleError as exc:
        raise CommandFailed(str(exc)) from None
    record = since.merged(exported.record) if since is not None else exported.record
    record_path = args.record or f"{args.output}.state.json"
    with open(f"{record_path}.partial", "wb") as out:
        out.write(record.to_json())
    os.replace(f"{record_path}.partial", record_path)
    kind = "incremental bundle" if since is not None else "full bundle"
    bar.close(f"{kind}: {len(contents.tags)} tags, {len(contents.manifests)} manifests, {len(contents.blobs)} blobs "
              f"carried ({human_size(contents.size)}), {len(contents.base)} left to the base; "
              f"{contents.volumes} volume(s): {' '.join(exported.paths)}; record {record_path} ({record.id})")
    return 0


async def plan_export(registry: Registry, targets: list[str]) -> ExportPlan:
    """Resolve ``targets`` in the store and collect their closures; nothing is written.

    Raises `UsageError` for a bad target, `CommandFailed` when a manifest or blob of a
    closure is not in the store (e.g. a platform a pull-through cache never fetched).
    """
    plan = ExportPlan()
    wanted: list[tuple[str, str, Reference]] = []  # (namespace, ref name, reference)
    for text in targets:
        namespace, tag, digest = parse_ref_name(text)
        if namespace is None:
            raise UsageError(f"{text!r}: expected NAMESPACE, NAMESPACE:TAG or NAMESPACE@DIGEST")
        registry.check_namespace(namespace)
        if digest is not None:
            wanted.append((namespace, f"{namespace}@{digest}", Reference(digest=digest)))
        elif tag is not None:
            wanted.append((namespace, f"{namespace}:{tag}", Reference(tag=tag)))
        else:
            tags = await registry.manifests.tags(namespace)
            if not tags:
                raise UsageError(f"{namespace}: no tags to export")
            wanted += [(namespace, f"{namespace}:{each}", Reference(tag=each)) for each in tags]

    names: set[str] = set()
    tagged: set[tuple[str, Digest]] = set()
    referrers: dict[tuple[str, Digest], Descriptor] = {}
    walked: set[tuple[str, Digest]] = set()
    for namespace, ref_name, reference in wanted:
        if ref_name in names:
            continue
        names.add(ref_name)
        try:
            stored = await registry.manifests.get(namespace, reference)
        except ManifestUnknown:
            raise CommandFailed(f"{ref_name}: not in the store") from None
        plan.roots.append(Descriptor(stored.media_type, stored.digest, len(stored.body),
                                     annotations={REF_NAME: ref_name}))
        tagged.add((namespace, stored.digest))
        await _closure(registry, namespace, stored, plan, walked, referrers)
    for (namespace, digest), descriptor in referrers.items():
        if (namespace, digest) not in tagged:
            plan.roots.append(Descriptor(descriptor.media_type, digest, descriptor.size, descriptor.artifact_type,
                                         annotations={NAMESPACE_ANNOTATION: namespace}))
    return plan


async def _closure(registry: Registry, namespace: str, root: StoredManifest, plan: ExportPlan,
                   walked: set[tuple[str, Digest]], referrers: dict[tuple[str, Digest], Descriptor]) -> None:
    """Add ``root``, its children, blobs and referrers (recursively) in ``namespace`` to ``plan``."""
    queue = [root]
    walked.add((namespace, root.digest))
    while queue:
        stored = queue.pop()
        plan.manifests[stored.digest] = stored.body
        manifest = parse_manifest(stored.body, stored.media_type, stored.digest.algorithm)
        for blob in manifest.referenced_blobs():
            if blob.digest in plan.blobs:
                continue
            try:
                size = await registry.blobs.size(namespace, blob.digest)
            except BlobUnknown:
                raise CommandFailed(f"{namespace}@{stored.digest}: blob {blob.digest} is not in the store") from None
            if size != blob.size:
                raise CommandFailed(f"{namespace}: blob {blob.digest} has {size} bytes in the store, "
                                    f"{blob.size} in manifest {stored.digest}")
            plan.blobs[blob.digest] = (namespace, size)
        following = [child.digest for child in manifest.manifests]
        for referrer in await registry.manifests.referrers(namespace, stored.digest, None):
            referrers.setdefault((namespace, referrer.digest), referrer)
            following.append(referrer.digest)
        for digest in following:
            if (namespace, digest) in walked:
                continue
            walked.add((namespace, digest))
            try:
                queue.append(await registry.manifests.get(namespace, Reference(digest=digest)))
            except ManifestUnknown:
                raise CommandFailed(f"{namespace}@{stored.digest}: manifest {digest} is not in the store (a pull-"
                                    "through cache holds only what was pulled: `angosd mirror` it first)") from None


async def write_archive(registry: Registry, plan: ExportPlan, out: IO[bytes], advance: Advance,
                        clock: IReactorTime | None = None) -> None:
    """Write ``plan`` as an OCI layout tar to ``out``, streaming and verifying every blob.

    With a ``clock``, the stream yields to the reactor every few MiB (so a signal is
    handled during a large blob); without one it runs straight through.

    Raises `LayoutError` when a stored blob does not hash to its digest or changed size.
    """
    writer = ArchiveWriter(out)
    writer.add_file("oci-layout", layout_file())
    writer.add_file("index.json", index_file(plan.roots))
    for digest, body in plan.manifests.items():
        writer.add_blob(digest, body)
        advance(len(body))
    for digest, (namespace, size) in plan.blobs.items():
        if digest in writer:  # a blob that is also a manifest (rare, but possible)
            advance(size)
            continue
        handle = await registry.blobs.open(namespace, digest)
        if handle.size != size:
            handle.close()
            raise CommandFailed(f"{namespace}: blob {digest} changed size while exporting")
        entry = writer.begin_blob(digest, size)
        counting = CountingConsumer(entry, None, advance, clock)
        if size:
            await handle.write_to(counting, 0, size - 1)
        else:
            handle.close()
        entry.finish()
    writer.close()


