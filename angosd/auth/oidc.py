"""OIDC bearer tokens: JWTs checked against the keys their issuer publishes.

A token is refused (`InvalidToken`) unless all of these hold, checked in this order:

1. it is a compact JWS whose header names an algorithm from ``allowed_algorithms``
   (so ``none`` and HMAC algorithms are refused before any key is looked at) and carries
   no ``crit`` extension;
2. its ``kid`` names a key of the issuer's JWKS that fits that algorithm (a token may omit
   ``kid`` only while the JWKS holds exactly one key);
3. its signature verifies with that key and exactly that algorithm;
4. ``iss`` is the configured issuer, ``aud`` contains ``required_audience`` (when set),
   ``exp`` is present and ``exp``/``nbf``/``iat`` are consistent with the injected clock
   give or take ``clock_skew_tolerance``, and every ``required_claims`` entry matches.

Keys come from ``jwks_uri``, or from the ``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``.
A JWKS is reused for ``jwks_refresh_interval`` seconds; concurrent validations share one fetch;
an unknown ``kid`` (key rotation) triggers one refetch, at most one per `REFETCH_MIN_INTERVAL`
seconds whatever the number of bad tokens; when a fetch fails the previous JWKS stays in use.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from angosd.auth.identity import OidcIdentity
from angosd.config import OidcConfig
from angosd.outbound.client import BodyTooLarge, ClientTLS, make_client, read_bounded

__all__ = [
    "MAX_DOCUMENT_SIZE",
    "MAX_TOKEN_LENGTH",
    "REFETCH_MIN_INTERVAL",
    "RETRY_AFTER_FAILURE",
    "InvalidToken",
    "OidcProviders",
    "OidcValidator",
    "make_http_client",
]

#: Largest discovery document or JWKS accepted (after gzip decoding).
MAX_DOCUMENT_SIZE = 1024 * 1024
#: Longest token looked at; real ID/access tokens are a few KiB.
MAX_TOKEN_LENGTH = 16 * 1024
#: Minimum seconds between two refetches triggered by an unknown ``kid``.
REFETCH_MIN_INTERVAL = 60.0
#: Seconds after a failed fetch before the next attempt (the previous JWKS is used meanwhile).
RETRY_AFTER_FAILURE = 10.0

#: Compact JWS serialization: three base64url segments, the signature never empty.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}\.[A-Za-z0-9_-]+={0,2}")

#: Signature only: pyjwt's own time checks use time.time(), and iss/aud are checked here.
_DECODE_OPTIONS: jwt.types.Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_aud": False,
    "require": [],
    "enforce_minimum_key_length": True,
}

_log = Logger()


class InvalidToken(Exception):
    """A token that does not authenticate anyone; ``reason`` is short and never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _FetchError(Exception):
    """A discovery document or JWKS that could not be fetched or is unusable."""


def _usable_key(jwk: object) -> bool:
    """A JWK that may verify signatures: public-key type, ``use`` sig (or none), ``verify`` allowed."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str) or jwk["kty"] == "oct":
        return False
    if not isinstance(jwk.get("kid", ""), str) or jwk.get("use", "sig") != "sig":
        return False
    key_ops = jwk.get("key_ops")
    return key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops)


class _KeySet:
    """One fetched JWKS: its usable keys and the `jwt.PyJWK` built for each (key, algorithm)."""

    def __init__(self, keys: Sequence[dict[str, Any]], fetched_at: float) -> None:
        self.keys = tuple(keys)
        self.fetched_at = fetched_at
        self._parsed: dict[tuple[int, str], jwt.PyJWK | None] = {}

    def has_kid(self, kid: str | None) -> bool:
        """Whether a key matches ``kid`` (None: whether the set has exactly one key)."""
        if kid is None:
            return len(self.keys) == 1
        return any(jwk.get("kid") == kid for jwk in self.keys)

    def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key named ``kid`` that can verify ``algorithm``, or None."""
        for index, jwk in enumerate(self.keys):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if (index, algorithm) not in self._parsed:
                self._parsed[index, algorithm] = self._parse(jwk, algorithm)
            key = self._parsed[index, algorithm]
            if key is not None:
                return key
        return None

    @staticmethod
    def _parse(jwk: dict[str, Any], algorithm: str) -> jwt.PyJWK | None:
        if jwk.get("alg", algorithm) != algorithm:
            return None
        try:
            # Binding the algorithm here makes pyjwt refuse a token whose header says otherwise,
            # and fails for a key of the wrong type or curve.
            key = jwt.PyJWK(jwk, algorithm=algorithm)
            too_weak = key.Algorithm.check_key_length(key.key)  # e.g. RSA below 2048 bits
        except Exception:  # remote data: any malformed key is just not a usable key
            return None
        return None if too_weak else key


