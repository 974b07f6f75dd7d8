"""The Twisted site serving the API with `RegistryRequest`."""

from __future__ import annotations

from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from angosd.http.api import RegistryAPI
from angosd.http.request import RegistryRequest

_TLS_HANDSHAKE = 0x16
_PLAIN_HTTP_ONLY = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    b"Client sent an HTTPS request to an HTTP server.\n")


class RegistryChannel(HTTPChannel):
    """HTTP/1.1 channel that answers a TLS handshake on a plain port at once.

    Clients such as skopeo and docker try HTTPS first; an immediate 400 makes them
    fall back to HTTP instead of waiting out a handshake timeout.
    """

    _first_bytes = True

    def dataReceived(self, data: bytes) -> None:
        if self._first_bytes:
            self._first_bytes = False
            if data[:1] == bytes([_TLS_HANDSHAKE]):
                assert self.transport is not None
                self.transport.write(_PLAIN_HTTP_ONLY)
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class RegistrySite(Site):
    """A site whose requests are admitted by ``api`` before their bodies are read."""

    protocol = RegistryChannel  # type: ignore[assignment]

    def __init__(self, api: RegistryAPI) -> None:
        super().__init__(api.app.resource(), requestFactory=RegistryRequest)
        self.gate = api
        self.noisy = False

    def log(self, request: object) -> None:
        """Per-request access logging is the access-log observer's job, not Site's."""
