"""Graceful shutdown: let requests in flight finish, for a bounded time.

`DrainService` is a `RequestObserver` of the site (it sees every request start and end)
and a service whose `stopService` returns a Deferred that fires when the requests in
flight are done, or when ``[global] shutdown_drain_secs`` have passed. The listening port
is closed by its own service at the same moment, so no new connection is accepted while
draining.

While draining:

- a request that finishes has its connection closed once the response is flushed (the
  Deferred waits for that, so the last bytes of a download are not lost);
- a new request on an already open (keep-alive) connection is served with
  ``Connection: close``;
- at the deadline every connection still busy is aborted. An upload cut off this way
  keeps what was written: its session reports its true size and can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from angosd.compat import clear_exit_signal

__all__ = ["POLL_INTERVAL", "DrainService", "exit_normally"]

_log = Logger()

#: Seconds between two looks at connections being closed while draining.
POLL_INTERVAL = 0.05
#: Seconds allowed, after the deadline, for aborted connections to be torn down.
ABORT_GRACE = 1.0


def _transport(channel: Any) -> Any:
    return getattr(channel, "transport", None)


def _last_on_its_connection(request: Any, channel: Any) -> None:
    """Answer ``request`` with ``Connection: close`` and close the connection after it,
    unless its response is already on its way (then `DrainService.finished` closes it)."""
    if not getattr(request, "startedWriting", True) and channel is not None:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        channel.persistent = False


def _open(channel: Any) -> bool:
    """Whether ``channel``'s connection is still up (TCP and TLS transports both say so)."""
    transport = _transport(channel)
    return transport is not None and bool(getattr(transport, "connected", False))


def exit_normally(reactor: object) -> None:
    """Let twistd exit with status 0 after this orderly shutdown.

    twistd re-raises the signal that stopped the reactor (its runner reads the reactor's
    ``_exitSignal``, see ``twisted.application.app._exitWithSignal``), so a drained daemon
    would report "killed by SIGTERM". A finished drain is a normal exit; reactors without
    the attribute (test clocks) are left alone.
    """
    clear_exit_signal(reactor)


class DrainService(Service):
    """Tracks requests in flight; on stop, waits for them up to ``drain_secs()`` seconds."""

    def __init__(self, drain_secs: Callable[[], float], clock: IReactorTime) -> None:
        self._drain_secs = drain_secs
        self._clock = clock
        self._inflight: dict[Any, Any] = {}  # request -> its channel
        self._closing: list[Any] = []  # channels whose connection is being closed after a response
        self._draining = False
        self._finished = False
        self._waiters: list[Deferred[None]] = []
        self._deadline: IDelayedCall | None = None
        self._poll: IDelayedCall | None = None
        self._aborted = False

    @property
    def draining(self) -> bool:
        """True from `stopService` on."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        return len(self._inflight)

    # ---------------------------------------------------------------- RequestObserver

    def started(self, request: Any) -> None:
        """Headers of a request are in: count it; while draining, make it its connection's last."""
        self._inflight[request] = request.channel
        if self.draining:
            _last_on_its_connection(request, request.channel)

    def finished(self, request: Any, failed: bool) -> None:
        """A response was sent, or the connection was lost."""
        channel = self._inflight.pop(request, None)
        if not self.draining:
            return
        if channel is not None and _open(channel):
            self._closing.append(channel)
            _transport(channel).loseConnection()  # sends what is buffered first
        self._check()

    # ---------------------------------------------------------------- Service

    def stopService(self) -> Deferred[None]:
        """Fires once nothing is in flight and closed connections are flushed, or at the deadline."""
        super().stopService()
        waiter: Deferred[None] = Deferred()
        if self._finished:
            waiter.callback(None)
            return waiter
        self._waiters.append(waiter)
        if self._draining:
            return waiter
        self._draining = True
        seconds = max(float(self._drain_secs()), 0.0)
        if self._inflight:
            _log.info("shutting down: waiting up to {seconds:g}s for {count} request(s) in flight",
                      seconds=seconds, count=len(self._inflight))
        for request, channel in self._inflight.items():
            _last_on_its_connection(request, channel)
        self._deadline = self._clock.callLater(seconds, self._expire)
        self._check()
        return waiter

    def _busy(self) -> bool:
        self._closing = [channel for channel in self._closing if _open(channel)]
        return bool(self._inflight or self._closing)

    def _tick(self) -> None:
        self._poll = None
        self._check()

    def _check(self) -> None:
        if not self._draining or self._finished:
            return
        if self._busy():
            if self._poll is None:
                self._poll = self._clock.callLater(POLL_INTERVAL, self._tick)
            return
        if not self._aborted:
            _log.info("shutting down: no request in flight")
        self._finish()

    def _expire(self) -> None:
        """The deadline: abort every connection still busy, then finish once they are down."""
        self._deadline = None
        channels = {id(channel): channel for channel in [*self._inflight.values(), *self._closing]}
        if channels:
            _log.warn("shutting down: drain deadline passed, closing {count} connection(s) still busy",
                      count=len(channels))
        self._aborted = True
        for channel in channels.values():
            transport = _transport(channel)
            if transport is not None:
                abort = getattr(transport, "abortConnection", None) or transport.loseConnection
                abort()
        self._inflight.clear()
        self._closing = list(channels.values())
        self._deadline = self._clock.callLater(ABORT_GRACE, self._finish)
        self._check()

    def _finish(self) -> None:
        exit_normally(self._clock)
        for call in (self._deadline, self._poll):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._poll = None
        if self._draining and not self._finished:
            self._finished = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
