"""Content-addressed blobs and per-namespace ownership.

A namespace may read a blob only if it owns it: it uploaded it, mounted it, or holds a
manifest with that digest. Ownership is a marker under the namespace plus a reverse
marker beside the blob; the reverse marker is written first and removed last, so the
reverse index is always a superset of the truth (what garbage collection needs).
"""

from __future__ import annotations

from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown
from angosd.registry import paths
from angosd.storage.errors import PathNotFound
from angosd.storage.interface import IReadHandle, IStorageDriver


class BlobStore:
    def __init__(self, driver: IStorageDriver) -> None:
        self._driver = driver

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
        """Record that ``namespace`` owns ``digest`` (idempotent)."""
        await self._driver.write(paths.blob_owner(digest, namespace), b"")
        await self._driver.write(paths.owned_blob(namespace, digest), b"")

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
        await self._driver.write(paths.blob_data(digest), data)

    async def read_small(self, digest: Digest) -> bytes:
        try:
            return await self._driver.read(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None
