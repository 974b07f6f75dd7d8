"""``angosd scrub -c CONFIG [--dry-run]``: verify the store, repair it, reclaim garbage.

Hashes every blob, checks every tag, revision, referrer entry, ownership record and
upload session (`angosd.registry.scrub`), repairs what it can, quarantines what it
cannot under ``_quarantine/`` (with a ``note.json`` saying why), then runs one garbage
collection pass (`angosd.registry.gc`; candidates are reclaimed once marked for
``gc_grace_secs``, so a second run reclaims what the first one marked). ``--dry-run``
reports the same and changes nothing.

Each finding is one line on stdout as soon as it is made, then a summary (``... N to
repair, M to quarantine ...`` in a dry run); progress goes to stderr. A failure (e.g. a
read-only or full store) stops the run with one line ``angosd scrub: REASON`` on stderr
and exit status 1. The store is used directly; a daemon may serve it meanwhile.
"""

from __future__ import annotations

import argparse
from typing import Any

from angosd.commands.mirror import add_store_arguments, load_store_config, run_async, start_logging
from angosd.commands.progress import Progress, phase_bars
from angosd.commands.prune import emitter, existing_store


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "scrub", help="verify every blob and link of the store, repair or quarantine, collect garbage",
        description="Hash every blob, check tags, revisions, referrers, ownership records and upload sessions; "
                    "repair what can be repaired, move what cannot to _quarantine/, then run a garbage "
                    "collection pass. --dry-run only reports.")
    add_store_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("scrub", progress, lambda reactor: _scrub(reactor, args, progress), args=args)


async def _scrub(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.daemon.assembly import open_store
    from angosd.registry.gc import GarbageCollector
    from angosd.registry.scrub import Finding, Scrubber

    config = existing_store(load_store_config(args))
    registry, _cache = open_store(config, reactor)
    start_logging(progress)
    emit = emitter(progress)
    advance = phase_bars(progress, lambda phase: "items")

    collector = GarbageCollector(registry.driver, registry.blobs, reactor,
                                 lambda: config.global_.gc_grace_secs)
    prefix = "would " if args.dry_run else ""

    def found(finding: Finding) -> None:
        emit(f"{prefix}{finding.kind}: {finding.message}")

    report = await Scrubber(registry, reactor, args.dry_run, collector, advance, found).run()
    emit(f"scrub: {report.summary()}{' (dry run, nothing changed)' if args.dry_run else ''}")
    return 0
