"""``[metadata_store]``: a registry's metadata in a store of its own.

The metadata of a namespace is everything under ``repositories/<ns>/`` (tags, revisions,
referrers, ownership markers, pull times) except its upload sessions, whose bytes become
blobs by a rename and so stay with the blobs. `SplitDriver` sends each key to the store it
belongs to and merges the listings of ``repositories/`` that span both, so the registry
above it sees one store. Everything else (``blobs/``, ``_gc/``, upload sessions) is in the
blob store, which also makes redirect URLs when it can.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface import implementer

from angosd.storage.interface import IAppendWriter, IReadHandle, IRedirectingDriver, IStorageDriver

_REPOSITORIES = "repositories"
_UPLOADS = "_uploads"


def is_metadata(key: str) -> bool:
    """Whether ``key`` (an object or a prefix) lies in the metadata store."""
    parts = key.strip("/").split("/")
    return parts[0] == _REPOSITORIES and len(parts) > 1 and _UPLOADS not in parts


def spans_both(prefix: str) -> bool:
    """Whether a listing of ``prefix`` may find entries in both stores: ``repositories/`` and
    the namespace directories below it (which hold ``_uploads`` beside the metadata)."""
    parts = prefix.strip("/").split("/")
    return parts[0] == _REPOSITORIES and _UPLOADS not in parts


@implementer(IStorageDriver)
class SplitDriver:
    """One store made of a blob store and a metadata store (see the module docstring)."""

    def __init__(self, blobs: Any, metadata: Any) -> None:
        self.blobs = blobs
        self.metadata = metadata

    def _for(self, key: str) -> Any:
        return self.metadata if is_metadata(key) else self.blobs

    def read(self, key: str) -> Deferred[bytes]:
        result: Deferred[bytes] = self._for(key).read(key)
        return result

    def write(self, key: str, data: bytes) -> Deferred[None]:
        result: Deferred[None] = self._for(key).write(key, data)
        return result

    def link_from(self, source: IStorageDriver, source_key: str, key: str) -> Deferred[str]:
        if isinstance(source, SplitDriver):
            source = source._for(source_key)
        result: Deferred[str] = self._for(key).link_from(source, source_key, key)
        return result

    def stat(self, key: str) -> Deferred[int | None]:
        result: Deferred[int | None] = self._for(key).stat(key)
        return result

    def children(self, prefix: str) -> Deferred[list[str]]:
        if not spans_both(prefix):
            result: Deferred[list[str]] = self._for(prefix).children(prefix)
            return result
        return ensureDeferred(self._merged("children", prefix))

    def children_after(self, prefix: str, after: str | None, limit: int) -> Deferred[list[str]]:
        if not spans_both(prefix):
            result: Deferred[list[str]] = self._for(prefix).children_after(prefix, after, limit)
            return result
        return ensureDeferred(self._merged_page(prefix, after, limit))

    async def _merged_page(self, prefix: str, after: str | None, limit: int) -> list[str]:
        first = await self.metadata.children_after(prefix, after, limit)
        second = await self.blobs.children_after(prefix, after, limit)
        return sorted(set(first) | set(second))[:limit]

    def walk(self, prefix: str) -> Deferred[list[str]]:
        if not spans_both(prefix):
            result: Deferred[list[str]] = self._for(prefix).walk(prefix)
            return result
        return ensureDeferred(self._merged("walk", prefix))

    async def _merged(self, method: str, prefix: str) -> list[str]:
        first = await getattr(self.metadata, method)(prefix)
        second = await getattr(self.blobs, method)(prefix)
        return sorted(set(first) | set(second))

    def delete(self, key: str) -> Deferred[None]:
        result: Deferred[None] = self._for(key).delete(key)
        return result

    def delete_tree(self, prefix: str) -> Deferred[None]:
        if not spans_both(prefix):
            result: Deferred[None] = self._for(prefix).delete_tree(prefix)
            return result

        async def both() -> None:
            await self.metadata.delete_tree(prefix)
            await self.blobs.delete_tree(prefix)

        return ensureDeferred(both())

    def move(self, source: str, destination: str) -> Deferred[None]:
        """A rename within one store; across the two (only small metadata objects are ever
        moved that way: quarantine by scrub) a copy, then the source removed."""
        origin, target = self._for(source), self._for(destination)
        if origin is target:
            result: Deferred[None] = origin.move(source, destination)
            return result

        async def copy() -> None:
            await target.write(destination, await origin.read(source))
            await origin.delete(source)

        return ensureDeferred(copy())

    def open_read(self, key: str) -> Deferred[IReadHandle]:
        result: Deferred[IReadHandle] = self._for(key).open_read(key)
        return result

    def open_append(self, key: str) -> Deferred[IAppendWriter]:
        result: Deferred[IAppendWriter] = self._for(key).open_append(key)
        return result

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        result: Deferred[str] = self._for(key).hash_object(key, algorithm)
        return result


@implementer(IRedirectingDriver)
class RedirectingSplitDriver(SplitDriver):
    """A `SplitDriver` whose blob store makes redirect URLs (S3)."""

    def redirect_url(self, key: str, ttl: int) -> str | None:
        url: str | None = self.blobs.redirect_url(key, ttl)
        return url


def split(blobs: Any, metadata: Any) -> SplitDriver:
    """The store of ``blobs`` with its metadata in ``metadata``."""
    return RedirectingSplitDriver(blobs, metadata) if IRedirectingDriver.providedBy(blobs) else SplitDriver(
        blobs, metadata)
