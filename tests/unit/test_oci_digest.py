"""Digest parsing, formatting and computation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from angosd.oci.digest import ALGORITHMS, Digest, new_hasher
from angosd.oci.errors import DigestInvalid

HEX = "0123456789abcdef"
SHA256_HEX = "a" * 64
SHA512_HEX = "0123456789abcdef" * 8

algorithms = st.sampled_from(sorted(ALGORITHMS))


@st.composite
def valid_digest_texts(draw: st.DrawFn) -> str:
    algorithm = draw(algorithms)
    hex_ = draw(st.text(HEX, min_size=ALGORITHMS[algorithm], max_size=ALGORITHMS[algorithm]))
    return f"{algorithm}:{hex_}"


@given(valid_digest_texts())
def test_parse_round_trips(text: str) -> None:
    digest = Digest.parse(text)
    assert str(digest) == text
    assert f"{digest.algorithm}:{digest.hex}" == text
    assert Digest.parse(str(digest)) == digest


@given(data=st.binary(), algorithm=algorithms)
def test_of_matches_hashlib(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)
    assert digest == Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    assert Digest.parse(str(digest)) == digest


def test_of_defaults_to_sha256() -> None:
    assert str(Digest.of(b"")) == "sha256:" + hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("sha256:", id="no-hex"),
        pytest.param(":" + SHA256_HEX, id="no-algorithm"),
        pytest.param("sha256" + SHA256_HEX, id="missing-colon"),
        pytest.param(SHA256_HEX, id="bare-hex"),
        pytest.param("sha256:" + SHA256_HEX[:-1], id="short"),
        pytest.param("sha256:" + SHA256_HEX + "a", id="long"),
        pytest.param("sha256:" + SHA512_HEX, id="sha256-with-sha512-length"),
        pytest.param("sha512:" + SHA256_HEX, id="sha512-with-sha256-length"),
        pytest.param("sha256:" + "A" * 64, id="uppercase-hex"),
        pytest.param("SHA256:" + SHA256_HEX, id="uppercase-algorithm"),
        pytest.param("sha256:" + "g" * 64, id="non-hex"),
        pytest.param("md5:" + "a" * 32, id="unknown-algorithm"),
        pytest.param("sha384:" + "a" * 96, id="unsupported-sha384"),
        pytest.param("sha256+b64:" + SHA256_HEX, id="algorithm-with-encoding"),
        pytest.param("sha256::" + SHA256_HEX, id="double-colon"),
        pytest.param(" sha256:" + SHA256_HEX, id="leading-space"),
        pytest.param("sha256:" + SHA256_HEX + " ", id="trailing-space"),
        pytest.param("sha256:" + SHA256_HEX + "\n", id="trailing-newline"),
        pytest.param("sha256: " + SHA256_HEX[1:], id="inner-space"),
        pytest.param("sha256:" + SHA256_HEX[:-1] + "\x00", id="nul"),
        pytest.param("sha256:" + SHA256_HEX[:-1] + "\u0430", id="cyrillic-a"),
        pytest.param("sha256:" + SHA256_HEX[:-1] + "\uff41", id="fullwidth-a"),
        pytest.param("sha256:" + SHA256_HEX[:-1] + "\u0661", id="arabic-digit"),
        pytest.param("sha256:" + "a" * 100_000, id="very-long"),
        pytest.param("sha256:" + SHA256_HEX + "/../x", id="path-suffix"),
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(text)


@pytest.mark.parametrize(
    ("algorithm", "hex_"),
    [("sha256", "a" * 63), ("sha256", "A" * 64), ("md5", "a" * 32), ("", ""), ("sha512", SHA256_HEX)],
)
def test_constructor_validates(algorithm: str, hex_: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest(algorithm, hex_)


@given(st.text())
@example("sha256:" + SHA256_HEX + "\n")
@example("sha512:" + SHA512_HEX + "\n")
@example("sha256:" + "a" * 10_000)
def test_parse_returns_exact_digest_or_raises_digest_invalid(text: str) -> None:
    """Any text either parses to a digest that prints back identically or is DigestInvalid."""
    try:
        digest = Digest.parse(text)
    except DigestInvalid as exc:
        assert len(str(exc)) <= 200
        return
    assert str(digest) == text


@given(valid_digest_texts(), st.integers(min_value=0), st.characters())
def test_single_character_edit_is_detected(text: str, position: int, char: str) -> None:
    """Replacing one character of a valid digest with anything not allowed there is rejected."""
    index = position % len(text)
    mutated = text[:index] + char + text[index + 1 :]
    allowed = HEX if index > text.index(":") else text[index]
    if char in allowed:
        assert str(Digest.parse(mutated)) == mutated
    else:
        with pytest.raises(DigestInvalid):
            Digest.parse(mutated)


def test_digests_compare_and_hash_by_value() -> None:
    first, second = Digest.parse("sha256:" + SHA256_HEX), Digest("sha256", SHA256_HEX)
    assert first == second
    assert len({first, second}) == 1
    assert first != Digest.of(b"x")


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "SHA256", ""])
def test_new_hasher_rejects_unsupported_algorithms(algorithm: str) -> None:
    with pytest.raises(DigestInvalid):
        new_hasher(algorithm)
    with pytest.raises(DigestInvalid):
        Digest.of(b"data", algorithm)


@given(chunks=st.lists(st.binary()), algorithm=algorithms)
def test_incremental_hasher_matches_of(chunks: list[bytes], algorithm: str) -> None:
    hasher = new_hasher(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
    assert Digest(algorithm, hasher.hexdigest()) == Digest.of(b"".join(chunks), algorithm)
