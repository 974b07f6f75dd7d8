"""S3 driver: objects in one bucket (any S3-compatible server), below ``key_prefix``.

Transport is treq; requests are path-style (``ENDPOINT/BUCKET/KEY``) and signed with
botocore's SigV4 signer (`s3_client`). Keys are validated exactly as by the filesystem
driver, then prefixed.

- Small objects: PUT (atomic: a reader sees the old or the new object), GET, HEAD,
  DELETE. Listings are ListObjectsV2, all pages: `children` takes common prefixes plus
  objects below ``prefix/`` with delimiter ``/``, `walk` lists without delimiter.
  Names starting with ``.tmp-`` are hidden from listings, as on the filesystem.
- `move` is a server-side copy (CopyObject; a multipart UploadPartCopy above 5 GiB)
  that makes the destination visible whole, then a delete of the source.
- Appends (upload sessions): an object cannot grow on S3, so appended bytes are
  immutable part objects next to a base object; `stat`, `read`, `open_read` and
  `hash_object` see base plus parts, and `move` assembles them into one object with a
  multipart upload. The design, and why it is safe under ``kill -9`` and with several
  daemons, is in `angosd.storage.s3_append`.
- Downloads stream into the consumer with backpressure (`s3_read`): a whole plain
  object in the one GET that opened it, ranges with ranged GETs; ``fileno()`` is None.
  Objects of at most 64 KiB are read whole when opened, so such a handle keeps its
  bytes even if the object is replaced; a larger handle pins the object's ETag and fails
  (rather than mixing versions) if it was replaced.
- Failures: connection errors, timeouts, 5xx and 429 are retried with backoff
  (``max_attempts``); then, like refused credentials or a missing bucket, they raise a
  `StorageError` whose message says what to check (the API answers 503).

Deliberate differences from the filesystem: there are no directories, so a key may be
an object and a prefix at once, and a prefix disappears with its last object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, fail
from twisted.web.iweb import IResponse
from zope.interface import implementer

from angosd.storage.errors import InvalidPath, PathNotFound, StorageError
from angosd.storage.handles import bytes_handle
from angosd.storage.interface import (
    COPIED,
    LINKED,
    SERVER_COPIED,
    IAppendWriter,
    IReadHandle,
    IRedirectingDriver,
    IStorageDriver,
)
from angosd.storage.pools import BoundedPool
from angosd.storage.s3_append import (
    MAX_COPY_PART,
    S3AppendWriter,
    assemble,
    chain,
    copy_object,
    mark_appendable,
    new_token,
    parts_prefix,
)
from angosd.storage.s3_client import APPEND_TOKEN, S3Client, S3Options, S3Response
from angosd.storage.s3_read import OpenedHandle, Segment, SegmentHandle, discard, read_blocks

T = TypeVar("T")
_TEMP_PREFIX = ".tmp-"
#: Objects up to this size are read whole when opened.
_SNAPSHOT = 64 * 1024
#: S3's longest key, in bytes, and the room an append part's name needs after its object's key.
_MAX_KEY = 1024
_PART_SUFFIX = len("/.tmp-parts/") + 32 + 1 + 20


@dataclass(frozen=True, slots=True)
class _Info:
    size: int
    etag: str | None
    token: str | None


def _info(response: S3Response, size: int) -> _Info:
    return _Info(size, response.header("ETag"), response.header(APPEND_TOKEN))


def _first(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def _same_service(first: S3Options, second: S3Options) -> bool:
    """Whether a server-side copy between the two buckets can be asked for."""
    return first.endpoint.rstrip("/") == second.endpoint.rstrip("/")


def _run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coroutine)


@implementer(IStorageDriver, IRedirectingDriver)
class S3Driver:
    """Objects in an S3 bucket; see the module docstring. ``http`` is a treq client."""

    def __init__(self, reactor: Any, http: HTTPClient, options: S3Options, pool: BoundedPool) -> None:
        self._reactor = reactor
        self._pool = pool
        self.client = S3Client(reactor, http, options, pool)
        self._part_size = options.part_size

    # -- keys ----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        """The bucket key of ``key``; `InvalidPath` for keys the filesystem driver refuses."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
            raise InvalidPath(key)
        full = self.client.full_key(key)
        if len(full.encode("utf-8", "surrogatepass")) > _MAX_KEY - _PART_SUFFIX:
            raise StorageError(f"key too long for S3 ({key[:80]}...)")
        return full

    async def _head(self, full: str, key: str) -> _Info | None:
        response = await self.client.call("HEAD", full)
        if response.status == 404:
            return None
        if response.status != 200:
            raise self.client.error(response, "HEAD", key)
        return _info(response, int(response.header("Content-Length") or 0))

    async def _segments(self, full: str, info: _Info) -> list[Segment]:
        """The logical bytes of an object: itself, or its base and append parts."""
        base = [Segment(full, 0, info.size, info.etag)] if info.size or info.token is None else []
        if info.token is None:
            return base
        return base + await chain(self.client, full, info.token, info.size)

    # -- IStorageDriver ------------------------------------------------------------------

    def read(self, key: str) -> Deferred[bytes]:
        async def read() -> bytes:
            full = self._full(key)
            response = await self.client.call("GET", full)
            if response.status != 200:
                raise self.client.error(response, "GET", key)
            info = _info(response, len(response.body))
            if info.token is None:
                return response.body
            rest = await chain(self.client, full, info.token, info.size)
            return response.body + b"".join([block async for block in read_blocks(self.client, rest)])

        return _run(read())

    def write(self, key: str, data: bytes) -> Deferred[None]:
        async def write() -> None:
            full = self._full(key)
            response = await self.client.call("PUT", full, body=data)
            if response.status != 200:
                raise self.client.error(response, "PUT", key)

        return _run(write())

    def stat(self, key: str) -> Deferred[int | None]:
        async def stat() -> int | None:
            full = self._full(key)
            info = await self._head(full, key)
            if info is None:
                return None
            if info.token is None:
                return info.size
            return info.size + sum(part.length for part in await chain(self.client, full, info.token, info.size))

        return _run(stat())

    def children(self, prefix: str) -> Deferred[list[str]]:
        async def children() -> list[str]:
            full = self._full(prefix) + "/"
            objects, prefixes = await self.client.list(full, "/")
            names = {key[len(full):] for key, _size in objects}
            names.update(common[len(full):].rstrip("/") for common in prefixes)
            return sorted(name for name in names if name and not name.startswith(_TEMP_PREFIX))

        return _run(children())

    def children_after(self, prefix: str, after: str | None, limit: int) -> Deferred[list[str]]:
        async def page() -> list[str]:
            full = self._full(prefix) + "/"
            names: list[str] = []
            start = after
            while len(names) < limit:
                # One more than asked: the prefix ``after/`` sorts after ``after`` and is dropped.
                wanted = limit - len(names) + 1
                objects, prefixes = await self.client.list(full, "/", full + start if start is not None else None,
                                                           wanted)
                listed = sorted({key[len(full):] for key, _size in objects}
                                | {common[len(full):].rstrip("/") for common in prefixes})
                names += [name for name in listed
                          if name and not name.startswith(_TEMP_PREFIX) and (after is None or name > after)]
                if len(objects) + len(prefixes) < wanted or not listed:
                    break
                start = listed[-1]
            return sorted(set(names))[:limit]

        return _run(page())

    def walk(self, prefix: str) -> Deferred[list[str]]:
        async def walk() -> list[str]:
            full = self._full(prefix) + "/"
            objects, _ = await self.client.list(full, None)
            relative = (key[len(full):] for key, _size in objects)
            return sorted(r for r in relative if r and not any(p.startswith(_TEMP_PREFIX) for p in r.split("/")))

        return _run(walk())

    def delete(self, key: str) -> Deferred[None]:
        async def delete() -> None:
            await self._delete(self._full(key), key)

        return _run(delete())

    async def _delete(self, full: str, key: str) -> None:
        response = await self.client.call("DELETE", full)
        if response.status not in (200, 204, 404):
            raise self.client.error(response, "DELETE", key)
        parts, _ = await self.client.list(parts_prefix(full), None)
        await self.client.delete_keys(part for part, _size in parts)

    def delete_tree(self, prefix: str) -> Deferred[None]:
        async def delete_tree() -> None:
            objects, _ = await self.client.list(self._full(prefix) + "/", None)
            await self.client.delete_keys(key for key, _size in objects)

        return _run(delete_tree())

    def move(self, source: str, destination: str) -> Deferred[None]:
        async def move() -> None:
            full_source, full_destination = self._full(source), self._full(destination)
            info = await self._head(full_source, source)
            if info is None:
                raise PathNotFound(source)
            if full_source == full_destination:
                return
            segments = await self._segments(full_source, info)
            await assemble(self.client, segments, full_destination, self._part_size, whole_objects=True)
            await self._delete(full_source, source)

        return _run(move())

    def open_read(self, key: str) -> Deferred[IReadHandle]:
        async def open_read() -> IReadHandle:
            full = self._full(key)
            response = await self.client.open("GET", full)
            if isinstance(response, S3Response):
                raise self.client.error(response, "GET", key)
            size, etag = response.length, _first(response, "ETag")
            if _first(response, APPEND_TOKEN) is None and isinstance(size, int):
                whole = OpenedHandle(self.client, self._reactor, Segment(full, 0, size, etag), response)
                return bytes_handle(await whole.read_all()) if size <= _SNAPSHOT else whole
            discard(response)  # an append session (base plus parts), or an answer without a length
            info = await self._head(full, key)
            if info is None:
                raise PathNotFound(key)
            return SegmentHandle(self.client, self._reactor, await self._segments(full, info))

        return _run(open_read())

    def open_append(self, key: str) -> Deferred[IAppendWriter]:
        async def open_append() -> IAppendWriter:
            full = self._full(key)
            info = await self._head(full, key)
            if info is None:
                token = new_token()
                response = await self.client.call("PUT", full, headers={APPEND_TOKEN: token, "If-None-Match": "*"},
                                                  body=b"")
                if response.status == 200:
                    return S3AppendWriter(self.client, full, token, 0, self._part_size)
                if response.status not in (409, 412):
                    raise self.client.error(response, "PUT", key)
                # Created meanwhile (by another writer, or by our attempt whose answer was lost).
                info = await self._head(full, key)
                if info is None:
                    raise StorageError(f"{key} was created and removed while it was being opened")
            if info.token is None:
                token = await mark_appendable(self.client, full, info.size, info.etag)
                return S3AppendWriter(self.client, full, token, info.size, self._part_size)
            parts = await chain(self.client, full, info.token, info.size)
            offset = info.size + sum(part.length for part in parts)
            return S3AppendWriter(self.client, full, info.token, offset, self._part_size)

        return _run(open_append())

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        try:
            hasher = hashlib.new(algorithm)
        except ValueError as exc:
            return fail(exc)

        async def digest() -> str:
            full = self._full(key)
            info = await self._head(full, key)
            if info is None:
                raise PathNotFound(key)
            async for block in read_blocks(self.client, await self._segments(full, info)):
                await self._pool.run(hasher.update, block)
            return hasher.hexdigest()

        return _run(digest())

    def link_from(self, source: IStorageDriver, source_key: str, key: str) -> Deferred[str]:
        """A server-side copy (CopyObject; UploadPartCopy above 5 GiB within one bucket) when
        ``source`` is a bucket of the same S3 service (its credentials must be able to read
        it); a streamed copy otherwise (another service, a filesystem)."""

        async def link() -> str:
            full = self._full(key)
            if isinstance(source, S3Driver) and _same_service(source.client.options, self.client.options):
                full_source = source._full(source_key)
                info = await source._head(full_source, source_key)
                if info is None:
                    raise PathNotFound(source_key)
                same_bucket = source.client.options.bucket == self.client.options.bucket
                if same_bucket and full_source == full:
                    return LINKED
                if info.token is None and (same_bucket or info.size <= MAX_COPY_PART):
                    segment = Segment(full_source, 0, info.size, info.etag)
                    if info.size <= MAX_COPY_PART:
                        await copy_object(self.client, segment, full, source.client.options.bucket)
                    else:
                        await assemble(self.client, [segment], full, self._part_size, whole_objects=True)
                    return SERVER_COPIED
            from angosd.storage.transfer import stream_copy

            await stream_copy(source, source_key, self, key)
            return COPIED

        return _run(link())

    # -- IRedirectingDriver --------------------------------------------------------------

    def redirect_url(self, key: str, ttl: int) -> str | None:
        """A presigned GET URL of ``key``, valid ``ttl`` seconds."""
        return self.client.presign(self._full(key), ttl)
