"""The storage driver contract.

Keys are ``/``-separated relative paths built by `angosd.registry.paths`. Every
operation returns a Deferred so that local and remote drivers are interchangeable.
Every write is visible atomically: a reader sees the old object or the new one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

#: How `IStorageDriver.link_from` carried an object's bytes.
LINKED = "linked"
SERVER_COPIED = "server-copied"
COPIED = "copied"


class IReadHandle(Interface):
    """An open object whose bytes can be streamed into a consumer."""

    size = Attribute("Size of the object in bytes.")

    def write_to(consumer: IConsumer, first: int, last: int) -> Deferred[None]:
        """Stream bytes ``first..last`` (inclusive) into ``consumer`` with backpressure.

        Fires when the last byte was written, or when the consumer stopped the
        transfer; the handle is closed either way.
        """

    def fileno() -> int | None:
        """An OS file descriptor of the object's bytes (for zero-copy sends), or None."""

    def read_all() -> Deferred[bytes]:
        """The whole object, for small objects only. Closes the handle."""

    def close() -> None:
        """Release the handle without streaming."""


class IAppendWriter(Interface):
    """An append-only sink for upload bytes."""

    offset = Attribute("Bytes in the object so far, including those written here.")

    def write(data: bytes) -> None:
        """Append ``data``. Raises `OutOfSpace` or `StorageError` on failure."""

    def finish() -> Deferred[None]:
        """Flush everything written; fires when it is durable as configured."""

    def abort() -> Deferred[None]:
        """Accept no more writes; bytes already handed to `write` are still appended (the
        upload then reports them). Fires once the object is closed."""


class IHashingAppendWriter(IAppendWriter):
    """An append writer that can also hash what it stores, off the reactor thread."""

    def hash_with(hasher: Any) -> None:
        """From now on, feed every chunk to ``hasher.update`` in order as it is stored.

        The hasher may be updated on another thread; it is not touched once `finish` or
        `abort` has fired. A chunk may be hashed although storing it then failed.
        """


class IStorageDriver(Interface):
    """Byte-oriented storage for blobs, uploads and metadata objects."""

    def read(key: str) -> Deferred[bytes]:
        """The bytes of a small object; fails with `PathNotFound`."""

    def write(key: str, data: bytes) -> Deferred[None]:
        """Create or replace a small object atomically."""

    def stat(key: str) -> Deferred[int | None]:
        """The size of an object, or None when it does not exist."""

    def children(prefix: str) -> Deferred[list[str]]:
        """Sorted names directly below ``prefix`` (objects and sub-prefixes); [] if none."""

    def children_after(prefix: str, after: str | None, limit: int) -> Deferred[list[str]]:
        """The first ``limit`` names of `children` that sort after ``after`` (all when None):
        one page of a listing, at a cost that does not grow with the whole listing where
        the store allows (a large directory is listed off the reactor thread)."""

    def walk(prefix: str) -> Deferred[list[str]]:
        """Every object key below ``prefix``, relative to it, sorted."""

    def delete(key: str) -> Deferred[None]:
        """Remove an object; a missing object is not an error."""

    def delete_tree(prefix: str) -> Deferred[None]:
        """Remove everything below ``prefix``; missing is not an error."""

    def move(source: str, destination: str) -> Deferred[None]:
        """Make ``source`` visible as ``destination`` atomically and remove ``source``."""

    def open_read(key: str) -> Deferred[IReadHandle]:
        """Open an object for streaming; fails with `PathNotFound`."""

    def open_append(key: str) -> Deferred[IAppendWriter]:
        """Open (creating if absent) an object for appending."""

    def hash_object(key: str, algorithm: str) -> Deferred[str]:
        """Hex digest of an object's bytes, computed without loading it into memory."""

    def link_from(source: IStorageDriver, source_key: str, key: str) -> Deferred[str]:
        """Make ``key`` hold the bytes of ``source``'s object ``source_key``, atomically
        (replacing ``key``), moving as few bytes as the two stores allow; ``source`` is
        left unchanged. ``source`` may be this driver or another one.

        Fires with how: `LINKED` (the bytes are shared: a hard link, a shared object),
        `SERVER_COPIED` (the storage service copied them; none went through this process)
        or `COPIED` (streamed through this process: another filesystem or service).
        Fails with `PathNotFound` when ``source_key`` does not exist.
        """


class IRedirectingDriver(Interface):
    """Optional: a driver whose objects clients may fetch directly (S3 presigned URLs)."""

    def redirect_url(key: str, ttl: int) -> str | None:
        """A URL serving the bytes of ``key`` without credentials for ``ttl`` seconds, or None.

        The URL is computed locally; it does not say whether the object exists.
        """
