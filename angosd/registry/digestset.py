"""A compact set of digests for passes over a whole store (the collector's mark phase).

A pass over 100,000 tags meets a few hundred thousand digests; as a Python set of
`Digest` objects that is ~250 bytes each. `DigestSet` keeps only the first 64 bits of
each digest's hex, 8 bytes each, in sorted arrays.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable

from angosd.oci.digest import Digest

#: Keys gathered in a plain set before they are sorted into an array.
PENDING = 4096


def digest_key(digest: Digest) -> int:
    """The 64-bit key of ``digest``: its first 16 hex characters."""
    return int(digest.hex[:16], 16)


class DigestSet:
    """A set of digests that may answer *yes* for a digest never added, never *no* for one
    added: two digests sharing their first 64 bits are the same member. Use it only where
    a false *yes* is the safe answer (a blob kept one pass longer than needed).

    Memory: 8 bytes a member in sorted runs (at most one run per power of two, merged like
    a binary counter, so a lookup is O(log² n)), plus up to `PENDING` recent keys in a set.
    """

    __slots__ = ("_pending", "_runs")

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._runs: list[array[int]] = []

    def add(self, digest: Digest) -> None:
        """Add ``digest``."""
        self._pending.add(digest_key(digest))
        if len(self._pending) >= PENDING:
            self._seal()

    def update(self, digests: Iterable[Digest]) -> None:
        """Add every digest of ``digests``."""
        for digest in digests:
            self.add(digest)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, Digest):
            return False
        key = digest_key(digest)
        if key in self._pending:
            return True
        for run in self._runs:
            index = bisect_left(run, key)
            if index < len(run) and run[index] == key:
                return True
        return False

    def __len__(self) -> int:
        """Keys held (a digest added twice may count twice once sealed)."""
        return len(self._pending) + sum(len(run) for run in self._runs)

    @property
    def nbytes(self) -> int:
        """Bytes held in sorted runs."""
        return sum(run.itemsize * len(run) for run in self._runs)

    def _seal(self) -> None:
        run = array("Q", sorted(self._pending))
        self._pending = set()
        while self._runs and len(self._runs[-1]) <= len(run):
            run = array("Q", heapq.merge(self._runs.pop(), run))
        self._runs.append(run)
