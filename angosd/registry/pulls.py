"""When each manifest revision was last pulled, without slowing pulls down.

A pull only updates a dictionary (`PullTimes.record`); `PullTimes.flush` writes the
latest time of every revision pulled since the previous flush as one small object::

    repositories/<ns>/_manifests/pulls/<alg>/<hex>     {"last_pulled_at": <epoch seconds>}

`PullTimeFlusher` runs the flush every few seconds and once more when the daemon
stops. Readers (`last_pulled`) merge the stored value with what is still in memory, so
a pull is visible at once and a time never goes backwards. Several processes (the workers
of one daemon, daemons sharing a store) each record and flush their own pulls; a flush
never replaces a stored time with an earlier one (it reads the record first), so only two
flushes of one revision at the very same moment can leave the earlier of the two times. A write that fails keeps its
time in memory for the next flush. Records of deleted revisions are left behind; they
are tiny and only read for revisions that exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from angosd.oci.digest import Digest
from angosd.registry import paths
from angosd.storage.errors import PathNotFound
from angosd.storage.interface import IStorageDriver

#: Seconds between two flushes of the recorded pull times.
FLUSH_INTERVAL = 3.0
#: Pending entries past which a flush starts at once instead of waiting for the timer.
MAX_PENDING = 50_000

_log = Logger()
_Key = tuple[str, Digest]


def pulls_dir(namespace: str) -> str:
    """The directory of ``namespace``'s pull records."""
    return f"{paths.namespace_dir(namespace)}/_manifests/pulls"


def pull_record(namespace: str, digest: Digest) -> str:
    """The key of the pull record of one revision (beside ``revisions/`` and ``tags/``)."""
    return f"{pulls_dir(namespace)}/{digest.algorithm}/{digest.hex}"


class PullTimes:
    """Records pulls in memory and writes them to storage in batches.

    ``enabled`` is asked on every pull (``[global] update_pull_time``, which may be
    reloaded); when it says no, `record` does nothing.
    """

    def __init__(self, driver: IStorageDriver, clock: IReactorTime,
                 enabled: Callable[[], bool] = lambda: False, max_pending: int = MAX_PENDING) -> None:
        self._driver = driver
        self._clock = clock
        self._enabled = enabled
        self._max_pending = max_pending
        self._pending: dict[_Key, int] = {}
        self._writing: dict[_Key, int] = {}
        self._lock = DeferredLock()

    def record(self, namespace: str, digest: Digest) -> None:
        """Note that ``digest`` of ``namespace`` was pulled now. Never blocks, never raises."""
        if not self._enabled():
            return
        key = (namespace, digest)
        now = int(self._clock.seconds())
        if self._pending.get(key, -1) < now:
            self._pending[key] = now
        if len(self._pending) >= self._max_pending and not self._lock.locked:
            self.flush_logged()

    def _in_memory(self, key: _Key) -> int | None:
        times = [t for t in (self._pending.get(key), self._writing.get(key)) if t is not None]
        return max(times) if times else None

    async def _stored(self, namespace: str, digest: Digest) -> int | None:
        """The stored pull time of a revision, None when there is none (or it is unreadable)."""
        try:
            record = json.loads(await self._driver.read(pull_record(namespace, digest)))
        except (PathNotFound, ValueError, UnicodeDecodeError):
            return None
        value = record.get("last_pulled_at") if isinstance(record, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    async def last_pulled(self, namespace: str, digest: Digest) -> int | None:
        """The latest pull time of a revision (stored or not yet flushed), None if never pulled."""
        memory = self._in_memory((namespace, digest))
        stored = await self._stored(namespace, digest)
        if memory is None or stored is None:
            return memory if stored is None else stored
        return max(memory, stored)

    async def last_pulled_many(self, namespace: str, digests: Iterable[Digest]) -> dict[Digest, int | None]:
        """`last_pulled` for several revisions of one namespace."""
        return {digest: await self.last_pulled(namespace, digest) for digest in digests}

    @property
    def pending(self) -> int:
        """How many revisions have a pull time not yet written."""
        return len(self._pending)

    async def flush(self) -> int:
        """Write every pending pull time; returns how many were written.

        Flushes run one at a time; a failed write logs and keeps its time pending.
        """
        async with self._lock:
            batch, self._pending = self._pending, {}
            self._writing = batch
            written, failed, first_error = 0, 0, ""
            try:
                for (namespace, digest), at in batch.items():
                    try:
                        stored = await self._stored(namespace, digest)
                        if stored is not None and stored >= at:  # another process (worker, daemon) flushed later
                            written += 1
                            continue
                        await self._driver.write(pull_record(namespace, digest),
                                                 json.dumps({"last_pulled_at": at}).encode())
                    except Exception as error:
                        failed, first_error = failed + 1, first_error or f"{type(error).__name__}: {error}"
                        key = (namespace, digest)
                        self._pending[key] = max(at, self._pending.get(key, at))
                    else:
                        written += 1
            finally:
                self._writing = {}
            if failed:  # one line per flush, not one per revision: a full disk must not flood the log
                _log.error("could not record {failed} pull times, kept for the next flush: {error}",
                           failed=failed, error=first_error[:300])
            return written

    def flush_logged(self) -> Deferred[None]:
        """Start a flush whose failure is logged, never raised (timers stop on errors)."""
        def failed(failure: Failure) -> None:
            _log.failure("flushing pull times failed", failure)

        return ensureDeferred(self.flush()).addCallbacks(lambda _: None, failed)


class PullTimeFlusher(TimerService):
    """Flushes ``pulls`` every ``interval`` seconds, and a last time when it stops."""

    def __init__(self, pulls: PullTimes, clock: IReactorTime, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(interval, pulls.flush_logged)
        self.clock = clock
        self._pulls = pulls

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = maybeDeferred(super().stopService)
        return stopped.addCallback(lambda _: self._pulls.flush_logged())
