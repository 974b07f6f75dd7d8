"""The ``angosd`` maintenance command. The daemon itself runs under ``twistd -n angosd``."""

from __future__ import annotations

import argparse
import importlib
import sys

from angosd import __version__

#: Modules under angosd.commands, one subcommand each (see angosd/commands/__init__.py).
COMMANDS = (
    "argon",
    "check_config",
    "mirror", "export", "import_", "state", "keygen",
    "prune", "scrub",
    "migrate",
    "audit",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="angosd", description="angosd registry maintenance commands.",
                                     epilog="Run the daemon with: twistd -n angosd [-c FILE ...]")
    parser.add_argument("--version", action="version", version=f"angosd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"angosd.commands.{name}").register(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
