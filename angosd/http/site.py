"""The Twisted site serving the API with `RegistryRequest`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from angosd.config import Config
from angosd.http import errors
from angosd.http.api import RegistryAPI
from angosd.http.forwarded import Network, parse_networks
from angosd.http.request import SERVER_NAME, RegistryRequest, RequestObserver

_TLS_HANDSHAKE = 0x16
#: Bytes read from a connection at a time (Twisted's default is 64 KiB).
_READ_SIZE = 256 * 1024
_PLAIN_HTTP_ONLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    b"Client sent an HTTPS request to an HTTP server.\n")


def _too_long(status: bytes, what: str) -> bytes:
    """A complete response refusing an over-long line, with an OCI error body."""
    body = json.dumps({"errors": [{"code": "SIZE_INVALID", "message": f"{what} too long",
                                   "detail": f"{what}s are limited to {HTTPChannel.MAX_LENGTH} bytes"}]}).encode()
    return (b"HTTP/1.1 " + status + b"\r\nServer: " + SERVER_NAME + b"\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


_URI_TOO_LONG = _too_long(b"414 URI Too Long", "request line")
_HEADER_TOO_LONG = _too_long(b"431 Request Header Fields Too Large", "header line")


@implementer(IHandshakeListener)
class RegistryChannel(HTTPChannel):
    """HTTP/1.1 channel that answers a TLS handshake on a plain port at once.

    Clients such as skopeo and docker try HTTPS first; an immediate 400 makes them
    fall back to HTTP instead of waiting out a handshake timeout.

    With ``[server] query_timeout`` a connection lives that long: then it closes once the
    request in progress is answered, or is cut ``query_timeout_grace_period`` later. Over
    TLS, a client that has not completed its handshake within ``handshake_timeout`` is cut.
    """

    _first_bytes = True
    _life: IDelayedCall | None = None
    _grace: IDelayedCall | None = None
    _handshake: IDelayedCall | None = None
    #: Whether the next line is a request line (else a header line of the current request).
    _at_request_line = True

    def connectionMade(self) -> None:
        super().connectionMade()
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = _READ_SIZE  # type: ignore[union-attr]  # fewer, larger reads
        site = getattr(self, "site", None)
        if not isinstance(site, RegistrySite):
            return
        server = site.config().server
        reactor = site.reactor
        if server.query_timeout is not None:
            self._life = reactor.callLater(server.query_timeout, self._end_of_life, server.query_timeout_grace_period)
        if ISSLTransport.providedBy(self.transport):
            self._handshake = reactor.callLater(server.handshake_timeout, self._abort)

    def handshakeCompleted(self) -> None:
        if self._handshake is not None and self._handshake.active():
            self._handshake.cancel()

    def _end_of_life(self, grace: float) -> None:
        """``query_timeout`` is over: close now if idle, else after the response in progress
        (at the latest ``grace`` seconds from now)."""
        if not self.requests:
            self.loseConnection()
            return
        self.persistent = False
        self._grace = getattr(self, "site").reactor.callLater(grace, self._abort)  # noqa: B009

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._life, self._grace, self._handshake):
            if call is not None and call.active():
                call.cancel()
        # Under TLS, a handshake that fails ends the connection with an OpenSSL error
        # before any request byte reached this channel.
        ssl = sys.modules.get("OpenSSL.SSL")  # loaded whenever a connection used TLS
        if self._first_bytes and ssl is not None and reason.check(ssl.Error) is not None:
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

    def lineReceived(self, line: bytes) -> None:
        if self._at_request_line:
            self._at_request_line = not line  # blank lines before a request line are skipped
        elif not line:  # the end of the headers: the next line (after any body) starts a request
            self._at_request_line = True
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Answer a request or header line over `MAX_LENGTH` (414 or 431), then close; the
        client learns why instead of seeing the connection drop."""
        assert self.transport is not None
        self.transport.write(_URI_TOO_LONG if self._at_request_line else _HEADER_TOO_LONG)
        self.transport.loseConnection()


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

    def __init__(self, api: RegistryAPI, observers: list[RequestObserver] | None = None,
                 config: Callable[[], Config] = Config) -> None:
        """``config`` gives the configuration in force (asked per connection and request):
        connection timeouts, ``max_concurrent_requests``, ``trusted_proxies``, ``?ns=``."""
        super().__init__(_Utf8Paths(api.app.resource()), requestFactory=RegistryRequest)
        self.gate = api
        self.observers: list[RequestObserver] = list(observers or [])
        #: Called with the peer ("host:port") and the error of each refused TLS handshake.
        self.tls_refused: Callable[[str, BaseException], None] | None = None
        self.noisy = False
        self.config = config
        #: Requests counted against ``max_concurrent_requests`` now.
        self.active = 0
        self._proxies: tuple[tuple[str, ...], tuple[Network, ...]] = ((), ())

    def trusted_proxies(self) -> tuple[Network, ...]:
        """``[global] trusted_proxies`` as networks (parsed again only when it changes)."""
        texts = self.config().global_.trusted_proxies
        if texts != self._proxies[0]:
            self._proxies = (texts, parse_networks(texts))
        return self._proxies[1]

    def log(self, request: object) -> None:
        """Per-request access logging is the access-log observer's job, not Site's."""
