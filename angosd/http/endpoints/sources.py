"""Where a namespace's content comes from: the one seam between local and pull-through.

Endpoints ask `Sources.for_namespace` for a `ContentSource` and read through it; only
`PullThroughSource` knows of upstreams and caching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from angosd.config import RepositoryConfig
from angosd.oci.digest import Digest
from angosd.oci.names import Reference
from angosd.proxy.cache import BlobClient, PullThroughCache
from angosd.registry.manifests import StoredManifest
from angosd.registry.registry import Registry, paginate


def cache_headers(state: str) -> dict[str, str]:
    """How a pull-through answer was produced; stale answers also carry a standard Warning."""
    headers = {"X-Angosd-Cache": state}
    if state == "stale":
        headers["Warning"] = '110 angosd "Response is Stale: upstream unreachable"'
    return headers


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    """A manifest and the headers saying how it was obtained (none for the local store)."""

    manifest: StoredManifest
    headers: Mapping[str, str]


class ContentSource(Protocol):
    """The reads of one namespace's content."""

    async def manifest(self, namespace: str, reference: Reference) -> ManifestAnswer:
        """The manifest ``reference`` names; raises `ManifestUnknown` (and for pull-through,
        `UpstreamUnavailable`)."""

    async def tags(self, namespace: str) -> list[str]:
        """The namespace's tags, sorted; raises `NameUnknown`."""

    async def tags_page(self, namespace: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """At most ``limit`` of the namespace's tags after ``after``, sorted, and whether more
        follow; raises `NameUnknown`."""

    async def referrers(self, namespace: str, subject: Digest, artifact_type: str | None,
                        after: Digest | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Descriptors (JSON objects) of the manifests whose subject is ``subject``, in the
        order of their digests: only those after ``after``, at most ``limit``."""

    async def blob_size(self, namespace: str, digest: Digest) -> int:
        """The blob's size; raises `BlobUnknown`. Fetches nothing."""

    async def blob(self, namespace: str, digest: Digest, client: BlobClient | None) -> bool:
        """Make the blob servable from the local store: True when it was streamed to
        ``client`` instead (the response is written), False when the store now has it."""


class LocalSource:
    """The local store's content (`Registry`)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def manifest(self, namespace: str, reference: Reference) -> ManifestAnswer:
        return ManifestAnswer(await self._registry.manifests.get(namespace, reference), {})

    async def tags(self, namespace: str) -> list[str]:
        return await self._registry.manifests.list_tags(namespace)

    async def tags_page(self, namespace: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        return await self._registry.manifests.list_tags_page(namespace, after, limit)

    async def referrers(self, namespace: str, subject: Digest, artifact_type: str | None,
                        after: Digest | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        found = await self._registry.manifests.referrers(namespace, subject, artifact_type, after, limit)
        return [d.to_json() for d in found]

    async def blob_size(self, namespace: str, digest: Digest) -> int:
        return await self._registry.blobs.size(namespace, digest)

    async def blob(self, namespace: str, digest: Digest, client: BlobClient | None) -> bool:
        return False


class PullThroughSource:
    """The content of a pull-through repository's namespace, through its cache."""

    def __init__(self, cache: PullThroughCache, repository: RepositoryConfig) -> None:
        self._cache = cache
        self._repository = repository

    async def manifest(self, namespace: str, reference: Reference) -> ManifestAnswer:
        served = await self._cache.manifest(namespace, self._repository, reference)
        return ManifestAnswer(served.manifest, cache_headers(served.state))

    async def tags(self, namespace: str) -> list[str]:
        return await self._cache.tags(namespace, self._repository)

    async def tags_page(self, namespace: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        # Upstream tags come whole (merged with the cached ones); the page is cut from them.
        return paginate(await self.tags(namespace), limit, after)

    async def referrers(self, namespace: str, subject: Digest, artifact_type: str | None,
                        after: Digest | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        found = await self._cache.referrers(namespace, self._repository, subject, artifact_type)  # sorted by digest
        if after is not None:
            found = [entry for entry in found if str(entry.get("digest")) > str(after)]
        return found if limit is None else found[:limit]

    async def blob_size(self, namespace: str, digest: Digest) -> int:
        return await self._cache.blob_size(namespace, self._repository, digest)

    async def blob(self, namespace: str, digest: Digest, client: BlobClient | None) -> bool:
        return await self._cache.serve_blob(namespace, self._repository, digest, client)


class Sources:
    """Chooses a namespace's source: its pull-through repository's cache, else the local store.
    Asked on every request, so a configuration reload applies at once."""

    def __init__(self, registry: Registry, cache: PullThroughCache | None = None) -> None:
        self._local = LocalSource(registry)
        self._cache = cache

    def _repository(self, namespace: str) -> RepositoryConfig | None:
        return self._cache.repository(namespace) if self._cache is not None else None

    def is_pull_through(self, namespace: str) -> bool:
        """Whether ``namespace`` is served by a pull-through cache (so refuses writes)."""
        return self._repository(namespace) is not None

    def for_namespace(self, namespace: str) -> ContentSource:
        repository = self._repository(namespace)
        if repository is None or self._cache is None:
            return self._local
        return PullThroughSource(self._cache, repository)
