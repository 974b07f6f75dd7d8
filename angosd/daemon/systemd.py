"""systemd integration: readiness and watchdog notifications, reload on SIGHUP, socket activation.

Everything here is a no-op outside systemd: without ``NOTIFY_SOCKET`` no message is sent,
without ``WATCHDOG_USEC`` no watchdog runs, and socket activation is only used when asked
for (``[server] listen = "systemd"`` or a ``systemd:`` endpoint on ``--listen``).

The notification protocol is sd_notify(3): one ``AF_UNIX``/``SOCK_DGRAM`` datagram of
newline-separated ``KEY=VALUE`` lines per message, sent to the path in ``NOTIFY_SOCKET``
(a leading ``@`` means Linux's abstract namespace). Socket activation is sd_listen_fds(3):
``LISTEN_FDS`` descriptors starting at 3, valid when ``LISTEN_PID`` is this process; Twisted
also requires ``LISTEN_FDNAMES`` (systemd 227 and later always set it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from angosd.compat import systemd_inherited_descriptors

__all__ = [
    "STORAGE_RETRY",
    "ListenError",
    "Notifier",
    "ObservedEndpoint",
    "SystemdService",
    "activated_endpoint",
    "activated_fds",
    "listen_endpoint",
    "watchdog_interval",
]

_log = Logger()

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
#: Seconds between two storage checks while the storage does not answer at start.
STORAGE_RETRY = 1.0
#: What ``[server] listen`` (or ``--listen``) says to take the socket from systemd.
SYSTEMD_LISTEN = "systemd"

_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_InstallSignal = Callable[[int, Any], _SignalHandler]


class ListenError(Exception):
    """The listening endpoint cannot be built; the message is one line saying why."""


# --------------------------------------------------------------------------- sd_notify


def _notify_address(value: str) -> str | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, None when it is not usable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify(3) messages to the service manager.

    `notify` never raises and never blocks: a message that cannot be sent (no manager
    listening, queue full) is dropped and logged once per distinct error.
    """

    def __init__(self, address: str | None) -> None:
        self.address = None if not address else _notify_address(address)
        if address and self.address is None:
            _log.warn("NOTIFY_SOCKET={address!r} is not an absolute path or @abstract name; not notifying systemd",
                      address=address)
        self._socket: socket.socket | None = None
        self._reported: set[str] = set()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET`` in ``environ`` (the process environment by default)."""
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; True when it was sent."""
        if self.address is None or not fields:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            problem = exc.strerror or str(exc)
            if problem not in self._reported:
                self._reported.add(problem)
                _log.warn("cannot notify systemd at {path}: {problem}", path=self.address.replace("\0", "@"),
                          problem=problem)
            return False
        return True

    def close(self) -> None:
        """Release the socket (a later `notify` opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``.

    None when no watchdog is asked for this process (unset, not a positive integer, or
    ``WATCHDOG_PID`` naming another process).
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


# --------------------------------------------------------------------------- socket activation


def activated_fds(environ: Mapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The descriptors systemd passed to this process (sd_listen_fds), [] when none.

    From ``environ`` when given. Otherwise from what Twisted recorded: importing
    ``twisted.internet.endpoints`` consumes ``LISTEN_PID``/``LISTEN_FDS`` from the process
    environment (keeping the descriptors for its ``systemd:`` endpoints, and only when
    ``LISTEN_FDNAMES`` is set as well, as systemd always does), so that record is the truth.
    """
    if environ is None:
        recorded = systemd_inherited_descriptors()
        if recorded is not None:
            return recorded
        environ = os.environ
    pid = os.getpid() if pid is None else pid
    if environ.get("LISTEN_PID") != str(pid):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(count, 0)))


def _listening_family(fd: int) -> int:
    """The address family of the listening stream socket ``fd``; `ListenError` if it is not one."""
    try:
        probe = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenError(f"descriptor {fd} passed by systemd is not a socket: {exc.strerror or exc}") from None
    try:
        if probe.type != socket.SOCK_STREAM or not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenError(f"descriptor {fd} passed by systemd is not a listening stream socket "
                              "(use ListenStream= in the .socket unit)")
        return int(probe.family)
    finally:
        probe.detach()


def activated_endpoint(reactor: Any, environ: Mapping[str, str] | None = None,
                       pid: int | None = None) -> IStreamServerEndpoint:
    """An endpoint adopting the first listening socket systemd passed; `ListenError` if there is none.

    The address family is read from the socket itself, so ``ListenStream=5000`` (IPv6,
    dual-stack) and ``ListenStream=0.0.0.0:5000`` (IPv4) both work.
    """
    fds = activated_fds(environ, pid)
    if not fds:
        raise ListenError('listen = "systemd" but systemd passed no socket to this process '
                          "(LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID); start it through angosd.socket")
    if len(fds) > 1:
        _log.warn("systemd passed {count} sockets; serving on the first one only", count=len(fds))
    from twisted.internet import endpoints  # imported where used: it may import OpenSSL

    return endpoints.AdoptedStreamServerEndpoint(reactor, fds[0], _listening_family(fds[0]))


def listen_endpoint(reactor: Any, description: str, environ: Mapping[str, str] | None = None) -> IStreamServerEndpoint:
    """The server endpoint for ``description``: ``"systemd"`` or a Twisted endpoint string.

    Raises `ListenError` (one line) when the description is malformed or names a systemd
    socket that was not passed.
    """
    if description == SYSTEMD_LISTEN:
        return activated_endpoint(reactor, environ)
    if activated_fds(environ) and not description.startswith("systemd:"):
        _log.warn("systemd passed listening sockets but the daemon listens on {endpoint}; set "
                  '[server] listen = "systemd" to use them', endpoint=description)
    from twisted.internet import endpoints  # imported where used: it may import OpenSSL

    try:
        return endpoints.serverFromString(reactor, description)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        hint = " (no such socket passed by systemd)" if description.startswith("systemd:") else ""
        raise ListenError(f"listen endpoint {description!r}: {exc or type(exc).__name__}{hint}") from None


