"""``angosd migrate --from-distribution SOURCE -c CONFIG [--dry-run] [--verify]``.

Turns a CNCF distribution 2.x store into the angosd store of ``CONFIG`` without copying
blob bytes (`angosd.registry.migration`): hard links on one filesystem, server-side
copies within one S3 service; a copy through this process only when the stores share
neither (then said in the output). SOURCE is distribution's ``rootdirectory`` (the
directory holding ``docker/registry/v2``), or ``s3://BUCKET[/ROOTDIRECTORY]`` for a
bucket, reached at ``--source-endpoint`` (default: the endpoint of ``[blob_store.s3]``)
with the credentials of ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` when set, else
those of ``[blob_store.s3]``.

Each entry skipped (corrupt, dangling) is one line on stdout as soon as it is found,
``skipped: WHERE: WHY``; then a summary. ``--verify`` then checks every carried tag,
revision and blob in the target and prints each mismatch (``mismatch: ...``); the exit
status is 1 when there is one. Progress goes to stderr. A run may be interrupted
(even with SIGKILL) and run again: what is already there is checked, not redone.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from angosd.commands.mirror import UsageError, add_store_arguments, load_store_config, run_async, start_logging
from angosd.commands.progress import Progress, human_size, phase_bars
from angosd.commands.prune import emitter


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "migrate", help="turn a CNCF distribution (registry:2) store into this store, linking its blobs",
        description="Carry every repository, tag, revision, referrer, blob ownership and upload in progress "
                    "of a distribution 2.x store into the store of -c, without copying blob bytes (hard links "
                    "on one filesystem, server-side copies within one S3 service). Safe to run again: what is "
                    "there is checked, not redone.")
    add_store_arguments(parser)
    parser.add_argument("--from-distribution", dest="source", metavar="SOURCE", required=True,
                        help="distribution's rootdirectory (holding docker/registry/v2), "
                             "or s3://BUCKET[/ROOTDIRECTORY]")
    parser.add_argument("--source-endpoint", metavar="URL",
                        help="S3 endpoint of an s3:// source (default: that of [blob_store.s3])")
    parser.add_argument("--source-region", metavar="REGION", help="region of an s3:// source")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would be carried, and sizes; change nothing (blobs are not hashed)")
    parser.add_argument("--verify", action="store_true",
                        help="after migrating, check every tag, revision and blob in this store")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("migrate", progress, lambda reactor: _migrate(reactor, args, progress), args=args)


def source_driver(args: argparse.Namespace, config: Any, reactor: Any, pool: Any) -> Any:
    """The storage driver of ``--from-distribution``; raises `UsageError` when it cannot be one."""
    location: str = args.source
    if location.startswith("s3://"):
        return _s3_source(location[len("s3://"):], args, config, reactor, pool)
    from angosd.storage.confined import ConfinedFilesystemDriver

    root = os.path.abspath(location)
    if not os.path.isdir(os.path.join(root, "docker", "registry", "v2")):
        raise UsageError(f"{root} holds no docker/registry/v2: give distribution's rootdirectory")
    return ConfinedFilesystemDriver(root, pool)


def _s3_source(location: str, args: argparse.Namespace, config: Any, reactor: Any, pool: Any) -> Any:
    from angosd.outbound.client import make_client
    from angosd.storage.s3 import S3Driver
    from angosd.storage.s3_client import S3Options

    bucket, _, prefix = location.partition("/")
    if not bucket:
        raise UsageError("an S3 source is s3://BUCKET[/ROOTDIRECTORY]")
    target = config.blob_store_s3
    endpoint = args.source_endpoint or (target.endpoint if target is not None else None)
    if endpoint is None:
        raise UsageError("give --source-endpoint for an s3:// source (the store of -c is not on S3)")
    access = os.environ.get("AWS_ACCESS_KEY_ID") or (target.access_key_id if target is not None else "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or (target.secret_key if target is not None else "")
    region = args.source_region or (target.region if target is not None else "us-east-1")
    http, _pool = make_client(reactor)
    return S3Driver(reactor, http, S3Options(endpoint=endpoint.rstrip("/"), bucket=bucket, access_key_id=access,
                                             secret_key=secret, region=region, key_prefix=prefix.strip("/")), pool)


async def _migrate(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.daemon.assembly import build_pools, open_store
    from angosd.registry.distribution import DistributionStore, Problem
    from angosd.registry.migration import Migrator, verify

    if args.dry_run and args.verify:
        raise UsageError("--verify checks a migrated store; it cannot follow --dry-run")
    config = load_store_config(args)
    pools = build_pools(config, reactor)  # the source store's reads and hashing
    pools.start_until_shutdown(reactor)
    source = DistributionStore(source_driver(args, config, reactor, pools.io))
    if not await source.exists():
        raise UsageError(f"{args.source} holds no distribution store (docker/registry/v2 is empty)")
    registry, _cache = open_store(config, reactor)
    start_logging(progress)
    emit = emitter(progress)
    advance = phase_bars(progress, lambda phase: "repositories")

    prefix = "would skip" if args.dry_run else "skipped"

    def found(problem: Problem) -> None:
        emit(f"{prefix}: {problem}")

    migrator = Migrator(source, registry, args.dry_run, found, advance)
    report = await migrator.run()
    verb = "would carry" if args.dry_run else "carried"
    if args.dry_run:
        moved = f"{human_size(report.bytes_linked)} of blobs to link (not hashed in a dry run)"
    else:
        moved = (f"{human_size(report.bytes_linked)} linked, {human_size(report.bytes_server_copied)} copied by "
                 f"the store, {human_size(report.bytes_copied)} copied")
    emit(f"migrate: {report.repositories} repositories; {verb} {report.tags} tags, {report.revisions} revisions, "
         f"{report.blobs} blobs, {report.uploads} uploads ({moved}); already present: {report.tags_present} "
         f"tags, {report.revisions_present} revisions, {report.blobs_present} blobs "
         f"({human_size(report.bytes_present)}); {len(report.problems)} skipped"
         + (" (dry run, nothing changed)" if args.dry_run else ""))
    if report.bytes_copied:
        emit(f"migrate: note: {human_size(report.bytes_copied)} were copied, not linked: the store of -c is on "
             f"another filesystem or storage service than the source")
    if not args.verify:
        return 0

    def mismatch(problem: Problem) -> None:
        emit(f"mismatch: {problem}")

    failures = await verify(source, registry, migrator.carried, mismatch, advance)
    emit(f"verify: {'OK' if not failures else f'{failures} mismatches'}: "
         f"{sum(len(c.tags) for c in migrator.carried)} tags, {sum(len(c.revisions) for c in migrator.carried)} "
         f"revisions, {len({d for c in migrator.carried for d in c.blobs})} blobs checked")
    return 1 if failures else 0
