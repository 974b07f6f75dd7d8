"""The registry token service (``[auth.token_service]``): what a token grants, and the
``Bearer`` challenges that send clients to ``/token``.

A scope (``repository:team/app:pull,push``, ``registry:catalog:*``) is granted action by
action, each only when the access policy allows that identity the registry actions it
stands for: a token never grants more than asked, nor more than the policy allows. The
registry then requires both the token's grant and the policy for every request.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.web.iweb import IRequest

from angosd.actions import WRITE_ACTIONS, Action, Route
from angosd.auth.identity import Grant, Identity
from angosd.auth.tokens import TokenSigner, hmac_key, load_private_key, load_verification_key
from angosd.config.model import TokenServiceConfig

#: The registry actions each token action stands for; all must be allowed to grant it.
SCOPE_ACTIONS: dict[str, tuple[Action, ...]] = {
    "pull": (Action.GET_MANIFEST, Action.GET_BLOB),
    "push": (Action.PUT_MANIFEST, Action.START_UPLOAD),
    "delete": (Action.DELETE_MANIFEST,),
}
CATALOG = ("registry", "catalog", "*")
#: Scopes asked in one token request, at most (each costs a policy evaluation).
MAX_SCOPES = 32
_PULL_ACTIONS = frozenset({Action.GET_MANIFEST, Action.GET_BLOB, Action.LIST_TAGS, Action.GET_REFERRERS,
                           Action.LIST_NAMESPACES, Action.LIST_REVISIONS})
_DELETE_ACTIONS = frozenset({Action.DELETE_MANIFEST, Action.DELETE_BLOB})
_CATALOG_ACTIONS = frozenset({Action.LIST_CATALOG, Action.LIST_REPOSITORIES})

#: Whether the policy allows ``identity`` the registry ``action`` on ``namespace``.
Allows = Callable[[Identity, Action, str | None], bool]


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(text: str) -> Scope | None:
    """``type:name:actions`` (the name may hold ``:``, e.g. a port); None when malformed."""
    kind, _, rest = text.partition(":")
    name, _, actions = rest.rpartition(":")
    kind = kind.split("(", 1)[0]  # "repository(plugin)" is a repository
    if not kind or not name or not actions:
        return None
    return Scope(kind, name, tuple(dict.fromkeys(a for a in actions.split(",") if a)))


def required_scope(route: Route) -> list[Grant]:
    """The token grants ``route`` needs (none for routes outside repositories and the catalog)."""
    action = route.action
    if action in _CATALOG_ACTIONS:
        return [("registry", "catalog", ("*",))]
    if route.namespace is None:
        return []
    if action in _DELETE_ACTIONS:
        return [("repository", route.namespace, ("delete",))]
    if action in WRITE_ACTIONS or action == Action.GET_UPLOAD:
        needed: list[Grant] = [("repository", route.namespace, ("pull", "push"))]
        source = route.param("from") if action == Action.MOUNT_BLOB else None
        if source:
            needed.append(("repository", source, ("pull",)))
        return needed
    if action in _PULL_ACTIONS:
        return [("repository", route.namespace, ("pull",))]
    return []


def covers(access: Iterable[Grant], needed: Iterable[Grant]) -> bool:
    """Whether the grants ``access`` include every action of ``needed``."""
    held: dict[tuple[str, str], set[str]] = {}
    for kind, name, actions in access:
        held.setdefault((kind, name), set()).update(actions)
    for kind, name, actions in needed:
        have = held.get((kind, name), set())
        if "*" not in have and not set(actions) <= have:
            return False
    return True


class TokenService:
    """One configuration's token service: grants, signs and challenges."""

    def __init__(self, config: TokenServiceConfig, signer: TokenSigner) -> None:
        self.config = config
        self.signer = signer

    @classmethod
    def build(cls, config: TokenServiceConfig) -> TokenService:
        """Load the keys ``config`` names; raises OSError or `TokenKeyError` naming a bad file."""
        signing = load_private_key(config.signing_key) if config.signing_key else hmac_key(config.secret_key or "")
        verification = [load_verification_key(path) for path in config.verification_keys]
        if config.signing_key and config.secret_key:
            secret = hmac_key(config.secret_key)
            verification.append((secret.kid, secret.algorithm, secret.public))
        return cls(config, TokenSigner(signing, verification, config.issuer, config.service))

    @property
    def ttl(self) -> int:
        return self.config.ttl_secs

    def realm(self, request: IRequest) -> str:
        """The ``/token`` URL of this registry as the client reached it (unless configured)."""
        if self.config.realm:
            return self.config.realm
        host = request.getHeader("Host") or "localhost"
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host}/token"

    def challenge(self, request: IRequest, route: Route, error: str | None = None) -> str:
        """The ``WWW-Authenticate`` value sending the client to the token endpoint for ``route``."""
        parts = [f'realm="{self.realm(request)}"', f'service="{self.config.service}"']
        scopes = [f"{kind}:{name}:{','.join(actions)}" for kind, name, actions in required_scope(route)]
        if scopes:
            parts.append(f'scope="{" ".join(scopes)}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def grant(self, identity: Identity, scopes: Sequence[Scope], allows: Allows) -> list[Grant]:
        """The part of ``scopes`` the policy allows ``identity``, action by action."""
        granted: list[Grant] = []
        for scope in scopes[:MAX_SCOPES]:
            if (scope.type, scope.name) == CATALOG[:2]:
                if "*" in scope.actions and allows(identity, Action.LIST_CATALOG, None):
                    granted.append(("registry", "catalog", ("*",)))
                continue
            if scope.type != "repository":
                continue
            wanted = list(SCOPE_ACTIONS) if "*" in scope.actions else scope.actions
            actions = tuple(a for a in wanted if a in SCOPE_ACTIONS and
                            all(allows(identity, action, scope.name) for action in SCOPE_ACTIONS[a]))
            if actions:
                granted.append(("repository", scope.name, actions))
        return granted

    def response(self, token: str, now: float, refresh: str | None) -> dict[str, Any]:
        """The token endpoint's JSON answer (both the Docker and the OAuth2 field names)."""
        issued = datetime.datetime.fromtimestamp(int(now), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {"token": token, "access_token": token, "expires_in": self.ttl,
                                "issued_at": issued}
        if refresh is not None:
            body["refresh_token"] = refresh
        return body
