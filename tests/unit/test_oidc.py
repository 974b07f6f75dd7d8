"""OIDC token validation against a real in-process issuer (tests/oidc_issuer.py).

Network I/O uses the real reactor and a real treq client; token times, JWKS expiry, refetch
rate limiting and fetch timeouts use a fake clock (`twisted.internet.task.Clock`).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from angosd.auth.oidc import (
    MAX_DOCUMENT_SIZE,
    REFETCH_MIN_INTERVAL,
    RETRY_AFTER_FAILURE,
    InvalidToken,
    OidcProviders,
    OidcValidator,
    make_http_client,
)
from angosd.config import OidcConfig
from tests.oidc_issuer import OidcIssuer, b64url, hand_made, make_ca_and_server_cert

NOW = 1_700_000_000.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer().start()
    yield issuer
    pytest_twisted.blockon(issuer.stop())


@pytest.fixture
def pool() -> Iterator[HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield pool
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def http(pool: HTTPConnectionPool) -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=pool))


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


def config_for(issuer: OidcIssuer, discovery: bool = False, **overrides: Any) -> OidcConfig:
    config = OidcConfig(name="corp", issuer=issuer.issuer, jwks_uri=None if discovery else issuer.jwks_uri,
                        required_audience="angosd", required_claims={})
    return replace(config, **overrides)


@pytest.fixture
def validator(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> OidcValidator:
    return OidcValidator(config_for(issuer, allowed_algorithms=("RS256", "ES256")), http, clock)


async def refused(validator: OidcValidator | OidcProviders, token: str) -> str:
    """The reason ``token`` is refused; fails on acceptance or on any other exception type."""
    with pytest.raises(InvalidToken) as info:
        if isinstance(validator, OidcProviders):
            await validator.validate_any(token)
        else:
            await validator.validate(token)
    assert token not in str(info.value)
    for segment in token.split("."):
        assert len(segment) < 8 or segment not in str(info.value)
    return info.value.reason


def run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


# --------------------------------------------------------------------------- valid tokens


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("discovery", [False, True])
@pytest_twisted.ensureDeferred
async def test_valid_token(issuer: OidcIssuer, http: HTTPClient, clock: Clock, alg: str, discovery: bool) -> None:
    validator = OidcValidator(config_for(issuer, discovery, allowed_algorithms=("RS256", "ES256")), http, clock)
    claims = issuer.claims(NOW, email="alice@example.com")
    identity = await validator.validate(issuer.issue(claims, alg=alg))
    assert identity.provider_name == "corp"
    assert dict(identity.claims) == claims
    assert issuer.jwks_fetches == 1
    assert issuer.discovery_fetches == (1 if discovery else 0)


@pytest_twisted.ensureDeferred
async def test_audience_list_and_no_audience_requirement(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    validator = OidcValidator(config_for(issuer), http, clock)
    await validator.validate(issuer.issue(issuer.claims(NOW, aud=["other", "angosd"])))
    anyone = OidcValidator(config_for(issuer, required_audience=None), http, clock)
    await anyone.validate(issuer.issue(issuer.claims(NOW, aud="someone-else")))
    await anyone.validate(issuer.issue(issuer.claims(NOW, aud=None)))


@pytest_twisted.ensureDeferred
async def test_kid_optional_only_with_a_single_key(issuer: OidcIssuer, validator: OidcValidator) -> None:
    token = issuer.issue(issuer.claims(NOW), kid=None)
    assert await refused(validator, token) == "token has no kid"
    issuer.published = [issuer.rsa]
    single = OidcValidator(validator.config, validator._http, validator._clock)
    await single.validate(token)


# --------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
@pytest_twisted.ensureDeferred
async def test_alg_none_refused(issuer: OidcIssuer, validator: OidcValidator, alg: str) -> None:
    claims = issuer.claims(NOW, sub="admin")
    unsigned = hand_made({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, claims)
    assert await refused(validator, unsigned) == "malformed token"  # no signature segment at all
    with_junk = hand_made({"alg": alg, "kid": "rsa-1"}, claims, lambda _: b"x" * 32)
    assert await refused(validator, with_junk) == "algorithm not allowed"
    assert issuer.jwks_fetches == 0


@pytest.mark.parametrize("allowed", [("RS256",), ("RS256", "HS256")])
@pytest_twisted.ensureDeferred
async def test_hs256_with_public_key_as_secret_refused(issuer: OidcIssuer, http: HTTPClient, clock: Clock,
                                                       allowed: tuple[str, ...]) -> None:
    # Even a misconfigured allow-list (the config loader refuses HS*) cannot verify HMAC with an RSA JWK.
    validator = OidcValidator(config_for(issuer, allowed_algorithms=allowed), http, clock)
    secret = issuer.rsa.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hand_made({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, issuer.claims(NOW, sub="admin"),
                      lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    reason = await refused(validator, token)
    if allowed == ("RS256",):
        assert reason == "algorithm not allowed"
        assert issuer.jwks_fetches == 0
    else:
        assert reason == "key does not fit the algorithm"


@pytest_twisted.ensureDeferred
async def test_es256_refused_when_only_rs256_allowed(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    validator = OidcValidator(config_for(issuer), http, clock)
    assert await refused(validator, issuer.issue(issuer.claims(NOW), alg="ES256")) == "algorithm not allowed"
    assert issuer.jwks_fetches == 0


@pytest_twisted.ensureDeferred
async def test_key_of_the_wrong_type_refused(issuer: OidcIssuer, validator: OidcValidator) -> None:
    rsa_signed_naming_ec_key = issuer.issue(issuer.claims(NOW), alg="RS256", kid="ec-1")
    assert await refused(validator, rsa_signed_naming_ec_key) == "key does not fit the algorithm"
    ec_signed_naming_rsa_key = issuer.issue(issuer.claims(NOW), alg="ES256", kid="rsa-1")
    assert await refused(validator, ec_signed_naming_rsa_key) == "key does not fit the algorithm"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"exp": NOW - 61}, "token expired"),
    ({"exp": NOW - 60}, "token expired"),
    ({"exp": None}, "token has no exp"),
    ({"exp": "tomorrow"}, "exp is not a number"),
    ({"exp": True}, "exp is not a number"),
    ({"exp": float("inf")}, "exp is not a number"),
    ({"nbf": NOW + 61}, "token not yet valid"),
    ({"iat": NOW + 61}, "token issued in the future"),
    ({"nbf": "now"}, "nbf is not a number"),
    ({"nbf": float("nan")}, "nbf is not a number"),
    ({"iat": -float("inf")}, "iat is not a number"),
    ({"iss": "https://evil.example"}, "wrong issuer"),
    ({"iss": None}, "wrong issuer"),
    ({"aud": "other"}, "wrong audience"),
    ({"aud": ["other", "x"]}, "wrong audience"),
    ({"aud": None}, "wrong audience"),
    ({"aud": {"angosd": 1}}, "wrong audience"),
])
@pytest_twisted.ensureDeferred
async def test_bad_claims_refused(issuer: OidcIssuer, validator: OidcValidator, overrides: dict[str, Any],
                                  reason: str) -> None:
    assert await refused(validator, issuer.issue(issuer.claims(NOW, **overrides))) == reason


@pytest.mark.parametrize("overrides", [{"exp": NOW - 59}, {"nbf": NOW + 59}, {"iat": NOW + 59}, {"exp": NOW + 0.5},
                                       {"exp": 10**400, "nbf": -(10**400)}])
@pytest_twisted.ensureDeferred
async def test_times_within_leeway_accepted(issuer: OidcIssuer, validator: OidcValidator,
                                            overrides: dict[str, Any]) -> None:
    await validator.validate(issuer.issue(issuer.claims(NOW, **overrides)))


@pytest_twisted.ensureDeferred
async def test_times_follow_the_injected_clock(issuer: OidcIssuer, validator: OidcValidator, clock: Clock) -> None:
    token = issuer.issue(issuer.claims(NOW, nbf=NOW + 120, exp=NOW + 600))
    assert await refused(validator, token) == "token not yet valid"
    clock.advance(61)
    await validator.validate(token)
    clock.advance(600)
    assert await refused(validator, token) == "token expired"


@pytest_twisted.ensureDeferred
async def test_tampered_token_refused(issuer: OidcIssuer, validator: OidcValidator) -> None:
    header, _, signature = issuer.issue(issuer.claims(NOW)).split(".")
    forged_payload = b64url(json.dumps(issuer.claims(NOW, sub="admin")).encode())
    assert await refused(validator, f"{header}.{forged_payload}.{signature}") == "bad signature"
    ec_header, ec_payload, _ = issuer.issue(issuer.claims(NOW), alg="ES256").split(".")
    _, _, other_signature = issuer.issue(issuer.claims(NOW, sub="bob"), alg="ES256").split(".")
    assert await refused(validator, f"{ec_header}.{ec_payload}.{other_signature}") == "bad signature"


@pytest_twisted.ensureDeferred
async def test_crit_header_refused(issuer: OidcIssuer, validator: OidcValidator) -> None:
    token = issuer.issue(issuer.claims(NOW), headers={"crit": ["exp"], "exp": 1})
    assert await refused(validator, token) in {"malformed token", "unsupported critical header"}


@pytest.mark.parametrize(("required", "reason"), [
    ({"tenant": "acme", "groups": "dev"}, None),
    ({"tenant": "other"}, "wrong value for claim tenant"),
    ({"groups": "admins"}, "wrong value for claim groups"),
    ({"department": "it"}, "missing claim department"),
    ({"email_verified": True}, "wrong value for claim email_verified"),  # the token says 1, not true
    ({"level": 3}, None),
])
@pytest_twisted.ensureDeferred
async def test_required_claims(issuer: OidcIssuer, http: HTTPClient, clock: Clock, required: dict[str, Any],
                               reason: str | None) -> None:
    validator = OidcValidator(config_for(issuer, required_claims=required), http, clock)
    token = issuer.issue(issuer.claims(NOW, email_verified=1, level=3))
    if reason is None:
        await validator.validate(token)
    else:
        assert await refused(validator, token) == reason


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # minting the weak token
@pytest_twisted.ensureDeferred
async def test_weak_rsa_key_refused(issuer: OidcIssuer, validator: OidcValidator) -> None:
    issuer.rsa.private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert await refused(validator, issuer.issue(issuer.claims(NOW))) == "key does not fit the algorithm"


# --------------------------------------------------------------------------- keys: refetch, rotation, caching


@pytest_twisted.ensureDeferred
async def test_unknown_kid_refetches_once_per_interval(issuer: OidcIssuer, validator: OidcValidator,
                                                       clock: Clock) -> None:
    await validator.validate(issuer.issue(issuer.claims(NOW)))
    assert issuer.jwks_fetches == 1
    for number in range(10):
        token = issuer.issue(issuer.claims(NOW), kid=f"unknown-{number}")
        assert await refused(validator, token) == "unknown key id"
    assert issuer.jwks_fetches == 2
    clock.advance(REFETCH_MIN_INTERVAL - 1)
    assert await refused(validator, issuer.issue(issuer.claims(clock.seconds()), kid="unknown")) == "unknown key id"
    assert issuer.jwks_fetches == 2
    clock.advance(1)
    assert await refused(validator, issuer.issue(issuer.claims(clock.seconds()), kid="unknown")) == "unknown key id"
    assert issuer.jwks_fetches == 3


@pytest_twisted.ensureDeferred
async def test_unknown_kid_on_cold_cache_fetches_once(issuer: OidcIssuer, validator: OidcValidator) -> None:
    assert await refused(validator, issuer.issue(issuer.claims(NOW), kid="unknown")) == "unknown key id"
    assert issuer.jwks_fetches == 1


@pytest_twisted.ensureDeferred
async def test_key_rotation(issuer: OidcIssuer, validator: OidcValidator) -> None:
    old_token = issuer.issue(issuer.claims(NOW))
    await validator.validate(old_token)
    new_key = issuer.rotate()
    identity = await validator.validate(issuer.issue(issuer.claims(NOW, sub="bob")))
    assert identity.claims["sub"] == "bob"
    assert new_key.kid == "rsa-2"
    assert issuer.jwks_fetches == 2
    assert await refused(validator, old_token) == "unknown key id"  # retired, and no refetch for 60 s
    assert issuer.jwks_fetches == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_validations_share_one_fetch(issuer: OidcIssuer, validator: OidcValidator) -> None:
    tokens = [issuer.issue(issuer.claims(NOW, sub=f"user{n}"), alg=("RS256", "ES256")[n % 2]) for n in range(10)]
    results = await DeferredList([run(validator.validate(token)) for token in tokens], consumeErrors=True)
    assert [identity.claims["sub"] for ok, identity in results if ok] == [f"user{n}" for n in range(10)]
    assert issuer.jwks_fetches == 1

    issuer.rotate(keep_old=True)
    tokens = [issuer.issue(issuer.claims(NOW, sub=f"rotated{n}")) for n in range(10)]
    results = await DeferredList([run(validator.validate(token)) for token in tokens], consumeErrors=True)
    assert all(ok for ok, _ in results)
    assert issuer.jwks_fetches == 2


@pytest_twisted.ensureDeferred
async def test_cancelled_validation_does_not_break_the_shared_fetch(issuer: OidcIssuer,
                                                                    validator: OidcValidator) -> None:
    token = issuer.issue(issuer.claims(NOW))
    first, second = run(validator.validate(token)), run(validator.validate(token))
    first.cancel()
    identity = await second
    assert identity.claims["sub"] == "alice"
    assert issuer.jwks_fetches == 1


@pytest_twisted.ensureDeferred
async def test_jwks_cached_for_refresh_interval(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    validator = OidcValidator(config_for(issuer, discovery=True, jwks_refresh_interval=100), http, clock)
    token = issuer.issue(issuer.claims(NOW, exp=NOW + 1000))
    await validator.validate(token)
    clock.advance(99)
    await validator.validate(token)
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)
    clock.advance(1)
    await validator.validate(token)
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (2, 2)
    # a key removed by the issuer disappears at the next refresh
    issuer.published = [issuer.ec]
    clock.advance(99)
    await validator.validate(token)
    clock.advance(1)
    assert await refused(validator, token) == "unknown key id"
    assert issuer.jwks_fetches == 3


@pytest_twisted.ensureDeferred
async def test_fetch_failure_keeps_the_cached_keys(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    validator = OidcValidator(config_for(issuer, jwks_refresh_interval=100), http, clock)
    token = issuer.issue(issuer.claims(NOW, exp=NOW + 1000))
    await validator.validate(token)
    issuer.jwks_status = 500
    clock.advance(100)
    await validator.validate(token)  # refresh failed: the previous keys stay in use
    assert issuer.jwks_fetches == 2
    await validator.validate(token)
    await refused(validator, issuer.issue(issuer.claims(clock.seconds()), kid="unknown"))
    assert issuer.jwks_fetches == 2  # no retry within RETRY_AFTER_FAILURE, not even for an unknown kid
    clock.advance(RETRY_AFTER_FAILURE)
    issuer.jwks_status = 200
    await validator.validate(token)
    assert issuer.jwks_fetches == 3
    clock.advance(99)
    await validator.validate(token)
    assert issuer.jwks_fetches == 3  # the successful refresh restarted the interval


@pytest.mark.parametrize("trouble", ["status", "not json", "no keys", "too large", "too large chunked", "gzip bomb",
                                     "discovery issuer", "discovery jwks_uri", "refused"])
@pytest_twisted.ensureDeferred
async def test_fetch_failure_without_cache(issuer: OidcIssuer, http: HTTPClient, clock: Clock, trouble: str) -> None:
    config = config_for(issuer, discovery=trouble.startswith("discovery"))
    if trouble == "status":
        issuer.jwks_status = 404
    elif trouble == "not json":
        issuer.jwks_body = b"<html>"
    elif trouble == "no keys":
        issuer.jwks_body = b'{"keys": {"kid": "rsa-1"}}'
    elif trouble.startswith("too large"):
        issuer.jwks_body = json.dumps({"keys": [issuer.rsa.jwk()], "pad": "x" * MAX_DOCUMENT_SIZE}).encode()
        issuer.chunked = trouble.endswith("chunked")
    elif trouble == "gzip bomb":
        issuer.jwks_body = gzip.compress(json.dumps({"keys": [issuer.rsa.jwk()], "pad": " " * 20 * MAX_DOCUMENT_SIZE})
                                         .encode())
        issuer.gzip = True
    elif trouble == "discovery issuer":
        issuer.discovery_issuer = "https://evil.example"
    elif trouble == "discovery jwks_uri":
        issuer.discovery_jwks_uri = "file:///etc/passwd"
    elif trouble == "refused":
        config = replace(config, jwks_uri="http://127.0.0.1:1/jwks.json")
    validator = OidcValidator(config, http, clock)
    token = issuer.issue(issuer.claims(NOW))
    assert (await refused(validator, token)).startswith("cannot fetch keys")
    fetches = issuer.jwks_fetches
    assert (await refused(validator, token)).startswith("cannot fetch keys")
    assert issuer.jwks_fetches == fetches  # no retry until RETRY_AFTER_FAILURE has passed
    clock.advance(RETRY_AFTER_FAILURE)
    issuer.jwks_status, issuer.jwks_body, issuer.discovery_issuer, issuer.discovery_jwks_uri = 200, None, None, None
    issuer.chunked = issuer.gzip = False
    if trouble != "refused":
        await validator.validate(token)


@pytest_twisted.ensureDeferred
async def test_fetch_times_out_on_the_injected_clock(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    validator = OidcValidator(config_for(issuer, http_request_timeout_secs=5.0), http, clock)
    issuer.stall = True
    pending = run(validator.validate(issuer.issue(issuer.claims(NOW, exp=NOW + 600))))
    while not issuer.stalled:
        await sleep(0.01)
    assert not pending.called
    clock.advance(5)
    with pytest.raises(InvalidToken, match="cannot fetch keys"):
        await pending


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_junk_keys_are_skipped(issuer: OidcIssuer, validator: OidcValidator) -> None:
    junk: list[Any] = [
        "a string", 7, None, {"kid": "rsa-1"}, {"kty": "RSA", "kid": "rsa-1", "n": 5, "e": "AQAB"},
        {"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"}, {**issuer.rsa.jwk(), "use": "enc"},
        {**issuer.rsa.jwk(), "key_ops": ["encrypt"]}, {**issuer.rsa.jwk(), "alg": "PS256"},
        {"kty": "EC", "kid": "rsa-1", "crv": "P-999", "x": "AA", "y": "AA"},
    ]
    issuer.jwks_body = json.dumps({"keys": [*junk, issuer.rsa.jwk()]}).encode()
    await validator.validate(issuer.issue(issuer.claims(NOW)))


# --------------------------------------------------------------------------- providers


@pytest_twisted.ensureDeferred
async def test_providers_pick_by_issuer(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    other = OidcIssuer().start()
    try:
        providers = OidcProviders([config_for(issuer), replace(config_for(other), name="partner")],
                                  {"corp": http, "partner": http}, clock)
        assert providers.by_name("partner") is not None
        assert providers.by_name("nobody") is None
        assert (await providers.validate_any(issuer.issue(issuer.claims(NOW)))).provider_name == "corp"
        assert (await providers.validate_any(other.issue(other.claims(NOW)))).provider_name == "partner"
        # a token naming one issuer but signed by the other is checked against the named issuer's keys
        assert await refused(providers, other.issue(issuer.claims(NOW))) == "bad signature"
        assert await refused(providers, issuer.issue(issuer.claims(NOW, iss="https://nobody.example"))) == (
            "unknown issuer")
        assert await refused(providers, "not.a.token") == "malformed token"
        partner = providers.by_name("partner")
        assert partner is not None
        await partner.validate(other.issue(other.claims(NOW)))
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_providers_sharing_an_issuer(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    providers = OidcProviders([config_for(issuer, name="ci", required_audience="ci"),
                               config_for(issuer, name="humans", required_audience="angosd")], http, clock)
    assert (await providers.validate_any(issuer.issue(issuer.claims(NOW)))).provider_name == "humans"
    assert (await providers.validate_any(issuer.issue(issuer.claims(NOW, aud="ci")))).provider_name == "ci"
    assert await refused(providers, issuer.issue(issuer.claims(NOW, aud="x"))) == "wrong audience"


# --------------------------------------------------------------------------- TLS


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")  # Twisted's CertificateOptions
@pytest_twisted.ensureDeferred
async def test_make_http_client_trusts_the_ca_bundle(tmp_path: Any, pool: HTTPConnectionPool, clock: Clock) -> None:
    ca_pem, server_cert = make_ca_and_server_cert("localhost")
    issuer = OidcIssuer().start(tls=server_cert, host="localhost")
    try:
        bundle = tmp_path / "ca.pem"
        unrelated = make_ca_and_server_cert("elsewhere")[0]
        bundle.write_bytes(unrelated + ca_pem)  # a bundle of several CAs
        config = config_for(issuer, discovery=True, server_ca_bundle=str(bundle))
        validator = OidcValidator(config, make_http_client(reactor, config, pool=pool), clock)
        await validator.validate(issuer.issue(issuer.claims(NOW)))

        untrusting = replace(config, server_ca_bundle=None)
        validator = OidcValidator(untrusting, make_http_client(reactor, untrusting, pool=pool), clock)
        assert (await refused(validator, issuer.issue(issuer.claims(NOW)))).startswith("cannot fetch keys")
        only_other_ca = tmp_path / "other.pem"
        only_other_ca.write_bytes(unrelated)
        wrong = replace(config, server_ca_bundle=str(only_other_ca))
        validator = OidcValidator(wrong, make_http_client(reactor, wrong, pool=pool), clock)
        assert (await refused(validator, issuer.issue(issuer.claims(NOW)))).startswith("cannot fetch keys")
    finally:
        await issuer.stop()


def test_make_http_client_default_pool_and_empty_bundle(tmp_path: Any) -> None:
    config = OidcConfig(name="corp", issuer="https://idp.example", jwks_uri=None, required_audience=None,
                        required_claims={})
    assert isinstance(make_http_client(reactor, config), HTTPClient)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        make_http_client(reactor, replace(config, server_ca_bundle=str(empty)))


# --------------------------------------------------------------------------- garbage

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
segments = st.text(alphabet=B64URL, max_size=80)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "none", "HS256", "PS256"]) | json_values},
    optional={"kid": st.sampled_from(["rsa-1", "ec-1", "zzz"]) | json_values, "crit": json_values,
              "b64": st.booleans(), "typ": json_values},
)


def encoded(value: Any) -> str:
    return b64url(json.dumps(value).encode())


structured = st.builds(lambda h, p, s: f"{encoded(h)}.{p}.{s}", headers,
                       segments | st.builds(encoded, json_values), segments)


@pytest_twisted.ensureDeferred
async def test_garbage_only_ever_raises_invalid_token(issuer: OidcIssuer, http: HTTPClient, clock: Clock) -> None:
    providers = OidcProviders([config_for(issuer, allowed_algorithms=("RS256", "ES256", "PS256"))], http, clock)
    validator = providers.by_name("corp")
    assert validator is not None
    valid = issuer.issue(issuer.claims(NOW))
    await validator.validate(valid)
    await refused(validator, issuer.issue(issuer.claims(NOW), kid="unknown"))
    assert issuer.jwks_fetches == 2
    # Keys cached and the unknown-kid refetch spent (the fake clock stands still): every
    # example completes synchronously, so hypothesis can drive it from a plain function.

    def check(token: str) -> None:
        for attempt in (validator.validate(token), providers.validate_any(token)):
            outcome: list[Any] = []
            run(attempt).addBoth(outcome.append)
            assert outcome, "validation needed the network"
            assert isinstance(outcome[0], Failure) and outcome[0].check(InvalidToken), outcome[0]
            assert len(token) < 8 or token not in str(outcome[0].value)

    @settings(max_examples=300, deadline=None)
    @given(st.text() | structured)
    def garbage(token: str) -> None:
        check(token)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, len(valid) - 1), st.sampled_from(B64URL + ".="))
    def mutated(index: int, character: str) -> None:
        token = valid[:index] + character + valid[index + 1:]
        if token != valid:
            check(token)

    garbage()
    mutated()
    assert issuer.jwks_fetches == 2
