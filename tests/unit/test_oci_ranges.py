"""``Range`` (downloads) and ``Content-Range`` (chunked uploads) parsing."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from angosd.oci.errors import BlobRangeNotSatisfiable, RangeNotSatisfiable
from angosd.oci.ranges import ByteRange, parse_content_range, parse_range

ASCII_DIGITS = "0123456789"
MAX_DIGITS = 19  # longer numbers are treated as unparseable rather than as huge integers
UNSATISFIABLE = "416"


def model_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """An independent reading of RFC 9110 single byte ranges, as angosd applies it.

    Returns ``(first, last)``, None (serve the whole resource) or ``UNSATISFIABLE``.
    """
    if header is None or size == 0:
        return None
    text = header.strip()
    if not text.startswith("bytes="):
        return None
    first_text, dash, last_text = text.removeprefix("bytes=").partition("-")
    numbers = (first_text, last_text)
    if not dash or any(len(n) > MAX_DIGITS or any(c not in ASCII_DIGITS for c in n) for n in numbers):
        return None
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        return UNSATISFIABLE if suffix == 0 else (max(size - suffix, 0), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # an invalid range-spec: the header is ignored
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(last_text), size - 1) if last_text else size - 1


def outcome(header: str | None, size: int) -> tuple[int, int] | str | None:
    """What `parse_range` did, in the model's terms; checks the invariants on the way."""
    try:
        result = parse_range(header, size)
    except BlobRangeNotSatisfiable as exc:
        assert exc.status == 416 and exc.code == "SIZE_INVALID"
        assert exc.headers == {"Content-Range": f"bytes */{size}"}
        return UNSATISFIABLE
    if result is None:
        return None
    assert 0 <= result.first <= result.last < size
    assert result.size == size
    assert result.length == result.last - result.first + 1
    assert result.content_range() == f"bytes {result.first}-{result.last}/{size}"
    return result.first, result.last


sizes = st.one_of(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=2**63))
numbers = st.one_of(
    st.just(""),
    st.integers(min_value=0, max_value=120).map(str),
    st.integers(min_value=0, max_value=10**21).map(str),
    st.text(ASCII_DIGITS + "\u0661\uff11+ ", max_size=21),  # includes non-ASCII digits and signs
)


@st.composite
def range_headers(draw: st.DrawFn) -> str:
    """Mostly well-formed ``Range`` values with the odd malformation."""
    prefix = draw(st.sampled_from(["bytes=", "bytes=", "bytes=", "Bytes=", "bytes ", "items=", "", " bytes="]))
    separator = draw(st.sampled_from(["-", "-", "-", "--", ",", ""]))
    suffix = draw(st.sampled_from(["", "", "", ", 0-1", ",", " ", "\t", "\n", "x", "/10"]))
    return prefix + draw(numbers) + separator + draw(numbers) + suffix


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=0-", 1, (0, 0)),
        ("bytes=5-1000", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-1000", 10, (0, 9)),
        (" bytes=1-2 ", 10, (1, 2)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=10-", 10, UNSATISFIABLE),
        ("bytes=10-20", 10, UNSATISFIABLE),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=0-0", 0, None),
        ("bytes=-0", 0, None),
        (None, 10, None),
        ("", 10, None),
        ("bytes=", 10, None),
        ("bytes=-", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=0-1, 3-4", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1.5-2", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=--1", 10, None),
        ("bytes 0-1", 10, None),
        ("items=0-1", 10, None),
        ("0-1", 10, None),
        ("bytes=\u0661-\u0662", 10, None),
        ("bytes=" + "9" * 20 + "-", 10, None),
        ("bytes=0-" + "9" * 19, 10, (0, 9)),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | str | None) -> None:
    assert outcome(header, size) == expected
    assert model_range(header, size) == expected


@given(header=range_headers(), size=sizes)
@example(header="bytes=\u0661-\u0662", size=10)
@example(header="bytes=0-0", size=0)
@example(header="bytes=-" + "9" * 19, size=2**63)
def test_parse_range_matches_model(header: str, size: int) -> None:
    assert outcome(header, size) == model_range(header, size)


@given(header=st.one_of(st.none(), st.text()), size=sizes)
def test_parse_range_on_arbitrary_text(header: str | None, size: int) -> None:
    assert outcome(header, size) == model_range(header, size)


@pytest.mark.parametrize(
    ("first", "last", "size"),
    [(-1, 0, 10), (0, 10, 10), (5, 4, 10), (0, 0, 0)],
)
def test_byte_range_rejects_impossible_ranges(first: int, last: int, size: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(first, last, size)


def model_content_range(header: str) -> tuple[int, int] | None:
    """``[bytes=|bytes ]first-last[/total|/*]`` with ASCII digits; None where angosd answers 416."""
    text = header.strip()
    if text.startswith(("bytes=", "bytes ")):
        text = text[len("bytes=") :]
    span, _, total = text.partition("/")
    first, dash, last = span.partition("-")

    def is_number(n: str) -> bool:
        return 1 <= len(n) <= MAX_DIGITS and all(c in ASCII_DIGITS for c in n)

    if not dash or not is_number(first) or not is_number(last):
        return None
    if "/" in text and total != "*" and not is_number(total):
        return None
    return (int(first), int(last)) if int(first) <= int(last) else None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0-0", (0, 0)),
        ("0-99", (0, 99)),
        ("100-199", (100, 199)),
        ("bytes=0-99", (0, 99)),
        ("bytes 0-99/*", (0, 99)),
        ("bytes 0-99/100", (0, 99)),
        ("0-99/100", (0, 99)),
        (" 5-9 ", (5, 9)),
    ],
)
def test_parse_content_range_accepts(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header) == expected
    assert model_content_range(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "0",
        "-5",
        "5-",
        "5-3",
        "a-b",
        "0-1/",
        "0-1/x",
        "0-1/*/2",
        "0-1-2",
        "0 - 1",
        "bytes:0-1",
        "bytes  0-1",
        "bytes=bytes 0-1",
        "0-1,2-3",
        "\u0661-\u0662",
        "0-" + "9" * 20,
        "-1-2",
    ],
)
def test_parse_content_range_rejects(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_content_range(header)
    assert caught.value.status == 416
    assert model_content_range(header) is None


@st.composite
def content_range_headers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["", "", "bytes=", "bytes ", "bytes", "Bytes ", " "]))
    total = draw(st.sampled_from(["", "", "/*", "/", "/x"]) | numbers.map(lambda n: "/" + n))
    return prefix + draw(numbers) + draw(st.sampled_from(["-", "-", "", "--"])) + draw(numbers) + total


@given(st.one_of(content_range_headers(), st.text()))
@example("\u0661-\u0662")
@example("0-1\n")
def test_parse_content_range_returns_ordered_pair_or_416(header: str) -> None:
    try:
        first, last = parse_content_range(header)
    except RangeNotSatisfiable:
        assert model_content_range(header) is None
        return
    assert 0 <= first <= last
    assert (first, last) == model_content_range(header)
