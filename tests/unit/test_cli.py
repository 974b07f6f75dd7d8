"""The ``angosd`` command line."""

from __future__ import annotations

import subprocess
import sys

from argon2 import PasswordHasher

from angosd import __version__


def angosd(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "angosd", *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_version() -> None:
    assert angosd("--version").stdout.strip() == f"angosd {__version__}"


def test_argon_hashes_a_piped_password() -> None:
    result = angosd("argon", stdin="correct horse\n")
    assert result.returncode == 0
    phc = result.stdout.strip()
    assert phc.startswith("$argon2id$")
    assert PasswordHasher().verify(phc, "correct horse")


def test_argon_refuses_an_empty_password() -> None:
    result = angosd("argon", stdin="\n")
    assert result.returncode == 1
    assert "empty password" in result.stderr
