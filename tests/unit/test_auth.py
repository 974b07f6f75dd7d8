"""Credentials parsing, policy semantics, request variables, immutability, password users."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor

from angosd.auth.authorizer import request_variables
from angosd.auth.basic import PasswordUsers, hash_password
from angosd.auth.credentials import BasicCredentials, BearerToken, parse_authorization
from angosd.auth.identity import CertificateIdentity, Identity, OidcIdentity
from angosd.auth.policy import AccessPolicy, PolicyError
from angosd.config import AccessPolicyConfig, Config, GlobalConfig, IdentityConfig, RepositoryConfig
from angosd.daemon.live import tag_immutable
from angosd.http.router import parse_route
from angosd.oci.errors import Unauthorized
from tests.pools import started_pools


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    (f"Basic {b64('alice:pa:ss')}", BasicCredentials("alice", "pa:ss")),
    (f"basic {b64('alice:')}", BasicCredentials("alice", "")),
    ("Bearer abc.def.ghi", BearerToken("abc.def.ghi")),
    ("  Bearer   tok  ", BearerToken("tok")),
])
def test_parse_authorization(header: str | None, expected: object) -> None:
    assert parse_authorization(header) == expected


@pytest.mark.parametrize("header", ["Basic", "Basic !!", f"Basic {b64('nocolon')}", f"Basic {b64(':pw')}",
                                    "Bearer", "Digest x", "", "Basic " + "A" * 20000])
def test_malformed_authorization_is_unauthorized(header: str) -> None:
    with pytest.raises(Unauthorized):
        parse_authorization(header)


@given(st.text())
def test_any_header_parses_or_is_unauthorized(header: str) -> None:
    try:
        result = parse_authorization(header)
    except Unauthorized:
        return
    assert isinstance(result, (BasicCredentials, BearerToken))


def test_credentials_do_not_show_secrets() -> None:
    assert "hunter2" not in repr(BasicCredentials("a", "hunter2"))
    assert "tok" not in repr(BearerToken("tok"))


def policy(default: str, *rules: str) -> AccessPolicy:
    return AccessPolicy.compile(AccessPolicyConfig(default, rules), "global.access_policy")


VARIABLES = {"identity": Identity(username="bob").to_cel(), "request": {"action": "get-blob", "namespace": "a/b"}}


@pytest.mark.parametrize(("default", "rules", "allowed"), [
    ("deny", (), False),
    ("allow", (), True),
    ("deny", ("identity.username == 'bob'",), True),
    ("deny", ("identity.username == 'eve'",), False),
    ("allow", ("identity.username == 'bob'",), False),
    ("allow", ("identity.username == 'eve'",), True),
    ("deny", ("request.missing == 1",), False),
    ("allow", ("request.missing == 1",), False),
    ("deny", ("1 / 0 == 1",), False),
    ("deny", ("'not a boolean'",), False),
    ("allow", ("42",), False),
    ("deny", ("has(request.digest) && request.digest == 'x'", "request.namespace.startsWith('a/')"), True),
])
def test_policy_semantics_fail_closed(default: str, rules: tuple[str, ...], allowed: bool) -> None:
    assert policy(default, *rules).decide(VARIABLES).allowed is allowed


def test_rule_that_does_not_compile_names_where() -> None:
    with pytest.raises(PolicyError, match=r"global\.access_policy\.rules\[1\]"):
        policy("deny", "true", "request.action ==")


def test_request_variables_omit_absent_fields() -> None:
    manifest = request_variables(parse_route(b"PUT", b"/v2/apps/web/manifests/1.0"))
    assert manifest == {"action": "put-manifest", "method": "PUT", "path": "/v2/apps/web/manifests/1.0",
                        "namespace": "apps/web", "reference": "1.0", "tag": "1.0"}
    digest = "sha256:" + "a" * 64
    blob = request_variables(parse_route(b"GET", f"/v2/x/blobs/{digest}".encode()))
    assert blob["digest"] == digest and "reference" not in blob and "tag" not in blob
    mount = request_variables(parse_route(b"POST", f"/v2/x/blobs/uploads/?mount={digest}&from=y".encode()))
    assert mount["action"] == "mount-blob" and mount["from"] == "y" and mount["digest"] == digest
    assert "namespace" not in request_variables(parse_route(b"GET", b"/v2/_catalog?n=5"))


def test_identity_to_cel_shapes() -> None:
    anonymous = Identity().to_cel()
    assert anonymous["certificate"]["common_names"] == [] and anonymous["oidc"] is None
    assert not Identity().authenticated
    certified = Identity(certificate=CertificateIdentity(common_names=("build",), organizations=("ci",)))
    assert certified.authenticated and certified.to_cel()["certificate"]["organizations"] == ["ci"]
    token = Identity(oidc=OidcIdentity("idp", {"sub": "x", "groups": ["a"]}))
    assert token.to_cel()["oidc"]["claims"]["groups"] == ["a"] and token.describe() == "oidc:idp:x"


def immutability_config() -> Config:
    return Config(global_=GlobalConfig(immutable_tags=True, immutable_tags_exclusions=("^latest$",)),
                  repositories=(RepositoryConfig("apps", immutable_tags=True, immutable_tags_exclusions=("^rc-",)),
                                RepositoryConfig("tmp", immutable_tags=False),
                                RepositoryConfig("plain", immutable_tags=True)))


@pytest.mark.parametrize(("namespace", "tag", "immutable"), [
    ("apps/web", "1.0", True), ("apps/web", "rc-1", False), ("apps/web", "latest", True),
    ("tmp/x", "1.0", False), ("plain/x", "latest", False), ("plain/x", "2.0", True), ("other", "1.0", True),
])
def test_tag_immutability_rules(namespace: str, tag: str, immutable: bool) -> None:
    assert tag_immutable(immutability_config(), namespace, tag) is immutable


@pytest_twisted.ensureDeferred
async def test_password_users_check_off_the_reactor() -> None:
    users = PasswordUsers([IdentityConfig("admin", "root", hash_password("s3cret"))], started_pools(reactor).cpu,
                          reactor)
    assert await users.check("root", "s3cret") == "admin"
    assert await users.check("root", "s3cret") == "admin"  # the cached path
    assert await users.check("root", "wrong") is None
    assert await users.check("nobody", "s3cret") is None
