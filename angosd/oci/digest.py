"""Content digests: ``algorithm:hex`` with sha256 and sha512."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from angosd.oci.errors import DigestInvalid

#: Hex lengths of the algorithms angosd computes and verifies.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM = "sha256"

_DIGEST = re.compile(r"^(sha256|sha512):([a-f0-9]+)\Z")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest; ``str(d)`` gives the canonical ``algorithm:hex`` form."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        expected = ALGORITHMS.get(self.algorithm)
        if expected is None or len(self.hex) != expected or not _is_lower_hex(self.hex):
            raise DigestInvalid(f"{self.algorithm}:{self.hex}"[:200])

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:hex``; raise `DigestInvalid` for anything else."""
        match = _DIGEST.match(text) if len(text) <= 200 else None
        if match is None:
            raise DigestInvalid(text[:200])
        return cls(match.group(1), match.group(2))

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        """The digest of ``data``."""
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hashlib object for a supported algorithm."""
    if algorithm not in ALGORITHMS:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm[:40]!r}")
    return hashlib.new(algorithm)


_LOWER_HEX = frozenset("0123456789abcdef")


def _is_lower_hex(text: str) -> bool:
    return _LOWER_HEX.issuperset(text)
