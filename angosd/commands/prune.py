"""``angosd prune -c CONFIG [--dry-run] [--uploads AGE]``: enforce the retention policies.

For every namespace in the store, the global ``[global.retention_policy]`` rules and those
of the namespace's repository decide what stays (`angosd.registry.retention`): tags no
rule keeps are deleted, then untagged revisions no rule keeps (never the children of a
kept index nor the subject of a kept referrer), and the namespace gives up the blobs
that only the deleted revisions used. The bytes themselves are reclaimed later by
garbage collection (the daemon's online collector, or ``angosd scrub``), after
``gc_grace_secs``. Without any rule, nothing is deleted.

``--uploads AGE`` (``30m``, ``1h``, ``2d``) also removes upload sessions started at least
AGE ago, and sessions whose state cannot be read (those whose id says they are younger than
AGE, or than ten minutes, are left: they may be being created). ``--dry-run`` prints what would go and
changes nothing. Each deletion is one line on stdout, then a summary; the progress bar
goes to stderr. A failure (e.g. a read-only store) stops the run with one line
``angosd prune: REASON`` on stderr and exit status 1, after the deletions done until then
were printed. The store is used directly; a daemon may serve it meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from angosd.commands.mirror import UsageError, add_store_arguments, load_store_config, run_async, start_logging
from angosd.commands.progress import Progress
from angosd.config import Config
from angosd.registry.retention import Applied, RetentionError, RetentionPolicy, RetentionRules, parse_age


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "prune", help="delete what the retention policies do not keep (and old upload sessions)",
        description="Apply [global.retention_policy] and [repository.NAME.retention_policy]: delete tags no rule "
                    "keeps, then untagged manifests no rule keeps (children of kept indexes and subjects of kept "
                    "referrers stay). Garbage collection reclaims the bytes afterwards. Without rules nothing is "
                    "deleted.")
    add_store_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted; change nothing")
    parser.add_argument("--uploads", metavar="AGE",
                        help="also remove upload sessions older than AGE (e.g. 30m, 1h, 2d) or unreadable")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("prune", progress, lambda reactor: _prune(reactor, args, progress), args=args)


def build_policy(config: Config) -> RetentionPolicy:
    """The compiled retention rules of ``config``; raises `RetentionError`."""
    global_rules = RetentionRules.compile(config.global_.retention_policy.rules, "global.retention_policy")
    per_repository = {repository.name: RetentionRules.compile(repository.retention_policy.rules,
                                                              f"repository.{repository.name}.retention_policy")
                      for repository in config.repositories if repository.retention_policy is not None}

    def repository_rules(namespace: str) -> RetentionRules | None:
        repository = config.repository_for(namespace)
        return per_repository.get(repository.name) if repository is not None else None

    return RetentionPolicy(global_rules, repository_rules)


def existing_store(config: Config) -> Config:
    """``config`` if its storage root exists; a maintenance command must not create an
    empty store at a mistyped path (and report it clean). Raises `UsageError`."""
    root = os.path.abspath(config.blob_store.root_dir)
    if not os.path.isdir(root):
        raise UsageError(f"storage root {root} does not exist (set [blob_store.fs] root_dir or --root)")
    return config


def emitter(progress: Progress) -> Callable[[str], None]:
    """Print a result line on stdout, without breaking a bar drawn on the same terminal."""
    if progress.tty and sys.stdout.isatty():
        return progress.note

    def emit(line: str) -> None:
        print(line, flush=True)

    return emit


async def _prune(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.daemon.assembly import open_store
    from angosd.registry.gc import namespaces
    from angosd.registry.retention import Pruner
    from angosd.registry.uploads import UploadInfo

    config = existing_store(load_store_config(args))
    try:
        max_age = parse_age(args.uploads) if args.uploads is not None else None
        policy = build_policy(config)
    except (ValueError, RetentionError) as exc:
        raise UsageError(str(exc)) from None
    registry, _cache = open_store(config, reactor)
    start_logging(progress)
    emit = emitter(progress)
    would = "would delete" if args.dry_run else "deleted"
    pruner = Pruner(registry, policy, reactor)
    names = await namespaces(registry.driver)
    bar = progress.bar("prune", len(names), unit="namespaces")
    tags = revisions = revoked = uploads = 0
    for namespace in names:
        bar.advance(0, status=namespace)
        plan = await pruner.plan(namespace)
        for problem in plan.problems:
            progress.note(f"warning: {problem}")
        done = Applied(list(plan.tags), list(plan.revisions)) if args.dry_run else Applied()
        try:
            if not args.dry_run:
                await pruner.apply(plan, done)
        finally:  # also when a storage failure stops it: report what was deleted
            for tag, digest in done.tags:
                emit(f"{would} tag {namespace}:{tag} ({digest})")
            for digest in done.revisions:
                emit(f"{would} manifest {namespace}@{digest}")
        for reason in done.skipped:
            progress.note(f"kept: {reason}")
        revoked += len(done.revoked)
        tags += len(done.tags)
        revisions += len(done.revisions)
        if max_age is not None:
            for upload in await pruner.expired_uploads(namespace, max_age):
                session = upload.session if isinstance(upload, UploadInfo) else upload
                if not args.dry_run:
                    await pruner.remove_upload(namespace, session)
                detail = f"started {upload.started_at}, {upload.size} bytes" if isinstance(upload, UploadInfo) \
                    else "unreadable"
                emit(f"{would} upload {namespace}/{session} ({detail})")
                uploads += 1
        bar.advance(1)
    bar.close(f"{len(names)} namespaces")
    summary = f"{tags} tags, {revisions} manifests, {uploads} upload sessions"
    if args.dry_run:
        emit(f"prune: would delete {summary} (dry run, nothing changed)")
    else:
        emit(f"prune: deleted {summary}; {revoked} blobs released to garbage collection")
    return 0
