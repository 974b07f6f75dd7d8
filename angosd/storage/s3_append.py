"""Append sessions on S3 (objects cannot be appended to) and their assembly into one object.

Layout of an appendable object at bucket key ``K``::

    K                                   the base object; metadata x-amz-meta-angosd-append: TOKEN
    K/.tmp-parts/TOKEN/<offset:020d>    the appended bytes, one immutable object per part

A part's name is the logical offset of its first byte. The object's bytes are the base
followed by the *chain* of parts: the part at offset ``len(base)``, then the part at the
end of that one, and so on; parts off the chain are ignored (and deleted with the
object). Writing a new object at ``K`` (an ordinary PUT) drops the marker, so old parts
stop counting at once.

Why this is correct under ``kill -9`` and with several daemons:

- A part is written with one PUT with ``If-None-Match: *``: it is either whole or
  absent, and a second writer at the same offset is refused (412) instead of replacing
  it. So the chain is unique and only ever grows; the size a stat reports (the chain's
  end) is always bytes that are stored. A part PUT still in flight from a killed daemon
  either lands before the next writer looks (then it counts) or loses the race (412).
- Bytes are buffered in memory until a part of ``part_size`` is full (or the request
  ends), so memory is bounded by about three parts per writer: one being stored, one
  waiting (the client's connection is paused meanwhile) and the one filling.
- Assembly (`assemble`, at `move` time) builds the destination with one multipart
  upload: parts of at least 5 MiB are copied server-side (UploadPartCopy), smaller
  neighbours are read and re-uploaded through a buffer of at most ``part_size``. Up to
  `COPY_CONCURRENCY` part copies run at once (each is server-side work of the S3 service,
  so one after another the commit of a large upload took a round trip per part); the
  re-uploaded parts are read and sent one at a time, so memory stays bounded. Only
  CompleteMultipartUpload makes the destination visible, whole. An upload abandoned by
  a crash stays invisible; a bucket lifecycle rule (AbortIncompleteMultipartUpload)
  reclaims it.
"""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ElementTree
from collections import deque
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from angosd.storage.errors import StorageError
from angosd.storage.interface import IAppendWriter
from angosd.storage.producers import PausingConsumer
from angosd.storage.s3_client import APPEND_TOKEN, S3Client, child_text, error_code, parse_xml
from angosd.storage.s3_read import Segment, read_blocks

#: S3's smallest part (all but the last), largest copied part, and most parts per upload.
MIN_PART = 5 * 1024 * 1024
MAX_COPY_PART = 5 * 1024**3
MAX_PARTS = 10_000
#: UploadPartCopy requests of one assembly in flight at once.
COPY_CONCURRENCY = 6
#: Objects up to this size are moved by reading them and writing them again.
_SMALL_MOVE = MIN_PART
_PARTS_DIR = ".tmp-parts"
_log = Logger()


def new_token() -> str:
    return uuid.uuid4().hex


def parts_prefix(full_key: str, token: str | None = None) -> str:
    """Bucket prefix of the parts of ``full_key`` (of one ``token``, or of all)."""
    base = f"{full_key}/{_PARTS_DIR}/"
    return f"{base}{token}/" if token else base


def part_key(full_key: str, token: str, offset: int) -> str:
    return f"{parts_prefix(full_key, token)}{offset:020d}"


async def chain(client: S3Client, full_key: str, token: str, base_size: int) -> list[Segment]:
    """The parts that continue ``full_key``'s base, in order (see the module docstring)."""
    prefix = parts_prefix(full_key, token)
    objects, _ = await client.list(prefix, None)
    by_offset: dict[int, tuple[str, int]] = {}
    for key, size in objects:
        name = key[len(prefix):]
        if name.isdigit() and size > 0:
            by_offset[int(name)] = (key, size)
    found = []
    position = base_size
    while position in by_offset:
        key, size = by_offset[position]
        found.append(Segment(key, 0, size))
        position += size
    return found


async def mark_appendable(client: S3Client, full_key: str, size: int, etag: str | None) -> str:
    """Give the existing object ``full_key`` an append token (its bytes stay); return it."""
    token = new_token()
    if size == 0:
        response = await client.call("PUT", full_key, headers={APPEND_TOKEN: token}, body=b"")
    else:
        if size > MAX_COPY_PART:
            raise StorageError(f"{full_key}: cannot append to an object larger than 5 GiB")
        headers = {"x-amz-copy-source": _copy_source(client, full_key), "x-amz-metadata-directive": "REPLACE",
                   APPEND_TOKEN: token}
        if etag:
            headers["x-amz-copy-source-if-match"] = etag
        response = await client.call("PUT", full_key, headers=headers, body=b"")
    if response.status != 200:
        raise client.error(response, "PUT", full_key)
    return token


