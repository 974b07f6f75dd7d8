"""HTTP ``Range`` (blob downloads) and upload ``Content-Range`` parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from angosd.oci.errors import BlobRangeNotSatisfiable, RangeNotSatisfiable

_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$", re.ASCII)
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?$", re.ASCII)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive, satisfiable byte range ``first..last`` of a resource of ``size`` bytes."""

    first: int
    last: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last < self.size:
            raise ValueError(f"bad range {self.first}-{self.last}/{self.size}")

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against a resource of ``size`` bytes (RFC 9110).

    Returns None when the whole resource should be served: no header, a header that
    does not parse, several ranges, or an empty resource. Raises `BlobRangeNotSatisfiable`
    when the range is well-formed but cannot be met (start past the end, zero suffix).
    """
    if header is None or size == 0:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0:
            raise BlobRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        return ByteRange(max(size - suffix, 0), size - 1, size)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise BlobRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return ByteRange(first, min(int(last_text), size - 1) if last_text else size - 1, size)


def parse_content_range(header: str) -> tuple[int, int]:
    """Parse an upload chunk's ``Content-Range: <first>-<last>`` (inclusive).

    Accepts the ``bytes=``/``bytes `` prefixes and ``/total`` suffix that some clients
    send. Raises `RangeNotSatisfiable` for anything malformed or reversed.
    """
    match = _CONTENT_RANGE.match(header.strip())
    if match is None:
        raise RangeNotSatisfiable(f"malformed Content-Range {header[:100]!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise RangeNotSatisfiable(f"reversed Content-Range {header[:100]!r}")
    return first, last
