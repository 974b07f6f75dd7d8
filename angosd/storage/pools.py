"""Named, bounded thread pools for blocking work, started and stopped as services.

The reactor thread never blocks: file I/O, fsync, hashing and password verification run
on a pool thread. Each kind of work has its own pool so one cannot starve another:
``io`` (storage: appends, fsync, whole-file hashing, S3 payload hashing; and large manifests'
parsing, short next to a password check) and ``cpu``
(argon2 password verification, slow by design). A pool runs at most ``max_threads`` jobs
at once and keeps at most ``max_queue`` more waiting; past that `BoundedPool.run` fails at
once with `TooManyRequests` (HTTP 429 with ``Retry-After``) instead of queueing without
limit. Pools are made once per process (`Pools`) and passed to the code that uses them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.python.threadpool import ThreadPool

from angosd.oci.errors import TooManyRequests

__all__ = ["BoundedPool", "PoolStopped", "Pools"]

T = TypeVar("T")


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


class PoolStopped(RuntimeError):
    """Work given to a pool that has been stopped (the process is shutting down)."""


class BoundedPool(Service):
    """A thread pool named ``name`` with at most ``max_threads`` threads and ``max_queue`` waiting jobs.

    Threads are created when work arrives (none while idle beyond ``min_threads``). Work
    given before the service starts waits for the start; after the service stopped it
    fails with `PoolStopped`. Stopping waits for the jobs running at that moment, as the
    reactor's own thread pool does at shutdown.
    """

    name: str  # type: ignore[assignment]  # the service name (Twisted declares it None): "io", "cpu"

    def __init__(self, name: str, reactor: Any, max_threads: int, max_queue: int, min_threads: int = 0,
                 retry_after: int = 1, threadpool: ThreadPool | None = None) -> None:
        """``threadpool`` replaces the pool's own threads (tests run jobs inline with it)."""
        if not 0 <= min_threads <= max_threads or max_threads < 1 or max_queue < 1:
            raise ValueError(f"{name}: bad thread pool bounds ({min_threads}..{max_threads}, queue {max_queue})")
        self.name = name
        self.max_threads = max_threads
        self.max_queue = max_queue
        self._reactor = reactor
        self._retry_after = retry_after
        if threadpool is None:
            threadpool = ThreadPool(min_threads, max_threads, f"angosd-{name}")
            # Daemon threads: a pool nobody stopped (a failed start, a test) cannot hang the exit;
            # an orderly stop still waits for the running jobs.
            threadpool.threadFactory = _DaemonThread
        self._pool = threadpool
        self._lock = threading.Lock()  # the counters change on the reactor thread and on pool threads
        self._pending = 0  # accepted and not finished: running or waiting
        self._active = 0
        self._stopped = False

    @property
    def queued(self) -> int:
        """Jobs accepted and waiting for a thread."""
        with self._lock:
            return self._pending - self._active

    @property
    def active(self) -> int:
        """Threads running a job right now."""
        return self._active

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """``function(*args)`` on a pool thread: a Deferred of its result (or its exception).

        Fails at once with `TooManyRequests` when ``max_threads + max_queue`` jobs are
        already accepted and not finished (every thread busy and ``max_queue`` waiting, or
        about to be), and with `PoolStopped` once the pool is stopped.
        """
        if self._stopped:
            return fail(PoolStopped(f"the {self.name} thread pool is stopped"))
        with self._lock:
            full = self._pending >= self.max_threads + self.max_queue
            if not full:
                self._pending += 1
        if full:
            return fail(TooManyRequests(f"the server is busy: {self.max_queue} {self.name} jobs are waiting",
                                        retry_after=self._retry_after))
        return threads.deferToThreadPool(self._reactor, self._pool, self._call, function, args)

    def _call(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            self._active += 1
        try:
            return function(*args)
        finally:
            with self._lock:
                self._active -= 1
                self._pending -= 1

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._stopped = True
        self._pool.stop()


@dataclass(frozen=True, slots=True)
class Pools:
    """The pools of one process: ``io`` for storage, ``cpu`` for password hashing."""

    io: BoundedPool
    cpu: BoundedPool

    @classmethod
    def create(cls, reactor: Any, io_threads: int, io_queue: int, cpu_threads: int, cpu_queue: int) -> Pools:
        """Both pools, not started."""
        return cls(io=BoundedPool("io", reactor, io_threads, io_queue),
                   cpu=BoundedPool("cpu", reactor, cpu_threads, cpu_queue))

    def __iter__(self) -> Iterator[BoundedPool]:
        return iter((self.io, self.cpu))

    def service(self) -> MultiService:
        """A service that starts and stops both pools."""
        parent = MultiService()
        for pool in self:
            pool.setServiceParent(parent)
        return parent

    def start_until_shutdown(self, reactor: Any) -> None:
        """Start both pools now and stop them when ``reactor`` shuts down (commands without services)."""
        for pool in self:
            pool.startService()
            reactor.addSystemEventTrigger("during", "shutdown", pool.stopService)
