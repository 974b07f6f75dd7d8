"""The one place angosd touches Twisted's private names (underscore attributes and modules).

Twisted may change its private names in any release. Every use is here, behind a small
function or base class with a public name, each with the reason it is needed, and
`PRIVATE_NAMES` lists them all: ``tests/unit/test_compat.py`` checks that the installed
Twisted still has each one (with the expected kind) and that no other module of angosd
uses a private Twisted name. When Twisted drops one, adapt the function here (or pin
Twisted below that release in ``setup.py``).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

# Each Twisted module below imports pyOpenSSL (and cryptography) when imported: they are
# imported where used, so a daemon without TLS never loads OpenSSL (~19 MiB per process).
if TYPE_CHECKING:
    from twisted.internet import tcp, unix
    from twisted.internet.interfaces import IProtocolFactory, IReactorCore
    from twisted.protocols.tls import BufferingTLSTransport as _TLSTransport
    from twisted.python.failure import Failure
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
else:
    _TLSTransport = object

__all__ = [
    "PRIVATE_NAMES",
    "PrivateName",
    "TLSWriteHooks",
    "adopt_tcp_port",
    "adopt_unix_port",
    "buffered_bytes",
    "clear_exit_signal",
    "enable_client_tls",
    "import_reactor_without_tls",
    "keep_listening_after_stop",
    "quiet_connection_pool",
    "request_disconnected",
    "request_line",
    "systemd_inherited_descriptors",
]

Kind = Literal["class", "method", "classmethod", "attribute"]


@dataclass(frozen=True, slots=True)
class PrivateName:
    """A private Twisted name this module relies on: ``owner.name`` is of ``kind``.

    ``owner`` is a dotted module or class path. An ``attribute`` is a class attribute or
    an instance attribute the owner (or a base) assigns as ``self.<name>``.
    """

    owner: str
    name: str
    kind: Kind
    why: str


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName("twisted.web.http.HTTPChannel", "_command", "attribute",
                "the request method, known before Request.requestReceived: routes a body before it is read"),
    PrivateName("twisted.web.http.HTTPChannel", "_path", "attribute",
                "the request target, known before Request.requestReceived: routes a body before it is read"),
    PrivateName("twisted.web.http.Request", "_disconnected", "attribute",
                "whether the connection is gone; Request has no public flag for it"),
    PrivateName("twisted.internet.abstract.FileDescriptor", "_tempDataLen", "attribute",
                "bytes written but not yet in dataBuffer: sendfile may only start on an empty buffer"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_write", "method",
                "the plaintext write path, overridden to encrypt large pieces per SSL_write"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_flushSendBIO", "method",
                "reads encrypted records out of OpenSSL, overridden to read them in large pieces"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_tlsConnection", "attribute",
                "the OpenSSL connection the overridden write path sends to"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_lostTLSConnection", "attribute",
                "whether TLS is shut down, so writes must be dropped"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_bufferedWrite", "method",
                "holds plaintext until a handshake or renegotiation completes"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_tlsShutdownFinished", "method",
                "tears the connection down after an OpenSSL error"),
    PrivateName("twisted.web.client", "_HTTP11ClientFactory", "class",
                "the pool's connection factory, subclassed to stop a log line per connection"),
    PrivateName("twisted.web.client.HTTPConnectionPool", "_factory", "attribute",
                "the pool's connection factory class; the pool has no public parameter for it"),
    PrivateName("twisted.internet.base.ReactorBase", "_exitSignal", "attribute",
                "the signal twistd re-raises at exit; cleared after an orderly drain"),
    PrivateName("twisted.internet.endpoints", "_SystemdParser", "class",
                "holds the descriptors systemd passed, consumed from the environment at import"),
    PrivateName("twisted.internet.endpoints._SystemdParser", "_sddaemon", "attribute",
                "the record of the systemd-passed descriptors"),
    PrivateName("twisted.internet.tcp.Port", "_fromListeningDescriptor", "classmethod",
                "builds a port subclass on an inherited listening socket (adoptStreamPort cannot)"),
    PrivateName("twisted.internet.unix.Port", "_fromListeningDescriptor", "classmethod",
                "builds a port subclass on an inherited listening socket (adoptStreamPort cannot)"),
    PrivateName("twisted.internet.tcp.Port", "_shouldShutdown", "attribute",
                "stops connectionLost from shutting the shared socket down for every process"),
    PrivateName("twisted.internet", "_newtls", "attribute",
                "imported by twisted.internet.tcp (hence by the reactor) and importing pyOpenSSL: "
                "hidden while a daemon without TLS imports the reactor"),
)


# --------------------------------------------------------------------------- twisted.web


def request_line(channel: object) -> tuple[bytes, bytes]:
    """The method and target of the request ``channel`` is reading (``b""`` when unknown).

    Twisted keeps them on the channel until the whole body has arrived; angosd routes (and
    admits or refuses) the body as soon as the headers are in.
    """
    return getattr(channel, "_command", b""), getattr(channel, "_path", b"")


def request_disconnected(request: object) -> bool:
    """Whether ``request``'s connection has been lost."""
    return bool(getattr(request, "_disconnected", False))


