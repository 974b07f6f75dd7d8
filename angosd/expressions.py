"""The CEL library behind access policies and retention rules, loaded on first use.

Importing it costs ~20 MiB of resident memory (it pulls in its command-line tooling), so a
daemon configured without rules never pays for it.
"""

from __future__ import annotations

from types import ModuleType


def cel() -> ModuleType:
    """The ``cel`` module (common-expression-language), imported now if not yet."""
    import cel as library

    return library