@implementer(IStreamServerEndpoint)
class ObservedEndpoint:
    """Wraps a server endpoint so that others can wait for it to be listening."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self.endpoint = endpoint
        self._result: IListeningPort | Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint; the outcome is also given to `listening` waiters."""
        listening = self.endpoint.listen(protocolFactory)

        def record(result: IListeningPort | Failure) -> IListeningPort | Failure:
            self._result = result
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return listening.addBoth(record)

    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once listening succeeded, or fails as listening did."""
        if isinstance(self._result, Failure):
            failed: Deferred[IListeningPort] = Deferred()
            failed.errback(self._result)
            return failed
        if self._result is not None:
            done: Deferred[IListeningPort] = Deferred()
            done.callback(self._result)
            return done
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        return waiter


# --------------------------------------------------------------------------- the service


def _describe(port: IListeningPort) -> str:
    address = port.getHost()
    host, number = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and number is not None:
        return f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
    return str(getattr(address, "name", address))


def _one_line(failure: Failure) -> str:
    return " ".join(str(failure.getErrorMessage()).split()) or failure.type.__name__


class SystemdService(Service):
    """Tells systemd how the daemon is doing, and reloads on SIGHUP.

    - ``READY=1`` once ``listening()`` fired *and* ``storage()`` succeeded (retried every
      `STORAGE_RETRY` seconds while it fails); never before.
    - ``WATCHDOG=1`` every ``watchdog`` seconds from the start, while the reactor runs.
    - SIGHUP calls ``reload()`` on the reactor thread, between ``RELOADING=1`` and
      ``READY=1`` once ready (before that, without notifications).
    - ``STOPPING=1`` when the service stops (first thing during shutdown).
    """

    def __init__(self, notifier: Notifier, reactor: Any, listening: Callable[[], Deferred[IListeningPort]],
                 storage: Callable[[], Any], reload: Callable[[], bool], watchdog: float | None = None,
                 install_signal: _InstallSignal = signal.signal) -> None:
        self._notifier = notifier
        self._reactor = reactor
        self._listening = listening
        self._storage = storage
        self._reload = reload
        self._watchdog = watchdog
        self._install_signal = install_signal
        self._pinger: LoopingCall | None = None
        self._retry: IDelayedCall | None = None
        self._previous_hup: _SignalHandler = None
        self._stopping = False
        self._storage_failing = False
        self.address: str | None = None
        self.ready = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        try:
            self._previous_hup = self._install_signal(signal.SIGHUP, self._on_sighup)
        except ValueError as exc:  # not the main thread
            _log.warn("SIGHUP reload not available: {error}", error=str(exc))
        if self._watchdog is not None:
            self._pinger = LoopingCall(self._notifier.notify, "WATCHDOG=1")
            self._pinger.clock = self._reactor
            self._pinger.start(self._watchdog, now=True)
        self._listening().addCallbacks(self._listening_ok, self._listening_failed)

    def _listening_ok(self, port: IListeningPort) -> None:
        self.address = _describe(port)
        self._check_storage()

    def _listening_failed(self, failure: Failure) -> None:
        if not self._stopping:
            _log.error("not ready: cannot listen: {error}", error=_one_line(failure))
            self._notifier.notify(f"STATUS=cannot listen: {_one_line(failure)}")

    def _check_storage(self) -> None:
        self._retry = None
        if self._stopping:
            return
        maybeDeferred(self._storage).addCallbacks(self._storage_ok, self._storage_failed)

    def _storage_ok(self, _: object) -> None:
        if self._stopping:
            return
        if self._storage_failing:
            _log.info("storage answers again")
        self.ready = True
        self._notifier.notify("READY=1", f"STATUS=serving on {self.address}")
        _log.info("ready: listening on {address}, storage answers", address=self.address)

    def _storage_failed(self, failure: Failure) -> None:
        if self._stopping:
            return
        if not self._storage_failing:
            self._storage_failing = True
            _log.error("not ready: storage does not answer, retrying every {retry}s: {error}",
                       retry=STORAGE_RETRY, error=_one_line(failure))
        self._notifier.notify(f"STATUS=waiting for storage: {_one_line(failure)}")
        self._retry = self._reactor.callLater(STORAGE_RETRY, self._check_storage)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: only schedules the reload on the reactor thread."""
        self._reactor.callFromThread(self.reload_now)

    def reload_now(self) -> bool:
        """Reload the configuration (as on SIGHUP); True when a new configuration is live."""
        if self._stopping:
            _log.info("SIGHUP ignored: shutting down")
            return False
        _log.info("SIGHUP: reloading the configuration")
        if self.ready:
            self._notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                                  "STATUS=reloading the configuration")
        try:
            reloaded = self._reload()
        except Exception:
            _log.failure("configuration reload failed; the running configuration stays")
            reloaded = False
        if self.ready:
            status = f"serving on {self.address}" + ("" if reloaded else "; last reload refused, see the log")
            self._notifier.notify("READY=1", f"STATUS={status}")
        return reloaded

    def stopService(self) -> None:
        self._stopping = True
        self._notifier.notify("STOPPING=1", "STATUS=shutting down, finishing requests in flight")
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        previous = self._previous_hup
        with contextlib.suppress(ValueError):  # SIGHUP's default action would kill the daemon while it drains
            self._install_signal(signal.SIGHUP, previous if callable(previous) else signal.SIG_IGN)
        super().stopService()
