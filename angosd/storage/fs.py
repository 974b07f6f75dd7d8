"""Filesystem driver: objects are files under one root directory.

Operations that only look or remove one object (stat, small reads, listings, deletes) run
inline: on a local disk they take microseconds, far less than a thread hand-off. A page of a
large directory (`children_after`) is the exception: it is served on the pool from a kept
sorted listing (`angosd.storage.listings`). Those that create or replace (writes, moves,
opening an upload, links), removing a tree, appends, whole-file hashing and fsync run on the
``io`` thread pool given to the driver (`angosd.storage.pools`): a new or removed directory
waits for the filesystem journal, and replacing a large file frees its pages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from angosd.oci.errors import TooManyRequests
from angosd.storage.errors import InvalidPath, OutOfSpace, PathNotFound, StorageError
from angosd.storage.handles import FileObjectHandle
from angosd.storage.interface import (
    COPIED,
    LINKED,
    IAppendWriter,
    IHashingAppendWriter,
    IReadHandle,
    IStorageDriver,
)
from angosd.storage.listings import SortedListings, page_of
from angosd.storage.pools import BoundedPool, PoolStopped
from angosd.storage.producers import PausingConsumer

T = TypeVar("T")
_TEMP_PREFIX = ".tmp-"


def _translate(exc: OSError, key: str) -> StorageError:
    if exc.errno == errno.ENOENT:
        return PathNotFound(key)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"no space left writing {key}")
    return StorageError(f"{exc.strerror or exc} ({key})")


def _inline(function: Callable[..., T], key: str, *args: Any) -> Deferred[T]:
    try:
        return succeed(function(*args))
    except OSError as exc:
        return fail(_translate(exc, key))
    except StorageError as exc:
        return fail(exc)


#: Entries of a directory listed on the reactor thread at most; a larger one is listed on the pool.
INLINE_ENTRIES = 256
#: Bytes an append writer may hold queued before it pauses its producer, and resumes below.
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024
#: Buffers one ``writev`` takes (Linux's IOV_MAX).
_IOV_MAX = 1024


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write ``chunks`` in order with as few ``writev`` calls as the kernel allows."""
    pending = [memoryview(chunk) for chunk in chunks if chunk]
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first:first + _IOV_MAX])
        while first < len(pending) and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = pending[first][written:]


