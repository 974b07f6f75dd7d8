"""Outgoing HTTP clients (upstream registries, webhooks): pooled, with private TLS trust.

treq, ``twisted.web.client`` and ``twisted.internet.ssl`` import pyOpenSSL: they are imported
when a client is made (or TLS trust loaded), so a daemon that makes none never loads them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from angosd.compat import enable_client_tls, quiet_connection_pool

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@implementer(IPolicyForHTTPS)
class ClientTLS:
    """Verify servers against ``server_ca_bundle`` (else the system roots); present a client cert."""

    def __init__(self, server_ca_bundle: str | None = None, client_certificate: str | None = None,
                 client_private_key: str | None = None) -> None:
        from twisted.internet import ssl

        self._trust: Any = None
        self._client: Any = None
        if server_ca_bundle:
            with open(server_ca_bundle, "rb") as bundle:
                pems = _PEM_CERTIFICATE.findall(bundle.read())
            if not pems:
                raise ValueError(f"{server_ca_bundle}: no PEM certificate")
            self._trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem) for pem in pems])
        if client_certificate and client_private_key:
            with open(client_certificate, "rb") as cert, open(client_private_key, "rb") as key:
                self._client = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust,
                                       clientCertificate=self._client)


class OutboundHook(Protocol):
    """Sees each outgoing request (tracing): makes it with ``agent``, possibly adding headers."""

    def request(self, agent: Any, method: bytes, uri: bytes, headers: Headers | None,
                body: Any) -> Deferred[IResponse]: ...


@implementer(IAgent)
class _HookedAgent:
    def __init__(self, agent: Any, hook: OutboundHook) -> None:
        self._agent = agent
        self._hook = hook

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[IResponse]:
        return self._hook.request(self._agent, method, uri, headers, bodyProducer)


def make_client(reactor: Any, tls: ClientTLS | None = None, connect_timeout: float = 30.0, max_redirects: int = 0,
                pool: HTTPConnectionPool | None = None,
                hook: OutboundHook | None = None) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client over its own pool (or ``pool``); redirects are followed only up to
    ``max_redirects``. Use it with ``allow_redirects=False``: redirects are this client's job.
    ``hook`` sees every request (each redirect hop included).
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent

    enable_client_tls()
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
    quiet_connection_pool(pool)
    agent: Any = Agent(reactor, contextFactory=tls or ClientTLS(), pool=pool, connectTimeout=connect_timeout)
    if hook is not None:
        agent = _HookedAgent(agent, hook)
    if max_redirects:
        agent = RedirectAgent(agent, redirectLimit=max_redirects)
    return HTTPClient(agent), pool


class BodyTooLarge(Exception):
    """A response body longer than the caller accepts."""


async def read_bounded(response: IResponse, limit: int) -> bytes:
    """The whole body of ``response``; raises `BodyTooLarge` as soon as it (or its announced
    length) exceeds ``limit`` bytes, so a hostile server cannot make us buffer more."""
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        raise BodyTooLarge(f"body of {response.length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(data)

    from treq import collect as collect_body

    await collect_body(response, collect)
    return b"".join(chunks)


async def content(response: IResponse) -> bytes:
    """The whole body of ``response`` (`treq.content`, imported with the first client)."""
    from treq import content as body

    return await body(response)
