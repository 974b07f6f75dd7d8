"""The collector's compact digest set: never forgets a member, and answers like a set
for digests that differ in their first 64 bits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from angosd.oci.digest import Digest
from angosd.registry import digestset
from angosd.registry.digestset import DigestSet

hexes = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(hexes, max_size=300), st.lists(hexes, max_size=50), st.integers(1, 40))
def test_membership_matches_a_set_across_sealed_runs(added: list[str], others: list[str], pending: int) -> None:
    original = digestset.PENDING
    digestset.PENDING = pending  # small runs: many seals and merges
    try:
        members = DigestSet()
        members.update(Digest("sha256", text) for text in added)
    finally:
        digestset.PENDING = original
    for text in added:
        assert Digest("sha256", text) in members
    prefixes = {text[:16] for text in added}
    for text in others:
        assert (Digest("sha256", text) in members) == (text[:16] in prefixes)
    assert "not a digest" not in members


def test_runs_stay_few_and_compact() -> None:
    members = DigestSet()
    count = 5 * digestset.PENDING + 7
    members.update(Digest.of(str(i).encode()) for i in range(count))
    assert len(members._runs) <= 3  # a binary counter: at most one run per power of two
    assert members.nbytes <= 8 * count
    assert all(list(run) == sorted(run) for run in members._runs)
    assert Digest.of(b"not added") not in members
    assert all(Digest.of(str(i).encode()) in members for i in range(0, count, 97))
