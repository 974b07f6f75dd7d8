"""A client for one upstream registry: token negotiation, Basic auth, private TLS.

Everything goes through one treq `HTTPClient` per upstream (with its own connection
pool and TLS policy). A 401 carrying a ``Bearer`` challenge is answered by fetching a
token from the challenge's realm (with the upstream's credentials, if any); tokens are
cached per scope until they expire. A ``Basic`` challenge is answered with the
credentials. Redirects are followed up to ``max_redirect`` (Twisted drops the
Authorization header when a redirect leaves the origin, e.g. to a blob CDN).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from angosd.config import UpstreamConfig
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.outbound.client import BodyTooLarge, ClientTLS, OutboundHook, content, make_client, read_bounded

if TYPE_CHECKING:  # imported with the first client (they load OpenSSL)
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
MAX_JSON = 4 * 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class UpstreamError(Exception):
    """The upstream could not answer (unreachable, timed out, 5xx, refused our credentials)."""


class UpstreamNotFound(Exception):
    """The upstream answered that the manifest, blob or repository does not exist."""


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    digest: Digest
    media_type: str
    size: int


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class Upstream:
    """One configured upstream registry. ``name`` arguments are upstream repository names."""

    def __init__(self, config: UpstreamConfig, reactor: Any, http: HTTPClient | None = None,
                 hook: OutboundHook | None = None) -> None:
        self.config = config
        self.url = config.url.rstrip("/")
        self._clock: IReactorTime = reactor
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            tls = ClientTLS(config.server_ca_bundle, config.client_certificate, config.client_private_key)
            http, self._pool = make_client(reactor, tls, config.connect_timeout_secs, config.max_redirect,
                                           hook=hook)
        self._http = http
        self._tokens: dict[str, tuple[str, float]] = {}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    def _basic(self) -> str | None:
        if self.config.username is None:
            return None
        pair = f"{self.config.username}:{self.config.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def request(self, method: str, path: str, scope: str, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> IResponse:
        """One request, answering an auth challenge once. Raises `UpstreamError` when unreachable.

        The response body is not read (``unbuffered``): the caller consumes or discards it.
        """
        headers = dict(headers or {})
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > self._clock.seconds():
            headers["Authorization"] = f"Bearer {cached[0]}"
        response = await self._send(method, path, headers, timeout)
        if response.code != 401:
            return response
        challenge = response.headers.getRawHeaders("WWW-Authenticate", [""])[0]
        await content(response)
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer" and "realm" in params:
            headers["Authorization"] = f"Bearer {await self._token(params, scope)}"
        elif scheme == "basic" and self._basic() is not None:
            headers["Authorization"] = self._basic() or ""
        else:
            raise UpstreamError(f"{self.url} requires authentication ({scheme or 'no challenge'})")
        response = await self._send(method, path, headers, timeout)
        if response.code == 401:
            await content(response)
            raise UpstreamError(f"{self.url} refused our credentials")
        return response

    async def _send(self, method: str, path: str, headers: dict[str, str], timeout: float | None) -> IResponse:
        try:
            return await self._http.request(method, self.url + path, headers=_headers(headers), allow_redirects=False,
                                            unbuffered=True, timeout=timeout or self.config.read_timeout_secs)
        except Exception as exc:
            raise UpstreamError(f"{self.url} unreachable: {type(exc).__name__}: {str(exc)[:200]}") from None

    async def _token(self, params: dict[str, str], scope: str) -> str:
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        basic = self._basic()
        headers = {"Authorization": basic} if basic else {}
        try:
            response = await self._http.get(params["realm"], params=query, headers=_headers(headers),
                                            timeout=self.config.read_timeout_secs)
            body = await _bounded(response, MAX_JSON)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(f"token endpoint {params['realm']} unreachable: {type(exc).__name__}") from None
        if response.code != 200:
            raise UpstreamError(f"token endpoint {params['realm']} answered {response.code}")
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in", 60))
        except (ValueError, AttributeError, TypeError):
            raise UpstreamError(f"token endpoint {params['realm']} answered malformed JSON") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"token endpoint {params['realm']} gave no token")
        self._tokens[scope] = (token, self._clock.seconds() + max(lifetime - 10, 1))
        return token

    @staticmethod
    def scope(name: str) -> str:
        return f"repository:{name}:pull"

    async def _check(self, response: IResponse, what: str) -> None:
        if response.code == 200:
            return
        await content(response)
        if response.code == 404:
            raise UpstreamNotFound(what)
        raise UpstreamError(f"{self.url} answered {response.code} for {what}")

    async def head_manifest(self, name: str, reference: str) -> ManifestInfo:
        """The digest and type the upstream gives for a reference, without the body."""
        response = await self.request("HEAD", f"/v2/{name}/manifests/{reference}", self.scope(name),
                                      {"Accept": MANIFEST_ACCEPT})
        await self._check(response, f"{name}:{reference}")
        await content(response)
        digest = response.headers.getRawHeaders("Docker-Content-Digest", [""])[0]
        try:
            parsed = Digest.parse(digest)
        except OciError:
            raise UpstreamError(f"{self.url} gave no usable Docker-Content-Digest for {name}:{reference}") from None
        media_type = mt.base_type(response.headers.getRawHeaders("Content-Type", [""])[0])
        return ManifestInfo(parsed, media_type, int(response.headers.getRawHeaders("Content-Length", ["0"])[0]))

    async def get_manifest(self, name: str, reference: str, limit: int) -> tuple[str, bytes]:
        """The manifest's media type and exact bytes (at most ``limit`` bytes)."""
        response = await self.request("GET", f"/v2/{name}/manifests/{reference}", self.scope(name),
                                      {"Accept": MANIFEST_ACCEPT})
        await self._check(response, f"{name}:{reference}")
        body = await _bounded(response, limit)
        return mt.base_type(response.headers.getRawHeaders("Content-Type", [""])[0]), body

    async def head_blob(self, name: str, digest: Digest) -> int:
        """The blob's size as the upstream reports it."""
        response = await self.request("HEAD", f"/v2/{name}/blobs/{digest}", self.scope(name))
        await self._check(response, f"{name}@{digest}")
        await content(response)
        try:
            return int(response.headers.getRawHeaders("Content-Length", [""])[0])
        except ValueError:
            raise UpstreamError(f"{self.url} gave no Content-Length for {name}@{digest}") from None

    async def get_blob(self, name: str, digest: Digest) -> IResponse:
        """The upstream's 200 response for a blob (redirects followed), body unread."""
        response = await self.request("GET", f"/v2/{name}/blobs/{digest}", self.scope(name))
        await self._check(response, f"{name}@{digest}")
        return response

    async def tags(self, name: str) -> list[str]:
        response = await self.request("GET", f"/v2/{name}/tags/list", self.scope(name))
        await self._check(response, f"{name} tags")
        try:
            tags = json.loads(await _bounded(response, MAX_JSON)).get("tags") or []
        except (ValueError, AttributeError):
            raise UpstreamError(f"{self.url} answered malformed JSON for {name} tags") from None
        return [tag for tag in tags if isinstance(tag, str)]

    async def referrers(self, name: str, digest: Digest) -> list[dict[str, Any]]:
        response = await self.request("GET", f"/v2/{name}/referrers/{digest}", self.scope(name))
        if response.code == 404:
            await content(response)
            return []
        await self._check(response, f"{name} referrers of {digest}")
        try:
            manifests = json.loads(await _bounded(response, MAX_JSON)).get("manifests") or []
        except (ValueError, AttributeError):
            raise UpstreamError(f"{self.url} answered malformed JSON for referrers") from None
        return [entry for entry in manifests if isinstance(entry, dict)]


def _headers(headers: dict[str, str]) -> Headers:
    return Headers({name: [value] for name, value in headers.items()})


async def _bounded(response: IResponse, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes."""
    try:
        return await read_bounded(response, limit)
    except BodyTooLarge as exc:
        raise UpstreamError(f"upstream {exc}") from None
    except Exception as exc:
        raise UpstreamError(f"upstream body failed: {type(exc).__name__}") from None
