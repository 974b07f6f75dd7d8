"""How late the reactor runs its timers: a probe due every `INTERVAL` seconds records the
delay past its due time into ``angosd_reactor_lag_seconds``. A long lag means requests wait
for the event loop (work on the reactor thread, or too few cores)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall

__all__ = ["INTERVAL", "ReactorLag"]

#: Seconds between two probes: short enough to see stalls well under a second (a probe
#: costs a timer and a histogram update).
INTERVAL = 0.1


class ReactorLag(Service):
    """Records each probe's lateness with ``observe`` (seconds) while running."""

    def __init__(self, reactor: Any, observe: Callable[[float], None], interval: float = INTERVAL) -> None:
        self._reactor = reactor
        self._observe = observe
        self._interval = interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def _schedule(self) -> None:
        self._due = self._reactor.seconds() + self._interval
        self._call = self._reactor.callLater(self._interval, self._probe)

    def _probe(self) -> None:
        self._observe(max(0.0, self._reactor.seconds() - self._due))
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
