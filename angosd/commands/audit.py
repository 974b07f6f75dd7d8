"""``angosd audit verify FILE [--last HASH]``: check the hash chain of an audit log.

Every line's ``hash`` must match its content, every ``prev`` the line before it, and ``seq``
must grow by one (`angosd.observability.audit.verify_lines`). Exit status 0 and one line
naming the last hash when the chain is intact; 1 and the first broken line otherwise; 2
when FILE cannot be read. A rotated file (``PATH.1``...) continues the chain of the file
rotated before it: its first ``prev`` is printed so it can be matched against that file's
last hash; ``--last`` checks that no line was removed at the end.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from angosd.observability.audit import GENESIS, verify_lines


def register(commands: Any) -> None:
    parser = commands.add_parser("audit", help="audit log tools",
                                 description="Tools for the audit log ([observability.audit]).")
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = actions.add_parser("verify", help="check the hash chain of an audit log file",
                                description="Check every line's hash, prev and seq; report the first broken line.")
    verify.add_argument("file", metavar="FILE", help="the audit log (or a rotated PATH.N file)")
    verify.add_argument("--last", metavar="HASH", help="the hash the last line must have (kept elsewhere)")
    verify.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as file:
            verdict = verify_lines((line for line in file if line.strip()), last=args.last)
    except OSError as exc:
        print(f"angosd audit verify: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if verdict.problem is not None:
        print(f"{args.file}: {verdict.problem}")
        return 1
    start = "the start of the log" if verdict.first_prev == GENESIS else f"prev {verdict.first_prev}"
    print(f"{args.file}: {verdict.lines} lines, chain intact from {start}; last hash {verdict.last_hash}")
    return 0
