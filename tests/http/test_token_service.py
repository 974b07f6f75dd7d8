"""The registry token service (``[auth.token_service]``), in memory: challenges, grants,
anonymous read with authenticated write, key rotation, HMAC tokens and the OAuth2 form."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from angosd.auth.basic import hash_password
from tests.inmemory import InMemoryDaemon

POLICY = """
[global.access_policy]
default = "deny"
rules = [
  "request.action in ['get-api-version', 'get-manifest', 'get-blob', 'list-tags']",
  "identity.username == 'ci'",
]

[auth.identity.ci]
username = "ci"
password = "{ci}"
"""


def write_key(path: Path, kind: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_config(signing: str, extra: str = "") -> str:
    return POLICY.format(ci=CI_HASH) + f'\n[auth.token_service]\nsigning_key = "{signing}"\nttl_secs = 60\n{extra}'


CI_HASH = hash_password("ci-pass")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys")
    return {"ec": write_key(base / "ec.pem", "ec"), "ed": write_key(base / "ed.pem", "ed"),
            "ec2": write_key(base / "ec2.pem", "ec")}


@pytest.fixture(scope="module")
def daemon(keys: dict[str, Path]) -> InMemoryDaemon:
    return InMemoryDaemon(token_config(str(keys["ec"])))


def get_token(daemon: InMemoryDaemon, scope: str | None, headers: dict[str, str] | None = None) -> str:
    query = urlencode({"service": "angosd", **({"scope": scope} if scope else {})})
    response = daemon.request("GET", f"/token?{query}", headers=headers)
    assert response.status == 200, response.body
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == 60
    return str(document["token"])


def access(token: str) -> list[dict[str, object]]:
    return list(jwt.decode(token, options={"verify_signature": False})["access"])


def test_v2_challenges_with_bearer_even_when_anonymous_may_call_it(daemon: InMemoryDaemon) -> None:
    response = daemon.request("GET", "/v2/", headers={"Host": "registry.example:5000"})
    assert response.status == 401
    assert response.error_codes == ["UNAUTHORIZED"]
    assert response.headers["www-authenticate"] == \
        'Bearer realm="http://registry.example:5000/token",service="angosd"'
    # Empty Basic credentials are anonymous, and still challenged.
    assert daemon.request("GET", "/v2/", headers=basic("", "")).status == 401


def test_anonymous_token_grants_pull_only(daemon: InMemoryDaemon) -> None:
    token = get_token(daemon, "repository:team/app:pull,push")
    assert access(token) == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    assert daemon.request("GET", "/v2/", headers=bearer(token)).status == 200
    assert daemon.request("GET", "/v2/team/app/tags/list", headers=bearer(token)).status == 404
    refused = daemon.request("POST", "/v2/team/app/blobs/uploads/", headers=bearer(token))
    assert refused.status == 401
    assert refused.headers["www-authenticate"].startswith('Bearer realm="http://')
    assert 'scope="repository:team/app:pull,push"' in refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    # A token for one repository does not open another.
    assert daemon.request("GET", "/v2/other/tags/list", headers=bearer(token)).status == 401


def test_wrong_password_gets_no_token(daemon: InMemoryDaemon) -> None:
    response = daemon.request("GET", "/token?service=angosd&account=ci", headers=basic("ci", "wrong"))
    assert response.status == 401
    assert response.error_codes == ["UNAUTHORIZED"]
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_ci_token_pushes_and_anonymous_token_pulls_it_back(daemon: InMemoryDaemon) -> None:
    token = get_token(daemon, "repository:team/app:pull,push", basic("ci", "ci-pass"))
    assert access(token) == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    data = b"layer bytes"
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    pushed = daemon.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", data,
                            {**bearer(token), "Content-Type": "application/octet-stream"})
    assert pushed.status == 201, pushed.body
    anonymous = get_token(daemon, "repository:team/app:pull")
    pulled = daemon.request("GET", f"/v2/team/app/blobs/{digest}", headers=bearer(anonymous))
    assert pulled.status == 200
    assert pulled.body == data


def test_never_more_than_asked(daemon: InMemoryDaemon) -> None:
    token = get_token(daemon, "repository:team/app:pull", basic("ci", "ci-pass"))
    assert access(token) == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    assert daemon.request("POST", "/v2/team/app/blobs/uploads/", headers=bearer(token)).status == 401
    assert access(get_token(daemon, None, basic("ci", "ci-pass"))) == []


def test_tampered_and_expired_tokens_are_refused(keys: dict[str, Path]) -> None:
    daemon = InMemoryDaemon(token_config(str(keys["ec"])))
    token = get_token(daemon, "repository:team/app:pull,push", basic("ci", "ci-pass"))
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["name"] = "other"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert daemon.request("GET", "/v2/other/tags/list", headers=bearer(f"{header}.{forged}.{signature}")).status \
        == 401
    assert daemon.request("GET", "/v2/team/app/tags/list", headers=bearer(token)).status == 404
    daemon.reactor.advance(61)
    expired = daemon.request("GET", "/v2/team/app/tags/list", headers=bearer(token))
    assert expired.status == 401
    assert b"expired" in expired.body


def test_rotation_keeps_tokens_of_the_previous_key(keys: dict[str, Path]) -> None:
    old = InMemoryDaemon(token_config(str(keys["ec"])))
    token = get_token(old, "repository:team/app:pull", basic("ci", "ci-pass"))
    rotated = InMemoryDaemon(token_config(str(keys["ed"]), f'verification_keys = ["{keys["ec"]}"]'))
    assert rotated.request("GET", "/v2/", headers=bearer(token)).status == 200
    new_token = get_token(rotated, "repository:team/app:pull")
    assert jwt.get_unverified_header(new_token)["alg"] == "EdDSA"
    unrelated = InMemoryDaemon(token_config(str(keys["ec2"])))
    assert unrelated.request("GET", "/v2/", headers=bearer(token)).status == 401


def test_hmac_secret_key_as_angos_configures_it() -> None:
    daemon = InMemoryDaemon(POLICY.format(ci=CI_HASH) + '\n[auth.token_service]\n'
                            'secret_key = "a-secret-of-at-least-thirty-two-bytes"\n'
                            'realm = "https://registry.example/token"\nttl_secs = 600\n')
    challenge = daemon.request("GET", "/v2/").headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="https://registry.example/token"')
    response = daemon.request("GET", "/token?scope=repository:a:pull", headers=basic("ci", "ci-pass"))
    token = response.json()["token"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert jwt.decode(token, "a-secret-of-at-least-thirty-two-bytes", algorithms=["HS256"], audience="angosd",
                      options={"verify_exp": False})["sub"] == "ci"
    assert daemon.request("GET", "/v2/a/tags/list", headers=bearer(token)).status == 404


def test_oauth2_password_and_refresh_token_grants(daemon: InMemoryDaemon) -> None:
    form = {"grant_type": "password", "username": "ci", "password": "ci-pass", "service": "angosd",
            "scope": "repository:team/app:pull,push repository:team/lib:pull", "access_type": "offline",
            "client_id": "containerd"}
    response = daemon.request("POST", "/token", urlencode(form).encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200, response.body
    document = response.json()
    assert access(document["access_token"]) == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "team/lib", "actions": ["pull"]}]
    refresh = document["refresh_token"]
    # A refresh token is not an access token.
    assert daemon.request("GET", "/v2/", headers=bearer(refresh)).status == 401
    again = daemon.request("POST", "/token", urlencode({"grant_type": "refresh_token", "refresh_token": refresh,
                                                         "scope": "repository:team/app:push"}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert again.status == 200
    assert access(again.json()["access_token"]) == [{"type": "repository", "name": "team/app", "actions": ["push"]}]
    wrong = daemon.request("POST", "/token", urlencode({**form, "password": "nope"}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status == 401
    unsupported = daemon.request("POST", "/token", b"grant_type=client_credentials",
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert unsupported.status == 415


def test_without_token_service_empty_basic_is_anonymous() -> None:
    daemon = InMemoryDaemon(POLICY.format(ci=CI_HASH))
    assert daemon.request("GET", "/v2/", headers=basic("", "")).status == 200
    assert daemon.request("GET", "/token").status == 404
    challenge = daemon.request("POST", "/v2/team/app/blobs/uploads/", headers=basic("", ""))
    assert challenge.status == 401
    assert challenge.headers["www-authenticate"].startswith("Basic ")