#: Bytes an outgoing connection reads per ``recv`` (Twisted's default is 64 KiB).
CLIENT_READ_SIZE = 256 * 1024


def quiet_connection_pool(pool: HTTPConnectionPool) -> None:
    """Make ``pool`` open connections without logging a line for each, reading
    `CLIENT_READ_SIZE` bytes per ``recv`` (a response body passes through a deep stack of
    protocols per read: fewer, larger reads cost less CPU per byte downloaded)."""
    pool._factory = _quiet_client_factory()


@functools.cache
def _quiet_client_factory() -> type[_HTTP11ClientFactory]:
    """The pool's connection factory class, without a log line per connection."""
    from twisted.web.client import _HTTP11ClientFactory

    class _QuietClientFactory(_HTTP11ClientFactory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            make_connection = protocol.makeConnection

            def with_large_reads(transport: Any) -> None:
                if hasattr(transport, "bufferSize"):
                    transport.bufferSize = CLIENT_READ_SIZE
                make_connection(transport)

            protocol.makeConnection = with_large_reads  # type: ignore[method-assign]  # per instance
            return protocol

    return _QuietClientFactory


# --------------------------------------------------------------------------- transports


def buffered_bytes(transport: Any) -> int | None:
    """Bytes a file-descriptor transport holds, not yet written to its socket.

    None when ``transport`` does not keep its buffer the way `FileDescriptor` does.
    """
    try:
        return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return None


class TLSWriteHooks(_TLSTransport):
    """Twisted's buffering TLS transport with its write path behind public hooks.

    A mixin, so that importing this module does not import OpenSSL: a subclass lists
    `twisted.protocols.tls.BufferingTLSTransport` after it among its bases. Subclasses
    override `write_plaintext` (called for each plaintext write) and
    `flush_records` (called whenever encrypted records may be waiting in OpenSSL), using
    `tls_connection`, `tls_lost`, `hold_plaintext` and `tls_failed`.
    """

    def _write(self, data: bytes) -> None:
        self.write_plaintext(data)

    def _flushSendBIO(self) -> None:
        self.flush_records()

    def write_plaintext(self, data: bytes) -> None:
        """Encrypt and send ``data``; by default as Twisted does."""
        super()._write(data)

    def flush_records(self) -> None:
        """Send the records OpenSSL has ready; by default as Twisted does."""
        super()._flushSendBIO()

    @property
    def tls_connection(self) -> Any:
        """The ``OpenSSL.SSL.Connection`` of this transport."""
        return self._tlsConnection

    @property
    def tls_lost(self) -> bool:
        """True once TLS has shut down: writes are to be dropped."""
        return bool(self._lostTLSConnection)

    def hold_plaintext(self, data: bytes) -> None:
        """Keep ``data`` until the handshake (or renegotiation) in progress completes."""
        self._bufferedWrite(data)

    def tls_failed(self, failure: Failure) -> None:
        """Tear the connection down after the OpenSSL error ``failure``."""
        self._tlsShutdownFinished(failure)


# --------------------------------------------------------------------------- process and listening sockets


def clear_exit_signal(reactor: object) -> None:
    """Make twistd exit normally instead of re-raising the signal that stopped ``reactor``.

    Reactors without the record (test clocks) are left alone.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None  # type: ignore[attr-defined]


def systemd_inherited_descriptors() -> list[int] | None:
    """The descriptors Twisted recorded as passed by systemd; None when it recorded none.

    Importing ``twisted.internet.endpoints`` consumes ``LISTEN_PID``/``LISTEN_FDS`` from the
    environment, so this record is the only place left to read them from.
    """
    from twisted.internet import endpoints

    recorded = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if recorded is None or not recorded.inheritedDescriptors():
        return None
    return list(recorded.inheritedDescriptors())


def adopt_tcp_port(port_class: type[tcp.Port], reactor: Any, fd: int, family: int,
                   factory: IProtocolFactory) -> tcp.Port:
    """A ``port_class`` (a `tcp.Port` subclass) listening on the inherited socket ``fd``, not started."""
    return port_class._fromListeningDescriptor(reactor, fd, family, factory)


def adopt_unix_port(port_class: type[unix.Port], reactor: Any, fd: int, factory: IProtocolFactory) -> unix.Port:
    """A ``port_class`` (a `unix.Port` subclass) listening on the inherited socket ``fd``, not started."""
    return port_class._fromListeningDescriptor(reactor, fd, factory)


def keep_listening_after_stop(port: tcp.Port) -> None:
    """Stop ``port`` from shutting its socket down when it stops.

    ``shutdown()`` acts on the socket, not the descriptor, so it would stop every other
    process's copy of a shared listening socket too.
    """
    port._shouldShutdown = False


# --------------------------------------------------------------------------- TLS loaded only when needed

#: Modules that import pyOpenSSL, hidden while a daemon without TLS imports the reactor.
_OPENSSL_MODULES = ("OpenSSL", "twisted.internet._newtls", "twisted.protocols.tls", "twisted.internet.ssl")


def import_reactor_without_tls() -> IReactorCore:
    """The global reactor, imported (unless it already was) without loading OpenSSL.

    Twisted's TCP transports and endpoints import pyOpenSSL when it is installed; with it
    hidden they are built without TLS: TCP connections have no ``startTLS``, the reactor no
    ``listenSSL``/``connectSSL`` (both fail with "SSL support is not present") and "ssl:"
    endpoint strings are unknown. TLS wrapped around a connection by a protocol factory
    (angosd's TLS listener, HTTPS clients after `enable_client_tls`) is unaffected.
    OpenSSL itself stays importable afterwards.
    """
    if "twisted.internet.reactor" not in sys.modules and not any(name in sys.modules for name in _OPENSSL_MODULES):
        for name in _OPENSSL_MODULES:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            import twisted.internet.endpoints
            import twisted.internet.reactor  # noqa: F401
        finally:
            for name in _OPENSSL_MODULES:
                if sys.modules.get(name, False) is None:
                    del sys.modules[name]
    from twisted.internet import reactor
    return reactor


def enable_client_tls() -> None:
    """Make `twisted.internet.endpoints.wrapClientTLS` (which HTTPS clients use) work.

    Needed (and a no-op otherwise) when the endpoints module was imported by
    `import_reactor_without_tls`: it then has no TLS factory and refuses to wrap.
    """
    from twisted.internet import endpoints

    if endpoints.TLSMemoryBIOFactory is None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        endpoints.TLSMemoryBIOFactory = TLSMemoryBIOFactory