def _is_number(value: object) -> bool:
    """An int (any size: ``math.isfinite`` would overflow) or a finite float; not a bool.

    pyjwt parses JSON with ``json.loads``, which accepts ``NaN`` and ``Infinity``.
    """
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _claim_matches(actual: object, required: object) -> bool:
    """``actual == required`` without ``True == 1``; a list ``actual`` may contain ``required``."""

    def same(a: object, b: object) -> bool:
        return isinstance(a, bool) == isinstance(b, bool) and a == b

    return same(actual, required) or (isinstance(actual, list) and any(same(item, required) for item in actual))


def _check_shape(token: object) -> str:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("malformed token")
    return token


class OidcValidator:
    """Validates the tokens of one ``[auth.oidc.NAME]`` provider.

    ``http`` fetches the discovery document and JWKS; ``clock`` drives token time checks,
    JWKS expiry, refetch rate limiting and fetch timeouts.
    """

    def __init__(self, config: OidcConfig, http: HTTPClient, clock: IReactorTime) -> None:
        self.config = config
        self._http = http
        self._clock = clock
        self._keyset: _KeySet | None = None
        self._waiters: list[Deferred[_KeySet]] | None = None  # not None while a fetch is in flight
        self._failed_at: float | None = None
        self._refetched_at: float | None = None

    async def validate(self, token: str) -> OidcIdentity:
        """The identity a token proves; raises `InvalidToken` for any token that proves nothing."""
        config = self.config
        try:
            header = jwt.get_unverified_header(_check_shape(token))
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in config.allowed_algorithms:
            raise InvalidToken("algorithm not allowed")
        if "crit" in header:
            raise InvalidToken("unsupported critical header")
        kid = header.get("kid")  # pyjwt has checked it is a string when present

        keyset, fresh = await self._current_keys()
        if kid is not None and not fresh and not keyset.has_kid(kid):
            keyset = await self._refetch_for_unknown_kid(keyset)
        if not keyset.has_kid(kid):
            raise InvalidToken("token has no kid" if kid is None else "unknown key id")
        key = keyset.key_for(kid, algorithm)
        if key is None:
            raise InvalidToken("key does not fit the algorithm")

        try:
            claims: dict[str, Any] = jwt.decode(token, key=key, algorithms=[algorithm], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token") from None
        self._check_claims(claims)
        return OidcIdentity(provider_name=config.name, claims=claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        config = self.config
        if claims.get("iss") != config.issuer:
            raise InvalidToken("wrong issuer")
        if config.required_audience is not None:
            audience = claims.get("aud")
            audiences = [audience] if isinstance(audience, str) else audience
            if not isinstance(audiences, list) or config.required_audience not in audiences:
                raise InvalidToken("wrong audience")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise InvalidToken(f"{name} is not a number")
        if "exp" not in claims:
            raise InvalidToken("token has no exp")
        now, leeway = self._clock.seconds(), config.clock_skew_tolerance
        if claims["exp"] <= now - leeway:
            raise InvalidToken("token expired")
        if "nbf" in claims and claims["nbf"] > now + leeway:
            raise InvalidToken("token not yet valid")
        if "iat" in claims and claims["iat"] > now + leeway:
            raise InvalidToken("token issued in the future")
        for name, required in config.required_claims.items():
            if name not in claims:
                raise InvalidToken(f"missing claim {name}")
            if not _claim_matches(claims[name], required):
                raise InvalidToken(f"wrong value for claim {name}")

    # ------------------------------------------------------------------ keys

    async def _current_keys(self) -> tuple[_KeySet, bool]:
        """The JWKS to use, and whether it was fetched for this call.

        The cache while fresh; otherwise a (shared) fetch, or the stale cache when fetching fails.
        """
        now = self._clock.seconds()
        cached = self._keyset
        if cached is not None and now < cached.fetched_at + self.config.jwks_refresh_interval:
            return cached, False
        if self._waiters is None and self._recently_failed(now):
            if cached is not None:
                return cached, False
            raise InvalidToken(f"cannot fetch keys of {self.config.name} (retrying later)")
        keyset = await self._shared_fetch()
        return keyset, keyset is not cached

    async def _refetch_for_unknown_kid(self, seen: _KeySet) -> _KeySet:
        """A fresh JWKS: the fetch in flight, else a new one unless rate limited (then ``seen``)."""
        if self._waiters is None:
            now = self._clock.seconds()
            if self._recently_failed(now) or (
                self._refetched_at is not None and now < self._refetched_at + REFETCH_MIN_INTERVAL
            ):
                return seen
            self._refetched_at = now
        return await self._shared_fetch()

    def _recently_failed(self, now: float) -> bool:
        return self._failed_at is not None and now < self._failed_at + RETRY_AFTER_FAILURE

    def _shared_fetch(self) -> Deferred[_KeySet]:
        """Wait for the fetch in flight, starting one if there is none."""
        waiter: Deferred[_KeySet] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
        else:
            self._waiters = [waiter]
            Deferred.fromCoroutine(self._fetch()).addBoth(self._settle)
        return waiter

    def _settle(self, result: _KeySet | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _fetch(self) -> _KeySet:
        try:
            keys = await self._download()
        except Exception as error:  # network, HTTP status, size, JSON, document shape, timeout
            self._failed_at = self._clock.seconds()
            stale = self._keyset is not None
            _log.warn("OIDC provider {name}: cannot fetch keys ({error}){stale}", name=self.config.name,
                      error=str(error) or type(error).__name__, stale="; keeping the previous keys" if stale else "")
            if self._keyset is not None:
                return self._keyset
            raise InvalidToken(f"cannot fetch keys of {self.config.name}") from None
        self._failed_at = None
        self._keyset = _KeySet(keys, self._clock.seconds())
        return self._keyset

    async def _download(self) -> list[dict[str, Any]]:
        jwks_uri = self.config.jwks_uri
        if jwks_uri is None:
            issuer = self.config.issuer
            discovery = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
            if not isinstance(discovery, dict) or discovery.get("issuer") != issuer:
                raise _FetchError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            secure = issuer.startswith("https://")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://" if secure else ("https://", "http://")):
                raise _FetchError("the discovery document has no usable jwks_uri")
        jwks = await self._get_json(jwks_uri)
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list):
            raise _FetchError("the JWKS has no keys list")
        return [jwk for jwk in keys if _usable_key(jwk)]

    def _get_json(self, url: str) -> Deferred[Any]:
        """GET ``url`` as JSON: status 200, at most `MAX_DOCUMENT_SIZE` bytes, headers and body
        within ``http_request_timeout_secs`` of the injected clock."""
        fetch = Deferred.fromCoroutine(self._get_json_now(url))
        return fetch.addTimeout(self.config.http_request_timeout_secs, self._clock)

    async def _get_json_now(self, url: str) -> Any:
        response = await self._http.get(url, headers=Headers({b"Accept": [b"application/json"]}),
                                        allow_redirects=False, unbuffered=True)
        try:
            body = await read_bounded(response, MAX_DOCUMENT_SIZE)
        except BodyTooLarge:
            raise _FetchError(f"{url}: document too large") from None
        if response.code != 200:
            raise _FetchError(f"{url}: HTTP {response.code}")
        return json.loads(body)


class OidcProviders:
    """All configured providers.

    ``http`` is one client for all, or each provider's client by provider name (so each can
    trust its own ``server_ca_bundle``: see `make_http_client`).
    """

    def __init__(self, configs: Sequence[OidcConfig], http: HTTPClient | Mapping[str, HTTPClient],
                 clock: IReactorTime) -> None:
        self._validators = [
            OidcValidator(config, http if isinstance(http, HTTPClient) else http[config.name], clock)
            for config in configs
        ]
        self._by_name = {validator.config.name: validator for validator in self._validators}

    def by_name(self, name: str) -> OidcValidator | None:
        """The provider configured as ``[auth.oidc.<name>]``, if any."""
        return self._by_name.get(name)

    async def validate_any(self, token: str) -> OidcIdentity:
        """Validate with the provider whose issuer is the token's (unverified) ``iss``.

        When several providers share that issuer the first that accepts the token wins;
        `InvalidToken` carries the first refusal.
        """
        try:
            claims = jwt.decode(_check_shape(token), options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("malformed token") from None
        issuer = claims.get("iss")
        refusal: InvalidToken | None = None
        for validator in self._validators:
            if not isinstance(issuer, str) or validator.config.issuer != issuer:
                continue
            try:
                return await validator.validate(token)
            except InvalidToken as error:
                refusal = refusal or error
        raise refusal or InvalidToken("unknown issuer")


def make_http_client(reactor: Any, config: OidcConfig, *, pool: HTTPConnectionPool | None = None) -> HTTPClient:
    """The treq client that fetches a provider's keys: pooled connections, and when
    ``server_ca_bundle`` is set, TLS that trusts the certificates of that PEM bundle only."""
    client, _pool = make_client(reactor, ClientTLS(config.server_ca_bundle), pool=pool)
    return client
