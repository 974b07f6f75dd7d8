"""Refused TLS handshakes: one log line each (peer and reason), rate-limited, and counted.

A refused handshake (no client certificate where one is required, an unknown CA, an
expired certificate, a client speaking something else) is counted as a failed
``certificate`` authentication. At most `LINES_PER_WINDOW` lines are logged per
`WINDOW` seconds; the next line logged after a quiet spell says how many were left out.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

WINDOW = 60.0
LINES_PER_WINDOW = 10
_log = Logger()


def reason_text(error: BaseException) -> str:
    """A short reason from an OpenSSL error (its last reason string), else the error's text."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        last = args[0][-1]
        if isinstance(last, tuple) and last:
            return str(last[-1])[:200]
    return (str(error) or type(error).__name__)[:200]


class TlsRefusals:
    """Logs and counts refused handshakes; ``count`` is called once per refusal."""

    def __init__(self, clock: IReactorTime, count: Callable[[], None]) -> None:
        self._clock = clock
        self._count = count
        self._window_start = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def refused(self, peer: str, error: BaseException) -> None:
        self._count()
        now = self._clock.seconds()
        if now - self._window_start >= WINDOW:
            self._window_start, self._logged = now, 0
        if self._logged >= LINES_PER_WINDOW:
            self._suppressed += 1
            return
        self._logged += 1
        suppressed, self._suppressed = self._suppressed, 0
        more = f" ({suppressed} more refused handshakes not logged)" if suppressed else ""
        _log.warn("TLS handshake refused from {peer}: {reason}{more}", peer=peer, reason=reason_text(error),
                  more=more)
