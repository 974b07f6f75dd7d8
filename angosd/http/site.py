"""The Twisted site serving the API with `RegistryRequest`."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from OpenSSL import SSL
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from angosd.http import errors
from angosd.http.api import RegistryAPI
from angosd.http.request import RegistryRequest, RequestObserver

_TLS_HANDSHAKE = 0x16
#: Bytes read from a connection at a time (Twisted's default is 64 KiB).
_READ_SIZE = 256 * 1024
_PLAIN_HTTP_ONLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    b"Client sent an HTTPS request to an HTTP server.\n")


class RegistryChannel(HTTPChannel):
    """HTTP/1.1 channel that answers a TLS handshake on a plain port at once.

    Clients such as skopeo and docker try HTTPS first; an immediate 400 makes them
    fall back to HTTP instead of waiting out a handshake timeout.
    """

    _first_bytes = True

    def connectionMade(self) -> None:
        super().connectionMade()
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = _READ_SIZE  # type: ignore[union-attr]  # fewer, larger reads

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Under TLS, a handshake that fails ends the connection with an OpenSSL error
        # before any request byte reached this channel.
        if self._first_bytes and reason.check(SSL.Error) is not None:
            refused = getattr(getattr(self, "site", None), "tls_refused", None)
            if refused is not None:
                peer = self.transport.getPeer() if self.transport is not None else None
                refused(f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}", reason.value)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._first_bytes:
            self._first_bytes = False
            if data[:1] == bytes([_TLS_HANDSHAKE]):
                assert self.transport is not None
                self.transport.write(_PLAIN_HTTP_ONLY)
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class _Utf8Paths(Resource):
    """Answers paths whose percent-escapes are not UTF-8 with an OCI error (`errors.invalid_path`),
    not Klein's text."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> bytes:
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return errors.invalid_path(request)
        return self._inner.render(request)


class RegistrySite(Site):
    """A site whose requests are admitted by ``api`` before their bodies are read."""

    protocol = RegistryChannel  # type: ignore[assignment]

    def __init__(self, api: RegistryAPI, observers: list[RequestObserver] | None = None) -> None:
        super().__init__(_Utf8Paths(api.app.resource()), requestFactory=RegistryRequest)
        self.gate = api
        self.observers: list[RequestObserver] = list(observers or [])
        #: Called with the peer ("host:port") and the error of each refused TLS handshake.
        self.tls_refused: Callable[[str, BaseException], None] | None = None
        self.noisy = False

    def log(self, request: object) -> None:
        """Per-request access logging is the access-log observer's job, not Site's."""