@implementer(IHashingAppendWriter, IConsumer)
class _FileAppendWriter(PausingConsumer):
    """Appends (and hashes, see `hash_with`) on a pool thread, in order, while the
    reactor keeps receiving.

    At most one write job runs at a time; bytes arriving meanwhile are queued and go
    out together in one ``writev``. Past `HIGH_WATER` queued bytes the registered
    producer (the client's connection) is paused until the queue drains below
    `LOW_WATER`, so memory stays bounded. A write error is kept and raised by the next
    `write` and by `finish`.
    """

    def __init__(self, path: str, key: str, sync: bool, pool: BoundedPool) -> None:
        self._key = key
        self._sync = sync
        self._pool = pool
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by finish/abort
        self.offset = self._file.tell()
        self._queue: list[bytes] = []
        self._queued = 0
        self._running = False
        self._error: StorageError | TooManyRequests | None = None
        self._aborted = False
        self._drained: list[Deferred[None]] = []
        self._hasher: Any = None

    def hash_with(self, hasher: Any) -> None:
        self._hasher = hasher

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._aborted:
            raise StorageError(f"write after abort ({self._key})")
        self._queue.append(data)
        self._queued += len(data)
        self.offset += len(data)
        if not self._running:
            self._start()
        if self._queued > HIGH_WATER:
            self._pause()

    def _start(self) -> None:
        batch, self._queue = self._queue, []
        self._running = True
        done = self._pool.run(self._write_batch, batch)
        done.addCallbacks(self._written, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _write_batch(self, batch: list[bytes]) -> None:
        if self._hasher is not None:
            for chunk in batch:
                self._hasher.update(chunk)  # releases the GIL: the reactor keeps receiving
        try:
            _write_all(self._file.fileno(), batch)
        except OSError as exc:
            raise _translate(exc, self._key) from None

    def _written(self, _result: object, batch: list[bytes]) -> None:
        self._settle(batch)

    def _failed(self, failure: Any, batch: list[bytes]) -> None:
        error = failure.value
        kept = isinstance(error, StorageError | TooManyRequests)  # a full pool stays a 429
        self._error = error if kept else StorageError(f"{error} ({self._key})")
        self._queue = []
        self._settle(batch)

    def _settle(self, batch: list[bytes]) -> None:
        self._queued -= sum(len(chunk) for chunk in batch)
        self._running = False
        if self._queue and self._error is None:
            self._start()
            return
        if self._queued < LOW_WATER or self._error is not None:
            self._resume()
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(None)

    def _drain(self) -> Deferred[None]:
        if not self._running:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def finish(self) -> Deferred[None]:
        def close(_: object) -> Any:
            if self._error is not None:
                self._file.close()
                raise self._error
            if not self._sync:
                self._file.close()
                return None

            def sync_and_close() -> None:
                try:
                    os.fsync(self._file.fileno())
                finally:
                    self._file.close()

            def refused(failure: Any) -> Any:
                if failure.check(TooManyRequests, PoolStopped):  # sync_and_close never ran
                    self._file.close()
                return failure

            return self._pool.run(sync_and_close).addErrback(refused)

        return self._drain().addCallback(close)

    def abort(self) -> Deferred[None]:
        """Accept no more writes; finish writing what was queued, then close."""
        self._aborted = True
        self._resume()

        def close(_: object) -> None:
            self._file.close()

        return self._drain().addCallback(close)


@implementer(IStorageDriver)
class FilesystemDriver:
    """Objects as files below ``root``; atomic writes by temp file and rename.

    Blocking work runs on ``pool`` (the ``io`` pool).
    """

    def __init__(self, root: str, pool: BoundedPool, sync_to_disk: bool = False) -> None:
        self.root = os.path.abspath(root)
        self._pool = pool
        self._sync = sync_to_disk
        self._listings = SortedListings(lambda name: not name.startswith(_TEMP_PREFIX))
        os.makedirs(self.root, exist_ok=True)

    def local_path(self, key: str) -> str:
        """The file that holds ``key``; `InvalidPath` for a key outside the store."""
        return self._path(key)

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
            raise InvalidPath(key)
        return os.path.join(self.root, *parts)

    def _defer_to_thread(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._pool.run(function, *args)

    def read(self, key: str) -> Deferred[bytes]:
        def read() -> bytes:
            with open(self._path(key), "rb") as source:
                return source.read()

        return _inline(read, key)

    def _write_atomic(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as target:
                target.write(data)
                if self._sync:
                    target.flush()
                    os.fsync(target.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        if self._sync:
            _fsync_directory(directory)

    def write(self, key: str, data: bytes) -> Deferred[None]:
        # On the pool: creating a file waits for the filesystem journal, which under write-back
        # load takes milliseconds, and inline that would stall every other request.
        return self._defer_to_thread(self._write_atomic, self._path(key), data).addErrback(_translate_failure, key)

    def stat(self, key: str) -> Deferred[int | None]:
        def size() -> int | None:
            try:
                return os.stat(self._path(key)).st_size
            except (FileNotFoundError, NotADirectoryError):
                return None

        return _inline(size, key)

    def children(self, prefix: str) -> Deferred[list[str]]:
        def names() -> list[str]:
            try:
                entries = os.listdir(self._path(prefix))
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(e for e in entries if not e.startswith(_TEMP_PREFIX))

        return _inline(names, prefix)

    def children_after(self, prefix: str, after: str | None, limit: int) -> Deferred[list[str]]:
        # A directory of at most INLINE_ENTRIES entries is listed inline; a larger one on the
        # pool, from the kept sorted listing when it is unchanged.
        try:
            path = self._path(prefix)
            names: list[str] = []
            with os.scandir(path) as entries:
                for entry in entries:
                    if len(names) == INLINE_ENTRIES:
                        break
                    names.append(entry.name)
                else:
                    return succeed(page_of(sorted(n for n in names if not n.startswith(_TEMP_PREFIX)), after, limit))
        except (FileNotFoundError, NotADirectoryError):
            return succeed([])
        except OSError as exc:
            return fail(_translate(exc, prefix))
        except StorageError as exc:
            return fail(exc)
        return self._defer_to_thread(self._listings.page, path, after, limit).addErrback(_translate_failure, prefix)

    def walk(self, prefix: str) -> Deferred[list[str]]:
        def keys() -> list[str]:
            base = self._path(prefix)
            found = []
            for directory, _subdirs, files in os.walk(base):
                relative = os.path.relpath(directory, base)
                for name in files:
                    if not name.startswith(_TEMP_PREFIX):
                        found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
            return sorted(found)

        return _inline(keys, prefix)

    def delete(self, key: str) -> Deferred[None]:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))

        return _inline(remove, key)

    def delete_tree(self, prefix: str) -> Deferred[None]:
        # On the pool: a tree grows without bound, and each rmdir waits for the filesystem
        # journal (over 1 ms each under write load: 8 of a GC sweep's 14 s at 2,300 blobs).
        try:
            path = self._path(prefix)
        except StorageError as exc:
            return fail(exc)
        return self._defer_to_thread(shutil.rmtree, path, True).addErrback(_translate_failure, prefix)

    def move(self, source: str, destination: str) -> Deferred[None]:
        def rename() -> None:
            target = self._path(destination)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(self._path(source), target)
            if self._sync:
                _fsync_directory(os.path.dirname(target))

        # On a thread even unsynced: replacing a large file frees its pages, which takes long.
        return self._defer_to_thread(rename).addErrback(_translate_failure, source)

    def open_read(self, key: str) -> Deferred[IReadHandle]:
        def open_handle() -> IReadHandle:
            source = open(self._path(key), "rb")  # noqa: SIM115 - owned by the handle
            return FileObjectHandle(source, os.fstat(source.fileno()).st_size)

        return _inline(open_handle, key)

    def open_append(self, key: str) -> Deferred[IAppendWriter]:
        def open_writer() -> IAppendWriter:
            path = self._path(key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return _FileAppendWriter(path, key, self._sync, self._pool)

        return self._defer_to_thread(open_writer).addErrback(_translate_failure, key)  # may create directories

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        def digest() -> str:
            hasher = hashlib.new(algorithm)
            with open(self._path(key), "rb") as source:
                while chunk := source.read(1024 * 1024):
                    hasher.update(chunk)
            return hasher.hexdigest()

        return self._defer_to_thread(digest).addErrback(_translate_failure, key)

    def link_from(self, source: IStorageDriver, source_key: str, key: str) -> Deferred[str]:
        """A hard link when ``source`` is a filesystem store on the same filesystem; a copy
        of the file (synced when ``sync_to_disk``) when the filesystem differs or refuses
        links; a streamed copy from any other driver."""
        if not isinstance(source, FilesystemDriver):
            from angosd.storage.transfer import stream_copy

            return Deferred.fromCoroutine(stream_copy(source, source_key, self, key)).addCallback(lambda _: COPIED)
        try:
            origin, target = source.local_path(source_key), self._path(key)
        except StorageError as exc:
            return fail(exc)

        def link() -> str:
            directory = os.path.dirname(target)
            os.makedirs(directory, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(origin, target):
                    return LINKED
            temp = os.path.join(directory, f"{_TEMP_PREFIX}link-{uuid.uuid4().hex}")
            how = LINKED
            try:
                try:
                    os.link(origin, temp, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
                    how = COPIED
                    shutil.copyfile(origin, temp, follow_symlinks=False)
                    if self._sync:
                        with open(temp, "rb") as copied:
                            os.fsync(copied.fileno())
                os.replace(temp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)  # still there if it failed, or if ``target`` was already this file
            if self._sync:
                _fsync_directory(directory)
            return how

        return self._defer_to_thread(link).addErrback(_translate_failure, source_key)


#: Why ``link(2)`` may refuse where a copy works: another filesystem, a filesystem without
#: hard links, too many links, or protected_hardlinks for a file of another user.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def _translate_failure(failure: Any, key: str) -> Any:
    if failure.check(OSError):
        raise _translate(failure.value, key)
    return failure


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
