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
from angosd.auth.token_service import TokenService, covers, required_scope
from angosd.config import Config
from angosd.oci.errors import Denied, Unauthorized

#: Actions that are never behind authentication (probes must work under default-deny; the
#: token endpoint authenticates its callers itself and grants only what the policy allows).
UNAUTHENTICATED_ACTIONS = frozenset({Action.HEALTHZ, Action.READYZ, Action.TOKEN})
_log = Logger()
#: Opens a tracing span named by its argument around a block (`angosd.observability.tracing`).
Spans = Callable[[str], AbstractContextManager[object]]


class Authorizer(Protocol):
    async def authorize(self, request: IRequest, route: Route) -> None:
        """Return when the request may proceed; raise `Unauthorized` or `Denied`
        otherwise. Runs on the headers only, before any body byte is read."""

    def may_list(self, request: IRequest, namespace: str) -> bool:
        """Whether the (authorized) caller of ``request`` may see ``namespace`` in listings."""


class AllowAll:
    """Anonymous full access, without looking at credentials."""

    async def authorize(self, request: IRequest, route: Route) -> None:
        return None

    def may_list(self, request: IRequest, namespace: str) -> bool:
        return True


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
        if route.action in UNAUTHENTICATED_ACTIONS or route.path == "/v1" or route.path.startswith("/v1/"):
            return  # the v1 API does not exist here: everyone gets the same 404
        state = self._state()
        try:
            await self._authorize(state, request, route)
        except Unauthorized as exc:
            if state.tokens is not None and "WWW-Authenticate" not in exc.headers:
                presented = getattr(request, "identity", None)
                error = "insufficient_scope" if presented is not None and presented.token_access is not None \
                    else None
                exc.headers["WWW-Authenticate"] = state.tokens.challenge(request, route, error)
            raise

    def may_list(self, request: IRequest, namespace: str) -> bool:
        """The policies (global, then the namespace's repository) allow the caller
        ``list-catalog`` with ``request.namespace`` set to ``namespace``."""
        identity: Identity | None = getattr(request, "identity", None)
        if identity is None:
            return False
        route = Route(Action.LIST_CATALOG, "GET", "/v2/_catalog", namespace)
        return self._state().decide(identity, route).allowed

    async def _authorize(self, state: SecurityState, request: IRequest, route: Route) -> None:
        identity: Identity | None = getattr(request, "identity", None)
        if identity is None:
            with self._span("authenticate"):
                identity = await state.authenticator.authenticate(request)
            request.identity = identity  # type: ignore[attr-defined]
        if state.tokens is not None and not identity.authenticated and identity.token_access is None and \
                route.action == Action.GET_API_VERSION:
            # Token flow: ``GET /v2/`` always challenges a caller without credentials, so
            # clients fetch a token (anonymously or not) and ``login`` checks the password.
            raise Unauthorized("authentication required: get a token")
        if identity.token_access is not None and not covers(identity.token_access, required_scope(route)):
            raise Unauthorized("the token does not grant this access")
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
        """The policies' decision, then the repository's authorization webhook's."""
        decision = state.decide(identity, route)
        repository = state.config.repository_for(route.namespace) if route.namespace is not None else None
        if decision.allowed and repository is not None:
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
                 repository_policies: dict[str, AccessPolicy], webhooks: WebhookCheck | None = None,
                 tokens: TokenService | None = None) -> None:
        self.config = config
        self.authenticator = authenticator
        self.global_policy = global_policy
        self.repository_policies = repository_policies
        self.webhooks = webhooks
        self.tokens = tokens

    def decide(self, identity: Identity, route: Route) -> Decision:
        """The global policy, then the policy of the route's repository (both must allow)."""
        variables = {"identity": identity.to_cel(), "request": request_variables(route)}
        decision = self.global_policy.decide(variables)
        repository = self.config.repository_for(route.namespace) if route.namespace is not None else None
        if decision.allowed and repository is not None:
            policy = self.repository_policies.get(repository.name)
            if policy is not None:
                decision = policy.decide(variables)
        return decision

    def allows(self, identity: Identity, action: Action, namespace: str | None) -> bool:
        """Whether the policies allow ``identity`` ``action`` on ``namespace`` (a request
        without reference or digest: rules that need one fail closed)."""
        path = "/v2/_catalog" if namespace is None else f"/v2/{namespace}/"
        return self.decide(identity, Route(action, "GET", path, namespace)).allowed

    @classmethod
    def build(cls, config: Config, authenticator: Authenticator, webhooks: WebhookCheck | None = None,
              tokens: TokenService | None = None) -> SecurityState:
        """Compile every policy of ``config``; raises `PolicyError` naming the rule."""
        global_policy = AccessPolicy.compile(config.global_.access_policy, "global.access_policy")
        repository_policies = {
            repository.name: AccessPolicy.compile(repository.access_policy,
                                                  f'repository."{repository.name}".access_policy')
            for repository in config.repositories if repository.access_policy is not None
        }
        return cls(config, authenticator, global_policy, repository_policies, webhooks, tokens)

