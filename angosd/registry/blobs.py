"""Content-addressed blobs and per-namespace ownership.

A namespace may read a blob only if it owns it: it uploaded it, mounted it, or holds a
manifest with that digest. Ownership is a marker under the namespace plus a reverse
marker beside the blob; the reverse marker is written first and removed last, so the
reverse index is always a superset of the truth (what garbage collection needs).

Every writer that makes a blob live (stores its bytes, grants it) first *touches* it:
it removes the garbage collector's candidate mark, which tells a collection that is
deciding about the blob at that moment to keep it (see `angosd.registry.gc`).
"""

from __future__ import annotations

from collections.abc import Callable

from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown
from angosd.registry import paths
from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.interface import IReadHandle, IStorageDriver


class BlobStore:
    def __init__(self, driver: IStorageDriver) -> None:
        self._driver = driver
        #: Called with every touched digest (the in-process collector listens).
        self.touch_listeners: list[Callable[[Digest], None]] = []

    async def touch(self, digest: Digest) -> None:
        """Withdraw ``digest`` from garbage collection now: remove its candidate mark.

        Writers call this before they store or grant a blob, so that a collection
        deciding about it meanwhile sees the change and keeps it.
        """
        for listener in self.touch_listeners:
            listener(digest)
        await self._driver.delete(paths.gc_mark(digest))

    async def owns(self, namespace: str, digest: Digest) -> bool:
        """Whether ``namespace`` may read ``digest`` and the bytes are present."""
        if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
            return False
        return await self._driver.stat(paths.blob_data(digest)) is not None

    async def size(self, namespace: str, digest: Digest) -> int:
        """Size of an owned blob; raises `BlobUnknown` otherwise."""
        if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
            raise BlobUnknown(str(digest))
        size = await self._driver.stat(paths.blob_data(digest))
        if size is None:
            raise BlobUnknown(str(digest))
        return size

    async def open(self, namespace: str, digest: Digest) -> IReadHandle:
        """An owned blob opened for streaming; raises `BlobUnknown` otherwise."""
        if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
            raise BlobUnknown(str(digest))
        try:
            return await self._driver.open_read(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None

    async def exists(self, digest: Digest) -> bool:
        """Whether the bytes of ``digest`` are stored at all (no access implied)."""
        return await self._driver.stat(paths.blob_data(digest)) is not None

    async def grant(self, namespace: str, digest: Digest) -> None:
        """Record that ``namespace`` owns ``digest`` (idempotent).

        Raises `StorageError` when the bytes are gone once ownership is written (a
        collection reclaimed them just before): the caller reports a failure, never a
        success for a blob that does not exist.
        """
        await self.claim(namespace, digest)
        await self.confirm(namespace, digest)

    async def claim(self, namespace: str, digest: Digest) -> None:
        """Write ``namespace``'s ownership markers of ``digest`` without looking for its bytes.

        For a writer that is about to store the bytes (upload completion): the markers go
        first, so a crash at any point leaves either the upload session intact (the client
        resumes or retries the PUT) or the bytes owned. A marker without bytes reads as
        "not owned" (`owns`, `size` and `open` check the bytes) and keeps nothing alive.
        Follow it with `confirm` once the bytes are stored.
        """
        await self.touch(digest)
        await self._driver.write(paths.blob_owner(digest, namespace), b"")
        await self._driver.write(paths.owned_blob(namespace, digest), b"")

    async def confirm(self, namespace: str, digest: Digest) -> None:
        """Check that a `claim` holds now: put back a marker that a concurrent cleanup (scrub
        removing a marker that had no bytes, or a reverse record without its forward one)
        removed meanwhile, and raise `StorageError` if the bytes are gone."""
        if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
            await self._driver.write(paths.blob_owner(digest, namespace), b"")
            await self._driver.write(paths.owned_blob(namespace, digest), b"")
        elif await self._driver.stat(paths.blob_owner(digest, namespace)) is None:
            await self._driver.write(paths.blob_owner(digest, namespace), b"")
        if await self._driver.stat(paths.blob_data(digest)) is None:
            raise StorageError(f"blob {digest} was reclaimed while being stored; retry")

    async def revoke(self, namespace: str, digest: Digest) -> None:
        """Remove ``namespace``'s ownership of ``digest``; raises `BlobUnknown` if not owned."""
        if await self._driver.stat(paths.owned_blob(namespace, digest)) is None:
            raise BlobUnknown(str(digest))
        await self._driver.delete(paths.owned_blob(namespace, digest))
        await self._driver.delete(paths.blob_owner(digest, namespace))

    async def owners(self, digest: Digest) -> list[str]:
        """Namespaces that (may) own ``digest``, from the reverse index."""
        return [paths.owner_namespace(m) for m in await self._driver.children(paths.blob_owners(digest))]

    async def store_small(self, digest: Digest, data: bytes) -> None:
        """Store bytes already known to hash to ``digest`` (manifests)."""
        await self.touch(digest)
        await self._driver.write(paths.blob_data(digest), data)

    async def read_small(self, digest: Digest) -> bytes:
        try:
            return await self._driver.read(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None
