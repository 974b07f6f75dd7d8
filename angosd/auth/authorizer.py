"""The authorization hook every request passes before its body is read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from angosd.actions import Action, Route
from angosd.auth.authenticator import Authenticator
from angosd.auth.identity import Identity
from angosd.auth.policy import AccessPolicy, Decision
from angosd.config import Config
from angosd.oci.errors import Denied, Unauthorized

#: Actions that are never behind authentication (probes must work under default-deny).
UNAUTHENTICATED_ACTIONS = frozenset({Action.HEALTHZ, Action.READYZ})
_log = Logger()
#: Opens a tracing span named by its argument around a block (`angosd.observability.tracing`).
Spans = Callable[[str], AbstractContextManager[object]]


class Authorizer(Protocol):
    async def authorize(self, request: IRequest, route: Route) -> None:
        """Return when the request may proceed; raise `Unauthorized` or `Denied`
        otherwise. Runs on the headers only, before any body byte is read."""


class AllowAll:
    """Anonymous full access, without looking at credentials."""

    async def authorize(self, request: IRequest, route: Route) -> None:
        return None


def request_variables(route: Route) -> dict[str, Any]:
    """The ``request`` variable of access policies; absent fields are omitted (use ``has()``)."""
    variables: dict[str, Any] = {"action": str(route.action), "method": route.method, "path": route.path}
    optional = {
        "namespace": route.namespace,
        "reference": route.reference,
        "digest": route.digest,
        "session_id": route.session,
        "uuid": route.session,
        "n": route.param("n"),
        "last": route.param("last"),
        "artifact_type": route.param("artifactType"),
        "from": route.param("from") if route.action == Action.MOUNT_BLOB else None,
        "digest_algorithm": route.param("digest-algorithm"),
    }
    if route.reference is not None and ":" not in route.reference:
        optional["tag"] = route.reference
    if route.action == Action.LIST_NAMESPACES:
        optional["repository"] = route.namespace
    variables.update({key: value for key, value in optional.items() if value is not None})
    return variables


class PolicyAuthorizer:
    """Authenticates, then requires the global and the repository policy to allow.

    ``state`` returns the current security state, so a configuration reload takes
    effect on the next request. A denied anonymous caller gets 401 (with a challenge,
    so clients retry with credentials); a denied authenticated caller gets 403.
    """

    def __init__(self, state: Callable[[], SecurityState], spans: Spans | None = None) -> None:
        """``spans`` opens a tracing span around authentication and policy evaluation."""
        self._state = state
        self._spans = spans

    async def authorize(self, request: IRequest, route: Route) -> None:
        if route.action in UNAUTHENTICATED_ACTIONS:
            return
        state = self._state()
        identity: Identity | None = getattr(request, "identity", None)
        if identity is None:
            with self._span("authenticate"):
                identity = await state.authenticator.authenticate(request)
            request.identity = identity  # type: ignore[attr-defined]
        with self._span("authorize"):
            decision = await self._decide(state, identity, route, request)
        if decision.allowed:
            return
        request.denial = decision.reason  # type: ignore[attr-defined]  # for the audit log
        _log.info("denied {action} on {namespace} for {who}: {reason}", action=route.action,
                  namespace=route.namespace, who=identity.describe(), reason=decision.reason)
        if not identity.authenticated:
            raise Unauthorized("authentication required")
        raise Denied(f"{route.action} is not allowed for {identity.describe()}")

    def _span(self, name: str) -> AbstractContextManager[object]:
        return self._spans(name) if self._spans is not None else contextlib.nullcontext()

    @staticmethod
    async def _decide(state: SecurityState, identity: Identity, route: Route, request: IRequest) -> Decision:
        variables = {"identity": identity.to_cel(), "request": request_variables(route)}
        decision = state.global_policy.decide(variables)
        repository = state.config.repository_for(route.namespace) if route.namespace is not None else None
        if decision.allowed and repository is not None:
            policy = state.repository_policies.get(repository.name)
            if policy is not None:
                decision = policy.decide(variables)
            webhook = repository.authorization_webhook
            if decision.allowed and webhook and state.webhooks is not None and \
                    not await state.webhooks.allows(webhook, identity, route, request):
                decision = Decision(False, f"authorization webhook {webhook!r} denied")
        return decision


class WebhookCheck(Protocol):
    async def allows(self, name: str, identity: Identity, route: Route, request: IRequest) -> bool: ...


class SecurityState:
    """Everything authorization derives from one configuration; replaced whole on reload."""

    def __init__(self, config: Config, authenticator: Authenticator, global_policy: AccessPolicy,
                 repository_policies: dict[str, AccessPolicy], webhooks: WebhookCheck | None = None) -> None:
        self.config = config
        self.authenticator = authenticator
        self.global_policy = global_policy
        self.repository_policies = repository_policies
        self.webhooks = webhooks

    @classmethod
    def build(cls, config: Config, authenticator: Authenticator, webhooks: WebhookCheck | None = None) -> SecurityState:
        """Compile every policy of ``config``; raises `PolicyError` naming the rule."""
        global_policy = AccessPolicy.compile(config.global_.access_policy, "global.access_policy")
        repository_policies = {
            repository.name: AccessPolicy.compile(repository.access_policy,
                                                  f'repository."{repository.name}".access_policy')
            for repository in config.repositories if repository.access_policy is not None
        }
        return cls(config, authenticator, global_policy, repository_policies, webhooks)

