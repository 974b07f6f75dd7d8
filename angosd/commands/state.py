"""``angosd state -c CONFIG -o FILE``: write what the store holds, for ``angosd export --since``.

The state file lists the store's blobs, manifests per namespace and tags (every tag of
every namespace with its closure). Carry it to the connected side: the next export leaves
out everything it lists. ``angosd import --state FILE`` writes the same file after an
import.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from angosd.commands.mirror import add_store_arguments, load_store_config, run_async, start_logging
from angosd.commands.progress import Progress


def register(commands: Any) -> None:
    parser = commands.add_parser("state", help="write what the store holds (for export --since)",
                                 description="Write the store's state (blobs, manifests, tags) as a small JSON "
                                             "file for `angosd export --since` on the connected side.")
    add_store_arguments(parser)
    parser.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it (default: stdout)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("state", progress, lambda reactor: _state(reactor, args, progress))


async def _state(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from angosd.commands.bundles import store_state
    from angosd.daemon.assembly import open_store

    registry, _cache = open_store(load_store_config(args), reactor)
    start_logging(progress)
    state = await store_state(registry)
    if args.output == "-":
        sys.stdout.buffer.write(state.to_json() + b"\n")
        sys.stdout.flush()
    else:
        with open(f"{args.output}.partial", "wb") as out:
            out.write(state.to_json())
        os.replace(f"{args.output}.partial", args.output)
    progress.note(f"angosd state: {sum(len(d) for d in state.manifests.values())} manifests, {len(state.blobs)} "
                  f"blobs ({state.id})")
    return 0
