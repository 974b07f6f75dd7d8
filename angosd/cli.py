"""The ``angosd`` maintenance command. The daemon itself runs under ``twistd -n angosd``."""

from __future__ import annotations

import argparse
import getpass
import sys

from angosd import __version__


def _argon(args: argparse.Namespace) -> int:
    """Print an argon2id hash of a password read from the terminal, or stdin when piped."""
    from angosd.auth.basic import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("angosd: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("angosd: empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="angosd", description="angosd registry maintenance commands.",
                                     epilog="Run the daemon with: twistd -n angosd [-c FILE ...]")
    parser.add_argument("--version", action="version", version=f"angosd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    argon = commands.add_parser("argon", help="hash a password for [auth.identity.ID] password")
    argon.set_defaults(run=_argon)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
