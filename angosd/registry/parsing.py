"""Parsing and hashing manifests without stalling the event loop.

A manifest up to `INLINE_LIMIT` bytes is parsed where it is asked for (a millisecond at
most). A larger one is parsed on the thread pool given here, as a `large` parse: a body
denser in JSON objects and arrays than any manifest is refused after one pass over its
bytes, and the rest is decoded by Python code that lets the event loop run meanwhile
(decoding megabytes in one C call would hold the interpreter lock throughout).
"""

from __future__ import annotations

from angosd.oci.digest import Digest
from angosd.oci.manifest import Manifest, parse_manifest
from angosd.storage.pools import BoundedPool

__all__ = ["INLINE_LIMIT", "ManifestParser"]

#: The largest body parsed or hashed inline.
INLINE_LIMIT = 64 * 1024


class ManifestParser:
    """``pool`` takes bodies larger than ``inline_limit``; None parses everything inline
    (tools without pools)."""

    def __init__(self, pool: BoundedPool | None = None, inline_limit: int = INLINE_LIMIT) -> None:
        self._pool = pool
        self.inline_limit = inline_limit

    def _pool_for(self, body: bytes) -> BoundedPool | None:
        return self._pool if len(body) > self.inline_limit else None

    async def parse(self, body: bytes, content_type: str | None, algorithm: str = "sha256") -> Manifest:
        """`parse_manifest` of ``body``, on the pool when it is large; raises what that raises
        (and `TooManyRequests` when the pool is full)."""
        pool = self._pool_for(body)
        if pool is None:
            return parse_manifest(body, content_type, algorithm)
        return await pool.run(parse_manifest, body, content_type, algorithm, True)

    async def digest(self, body: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``body``, hashed on the pool when it is large."""
        pool = self._pool_for(body)
        if pool is None:
            return Digest.of(body, algorithm)
        return await pool.run(Digest.of, body, algorithm)
