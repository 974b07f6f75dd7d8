"""The authentication set-ups of docs/authentication.md (etc/examples/auth-*.toml) load, and
their policies decide as the document says."""

from __future__ import annotations

from pathlib import Path

import pytest

from angosd.actions import Action, Route
from angosd.auth.authorizer import request_variables
from angosd.auth.identity import CertificateIdentity, Identity, OidcIdentity
from angosd.auth.policy import AccessPolicy
from angosd.config import Config, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "examples"
DOC = Path(__file__).resolve().parents[2] / "docs" / "authentication.md"
ANONYMOUS = Identity(client_ip="192.0.2.1")
READS = (Action.GET_API_VERSION, Action.GET_MANIFEST, Action.GET_BLOB, Action.LIST_TAGS)
WRITES = (Action.PUT_MANIFEST, Action.START_UPLOAD, Action.DELETE_MANIFEST)


def load(name: str) -> Config:
    warnings: list[str] = []
    config = load_config([str(EXAMPLES / name)], warn=warnings.append)
    assert warnings == [], warnings
    return config


def allowed(config: Config, identity: Identity, action: Action, namespace: str = "example-org/app") -> bool:
    policy = AccessPolicy.compile(config.global_.access_policy, "global.access_policy")
    route = Route(action, "GET", f"/v2/{namespace}/", None if action == Action.GET_API_VERSION else namespace)
    return policy.decide({"identity": identity.to_cel(), "request": request_variables(route)}).allowed


def test_every_example_is_in_the_document() -> None:
    text = DOC.read_text()
    names = sorted(path.name for path in EXAMPLES.glob("auth-*.toml"))
    assert len(names) >= 3
    for name in names:
        assert f"etc/examples/{name}" in text, name
        assert (EXAMPLES / name).read_text().strip() in text, f"{name} is not shown whole in the document"


def test_public_read_ci_push() -> None:
    config = load("auth-public-read.toml")
    assert config.auth.token_service is not None
    assert config.auth.token_service.signing_key == "/etc/angosd/token.pem"
    ci = Identity(id="ci", username="ci")
    for action in READS:
        assert allowed(config, ANONYMOUS, action)
        assert allowed(config, ci, action)
    for action in WRITES:
        assert not allowed(config, ANONYMOUS, action)
        assert allowed(config, ci, action)


def test_mtls_only() -> None:
    config = load("auth-mtls.toml")
    assert config.server.tls is not None and config.server.tls.client_auth == "required"
    developer = Identity(certificate=CertificateIdentity(common_names=("alice",), organizational_units=("dev",)))
    robot = Identity(certificate=CertificateIdentity(common_names=("ci-1",), organizational_units=("deploy",)))
    for action in READS:
        assert not allowed(config, ANONYMOUS, action)
        assert allowed(config, developer, action)
    for action in WRITES:
        assert not allowed(config, developer, action)
        assert allowed(config, robot, action)


@pytest.mark.parametrize(("claims", "namespace", "may_push"), [
    ({"repository_owner": "example-org", "repository": "example-org/app", "ref": "refs/heads/main"},
     "example-org/app", True),
    ({"repository_owner": "example-org", "repository": "example-org/app", "ref": "refs/heads/feature"},
     "example-org/app", False),
    ({"repository_owner": "example-org", "repository": "example-org/app", "ref": "refs/heads/main"},
     "example-org/other", False),
    ({"repository_owner": "someone-else", "repository": "someone-else/app", "ref": "refs/heads/main"},
     "someone-else/app", False),
])
def test_oidc_for_ci(claims: dict[str, str], namespace: str, may_push: bool) -> None:
    config = load("auth-oidc-ci.toml")
    assert [provider.name for provider in config.auth.oidc] == ["github"]
    job = Identity(oidc=OidcIdentity("github", claims))
    assert allowed(config, job, Action.PUT_MANIFEST, namespace) is may_push
    assert allowed(config, ANONYMOUS, Action.GET_MANIFEST, namespace)
    assert not allowed(config, ANONYMOUS, Action.PUT_MANIFEST, namespace)


def test_ldap_groups() -> None:
    config = load("auth-ldap-groups.toml")
    assert config.auth.ldap is not None and config.auth.ldap.url.startswith("ldaps://")
    developer = Identity(id="dana", username="dana", groups=("developers",))
    publisher = Identity(id="ci", username="ci", groups=("registry-publishers",))
    admin = Identity(id="root", username="root", groups=("registry-admins",))
    for action in READS:
        assert not allowed(config, ANONYMOUS, action)
        assert allowed(config, developer, action)
    assert not allowed(config, developer, Action.PUT_MANIFEST)
    assert allowed(config, publisher, Action.PUT_MANIFEST)
    assert not allowed(config, publisher, Action.DELETE_MANIFEST)
    assert allowed(config, admin, Action.DELETE_MANIFEST)
