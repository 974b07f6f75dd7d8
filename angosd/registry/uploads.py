"""Upload sessions: start, append chunks, report the true offset, complete, cancel.

The bytes of a session live in one data file that chunks are appended to. Its size is
the session's offset, so whatever happens (disconnects, kill -9) the offset reported is
exactly what is stored. The digest is computed incrementally while chunks arrive.

The hash state travels with the session: after each chunk is stored, the state (see
`angosd.oci.hash_state`) is saved beside the data as ``hashstate``, so the next chunk or
the completion continues it in any worker, daemon or restarted process without reading
the bytes again. A saved state is used only if the number of bytes it covers equals the
data's size now: a crash between the append and the save, a failed write, an unreadable
or damaged state, or an algorithm without exportable state (no libcrypto) all make
completion rehash the data instead, so a lost hash state costs time, never correctness.
"""

from __future__ import annotations

import json
import os
import uuid as uuid_module
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from angosd.coordination.interface import Coordination, Lease
from angosd.oci.digest import ALGORITHMS, Digest, Hasher, new_hasher
from angosd.oci.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    OciError,
    RangeNotSatisfiable,
    SizeInvalid,
    TooLarge,
)
from angosd.oci.hash_state import ResumableHasher, new_resumable
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.interface import IAppendWriter, IHashingAppendWriter, IStorageDriver

#: Hash states kept in memory; beyond this the oldest sessions fall back to rehashing.
MAX_HASH_STATES = 4096
#: A session whose state cannot be read is left alone by cleanups (scrub, prune) until its
#: id says it is this old: it may be one that is being created at that very moment (its
#: directory appears before its ``info``, and ``info`` before its ``data``).
SETTLE_SECS = 600
_log = Logger()


def new_session_id(now: float) -> str:
    """A new session id: a UUIDv7 (RFC 9562), creation time in milliseconds then 74 random bits."""
    millis = int(now * 1000) & ((1 << 48) - 1)
    random_bits = int.from_bytes(os.urandom(10), "big")
    rand_a, rand_b = (random_bits >> 62) & 0xFFF, random_bits & ((1 << 62) - 1)
    return str(uuid_module.UUID(int=millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b))


def session_created(session: str) -> float | None:
    """When a session was created, from its id; None when the id carries no time (not a UUIDv7)."""
    try:
        value = uuid_module.UUID(session)
    except ValueError:
        return None
    if value.variant != uuid_module.RFC_4122 or value.version != 7:
        return None
    return (value.int >> 80) / 1000


def may_be_in_creation(session: str, now: float) -> bool:
    """Whether a session whose state cannot be read may be being created right now (its id
    says it is younger than `SETTLE_SECS`): cleanups must leave it alone for now."""
    created = session_created(session)
    return created is not None and now - created < SETTLE_SECS


class UploadOffsetMismatch(RangeNotSatisfiable):
    """A chunk that does not start at the session's current size (416)."""

    def __init__(self, namespace: str, session: str, size: int, detail: str) -> None:
        super().__init__(detail)
        self.namespace = namespace
        self.session = session
        self.size = size


class UploadDigestMismatch(DigestInvalid):  # type: ignore[misc,valid-type]
    """The session's bytes do not hash to the digest given (400); the session is kept as it
    is, so the client can look up its range and resume or retry."""

    def __init__(self, namespace: str, session: str, size: int, detail: str) -> None:
        super().__init__(detail)
        self.namespace = namespace
        self.session = session
        self.size = size


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """An upload session as stored."""

    namespace: str
    session: str
    started_at: int
    algorithm: str | None
    size: int


@dataclass(slots=True)
class _HashState:
    algorithm: str
    hasher: Hasher
    offset: int


def _fresh_state(algorithm: str) -> _HashState:
    return _HashState(algorithm, new_resumable(algorithm) or new_hasher(algorithm), 0)


#: How a completion got its digest: from the hash state (``resumed``) or by reading the
#: bytes again (``rehashed``); the label values of ``angosd_upload_digests_total``.
DIGEST_SOURCES = ("resumed", "rehashed")


def parse_session_id(text: str) -> str:
    """The canonical form of a session id; raises `BlobUploadUnknown` if it is not a UUID."""
    try:
        value = uuid_module.UUID(text)
    except ValueError:
        raise BlobUploadUnknown(text[:100]) from None
    if str(value) != text:
        raise BlobUploadUnknown(text[:100])
    return text


