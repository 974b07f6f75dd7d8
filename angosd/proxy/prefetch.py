"""Fill a manifest's closure into the pull-through cache: child manifests, blobs, referrers.

Two users:

- `angosd mirror` awaits `CacheFill.fill` for each image it is given (every platform);
- the daemon prefetches in the background: the daemon builds the `PullThroughCache` with
  a `Prefetcher`'s `Prefetcher.after_fill` as its ``on_manifest_fetched``; when a fill
  stores an index and the repository sets ``prefetch_platforms``, it starts a fill of the
  matching child manifests and their blobs (config and layers), plus referrers.

Everything goes through the pull-through cache (seen here as a `FillSource`), so a
manifest fetched by digest is verified, blob fills are verified and shared with client
requests for the same blob (one upstream fetch), and what is already cached costs a stat,
never a download. Referrers are asked of the upstream's referrers API; an upstream without
one (or failing) only loses them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure

from angosd.config import RepositoryConfig
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.oci.manifest import Descriptor
from angosd.oci.names import Reference
from angosd.registry.manifests import StoredManifest
from angosd.registry.registry import Registry

_log = Logger()
#: Blob fills a prefetcher (or a mirror run) keeps going at once.
FILL_SLOTS = 4
_ATTESTATION_OF = "vnd.docker.reference.digest"


@dataclass(frozen=True, slots=True)
class PlatformFilter:
    """Which children of an index to fill: every one, or those of the listed platforms.

    A platform is ``(os, architecture, variant or None)``; without a variant any variant
    matches. Nested indexes are always followed, and docker attestation manifests come
    with the platform manifest they describe.
    """

    everything: bool = False
    platforms: tuple[tuple[str, str, str | None], ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> PlatformFilter:
        """From ``"all"`` or ``"os/arch[/variant]"`` strings (as validated by the config)."""
        platforms: list[tuple[str, str, str | None]] = []
        for spec in specs:
            if spec == "all":
                return cls(everything=True)
            parts = spec.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise ValueError(f'expected "os/arch[/variant]", got {spec!r}')
            platforms.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
        return cls(False, tuple(platforms))

    def __bool__(self) -> bool:
        return self.everything or bool(self.platforms)

    def _matches(self, platform: dict[str, Any] | None) -> bool:
        if platform is None:
            return False
        os_name, arch = platform.get("os"), platform.get("architecture")
        variant = platform.get("variant") or ("v8" if arch == "arm64" else None)
        for want_os, want_arch, want_variant in self.platforms:
            if (want_os, want_arch) != (os_name, arch):
                continue
            if want_variant is None or want_variant == variant:
                return True
        return False

    def select(self, children: Sequence[Descriptor]) -> list[Descriptor]:
        """The children of an index to fill, in index order."""
        if self.everything:
            return list(children)
        chosen = {child.digest for child in children
                  if child.media_type in mt.INDEXES or self._matches(child.platform)}
        for child in children:
            described = (child.annotations or {}).get(_ATTESTATION_OF)
            if described is not None and any(str(digest) == described for digest in chosen):
                chosen.add(child.digest)
        return [child for child in children if child.digest in chosen]


ALL_PLATFORMS = PlatformFilter(everything=True)


class ServedManifest(Protocol):
    """A manifest answer of the cache and how it was produced (``hit``, ``miss``, ``stale``)."""

    @property
    def manifest(self) -> StoredManifest: ...
    @property
    def state(self) -> str: ...


class FillSource(Protocol):
    """What a fill asks of the pull-through cache (`angosd.proxy.cache.PullThroughCache`)."""

    async def manifest(self, namespace: str, repository: RepositoryConfig,
                       reference: Reference) -> ServedManifest: ...
    async def referrers(self, namespace: str, repository: RepositoryConfig, subject: Digest,
                        artifact_type: str | None) -> list[dict[str, Any]]: ...
    async def serve_blob(self, namespace: str, repository: RepositoryConfig, digest: Digest,
                         client: None) -> bool: ...


class FillObserver(Protocol):
    """What a fill reports as it goes (`angosd mirror` draws its progress from it)."""

    def manifest(self, digest: Digest, state: str) -> None:
        """A manifest was found (``state``: hit, miss or stale)."""

    def blobs(self, missing: int, missing_bytes: int, cached: int) -> None:
        """The blobs of the closure are known: ``missing`` are to be fetched."""

    def blob_filled(self, digest: Digest, size: int) -> None:
        """One missing blob is now cached."""

    def note(self, message: str) -> None:
        """Something that went wrong without failing the fill (referrers)."""


class _Quiet:
    def manifest(self, digest: Digest, state: str) -> None: ...
    def blobs(self, missing: int, missing_bytes: int, cached: int) -> None: ...
    def blob_filled(self, digest: Digest, size: int) -> None: ...
    def note(self, message: str) -> None: ...


@dataclass(slots=True)
class FillResult:
    """What a fill found and did."""

    root: Digest
    state: str  # of the root manifest: hit, miss or stale
    manifests: int = 0
    blobs_fetched: int = 0
    blobs_cached: int = 0
    bytes_fetched: int = 0
    notes: list[str] = field(default_factory=list)


class CacheFill:
    """Fills closures of manifests of one pull-through cache (see the module doc)."""

    def __init__(self, cache: FillSource, registry: Registry, slots: DeferredSemaphore | None = None,
                 observer: FillObserver | None = None, referrers: bool = True) -> None:
        self._cache = cache
        self._registry = registry
        self._slots = slots or DeferredSemaphore(FILL_SLOTS)
        self._observer: FillObserver = observer or _Quiet()
        self._referrers = referrers

    async def fill(self, namespace: str, repository: RepositoryConfig, reference: Reference,
                   platforms: PlatformFilter = ALL_PLATFORMS) -> FillResult:
        """Cache ``reference`` of ``namespace``, its children for ``platforms``, their blobs
        and (best effort) referrers.

        Guarantees on return: every manifest of the closure is stored and every blob they
        reference is owned by ``namespace``. Raises the first failure (`OciError`,
        `UpstreamError`, `StorageError`) after the other blobs were tried, so a rerun has
        less to do; whatever was cached stays cached.
        """
        root = await self._cache.manifest(namespace, repository, reference)
        result = FillResult(root.manifest.digest, root.state)
        self._observer.manifest(root.manifest.digest, root.state)
        blobs = await self._manifests(namespace, repository, root.manifest, platforms, result)
        await self._blobs(namespace, repository, blobs, result)
        return result

    async def _manifests(self, namespace: str, repository: RepositoryConfig, root: StoredManifest,
                         platforms: PlatformFilter, result: FillResult) -> dict[Digest, int]:
        """Walk the closure's manifests (fetching missing ones); the blobs they reference."""
        queue: deque[tuple[StoredManifest, PlatformFilter]] = deque([(root, platforms)])
        seen = {root.digest}
        blobs: dict[Digest, int] = {}
        while queue:
            stored, wanted = queue.popleft()
            result.manifests += 1
            manifest = await self._registry.manifests.parser.parse(stored.body, stored.media_type,
                                                                   stored.digest.algorithm)
            for blob in manifest.referenced_blobs():
                blobs.setdefault(blob.digest, blob.size)
            children = [child.digest for child in wanted.select(manifest.manifests) if child.digest not in seen]
            seen.update(children)
            for digest in children:  # a child that cannot be fetched fails the fill
                queue.append((await self._child(namespace, repository, digest), wanted))
            if not self._referrers:
                continue
            for digest in await self._referrer_digests(namespace, repository, stored.digest, result):
                if digest in seen:
                    continue
                seen.add(digest)
                try:  # a referrer is best effort
                    queue.append((await self._child(namespace, repository, digest), ALL_PLATFORMS))
                except Exception as exc:
                    self._note(result, f"referrer {digest} of {stored.digest} not fetched: {_describe(exc)}")
        return blobs

    async def _child(self, namespace: str, repository: RepositoryConfig, digest: Digest) -> StoredManifest:
        served = await self._cache.manifest(namespace, repository, Reference(digest=digest))
        self._observer.manifest(digest, served.state)
        return served.manifest

    def _note(self, result: FillResult, message: str) -> None:
        result.notes.append(message)
        self._observer.note(message)

    async def _referrer_digests(self, namespace: str, repository: RepositoryConfig, subject: Digest,
                                result: FillResult) -> list[Digest]:
        try:
            entries = await self._cache.referrers(namespace, repository, subject, None)
        except Exception as exc:  # best effort: the upstream may have no referrers API
            self._note(result, f"referrers of {subject} not fetched: {_describe(exc)}")
            return []
        found = []
        for entry in entries:
            try:
                found.append(Digest.parse(str(entry.get("digest"))))
            except OciError:
                continue
        return found

    async def _blobs(self, namespace: str, repository: RepositoryConfig, blobs: dict[Digest, int],
                     result: FillResult) -> None:
        missing = []
        for digest, size in blobs.items():
            if await self._registry.blobs.owns(namespace, digest):
                result.blobs_cached += 1
            else:
                missing.append((digest, size))
        self._observer.blobs(len(missing), sum(size for _, size in missing), result.blobs_cached)

        async def fill_one(digest: Digest, size: int) -> None:
            await self._slots.acquire()
            try:
                await self._cache.serve_blob(namespace, repository, digest, None)
            finally:
                self._slots.release()
            result.blobs_fetched += 1
            result.bytes_fetched += size
            self._observer.blob_filled(digest, size)

        outcomes = await DeferredList([Deferred.fromCoroutine(fill_one(digest, size)) for digest, size in missing],
                                      consumeErrors=True)
        for success, outcome in outcomes:
            if not success:
                assert isinstance(outcome, Failure)
                outcome.raiseException()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- background prefetch


