"""Event webhooks: registry events for audit.

Receivers get a signed JSON POST for ``manifest.push``, ``manifest.pull``, ``manifest.delete``,
``blob.push``, ``blob.pull``, ``tag.create`` and ``tag.delete``, fired before the operation.
``required`` receivers that fail (after their retries) abort the operation; ``optional`` ones
are only logged; ``async`` ones are delivered in the background and drained on shutdown.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from angosd.auth.identity import Identity
from angosd.config import Config, EventWebhookConfig, WebhookTlsConfig
from angosd.observability.metrics import WebhookMetrics
from angosd.oci.errors import OciError
from angosd.outbound.client import OutboundHook, content
from angosd.webhooks.client import webhook_client

if TYPE_CHECKING:
    from treq.client import HTTPClient

_log = Logger()

#: Async deliveries waiting or in flight at most; an event beyond is dropped (and counted).
MAX_PENDING = 1000


class EventRejected(OciError):
    """A required event webhook did not accept the event; the operation did not happen."""

    code = "DENIED"
    status = 503
    message = "a required event webhook did not accept the operation"


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    namespace: str
    repository: str | None
    digest: str | None = None
    reference: str | None = None
    tag: str | None = None
    actor: Mapping[str, Any] | None = None

    def body(self, clock: IReactorTime) -> bytes:
        moment = datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)
        document: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "timestamp": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "kind": self.kind, "namespace": self.namespace, "repository": self.repository,
            "actor": dict(self.actor or {}),
        }
        document.update({key: value for key, value in
                         (("digest", self.digest), ("reference", self.reference), ("tag", self.tag)) if value})
        return json.dumps(document, sort_keys=True).encode()


def actor(identity: Identity | None, internal: str | None = None) -> dict[str, Any]:
    """The ``actor`` of an event: who did it (never a secret)."""
    identity = identity or Identity()
    return {"id": identity.id, "username": identity.username, "client_ip": identity.client_ip,
            "internal": internal,
            "certificate_cn": list(identity.certificate.common_names),
            "oidc_subject": identity.oidc.claims.get("sub") if identity.oidc else None}


class EventBus(Service):
    """Publishes events to the webhooks the current configuration enables for a namespace."""

    def __init__(self, config: Callable[[], Config], reactor: Any, drain_seconds: float = 10.0,
                 metrics: WebhookMetrics | None = None, outbound: OutboundHook | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        """``metrics`` counts deliveries, their latency, the async queue and drops; ``outbound``
        sees each POST (tracing); at most ``max_pending`` async deliveries are kept."""
        self._metrics = metrics
        self._outbound = outbound
        self._max_pending = max_pending
        self._config = config
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._clients: dict[tuple[str, WebhookTlsConfig], HTTPClient] = {}
        self._pending: set[Deferred[None]] = set()
        self._drain_seconds = drain_seconds

    def _targets(self, kind: str, namespace: str) -> tuple[str | None, list[EventWebhookConfig]]:
        config = self._config()
        repository = config.repository_for(namespace)
        names = list(config.global_.event_webhooks)
        if repository is not None:
            names += [name for name in repository.event_webhooks if name not in names]
        by_name = {webhook.name: webhook for webhook in config.event_webhooks}
        chosen = []
        for name in names:
            webhook = by_name.get(name)
            if webhook is None or (webhook.events and kind not in webhook.events):
                continue
            if webhook.repository_filter and not any(
                    re.search(expression, repository.name if repository else namespace)
                    for expression in webhook.repository_filter):
                continue
            chosen.append(webhook)
        return (repository.name if repository else None), chosen

    async def publish(self, kind: str, namespace: str, identity: Identity | None = None, *,
                      digest: str | None = None, reference: str | None = None, tag: str | None = None,
                      internal: str | None = None) -> None:
        """Deliver an event; raises `EventRejected` when a required receiver refuses it."""
        repository, webhooks = self._targets(kind, namespace)
        if not webhooks:
            return
        event = Event(kind, namespace, repository, digest, reference, tag, actor(identity, internal))
        for webhook in webhooks:
            body = event.body(self._clock)
            if webhook.policy == "async":
                if len(self._pending) >= self._max_pending:
                    _log.warn("event webhook {name}: {n} deliveries pending, {kind} dropped", name=webhook.name,
                              n=len(self._pending), kind=kind)
                    self._dropped(webhook.name, "full")
                    continue
                self._background(webhook.name, self._deliver(webhook, kind, body))
                continue
            delivered = await self._deliver(webhook, kind, body)
            if not delivered and webhook.policy == "required":
                raise EventRejected(f"event webhook {webhook.name!r} did not accept {kind} for {namespace}")

    def _dropped(self, name: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped(name, reason)

    def _background(self, name: str, delivery: Any) -> None:
        def outcome(result: object) -> None:
            if result is not True:  # failed after its retries, or cancelled at shutdown
                self._dropped(name, "shutdown" if isinstance(result, Failure) else "failed")

        pending: Deferred[None] = ensureDeferred(delivery).addBoth(outcome)
        self._pending.add(pending)
        pending.addBoth(lambda _result: self._forget(pending))
        if self._metrics is not None:
            self._metrics.queue_depth(len(self._pending))

    def _forget(self, pending: Deferred[None]) -> None:
        self._pending.discard(pending)
        if self._metrics is not None:
            self._metrics.queue_depth(len(self._pending))

    async def _deliver(self, webhook: EventWebhookConfig, kind: str, body: bytes) -> bool:
        key = (webhook.name, webhook.tls)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = webhook_client(self._reactor, webhook.tls, self._outbound)
        headers: dict[str | bytes, str | bytes] = {"Content-Type": "application/json", "X-Registry-Event": kind}
        if webhook.token:
            signature = hmac.new(webhook.token.encode(), body, hashlib.sha256).hexdigest()
            headers["Authorization"] = f"Bearer {webhook.token}"
            headers["X-Registry-Signature-256"] = f"sha256={signature}"
        for attempt in range(webhook.retries + 1):
            if attempt:
                await deferLater(self._clock, min(0.1 * 2 ** (attempt - 1), 10.0), lambda: None)
            began = self._clock.seconds()
            try:
                response = await client.post(webhook.url, data=body, headers=headers, allow_redirects=False,
                                             timeout=webhook.timeout_ms / 1000)
                await content(response)
                if 200 <= response.code < 300:
                    self._attempt(webhook.name, "success", began)
                    return True
                problem = f"answered {response.code}"
                self._attempt(webhook.name, "rejected", began)
            except Exception as exc:
                problem = type(exc).__name__
                self._attempt(webhook.name, "error", began)
            _log.warn("event webhook {name} ({kind}) attempt {n}: {problem}", name=webhook.name, kind=kind,
                      n=attempt + 1, problem=problem)
        return False

    def _attempt(self, name: str, result: str, began: float) -> None:
        if self._metrics is not None:
            self._metrics.delivered("event", name, result, self._clock.seconds() - began)

    def stopService(self) -> Deferred[None]:
        """Wait (bounded) for async deliveries still in flight."""
        super().stopService()
        if not self._pending:
            return Deferred.fromCoroutine(_nothing())
        done = DeferredList(list(self._pending), consumeErrors=True)
        timeout = self._clock.callLater(self._drain_seconds, done.cancel)
        done.addBoth(lambda _result: timeout.cancel() if timeout.active() else None)
        return done.addBoth(lambda _result: None)


async def _nothing() -> None:
    return None
