"""Authorization webhooks: an external check asked after the CEL policies allowed a request.

Asked when the request's namespace belongs to a repository with an effective webhook (the
repository's, else the global one; ``""`` disables). 2xx allows; anything else, an error or a
timeout denies (fail closed). 401/403 and 2xx answers are cached for ``cache_ttl`` per identity
and route; transient failures (429, 5xx, transport) are not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from angosd.actions import Route
from angosd.auth.identity import Identity
from angosd.config import AuthWebhookConfig
from angosd.observability.metrics import WebhookMetrics
from angosd.outbound.client import OutboundHook, content
from angosd.webhooks.client import header_value, webhook_client

_log = Logger()


class AuthorizationWebhooks:
    def __init__(self, configs: Sequence[AuthWebhookConfig], reactor: Any, metrics: WebhookMetrics | None = None,
                 outbound: OutboundHook | None = None) -> None:
        """``metrics`` counts the calls made (cached answers are not calls) and their latency;
        ``outbound`` sees each request (tracing)."""
        self._metrics = metrics
        self._configs = {config.name: config for config in configs}
        self._clients = {config.name: webhook_client(reactor, config.tls, outbound) for config in configs}
        self._clock: IReactorTime = reactor
        self._cache: dict[tuple[str, str], tuple[bool, float]] = {}

    async def allows(self, name: str, identity: Identity, route: Route, request: IRequest) -> bool:
        """Ask webhook ``name`` about this request; False on any doubt."""
        config = self._configs.get(name)
        if config is None:
            return False
        key = (name, json.dumps([identity.to_cel(), route.action, route.method, route.path, route.namespace,
                                 route.reference, route.digest], sort_keys=True, default=str))
        cached = self._cache.get(key)
        now = self._clock.seconds()
        if cached is not None and cached[1] > now:
            return cached[0]
        headers = self._headers(config, identity, route, request)
        try:
            response = await self._clients[name].get(config.url, headers=headers, allow_redirects=False,
                                                     timeout=config.timeout_ms / 1000)
            await content(response)
        except Exception as exc:
            _log.warn("authorization webhook {name} failed: {error}", name=name, error=f"{type(exc).__name__}")
            self._record(name, "error", now)
            return False
        allowed = 200 <= response.code < 300
        self._record(name, "success" if allowed else "rejected", now)
        if (allowed or response.code in (401, 403)) and config.cache_ttl:
            self._cache[key] = (allowed, now + config.cache_ttl)
            if len(self._cache) > 10_000:
                self._cache.clear()
        return allowed

    def _record(self, name: str, result: str, began: float) -> None:
        if self._metrics is not None:
            self._metrics.delivered("authorization", name, result, self._clock.seconds() - began)

    @staticmethod
    def _headers(config: AuthWebhookConfig, identity: Identity, route: Route, request: IRequest) -> Any:
        secure = bool(getattr(request, "isSecure", lambda: False)())
        host = request.getHeader("Host") or ""
        headers: dict[str, Any] = {
            "X-Forwarded-Method": route.method,
            "X-Forwarded-Proto": "https" if secure else "http",
            "X-Forwarded-Host": header_value(host),
            "X-Forwarded-Uri": header_value(route.path),
            "X-Forwarded-For": identity.client_ip or "",
            "X-Registry-Action": str(route.action),
        }
        optional = {
            "X-Registry-Namespace": route.namespace, "X-Registry-Reference": route.reference,
            "X-Registry-Digest": route.digest, "X-Registry-Username": identity.username,
            "X-Registry-Identity-ID": identity.id,
            "X-Registry-OIDC-Provider": identity.oidc.provider_name if identity.oidc else None,
            "X-Registry-OIDC-Subject": str(identity.oidc.claims.get("sub")) if identity.oidc else None,
        }
        headers.update({name: header_value(value) for name, value in optional.items() if value})
        if identity.certificate.common_names:
            headers["X-Registry-Certificate-CN"] = [header_value(v) for v in identity.certificate.common_names]
        if identity.certificate.organizations:
            headers["X-Registry-Certificate-O"] = [header_value(v) for v in identity.certificate.organizations]
        for name in config.forward_headers:
            value = request.getHeader(name)
            if value is not None and name.lower() != "authorization":
                headers[name] = header_value(value)
        if config.bearer_token:
            headers["Authorization"] = f"Bearer {config.bearer_token}"
        elif config.basic_auth:
            pair = f"{config.basic_auth['username']}:{config.basic_auth['password']}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers
