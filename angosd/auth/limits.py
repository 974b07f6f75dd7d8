"""Failed password checks, limited per source address and per username.

Each failure counts in a fixed window (``window_secs``) for its address and its username;
past the configured count, further password checks from that address or for that
username are refused with 429 and ``Retry-After`` (the window's end) without hashing
anything, so a flood of wrong passwords costs at most that many argon2 runs per window.
Memory is bounded: at most `MAX_KEYS` addresses and usernames are tracked, the oldest
windows forgotten first.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from angosd.config.model import LoginLimitsConfig
from angosd.oci.errors import TooManyRequests

MAX_KEYS = 65536


class _Windows:
    """Failure counts per key in fixed windows."""

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> int | None:
        """Seconds until ``key`` may try again, None when it may now."""
        if self.limit <= 0:
            return None
        entry = self._counts.get(key)
        if entry is None or entry[0] + self.window <= now or entry[1] < self.limit:
            return None
        return max(1, math.ceil(entry[0] + self.window - now))

    def add(self, key: str, now: float, delta: int) -> None:
        if self.limit <= 0:
            return
        start, count = self._counts.pop(key, (now, 0))
        if start + self.window <= now:
            start, count = now, 0
        self._counts[key] = (start, max(0, count + delta))
        while len(self._counts) > MAX_KEYS:
            self._counts.popitem(last=False)


class LoginLimiter:
    """``[auth.login_limits]`` on ``clock``."""

    def __init__(self, config: LoginLimitsConfig, clock: IReactorTime) -> None:
        self._clock = clock
        self._addresses = _Windows(config.failures_per_address, config.window_secs)
        self._usernames = _Windows(config.failures_per_username, config.window_secs)

    def begin(self, address: str | None, username: str) -> None:
        """Start a password check: raise `TooManyRequests` when ``address`` or ``username``
        has failed too often, else count the check as a failure until `succeeded` says
        otherwise (so a burst of concurrent checks cannot slip past the limit)."""
        now = self._clock.seconds()
        by_address = self._addresses.retry_after(address, now) if address is not None else None
        if by_address is not None:
            raise TooManyRequests("too many failed logins from this address", retry_after=by_address)
        by_username = self._usernames.retry_after(username, now)
        if by_username is not None:
            raise TooManyRequests("too many failed logins for this username", retry_after=by_username)
        self._add(address, username, 1)

    def succeeded(self, address: str | None, username: str) -> None:
        """The check `begin` counted was right after all: uncount it."""
        self._add(address, username, -1)

    def _add(self, address: str | None, username: str, delta: int) -> None:
        now = self._clock.seconds()
        if address is not None:
            self._addresses.add(address, now, delta)
        self._usernames.add(username, now, delta)
