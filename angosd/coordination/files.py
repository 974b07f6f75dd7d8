"""Coordination between processes on one host: ``flock(2)`` locks and a small file cache.

`FileCoordination` provides the `angosd.coordination.Coordination` protocol with files in
one directory. The daemon uses it between its worker processes when no ``[cache.redis]``
is configured: on a filesystem store the directory is ``_coordination/`` under the store
root (so any process on this host serving the same store takes part), on S3 it is the
daemon's run directory.

A lock ``name`` is an exclusive, non-blocking ``flock`` on ``locks/<quoted name>.lock``.
The kernel releases it when its holder's descriptor closes, so a process killed with
``kill -9`` never leaves a lock behind (no expiry is needed, and a lease is never lost).
The holder removes the file before it unlocks; whoever locks a file checks, after locking,
that it is still the one at that path (and else tries again with the new one), so two
processes can never both hold a name through two different files.

Cache entries are files ``cache/<quoted key>`` holding their expiry time and the value,
replaced atomically (rename).

All of this is a few system calls on a local disk, done inline (microseconds).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime

from angosd.coordination.interface import CoordinationError, Lease
from angosd.storage.errors import OutOfSpace, StorageError

__all__ = ["FileCoordination"]

#: Lock files found replaced in a row before `FileCoordination.acquire` calls the name busy.
_ATTEMPTS = 8
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _storage_error(exc: OSError, what: str) -> StorageError:
    """The error to raise for a failed file operation on coordination files."""
    problem = f"{what}: {exc.strerror or exc}"
    return OutOfSpace(problem) if exc.errno in _FULL else CoordinationError(problem)


class FileCoordination:
    """Locks and cache entries in files under ``directory`` (created when first needed),
    cache entries expiring by ``clock``."""

    def __init__(self, directory: str, clock: IReactorTime) -> None:
        self.directory = directory
        self._locks = os.path.join(directory, "locks")
        self._cache = os.path.join(directory, "cache")
        self._clock = clock
        self._held: dict[str, tuple[int, str]] = {}  # lease token -> (descriptor, path)

    @property
    def held(self) -> int:
        """Locks this object holds right now."""
        return len(self._held)

    # ------------------------------------------------------------------ locks

    def _lock_path(self, name: str) -> str:
        return os.path.join(self._locks, quote(name, safe="") + ".lock")

    def _open(self, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            try:
                os.makedirs(self._locks, exist_ok=True)
                return os.open(path, flags, 0o600)
            except OSError as exc:
                raise _storage_error(exc, f"cannot create lock file {path}") from None
        except OSError as exc:
            raise _storage_error(exc, f"cannot create lock file {path}") from None

    @staticmethod
    def _still_at(fd: int, path: str) -> bool:
        """Whether the file locked through ``fd`` is still the one at ``path``."""
        try:
            here, there = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    async def acquire(self, name: str) -> Lease | None:
        """The lock ``name`` if no process holds it, else None (never waits).

        Raises `CoordinationError` (or `OutOfSpace`) when the lock file cannot be created.
        """
        path = self._lock_path(name)
        for _ in range(_ATTEMPTS):
            fd = self._open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                raise _storage_error(exc, f"cannot lock {path}") from None
            if self._still_at(fd, path):
                lease = Lease(name, secrets.token_hex(16))
                self._held[lease.token] = (fd, path)
                return lease
            os.close(fd)  # its holder released and removed it meanwhile: try the file at the path now
        return None

    async def release(self, lease: Lease) -> None:
        """Remove the lock file and unlock (a no-op for a lease not held here)."""
        held = self._held.pop(lease.token, None)
        if held is None:
            return
        fd, path = held
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # ours: only a holder removes its file
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ cache

    def _entry_path(self, key: str) -> str:
        return os.path.join(self._cache, quote(key, safe=""))

    async def get(self, key: str) -> bytes | None:
        """The value cached under ``key``, None when absent, expired or unreadable."""
        path = self._entry_path(key)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            return None
        expiry, _, value = data.partition(b"\n")
        try:
            expired = float(expiry) <= self._clock.seconds()
        except ValueError:
            expired = True
        if expired:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds (replacing it atomically)."""
        path = self._entry_path(key)
        temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        content = repr(self._clock.seconds() + ttl).encode() + b"\n" + value
        try:
            os.makedirs(self._cache, exist_ok=True)
            with open(temporary, "wb") as file:
                file.write(content)
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise _storage_error(exc, f"cannot write cache entry {path}") from None
