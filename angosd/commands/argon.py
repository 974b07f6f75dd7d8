"""``angosd argon``: hash a password for ``[auth.identity.ID] password``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("argon", help="hash a password for [auth.identity.ID] password",
                                 description="Read a password (prompted twice on a terminal, one line on "
                                             "stdin otherwise) and print its argon2id hash.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
