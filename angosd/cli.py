"""The ``angosd`` maintenance command. The daemon itself runs under ``twistd -n angosd``."""

from __future__ import annotations

import argparse
import sys

from angosd import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="angosd", description="angosd registry maintenance commands.",
                                     epilog="Run the daemon with: twistd -n angosd [-c FILE ...]")
    parser.add_argument("--version", action="version", version=f"angosd {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
