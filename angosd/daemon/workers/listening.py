"""One listening socket shared by the worker processes.

The supervisor binds it once (`SharedSocket`: any plain stream endpoint, ``tcp:0`` included,
so the port is known before a worker exists) and never accepts on it; every worker adopts an
inherited copy (`SharedSocketEndpoint`) and accepts from it. The kernel's accept queue is
shared: a connection waits there until some worker takes it, whichever workers are running.

Each worker accepts *one* connection per readiness event. Twisted's ports accept up to a
hundred in a row, so the first worker to wake would take a whole burst of connections and
the others none (measured: 32 keep-alive connections, one worker served all of them).

Neither side ever calls ``shutdown()`` on the socket, which would end listening for every
process holding it: each just closes its own descriptor. The socket stops listening when the
last copy is closed, so connections are refused (not left waiting) as soon as the supervisor
and every worker have stopped accepting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from angosd.compat import adopt_tcp_port, adopt_unix_port, keep_listening_after_stop

__all__ = ["SharedSocket", "SharedSocketEndpoint", "socket_family"]


class _OneAcceptPerWakeup:
    """Pins Twisted's adaptive accept batch (`tcp.Port.numberAccepts`) to one connection."""

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


class SharedTCPPort(_OneAcceptPerWakeup, tcp.Port):
    """A TCP port on an inherited socket, accepting one connection at a time."""


class SharedUNIXPort(_OneAcceptPerWakeup, unix.Port):
    """A UNIX port on an inherited socket, accepting one connection at a time.

    Unlike Twisted's adopted UNIX port it keeps the socket file's permissions (instead of
    resetting them to 0666) and never removes the file when it stops: the file belongs to
    the supervisor, and other workers still accept from it.
    """

    def __init__(self, fileName: Any, factory: IProtocolFactory, backlog: int = 50, mode: int = 0o666,
                 reactor: Any = None, wantPID: int = 0) -> None:
        with contextlib.suppress(OSError, TypeError, ValueError):  # abstract namespace: no file, no mode
            mode = stat.S_IMODE(os.stat(fileName).st_mode)
        super().__init__(fileName, factory, backlog, mode, reactor, wantPID)

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


def socket_family(fd: int) -> int:
    """The address family of the listening stream socket ``fd``.

    Raises `ValueError` when ``fd`` is not a listening stream socket.
    """
    probe = socket.socket(fileno=fd)
    try:
        if probe.type != socket.SOCK_STREAM or not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"descriptor {fd} is not a listening stream socket")
        return int(probe.family)
    finally:
        probe.detach()


@implementer(IStreamServerEndpoint)
class SharedSocketEndpoint:
    """A worker's endpoint: listens by adopting the inherited listening socket ``fd``.

    ``listen`` takes ownership of ``fd`` (the port holds its own duplicate; ``fd`` is closed)
    and can be used once.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            family = socket_family(self._fd)
            os.set_blocking(self._fd, False)  # Twisted's accept loop must never block
            port: tcp.Port
            if family == socket.AF_UNIX:
                port = adopt_unix_port(SharedUNIXPort, self._reactor, self._fd, protocolFactory)
            else:
                port = adopt_tcp_port(SharedTCPPort, self._reactor, self._fd, family, protocolFactory)
            port.startListening()
            os.close(self._fd)
        except Exception:
            return fail()
        return succeed(port)


class _NoConnections(Factory):
    """The supervisor's factory: it never accepts, so this never builds a protocol."""

    noisy = False

    def logPrefix(self) -> str:
        return "Shared socket (workers accept)"

    def buildProtocol(self, addr: object) -> Protocol | None:
        return None


class SharedSocket(Service):
    """The supervisor's listening socket: bound when the service starts (privileged part, so a
    port below 1024 works with ``twistd --uid``), never accepted from, closed when it stops.

    ``description`` names the endpoint in error messages. Starting raises `SystemExit` with
    one line when the endpoint cannot listen, or is not a plain stream socket (an endpoint
    that wraps connections itself, such as ``ssl:``, cannot be handed to workers; TLS comes
    from ``[server.tls]``, which each worker applies).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str) -> None:
        self._endpoint = endpoint
        self._description = description
        self._factory = _NoConnections()
        self.port: tcp.Port | None = None

    @property
    def fileno(self) -> int:
        """The listening socket's descriptor (valid while the service runs)."""
        if self.port is None:
            raise RuntimeError("the shared socket is not listening")
        return int(self.port.fileno())

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise SystemExit(f"angosd: cannot listen on {self._description}: the endpoint does not listen at once")
        if isinstance(outcome[0], Failure):
            message = " ".join(str(outcome[0].getErrorMessage()).split())
            raise SystemExit(f"angosd: cannot listen on {self._description}: {message}")
        port = outcome[0]
        if not isinstance(port, tcp.Port) or port.factory is not self._factory:
            if hasattr(port, "stopListening"):
                port.stopListening()
            raise SystemExit(f"angosd: cannot listen on {self._description} with several workers: use a plain "
                             "tcp, tcp6, unix or systemd endpoint ([server.tls] provides TLS)")
        port.stopReading()  # the workers accept, never this process
        keep_listening_after_stop(port)  # shutdown() would stop the workers' copies listening too
        self.port = port

    def startService(self) -> None:
        if self.port is None:  # started without the privileged step (not by twistd)
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped
