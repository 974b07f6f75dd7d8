"""State that several processes on one store must share: expiring locks and a small TTL cache.

`Coordination` is what callers use; `MemoryCoordination` keeps the state in this process, which is
all a single daemon needs; `angosd.coordination.redis` and `angosd.coordination.files` share it
between daemons and between the workers of one daemon.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from angosd.storage.errors import StorageError

_log = Logger()

class CoordinationError(StorageError):
    """The shared state (Redis) cannot be reached or refused a command."""


@dataclass(eq=False)
class Lease:
    """A held lock: ``name`` owned through ``token``. ``lost`` turns true if it expired while held."""

    name: str
    token: str
    lost: bool = False
    renewal: LoopingCall | None = field(default=None, repr=False)


class Coordination(Protocol):
    """What callers use; both implementations provide it."""

    async def acquire(self, name: str) -> Lease | None:
        """The lock ``name`` if nobody holds it (None otherwise); raises `CoordinationError`."""

    async def release(self, lease: Lease) -> None:
        """Give the lock back (a no-op if it expired and someone else holds it now)."""

    async def get(self, key: str) -> bytes | None:
        """A cached value, None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds."""


class MemoryCoordination:
    """Locks and cache entries in this process (one daemon), expiring by ``clock``."""

    def __init__(self, clock: IReactorTime, lock_ttl: float = 15.0) -> None:
        self._clock = clock
        self._lock_ttl = lock_ttl
        self._locks: dict[str, str] = {}
        self._cache: dict[str, tuple[bytes, float]] = {}

    async def acquire(self, name: str) -> Lease | None:
        if name in self._locks:
            return None  # a process never dies while holding its own locks
        lease = Lease(name, secrets.token_hex(16))
        self._locks[name] = lease.token
        return lease

    async def release(self, lease: Lease) -> None:
        if self._locks.get(lease.name) == lease.token:
            del self._locks[lease.name]

    async def get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None or entry[1] <= self._clock.seconds():
            self._cache.pop(key, None)
            return None
        return entry[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock.seconds()
        self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        self._cache[key] = (value, now + ttl)