@implementer(IAppendWriter, IConsumer)
class S3AppendWriter(PausingConsumer):
    """Appends to an appendable object by writing parts of ``part_size`` bytes (see module doc).

    Parts are stored one at a time, in order. While one is being stored and the next is
    already full, the registered producer (the client's connection) is paused. A failed
    part keeps its error: the next `write` and `finish` raise it; the bytes before it stay.
    """

    def __init__(self, client: S3Client, full_key: str, token: str, offset: int, part_size: int) -> None:
        self._client = client
        self._full_key = full_key
        self._token = token
        self._part_size = part_size
        self.offset = offset
        self._cut_at = offset  # logical offset of the next part to cut from the buffer
        self._chunks: list[bytes] = []  # the part being filled
        self._buffered = 0
        self._queue: deque[tuple[int, bytes]] = deque()
        self._running = False
        self._error: StorageError | None = None
        self._closed = False
        self._drained: list[Deferred[None]] = []

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise StorageError(f"write after close ({self._full_key})")
        self.offset += len(data)
        while data:
            room = self._part_size - self._buffered
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._chunks.append(piece)
            self._buffered += len(piece)
            if self._buffered >= self._part_size:
                self._cut()
        self._start()
        if len(self._queue) >= 2:
            self._pause()

    def _cut(self) -> None:
        """Queue the buffered bytes as the next part (one copy: the join)."""
        part = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        self._queue.append((self._cut_at, part))
        self._cut_at += len(part)

    def _start(self) -> None:
        if self._running or not self._queue or self._error is not None:
            return
        self._running = True
        Deferred.fromCoroutine(self._store_all()).addErrback(self._crashed)

    async def _store_all(self) -> None:
        try:
            while self._queue and self._error is None:
                offset, data = self._queue[0]
                try:
                    await self._store(offset, data)
                except StorageError as exc:
                    self._error = exc
                    self._queue.clear()
                    break
                except Exception as exc:  # a bug; still, never stall with the producer paused
                    _log.failure("S3 append to {key} failed", key=self._full_key)
                    self._error = StorageError(f"S3 append to {self._full_key} failed: {exc!r}")
                    self._queue.clear()
                    break
                self._queue.popleft()
                if len(self._queue) <= 1:
                    self._resume()
        finally:
            self._running = False
            self._resume_if_failed()
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)

    def _crashed(self, failure: Any) -> None:
        _log.failure("S3 append writer crashed", failure)

    async def _store(self, offset: int, data: bytes) -> None:
        key = part_key(self._full_key, self._token, offset)
        response = await self._client.call("PUT", key, headers={"If-None-Match": "*"}, body=data)
        if response.status == 200:
            return
        if response.status == 412 and response.attempts > 1 and await self._stored_earlier(key, data):
            return  # an earlier attempt of ours landed but its answer was lost
        if response.status == 412:
            raise StorageError(f"another writer appended to this upload at offset {offset}")
        raise self._client.error(response, "PUT", key)

    async def _stored_earlier(self, key: str, data: bytes) -> bool:
        response = await self._client.call("HEAD", key)
        etag = (response.header("ETag") or "").strip('"')
        return response.status == 200 and etag == hashlib.md5(data).hexdigest()

    def _resume_if_failed(self) -> None:
        if self._error is not None:
            self._resume()

    def _drain(self) -> Deferred[None]:
        if self._buffered and self._error is None:
            self._cut()
        self._start()
        if not self._running:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def finish(self) -> Deferred[None]:
        """Store what is buffered; fails with the first storage error of this writer."""
        self._closed = True

        def check(_: object) -> None:
            if self._error is not None:
                raise self._error

        return self._drain().addCallback(check)

    def abort(self) -> Deferred[None]:
        """Accept no more writes; what was already written is still stored (errors are logged)."""
        self._closed = True
        self._resume()

        def report(_: object) -> None:
            if self._error is not None:
                _log.warn("S3 append to {key} ended with an error: {error}", key=self._full_key, error=self._error)

        return self._drain().addCallback(report)


# -- assembly -------------------------------------------------------------------------------


def _copy_source(client: S3Client, full_key: str, bucket: str | None = None) -> str:
    return "/" + quote(bucket or client.options.bucket, safe="") + "/" + quote(full_key, safe="/")


async def copy_object(client: S3Client, segment: Segment, destination: str, bucket: str | None = None) -> None:
    """Server-side copy of a whole object (up to 5 GiB) to ``destination``, without metadata;
    the object is in ``bucket`` when given (same service), else in the client's bucket."""
    headers = {"x-amz-copy-source": _copy_source(client, segment.full_key, bucket),
               "x-amz-metadata-directive": "REPLACE"}
    if segment.etag:
        headers["x-amz-copy-source-if-match"] = segment.etag
    response = await client.call("PUT", destination, headers=headers, body=b"")
    if response.status != 200:
        raise client.error(response, "COPY", segment.full_key)


async def assemble(client: S3Client, segments: list[Segment], destination: str, part_size: int,
                   whole_objects: bool) -> None:
    """Make ``destination`` hold the bytes of ``segments`` end to end, atomically.

    ``whole_objects`` says each segment is a complete bucket object (so a single one can
    be copied with CopyObject). Memory is bounded by ``part_size`` plus one read block.
    """
    total = sum(segment.length for segment in segments)
    if len(segments) == 1 and whole_objects and total <= MAX_COPY_PART:
        await copy_object(client, segments[0], destination)
        return
    if total <= _SMALL_MOVE:
        data = b"".join([block async for block in read_blocks(client, segments)])
        response = await client.call("PUT", destination, body=data)
        if response.status != 200:
            raise client.error(response, "PUT", destination)
        return
    await _multipart(client, segments, destination, max(part_size, MIN_PART))


