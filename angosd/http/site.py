"""The Twisted site serving the API with `RegistryRequest`."""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from angosd.http import errors
from angosd.http.api import RegistryAPI
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


class RegistryChannel(HTTPChannel):
    """HTTP/1.1 channel that answers a TLS handshake on a plain port at once.

    Clients such as skopeo and docker try HTTPS first; an immediate 400 makes them
    fall back to HTTP instead of waiting out a handshake timeout.
    """

    _first_bytes = True
    #: Whether the next line is a request line (else a header line of the current request).
    _at_request_line = True

    def connectionMade(self) -> None:
        super().connectionMade()
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = _READ_SIZE  # type: ignore[union-attr]  # fewer, larger reads

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

    def __init__(self, api: RegistryAPI, observers: list[RequestObserver] | None = None) -> None:
        super().__init__(_Utf8Paths(api.app.resource()), requestFactory=RegistryRequest)
        self.gate = api
        self.observers: list[RequestObserver] = list(observers or [])
        self.noisy = False

    def log(self, request: object) -> None:
        """Per-request access logging is the access-log observer's job, not Site's."""
