"""Abandoned upload sessions purged by age, inside the daemon.

A session is abandoned when it was started at least ``max_age`` seconds ago *and* its size
did not change between two passes (so one still receiving chunks, however old, is left
alone). It is then removed under the session's lock (`UploadSessions.expire`): a request
writing to it at that moment, in this process or, through coordination, in another worker
or daemon on the same store, keeps it. A session whose state cannot be read goes the same
way once its id says it is old enough (and older than `SETTLE_SECS`: it may be one being
created).

Like garbage collection, purging runs once per store: in the single daemon, or in the
supervisor of worker processes (which shares the workers' upload locks), never in each
worker. Several daemons on one store may each purge: every step is atomic and idempotent.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from angosd.oci.errors import BlobUploadUnknown
from angosd.registry import paths
from angosd.registry.gc import namespaces
from angosd.registry.uploads import SETTLE_SECS, UploadSessions, session_created
from angosd.storage.interface import IStorageDriver

_log = Logger()

#: Sizes seen at the last pass, per (namespace, session); -1 for an unreadable session.
_Seen = dict[tuple[str, str], int]


def interval_for(max_age: int) -> float:
    """Seconds between two passes: a quarter of the age, 1 s to 1 h (like garbage collection's,
    a small age gives frequent passes). An idle session goes between one and two intervals
    after it reaches the age."""
    return float(min(max(max_age // 4, 1), 3600))


class UploadExpiry:
    """Purges abandoned sessions (see the module docstring); ``max_age()`` is asked at every
    pass (0 disables purging)."""

    def __init__(self, driver: IStorageDriver, sessions: UploadSessions, clock: IReactorTime,
                 max_age: Callable[[], int]) -> None:
        self._driver = driver
        self._sessions = sessions
        self._clock = clock
        self._max_age = max_age
        self._seen: _Seen = {}

    async def purge(self) -> int:
        """One pass; returns how many sessions it removed."""
        max_age = self._max_age()
        if max_age <= 0:
            self._seen = {}
            return 0
        now = self._clock.seconds()
        seen: _Seen = {}
        purged = 0
        for namespace in await namespaces(self._driver):
            for session in await self._driver.children(paths.uploads_dir(namespace)):
                key = (namespace, session)
                try:
                    info = await self._sessions.info(namespace, session)
                except BlobUploadUnknown:
                    created = session_created(session)
                    if created is None or now - created < max(max_age, SETTLE_SECS):
                        continue
                    if self._seen.get(key) == -1 and await self._sessions.expire(namespace, session, None):
                        purged += 1
                    else:
                        seen[key] = -1
                    continue
                if now - info.started_at < max_age:
                    continue
                if self._seen.get(key) == info.size and await self._sessions.expire(namespace, session, info.size):
                    purged += 1
                else:
                    seen[key] = info.size
        self._seen = seen
        return purged

    def purge_logged(self) -> Deferred[None]:
        """`purge`, logging what it removed or why it failed (never failing itself)."""
        def done(count: int) -> None:
            if count:
                _log.info("purged {count} abandoned upload sessions", count=count)

        def failed(failure: object) -> None:
            _log.warn("upload purge failed: {error}", error=getattr(failure, "getErrorMessage", lambda: failure)())

        return Deferred.fromCoroutine(self.purge()).addCallbacks(done, failed)


def expiry_service(driver: IStorageDriver, sessions: UploadSessions, clock: IReactorTime,
                   max_age: Callable[[], int]) -> TimerService:
    """The daemon's purger: a pass now and every `interval_for` the age (as configured at
    start) seconds."""
    expiry = UploadExpiry(driver, sessions, clock, max_age)
    service = TimerService(interval_for(max_age()), expiry.purge_logged)
    service.clock = clock
    return service
