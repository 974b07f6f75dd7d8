"""Outgoing HTTP clients (upstream registries, webhooks): pooled, with private TLS trust."""

from __future__ import annotations

import re
from typing import Any

from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent, _HTTP11ClientFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per connection."""

    noisy = False


@implementer(IPolicyForHTTPS)
class ClientTLS:
    """Verify servers against ``server_ca_bundle`` (else the system roots); present a client cert."""

    def __init__(self, server_ca_bundle: str | None = None, client_certificate: str | None = None,
                 client_private_key: str | None = None) -> None:
        self._trust: Any = None
        self._client: Any = None
        if server_ca_bundle:
            with open(server_ca_bundle, "rb") as bundle:
                pems = _PEM_CERTIFICATE.findall(bundle.read())
            if not pems:
                raise ValueError(f"{server_ca_bundle}: no certificate found")
            self._trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem) for pem in pems])
        if client_certificate and client_private_key:
            with open(client_certificate, "rb") as cert, open(client_private_key, "rb") as key:
                self._client = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust,
                                       clientCertificate=self._client)


def make_client(reactor: Any, tls: ClientTLS | None = None, connect_timeout: float = 30.0,
                max_redirects: int = 0, persistent: bool = True) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client over its own pool; redirects are followed only up to ``max_redirects``.

    Use it with ``allow_redirects=False`` on each request: redirects are this client's job.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = 8
    pool._factory = _QuietClientFactory
    agent: Any = Agent(reactor, contextFactory=tls or ClientTLS(), pool=pool, connectTimeout=connect_timeout)
    if max_redirects:
        agent = RedirectAgent(agent, redirectLimit=max_redirects)
    return HTTPClient(agent), pool