class UploadSink:
    """Receives a chunk's bytes; appends them to the session and hashes them.

    Exactly one sink per session exists at a time. `finish` or `abort` releases it.
    """

    def __init__(self, sessions: UploadSessions, namespace: str, session: str, writer: IAppendWriter,
                 state: _HashState | None, limit: int, save_state: bool = True) -> None:
        self._sessions = sessions
        self._save_state = save_state
        self.namespace = namespace
        self.session = session
        self._writer = writer
        self._state = state
        self._limit = limit
        self._closed = False
        #: Whether `write` hashes here or the writer hashes as it stores.
        self._hash_here = state is not None and not IHashingAppendWriter.providedBy(writer)
        if state is not None and not self._hash_here:
            writer.hash_with(state.hasher)  # type: ignore[attr-defined]

    @property
    def offset(self) -> int:
        return int(self._writer.offset)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Let the writer pause ``producer`` (the client's connection) while it catches up."""
        register = getattr(self._writer, "registerProducer", None)
        if register is not None:
            register(producer, streaming)

    def unregisterProducer(self) -> None:
        unregister = getattr(self._writer, "unregisterProducer", None)
        if unregister is not None:
            unregister()

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self._limit:
            raise TooLarge(f"blob exceeds the limit of {self._limit} bytes")
        try:
            self._writer.write(data)
        except Exception:
            self._drop_state()
            raise
        if self._state is not None:
            if self._hash_here:
                self._state.hasher.update(data)
            self._state.offset += len(data)

    async def finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            try:
                await self._writer.finish()
            except BaseException:
                self._drop_state()
                raise
            if self._save_state and self._state is not None and self._state.offset == self.offset:
                await self._sessions._save_state(self.namespace, self.session, self._state)
        finally:
            self._sessions._release(self.session)

    def abort(self) -> None:
        """Stop writing; the session is released once what was written is stored. The hash
        state is dropped: it may cover bytes that were not stored, and other bytes may later
        reach the same size (completion then rehashes)."""
        if not self._closed:
            self._closed = True
            self._drop_state()
            self._writer.abort().addBoth(lambda _: self._sessions._release(self.session))

    def _drop_state(self) -> None:
        self._state = None
        self._sessions._forget(self.session)


#: The largest chunk accepted with ``Content-Range`` but no ``Content-Length``: such a chunk
#: is held in memory until it is whole (see `RangeSink`).
MAX_UNSIZED_RANGE = 64 * 1024 * 1024


class RangeSink:
    """A chunk of announced length (``Content-Range``) whose body length is not known in
    advance: held in memory, refused (`SizeInvalid`, 400) as soon as it exceeds the
    announced length or when it ends short, and appended to the session only when whole.
    A refused chunk writes nothing."""

    def __init__(self, sessions: UploadSessions, namespace: str, session: str, first: int, length: int) -> None:
        self._sessions = sessions
        self.namespace = namespace
        self.session = session
        self._first = first
        self._length = length
        self._chunks: list[bytes] = []
        self._received = 0
        self.offset = first

    def _mismatch(self, received: int) -> OciError:
        return SizeInvalid(f"Content-Range announces {self._length} bytes, the body has {received}")

    def write(self, data: bytes) -> None:
        if self._received + len(data) > self._length:
            raise self._mismatch(self._received + len(data))
        self._chunks.append(data)
        self._received += len(data)

    async def finish(self) -> None:
        if self._received != self._length:
            raise self._mismatch(self._received)
        sink = await self._sessions.open_sink(self.namespace, self.session, self._first)
        try:
            for chunk in self._chunks:
                sink.write(chunk)
        except BaseException:
            sink.abort()
            raise
        self._chunks = []
        await sink.finish()
        self.offset = sink.offset

    def abort(self) -> None:
        self._chunks = []


class UploadSessions:
    def __init__(self, driver: IStorageDriver, blobs: BlobStore, clock: IReactorTime, max_blob_size: int) -> None:
        self._driver = driver
        self._blobs = blobs
        self._clock = clock
        self.max_blob_size = max_blob_size
        self._states: OrderedDict[str, _HashState] = OrderedDict()
        self._busy: set[str] = set()
        #: Shared with other daemons on the same store (Redis); None: this process only.
        self.coordination: Coordination | None = None
        self._leases: dict[str, Lease] = {}
        #: Told how each completion got its digest (one of `DIGEST_SOURCES`); for metrics.
        self.on_digest: Callable[[str], None] | None = None

    @property
    def writing(self) -> int:
        """Sessions with a chunk being written right now (a sink open and not yet released)."""
        return len(self._busy)

    async def start(self, namespace: str, algorithm: str | None = None) -> str:
        """Create an empty session and return its id."""
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:40]!r}")
        session = new_session_id(self._clock.seconds())
        info = {"started_at": int(self._clock.seconds()), "algorithm": algorithm}
        await self._driver.write(paths.upload_info(namespace, session), json.dumps(info).encode())
        await self._driver.write(paths.upload_data(namespace, session), b"")
        self._remember(session, _fresh_state(algorithm or "sha256"))
        return session

    async def info(self, namespace: str, session: str) -> UploadInfo:
        """The stored session; raises `BlobUploadUnknown` if there is none."""
        try:
            record = json.loads(await self._driver.read(paths.upload_info(namespace, session)))
        except (PathNotFound, ValueError):
            raise BlobUploadUnknown(session) from None
        size = await self._driver.stat(paths.upload_data(namespace, session))
        if size is None:
            raise BlobUploadUnknown(session)
        return UploadInfo(namespace, session, int(record.get("started_at", 0)), record.get("algorithm"), size)

    async def list(self, namespace: str) -> list[UploadInfo]:
        """Every session of ``namespace`` that is still readable."""
        found = []
        for session in await self._driver.children(paths.uploads_dir(namespace)):
            try:
                found.append(await self.info(namespace, session))
            except BlobUploadUnknown:
                continue
        return found

    async def open_sink(self, namespace: str, session: str, first: int | None,
                        save_state: bool = True) -> UploadSink:
        """Open the session for one chunk that starts at ``first`` (None: at the end).

        ``save_state=False``: the hash state is not saved after the chunk, for a session
        that this process completes or discards right after it (a monolithic upload).

        Raises `UploadOffsetMismatch` when ``first`` is not the current size or another
        request is writing to the session.
        """
        info = await self.info(namespace, session)
        if session in self._busy:
            raise UploadOffsetMismatch(namespace, session, info.size, "another request is writing to this upload")
        if first is not None and first != info.size:
            raise UploadOffsetMismatch(namespace, session, info.size,
                                       f"chunk starts at {first}, upload has {info.size} bytes")
        await self._lock(namespace, session, info.size)
        try:
            writer = await self._driver.open_append(paths.upload_data(namespace, session))
        except BaseException:
            self._release(session)
            raise
        if first is not None and first != writer.offset:  # another daemon appended meanwhile
            await writer.abort()
            self._release(session)
            raise UploadOffsetMismatch(namespace, session, writer.offset,
                                       f"chunk starts at {first}, upload has {writer.offset} bytes")
        try:
            state = await self._state(namespace, session, info.algorithm or "sha256", writer.offset)
        except BaseException:
            await writer.abort()
            self._release(session)
            raise
        return UploadSink(self, namespace, session, writer, state, self.max_blob_size, save_state)

    async def complete(self, namespace: str, session: str, digest: Digest) -> int:
        """Verify the session's bytes against ``digest`` and commit them as a blob.

        Returns the blob size. On a mismatch `UploadDigestMismatch` is raised and the session
        is kept as it is (the client may resume it); nothing becomes visible. The commit is
        a rename, so the blob appears whole.
        """
        info = await self.info(namespace, session)
        await self._lock(namespace, session, info.size)
        try:
            return await self._complete(namespace, session, digest)
        finally:
            self._release(session)

    async def _complete(self, namespace: str, session: str, digest: Digest) -> int:
        info = await self.info(namespace, session)  # again: another daemon may have appended before we locked
        if info.algorithm is not None and info.algorithm != digest.algorithm:
            raise UploadDigestMismatch(namespace, session, info.size,
                                       f"upload was started for {info.algorithm}, not {digest.algorithm}")
        state = await self._state(namespace, session, digest.algorithm, info.size)
        if state is not None:
            actual = state.hasher.hexdigest()
        else:
            actual = await self._driver.hash_object(paths.upload_data(namespace, session), digest.algorithm)
        if self.on_digest is not None:
            self.on_digest(DIGEST_SOURCES[state is None])
        if actual != digest.hex:
            raise UploadDigestMismatch(namespace, session, info.size,
                                       f"content hashes to {digest.algorithm}:{actual}, not {digest}")
        # Ownership first (it touches: a collection deciding now keeps the bytes), then the
        # bytes, then the session goes. A crash after any step is recoverable: before the
        # rename the session still holds every byte (the client resumes or repeats the PUT;
        # a marker without bytes reads as not owned), after it the blob is owned and visible.
        await self._blobs.claim(namespace, digest)
        await self._driver.move(paths.upload_data(namespace, session), paths.blob_data(digest))
        await self._blobs.confirm(namespace, digest)
        await self.cancel(namespace, session)
        return info.size

    async def expire(self, namespace: str, session: str, size: int | None) -> bool:
        """Remove an abandoned session, unless a request (of any process sharing the
        coordination) is writing to it now or its size is no longer ``size`` (None: a session
        whose state cannot be read, which must still be unreadable). True when removed."""
        try:
            await self._lock(namespace, session, size or 0)
        except UploadOffsetMismatch:
            return False
        try:
            try:
                current: int | None = (await self.info(namespace, session)).size
            except BlobUploadUnknown:
                current = None
            if current != size:
                return False
            await self.cancel(namespace, session)
            return True
        finally:
            self._release(session)

    async def cancel(self, namespace: str, session: str) -> None:
        """Remove the session and its bytes."""
        self._forget(session)
        await self._driver.delete_tree(paths.upload_dir(namespace, session))

    def _remember(self, session: str, state: _HashState) -> None:
        self._states[session] = state
        while len(self._states) > MAX_HASH_STATES:
            self._states.popitem(last=False)

    def _forget(self, session: str) -> None:
        self._states.pop(session, None)

    async def _state(self, namespace: str, session: str, algorithm: str, size: int) -> _HashState | None:
        """The hash state of ``session`` covering exactly its ``size`` stored bytes, from
        memory or from the saved state; None (rehash at completion) when there is none."""
        state = self._states.get(session)
        if state is not None and state.offset == size:
            if state.algorithm == algorithm:
                return state
            return _fresh_state(algorithm) if size == 0 else None  # keep it for its own algorithm
        self._forget(session)
        if size == 0:
            state = _fresh_state(algorithm)
        else:
            try:
                saved = await self._driver.read(paths.upload_hash_state(namespace, session))
            except (PathNotFound, StorageError):  # unreadable: only costs a rehash
                return None
            hasher = ResumableHasher.restore(saved, algorithm)
            if hasher is None or hasher.offset != size:
                return None
            state = _HashState(algorithm, hasher, size)
        self._remember(session, state)
        return state

    async def _save_state(self, namespace: str, session: str, state: _HashState) -> None:
        """Save ``state`` beside the session's data, which it must cover exactly (the
        caller has just stored it). A failure is logged: it only costs a rehash later."""
        if not isinstance(state.hasher, ResumableHasher):
            return
        try:
            await self._driver.write(paths.upload_hash_state(namespace, session), state.hasher.export())
        except StorageError as exc:
            _log.warn("could not save the hash state of upload {session}: {error}", session=session, error=exc)

    async def _lock(self, namespace: str, session: str, size: int) -> None:
        """Mark ``session`` busy here and, with coordination, for every daemon.

        Raises `UploadOffsetMismatch` when a request (of any daemon) is already writing
        to it, `CoordinationError` when the shared state cannot be reached.
        """
        if session in self._busy:
            raise UploadOffsetMismatch(namespace, session, size, "another request is writing to this upload")
        self._busy.add(session)
        if self.coordination is None:
            return
        try:
            lease = await self.coordination.acquire(f"upload:{session}")
        except BaseException:
            self._busy.discard(session)
            raise
        if lease is None:
            self._busy.discard(session)
            raise UploadOffsetMismatch(namespace, session, size, "another request is writing to this upload")
        self._leases[session] = lease

    def _release(self, session: str) -> None:
        self._busy.discard(session)
        lease = self._leases.pop(session, None)
        if lease is not None and self.coordination is not None:
            Deferred.fromCoroutine(self.coordination.release(lease)).addErrback(
                lambda failure: _log.warn("could not release {name}: {error}", name=lease.name,
                                          error=failure.getErrorMessage()))