class _Multipart:
    """One multipart upload to ``destination``."""

    def __init__(self, client: S3Client, destination: str) -> None:
        self.client = client
        self.destination = destination
        self.upload_id = ""
        self.parts: dict[int, str] = {}  # part number -> ETag
        self._numbered = 0

    async def create(self) -> None:
        response = await self.client.call("POST", self.destination, [("uploads", None)], body=b"")
        if response.status != 200:
            raise self.client.error(response, "POST", self.destination)
        self.upload_id = child_text(parse_xml(response.body), "UploadId")
        if not self.upload_id:
            raise StorageError(f"S3 started no multipart upload for {self.destination}")

    def number(self) -> int:
        """The next part number, in the order of the bytes (parts may be stored in any order)."""
        self._numbered += 1
        if self._numbered > MAX_PARTS:
            raise StorageError(f"{self.destination}: more than {MAX_PARTS} parts; raise multipart_part_size")
        return self._numbered

    def _query(self, number: int) -> list[tuple[str, str | None]]:
        return [("partNumber", str(number)), ("uploadId", self.upload_id)]

    async def upload(self, number: int, data: bytes) -> None:
        response = await self.client.call("PUT", self.destination, self._query(number), body=data)
        if response.status != 200:
            raise self.client.error(response, "PUT part", self.destination)
        self.parts[number] = response.header("ETag") or ""

    async def copy(self, number: int, segment: Segment, skip: int, length: int) -> None:
        query = self._query(number)
        first = segment.start + skip
        headers = {"x-amz-copy-source": _copy_source(self.client, segment.full_key),
                   "x-amz-copy-source-range": f"bytes={first}-{first + length - 1}"}
        if segment.etag:
            headers["x-amz-copy-source-if-match"] = segment.etag
        response = await self.client.call("PUT", self.destination, query, headers, b"")
        if response.status != 200:
            raise self.client.error(response, "COPY part", segment.full_key)
        self.parts[number] = child_text(parse_xml(response.body), "ETag")

    async def complete(self, total: int) -> None:
        document = ElementTree.Element("CompleteMultipartUpload")
        for number, etag in sorted(self.parts.items()):
            part = ElementTree.SubElement(document, "Part")
            ElementTree.SubElement(part, "PartNumber").text = str(number)
            ElementTree.SubElement(part, "ETag").text = etag
        body = ElementTree.tostring(document, encoding="utf-8", xml_declaration=True)
        response = await self.client.call("POST", self.destination, [("uploadId", self.upload_id)],
                                          {"Content-Type": "application/xml"}, body)
        if response.status == 200:
            return
        if response.status == 404 and response.attempts > 1 and error_code(response.body)[0] == "NoSuchUpload":
            check = await self.client.call("HEAD", self.destination)  # completed, but the answer was lost
            if check.status == 200 and int(check.header("Content-Length") or -1) == total:
                return
        raise self.client.error(response, "COMPLETE", self.destination)

    async def abort(self) -> None:
        try:
            await self.client.call("DELETE", self.destination, [("uploadId", self.upload_id)])
        except StorageError as exc:
            _log.warn("could not abort multipart upload of {key}: {error}", key=self.destination, error=exc)


async def _multipart(client: S3Client, segments: list[Segment], destination: str, part_size: int) -> None:
    upload = _Multipart(client, destination)
    await upload.create()
    copies = DeferredSemaphore(COPY_CONCURRENCY)
    copying: list[Deferred[None]] = []

    def copy(number: int, segment: Segment, skip: int, length: int) -> Deferred[None]:
        return Deferred.fromCoroutine(upload.copy(number, segment, skip, length))

    try:
        try:
            buffer = bytearray()
            for segment in segments:
                position = 0
                while position < segment.length:
                    remaining = segment.length - position
                    if not buffer and remaining >= MIN_PART:
                        take = min(remaining, MAX_COPY_PART)
                        if 0 < remaining - take < MIN_PART:
                            take = remaining - MIN_PART  # leave a valid part behind
                        if copies.tokens == 0:  # all copy slots busy: wait for one before planning on
                            await copies.acquire()
                            copies.release()
                        copying.append(copies.run(copy, upload.number(), segment, position, take))
                    else:
                        take = min(remaining, part_size - len(buffer))
                        piece = Segment(segment.full_key, segment.start + position, take, segment.etag)
                        async for block in read_blocks(client, [piece]):
                            buffer += block
                        if len(buffer) >= part_size:
                            data = bytes(buffer)
                            buffer = bytearray()
                            await upload.upload(upload.number(), data)
                    position += take
            if buffer:
                await upload.upload(upload.number(), bytes(buffer))
        finally:
            failures = []
            for pending in copying:  # every copy settles before the upload completes or is aborted
                try:
                    await pending
                except BaseException as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]
        await upload.complete(sum(segment.length for segment in segments))
    except BaseException:
        await upload.abort()
        raise
