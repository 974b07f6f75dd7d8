"""Reading S3 objects: streaming ranges into a consumer with backpressure, and block reads.

A logical object is a list of `Segment` (byte ranges of bucket objects, in order): one
segment for a plain object, the base object plus its parts for an append session (see
`s3_append`). Streaming GETs the segments one after the other with ``Range`` (and
``If-Match`` on the ETag seen when the object was opened, so a replaced object fails
instead of mixing versions), re-chunks the bytes into `CHUNK_SIZE` writes (each byte
copied once, into its chunk), and pauses
the upstream connection while the consumer is paused: memory stays at a few chunks.
A connection lost mid-segment is resumed from the last byte received.

A plain object is opened with one GET whose headers give its size and ETag
(`OpenedHandle`): reading it whole streams that same answer, so a full download costs one
request; a range (or a second read) asks again with ``Range``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse
from zope.interface import implementer

from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.interface import IReadHandle
from angosd.storage.producers import CHUNK_SIZE, StreamingProducer
from angosd.storage.s3_client import S3Client, S3Response

#: Upstream is paused past this many buffered bytes and resumed below `_LOW_WATER`.
_HIGH_WATER = 4 * CHUNK_SIZE
_LOW_WATER = 2 * CHUNK_SIZE
#: Block size of `read_blocks` (hashing, assembling parts).
BLOCK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """``length`` bytes of bucket object ``full_key`` from byte ``start``; ``etag`` pins its version."""

    full_key: str
    start: int
    length: int
    etag: str | None = None


def slice_segments(segments: list[Segment], first: int, last: int) -> list[Segment]:
    """The parts of ``segments`` (laid end to end) that hold logical bytes ``first..last``."""
    found = []
    position = 0
    for segment in segments:
        end = position + segment.length  # exclusive
        low, high = max(first, position), min(last + 1, end)
        if low < high:
            found.append(Segment(segment.full_key, segment.start + low - position, high - low, segment.etag))
        position = end
    return found


def range_headers(segment: Segment, skip: int = 0) -> dict[str, str]:
    headers = {"Range": f"bytes={segment.start + skip}-{segment.start + segment.length - 1}"}
    if segment.etag:
        headers["If-Match"] = segment.etag
    return headers


async def read_blocks(client: S3Client, segments: list[Segment], block: int = BLOCK_SIZE) -> AsyncIterator[bytes]:
    """The bytes of ``segments`` in blocks of at most ``block`` bytes (one ranged GET each)."""
    for segment in segments:
        done = 0
        while done < segment.length:
            piece = Segment(segment.full_key, segment.start + done, min(block, segment.length - done), segment.etag)
            response = await client.call("GET", piece.full_key, headers=range_headers(piece))
            if response.status not in (200, 206):
                raise _read_error(client, response, piece.full_key)
            data = response.body
            if response.status == 200:  # a server that ignores Range
                data = data[piece.start:piece.start + piece.length]
            if len(data) != piece.length:
                raise StorageError(f"{piece.full_key}: S3 sent {len(data)} bytes instead of {piece.length}")
            done += len(data)
            yield data


def _read_error(client: S3Client, response: S3Response, full_key: str) -> StorageError:
    if response.status == 412:
        return StorageError(f"{full_key} changed while it was being read")
    if response.status == 416:
        return StorageError(f"{full_key} is shorter than expected")
    return client.error(response, "GET", full_key)


@implementer(IReadHandle)
class SegmentHandle:
    """An object in the bucket, read when asked (`write_to`, `read_all`)."""

    def __init__(self, client: S3Client, clock: Any, segments: list[Segment]) -> None:
        self._client = client
        self._clock = clock
        self._segments = segments
        self.size = sum(segment.length for segment in segments)

    def write_to(self, consumer: IConsumer, first: int, last: int) -> Deferred[None]:
        pieces = slice_segments(self._segments, first, last)
        return SegmentProducer(self._client, self._clock, pieces, last - first + 1, consumer).start()

    def fileno(self) -> int | None:
        return None

    def read_all(self) -> Deferred[bytes]:
        async def collect() -> bytes:
            return b"".join([block async for block in read_blocks(self._client, self._segments)])

        return Deferred.fromCoroutine(collect())

    def close(self) -> None:
        pass


@implementer(IReadHandle)
class OpenedHandle:
    """A plain object whose GET has been answered (headers read, body not yet).

    Reading the whole object streams that answer; a range, or anything after the answer
    was used or dropped, is read with new ranged GETs pinned to the same ETag. Until then
    the answer's connection is paused, so nothing is buffered; `close` drops it.
    """

    def __init__(self, client: S3Client, clock: Any, segment: Segment, response: IResponse) -> None:
        self._client = client
        self._clock = clock
        self._segment = segment
        self._response: IResponse | None = response
        self.size = segment.length

    def _take(self) -> IResponse | None:
        response, self._response = self._response, None
        return response

    def write_to(self, consumer: IConsumer, first: int, last: int) -> Deferred[None]:
        response = self._take()
        if response is not None and (first, last) != (0, self.size - 1):
            discard(response)
            response = None
        pieces = slice_segments([self._segment], first, last)
        return SegmentProducer(self._client, self._clock, pieces, last - first + 1, consumer,
                               opened=response).start()

    def fileno(self) -> int | None:
        return None

    def read_all(self) -> Deferred[bytes]:
        response = self._take()
        if response is None:
            return SegmentHandle(self._client, self._clock, [self._segment]).read_all()

        def check(data: bytes) -> bytes:
            if len(data) != self.size:
                raise StorageError(f"{self._segment.full_key}: S3 sent {len(data)} bytes instead of {self.size}")
            return data

        reading: Deferred[bytes] = treq.content(response)
        reading.addTimeout(self._client.options.attempt_timeout, self._clock)
        return reading.addCallback(check)

    def close(self) -> None:
        response = self._take()
        if response is not None:
            discard(response)


def discard(response: IResponse) -> None:
    """Drop an answer whose body is not wanted (its connection is closed, not reused)."""
    response.deliverBody(_Discarding())


class _Body(Protocol):
    def __init__(self, producer: SegmentProducer) -> None:
        self._producer = producer

    def connectionMade(self) -> None:
        self._producer._attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._producer._received(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._producer._segment_ended(self, reason)


class SegmentProducer(StreamingProducer):
    """Streams ``pieces`` into ``consumer`` as `CHUNK_SIZE` writes; ``expected`` bytes in all.

    With ``opened``, the first piece's bytes come from that (unread) answer instead of a
    new GET; it must start at the piece's first byte.

    `start` returns a Deferred that fires when everything was written or the consumer
    stopped us, and fails with `OSError` when the object is shorter than ``expected``
    (after the bytes that exist were written), or `StorageError` when S3 fails.
    """

    def __init__(self, client: S3Client, clock: Any, pieces: list[Segment], expected: int,
                 consumer: IConsumer, opened: IResponse | None = None) -> None:
        self._client = client
        self._opened_response = opened  # an answer already holding the first piece's bytes
        self._clock = clock
        self._pieces = list(pieces)
        self._expected = expected
        self._delivered = 0
        super().__init__(consumer)
        self._buffer = _Pieces()
        self._current: Segment | None = None
        self._got = 0  # bytes of the current piece received
        self._attempts = 0
        self._body: _Body | None = None
        self._upstream: Any = None
        self._upstream_paused = False
        self._idle: IDelayedCall | None = None
        self._pumping = False
        self._eof = False

    def start(self) -> Deferred[None]:
        self._consumer.registerProducer(self, True)
        self._next_piece()
        return self.deferred

    # -- upstream -------------------------------------------------------------------------

    def _next_piece(self) -> None:
        if self._done:
            return
        if not self._pieces:
            self._eof = True
            self._pump()
            return
        self._current = self._pieces.pop(0)
        self._got = 0
        self._attempts = 0
        opened, self._opened_response = self._opened_response, None
        if opened is not None:
            self._attempts = 1
            self._opened(opened)
            return
        self._request()

    def _request(self) -> None:
        assert self._current is not None
        self._attempts += 1
        headers = range_headers(self._current, self._got)
        opening = Deferred.fromCoroutine(self._client.open("GET", self._current.full_key, headers))
        opening.addCallbacks(self._opened, self._fail)

    def _opened(self, response: IResponse | S3Response) -> None:
        if isinstance(response, S3Response):
            if response.status == 416:  # the object ends before the range starts
                self._eof = True
                self._pump()
                return
            if response.status == 404:
                self._fail(Failure(PathNotFound(self._current.full_key if self._current else "")))
                return
            self._fail(Failure(_read_error(self._client, response, self._current.full_key if self._current else "")))
            return
        if self._done:
            response.deliverBody(_Discarding())
            return
        body = _Body(self)
        self._body = body
        response.deliverBody(body)

    def _attach(self, transport: Any) -> None:
        self._upstream = transport
        self._upstream_paused = False
        self._balance()
        self._arm()

    def _received(self, data: bytes) -> None:
        if self._done or self._current is None:
            return
        wanted = self._current.length - self._got
        piece: bytes | memoryview = data if len(data) <= wanted else memoryview(data)[:wanted]
        self._got += len(piece)
        self._buffer.append(piece)
        self._arm()
        self._balance()
        self._pump()

    def _segment_ended(self, body: _Body, reason: Failure) -> None:
        if body is not self._body:
            return
        self._body = None
        self._upstream = None
        self._disarm()
        if self._done or self._current is None:
            return
        if self._got >= self._current.length:
            self._next_piece()
        elif reason.check(ResponseDone):  # a clean end, but short: the object is shorter
            self._eof = True
            self._pump()
        elif self._attempts < max(1, self._client.options.max_attempts):
            self._request()  # resume after the bytes we have
        else:
            self._fail(Failure(StorageError(f"S3 connection lost reading {self._current.full_key}: "
                                            f"{reason.getErrorMessage()}")))

    def _balance(self) -> None:
        """Pause the upstream while we hold too much, resume it when the consumer drained us."""
        if self._upstream is None:
            return
        if not self._upstream_paused and len(self._buffer) >= _HIGH_WATER:
            self._upstream_paused = True
            self._disarm()
            self._upstream.pauseProducing()
        elif self._upstream_paused and len(self._buffer) < _LOW_WATER:
            self._upstream_paused = False
            self._upstream.resumeProducing()
            self._arm()

    def _arm(self) -> None:
        if self._upstream is None or self._upstream_paused or self._done:
            return
        timeout = self._client.options.attempt_timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._clock.callLater(timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timed_out(self) -> None:
        if self._upstream is not None:
            self._upstream.stopProducing()  # connectionLost follows: resumed or failed there

    # -- downstream -----------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping or self._done:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done:
                if len(self._buffer) >= CHUNK_SIZE:
                    chunk = self._buffer.take(CHUNK_SIZE)
                elif self._eof and self._buffer:
                    chunk = self._buffer.take(len(self._buffer))
                else:
                    break
                self._delivered += len(chunk)
                self._consumer.write(chunk)
                self._balance()
            if self._eof and not self._buffer and not self._done:
                if self._delivered < self._expected:
                    self._finish(OSError("object shorter than its recorded size"))
                else:
                    self._finish(None)
        finally:
            self._pumping = False

    def _fail(self, failure: Failure) -> None:
        error = failure.value
        self._finish(error if isinstance(error, Exception) else StorageError(str(error)))

    def _close(self) -> None:
        """Drop the upstream connection and what is buffered from it."""
        self._disarm()
        if self._upstream is not None:
            self._upstream.stopProducing()
        self._buffer.clear()


class _Pieces:
    """Received bytes in arrival order, kept as received: `take` copies each byte once."""

    def __init__(self) -> None:
        self._pieces: deque[bytes | memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, piece: bytes | memoryview) -> None:
        if piece:
            self._pieces.append(piece)
            self._size += len(piece)

    def take(self, size: int) -> bytes:
        """The first ``size`` bytes (at most `len`), removed."""
        size = min(size, self._size)
        first = self._pieces[0]
        if len(first) == size and isinstance(first, bytes):
            self._pieces.popleft()
            self._size -= size
            return first
        taken: list[bytes | memoryview] = []
        needed = size
        while needed:
            head = self._pieces[0]
            if len(head) <= needed:
                taken.append(self._pieces.popleft())
                needed -= len(head)
            else:
                view = memoryview(head)
                taken.append(view[:needed])
                self._pieces[0] = view[needed:]
                needed = 0
        self._size -= size
        return b"".join(taken)

    def clear(self) -> None:
        self._pieces.clear()
        self._size = 0


class _Discarding(Protocol):
    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
