"""What both kinds of webhook share: the outgoing client and header sanitising."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from angosd.config import WebhookTlsConfig
from angosd.outbound.client import ClientTLS, OutboundHook, make_client

if TYPE_CHECKING:
    from treq.client import HTTPClient

_log = Logger()


def webhook_client(reactor: Any, tls: WebhookTlsConfig, hook: OutboundHook | None = None) -> HTTPClient:
    """A client for webhook calls; ``hook`` sees each request (tracing)."""
    client, _pool = make_client(reactor, ClientTLS(tls.server_ca_bundle, tls.client_certificate_bundle,
                                                   tls.client_private_key), connect_timeout=10.0, hook=hook)
    return client


def header_value(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")