class Prefetcher:
    """Background fills after pull-through fills of indexes (one at a time per index).

    Given to the cache as its ``on_manifest_fetched`` (`after_fill`); the cache passes
    itself along, so the two are built without knowing each other's module."""

    def __init__(self, registry: Registry, reactor: Any, slots: int = FILL_SLOTS) -> None:
        self._registry = registry
        self._reactor = reactor
        self._slots = DeferredSemaphore(slots)
        self._running: dict[tuple[str, Digest], Deferred[None]] = {}

    def after_fill(self, cache: FillSource, namespace: str, repository: RepositoryConfig,
                   served: ServedManifest) -> None:
        """Called by the cache with each manifest it answered from upstream: an index freshly
        stored (``miss``) starts a prefetch when asked for. Never raises, never waits."""
        if served.state != "miss":
            return
        try:
            self.schedule(cache, namespace, repository, served.manifest)
        except Exception as exc:
            _log.warn("prefetch of {namespace}@{digest} not started: {error}", namespace=namespace,
                      digest=str(served.manifest.digest), error=f"{type(exc).__name__}: {exc}")

    def schedule(self, cache: FillSource, namespace: str, repository: RepositoryConfig,
                 stored: StoredManifest) -> None:
        """Start prefetching ``stored`` (an index just cached) through ``cache`` on the next
        reactor turn, if the repository asks for it and it is not being prefetched already."""
        if not repository.prefetch_platforms or stored.media_type not in mt.INDEXES:
            return
        key = (namespace, stored.digest)
        if key in self._running:
            return
        platforms = PlatformFilter.parse(repository.prefetch_platforms)
        run: Deferred[None] = Deferred()

        def start() -> None:  # after the response that caused it is on its way
            Deferred.fromCoroutine(self._prefetch(cache, namespace, repository, stored.digest,
                                                  platforms)).chainDeferred(run)

        self._reactor.callLater(0, start)
        self._running[key] = run
        run.addErrback(self._failed, namespace, stored.digest)
        run.addBoth(self._ended, key)

    def _ended(self, _result: object, key: tuple[str, Digest]) -> None:
        self._running.pop(key, None)

    async def _prefetch(self, cache: FillSource, namespace: str, repository: RepositoryConfig, digest: Digest,
                        platforms: PlatformFilter) -> None:
        fill = CacheFill(cache, self._registry, self._slots)
        result = await fill.fill(namespace, repository, Reference(digest=digest), platforms)
        _log.info("prefetched {namespace}@{digest}: {manifests} manifests, {fetched} blobs fetched "
                  "({bytes} bytes), {cached} already cached", namespace=namespace, digest=str(digest),
                  manifests=result.manifests, fetched=result.blobs_fetched, bytes=result.bytes_fetched,
                  cached=result.blobs_cached)
        for note in result.notes:
            _log.info("prefetch of {namespace}@{digest}: {note}", namespace=namespace, digest=str(digest), note=note)

    @staticmethod
    def _failed(failure: Failure, namespace: str, digest: Digest) -> None:
        _log.warn("prefetch of {namespace}@{digest} stopped: {error}", namespace=namespace, digest=str(digest),
                  error=f"{failure.type.__name__}: {failure.getErrorMessage()}")

    def idle(self) -> Deferred[None]:
        """Fires once every prefetch running now has ended (they never fail)."""
        return DeferredList(list(self._running.values())).addCallback(lambda _: None)
