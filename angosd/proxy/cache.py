"""The pull-through cache: serve from the local store, fill misses from upstream.

- A manifest by digest, or by an immutable tag, is served locally once cached and never
  asks upstream. A mutable tag is revalidated with a HEAD and refetched only if its digest
  changed. When every upstream fails, cached content is still served (stale-if-error),
  marked by a header and counted; uncached content fails with `UpstreamUnavailable`.
- A missing blob is fetched once: the upstream body streams into an upload session and,
  at the same time, to the client that asked. The last chunk is held back until the
  digest verifies, so a client never receives a complete body of wrong bytes: on a
  mismatch, or an upstream that dies mid-body, the client's connection is cut and
  nothing is cached. Concurrent requests for the same blob wait for that one fill and
  are then served locally. A client that disconnects does not stop the fill.

Nothing here speaks HTTP: answers are value objects (`Served`, `BlobFill`) and a blob
being filled streams into a `BlobClient`, which the HTTP layer turns into a response.
Background prefetching is not known here either: the cache calls the
``on_manifest_fetched`` callable it was built with for each manifest it answered from
upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from angosd.config import RepositoryConfig
from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown, ManifestUnknown, NameUnknown, OciError
from angosd.oci.manifest import Descriptor, parse_manifest
from angosd.oci.names import Reference
from angosd.outbound.client import OutboundHook
from angosd.proxy.upstream import Upstream, UpstreamError, UpstreamNotFound
from angosd.registry.manifests import StoredManifest
from angosd.registry.registry import Registry

_log = Logger()
_T = TypeVar("_T")
T = TypeVar("T")


class UpstreamUnavailable(OciError):
    """Nothing cached, and no upstream could answer (503)."""

    code = "UNAVAILABLE"
    status = 503
    message = "upstream registry unreachable and the content is not cached"


class CacheMetrics(Protocol):
    def hit(self, repository: str) -> None: ...
    def miss(self, repository: str) -> None: ...
    def stale(self, repository: str) -> None: ...
    def upstream_error(self, repository: str) -> None: ...


class _NoMetrics:
    def hit(self, repository: str) -> None: ...
    def miss(self, repository: str) -> None: ...
    def stale(self, repository: str) -> None: ...
    def upstream_error(self, repository: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Served:
    """A manifest answer and how the cache produced it: ``hit``, ``miss`` or ``stale``."""

    manifest: StoredManifest
    state: str


#: Called with (the cache, namespace, repository, answer) for each manifest the cache answered
#: after asking upstream (``hit`` after revalidation, or ``miss``); must not raise or wait.
ManifestFetched = Callable[["PullThroughCache", str, RepositoryConfig, Served], None]


@dataclass(frozen=True, slots=True)
class BlobFill:
    """How a blob filled from upstream is answered before its bytes: status 200, marked
    with the cache state ``miss``; ``length`` is the upstream's, None when it sent none."""

    length: int | None
    state: str = "miss"


class BlobClient(Protocol):
    """Where a blob being filled streams to while it is stored (a client's response).

    `begin` comes first, once, before any byte; then `write` calls throttled by the
    producer registered with `registerProducer`; then `finish` (the digest verified) or
    `abort` (the client must not take the bytes it got as complete)."""

    def begin(self, fill: BlobFill) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def notifyFinish(self) -> Deferred[None]: ...


class PullThroughCache:
    """Pull-through behaviour for namespaces of repositories that have upstreams.

    ``repository_for`` maps a namespace to its (current) repository configuration, so a
    configuration reload changes upstreams without a restart.
    """

    def __init__(self, registry: Registry, repository_for: Callable[[str], RepositoryConfig | None],
                 tag_immutable: Callable[[str, str], bool], reactor: Any, metrics: CacheMetrics | None = None,
                 on_manifest_fetched: ManifestFetched | None = None, outbound: OutboundHook | None = None) -> None:
        """``on_manifest_fetched`` hears of each manifest answered after asking upstream (the
        daemon's background prefetch); its failures are logged, never raised. ``outbound``
        sees every upstream request (tracing)."""
        self._outbound = outbound
        self._registry = registry
        self._on_manifest_fetched = on_manifest_fetched
        self._repository_for = repository_for
        self._tag_immutable = tag_immutable
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.metrics: CacheMetrics = metrics or _NoMetrics()
        self._clients: dict[Any, Upstream] = {}
        self._fills: dict[tuple[str, Digest], list[Deferred[None]]] = {}

    def repository(self, namespace: str) -> RepositoryConfig | None:
        """The pull-through repository serving ``namespace``, or None for local namespaces."""
        repository = self._repository_for(namespace)
        return repository if repository is not None and repository.is_pull_through else None

    def _upstreams(self, repository: RepositoryConfig) -> list[Upstream]:
        return [self._clients.setdefault(config, Upstream(config, self._reactor, hook=self._outbound))
                for config in repository.upstreams]

    @staticmethod
    def _remote_name(repository: RepositoryConfig, namespace: str) -> str:
        if namespace == repository.name:
            raise NameUnknown(f"{namespace} is the mirror itself; pull {namespace}/<image>")
        return namespace[len(repository.name) + 1:]

    # -- manifests -------------------------------------------------------------------------

    async def manifest(self, namespace: str, repository: RepositoryConfig, reference: Reference) -> Served:
        """The manifest for ``reference``, from the cache or an upstream (see module doc)."""
        name = self._remote_name(repository, namespace)
        try:
            local: StoredManifest | None = await self._registry.manifests.get(namespace, reference)
        except ManifestUnknown:
            local = None
        if local is not None and (reference.digest is not None or
                                  (reference.tag is not None and self._tag_immutable(namespace, reference.tag))):
            self.metrics.hit(repository.name)
            return Served(local, "hit")
        async def fetch(upstream: Upstream) -> Served:
            if local is not None:
                info = await upstream.head_manifest(name, str(reference))
                if info.digest == local.digest:
                    return Served(local, "hit")
            media_type, body = await upstream.get_manifest(name, str(reference),
                                                           self._registry.manifests.max_manifest_size)
            try:
                return Served(await self._store_manifest(namespace, reference, media_type, body), "miss")
            except OciError as exc:
                raise UpstreamError(f"{upstream.url} sent an unusable manifest: {exc}") from None

        try:
            served = await self._ask(repository, f"{name}:{reference}", fetch,
                                     lambda: ManifestUnknown(str(reference)))
        except (UpstreamUnavailable, ManifestUnknown):
            if local is None:
                raise
            self.metrics.stale(repository.name)
            return Served(local, "stale")
        (self.metrics.hit if served.state == "hit" else self.metrics.miss)(repository.name)
        self._fetched(namespace, repository, served)
        return served

    def _fetched(self, namespace: str, repository: RepositoryConfig, served: Served) -> None:
        if self._on_manifest_fetched is None:
            return
        try:
            self._on_manifest_fetched(self, namespace, repository, served)
        except Exception as exc:
            _log.warn("after fetching {namespace}@{digest}: {error}", namespace=namespace,
                      digest=str(served.manifest.digest), error=f"{type(exc).__name__}: {exc}")

    async def _ask(self, repository: RepositoryConfig, what: str, call: Callable[[Upstream], Awaitable[_T]],
                   not_found: Callable[[], OciError]) -> _T:
        """The first answer of the repository's upstreams, tried in order.

        An upstream's "not found" is an answer (raised as ``not_found()``); when none
        answers, `UpstreamUnavailable` names every upstream's failure.
        """
        problems = []
        for upstream in self._upstreams(repository):
            try:
                return await call(upstream)
            except UpstreamNotFound:
                raise not_found() from None
            except UpstreamError as exc:
                self.metrics.upstream_error(repository.name)
                problems.append(str(exc))
                _log.warn("upstream {url} failed for {what}: {error}", url=upstream.url, what=what, error=str(exc))
        raise UpstreamUnavailable(f"no upstream of {repository.name!r} answered for {what}: " + "; ".join(problems))

    async def _store_manifest(self, namespace: str, reference: Reference, media_type: str,
                              body: bytes) -> StoredManifest:
        """Verify an upstream manifest and store it (tagged when fetched by tag)."""
        if reference.digest is not None and Digest.of(body, reference.digest.algorithm) != reference.digest:
            raise UpstreamError(f"upstream manifest does not hash to {reference.digest}")
        manifest = await self._registry.manifests.put(namespace, reference, media_type or None, body,
                                                      strict=False)
        return StoredManifest(manifest.digest, manifest.media_type, body)

    async def tags(self, namespace: str, repository: RepositoryConfig) -> list[str]:
        """Upstream tags merged with cached ones; cached ones alone when upstream fails."""
        name = self._remote_name(repository, namespace)
        local = await self._registry.manifests.tags(namespace)
        for upstream in self._upstreams(repository):
            try:
                return sorted(set(local) | set(await upstream.tags(name)))
            except UpstreamNotFound:
                break
            except UpstreamError:
                self.metrics.upstream_error(repository.name)
        if not local:
            raise NameUnknown(namespace)
        return local

    async def upstream_tags(self, namespace: str, repository: RepositoryConfig) -> list[str]:
        """The tags the upstream lists now (no cached ones); raises `UpstreamUnavailable` when no
        upstream answers and `NameUnknown` when the upstream has no such repository."""
        name = self._remote_name(repository, namespace)
        return sorted(await self._ask(repository, f"{name} tags", lambda upstream: upstream.tags(name),
                                      lambda: NameUnknown(namespace)))

    async def referrers(self, namespace: str, repository: RepositoryConfig, subject: Digest,
                        artifact_type: str | None) -> list[dict[str, Any]]:
        """Upstream referrers merged with cached ones, as descriptor objects."""
        name = self._remote_name(repository, namespace)
        found = {str(d.digest): d.to_json()
                 for d in await self._registry.manifests.referrers(namespace, subject, artifact_type)}
        for upstream in self._upstreams(repository):
            try:
                for entry in await upstream.referrers(name, subject):
                    if artifact_type is None or entry.get("artifactType") == artifact_type:
                        found.setdefault(str(entry.get("digest")), entry)
                break
            except UpstreamError:
                self.metrics.upstream_error(repository.name)
        return [found[key] for key in sorted(found)]

    # -- blobs -----------------------------------------------------------------------------

    async def blob_size(self, namespace: str, repository: RepositoryConfig, digest: Digest) -> int:
        """For HEAD: the cached size, else the upstream's (nothing is fetched)."""
        if await self._registry.blobs.owns(namespace, digest):
            return await self._registry.blobs.size(namespace, digest)
        name = self._remote_name(repository, namespace)
        return await self._ask(repository, f"{name}@{digest}", lambda upstream: upstream.head_blob(name, digest),
                               lambda: BlobUnknown(str(digest)))

    async def serve_blob(self, namespace: str, repository: RepositoryConfig, digest: Digest,
                         client: BlobClient | None) -> bool:
        """Fill a missing blob while streaming it to ``client`` (if given).

        Returns False when the blob is (now) cached and should be served locally; True
        when this call streamed the blob to ``client`` (begun, and finished or aborted).
        Failing before `BlobClient.begin` (no upstream has it, none answers) raises.
        """
        if await self._registry.blobs.owns(namespace, digest):
            self.metrics.hit(repository.name)
            return False
        followers = self._fills.get((namespace, digest))
        if followers is not None:
            done: Deferred[None] = Deferred()
            followers.append(done)
            await done
            if await self._registry.blobs.owns(namespace, digest):
                return False
            raise UpstreamUnavailable(f"filling {digest} from upstream failed")
        self._fills[(namespace, digest)] = []
        # The fill runs on its own: cancelling this request's handler (Klein does so when the
        # client disconnects) must not cancel it, or every waiting follower fails with it.
        await _shielded(Deferred.fromCoroutine(self._lead_fill(namespace, repository, digest, client)))
        if client is None:
            if not await self._registry.blobs.owns(namespace, digest):
                raise UpstreamUnavailable(f"filling {digest} from upstream failed")
            return False
        return True

    async def _lead_fill(self, namespace: str, repository: RepositoryConfig, digest: Digest,
                         client: BlobClient | None) -> None:
        try:
            response = await self._open_upstream_blob(namespace, repository, digest)
            await self._fill(namespace, repository, digest, response, client)
        finally:
            for follower in self._fills.pop((namespace, digest)):
                follower.callback(None)  # a cancelled follower ignores this (Deferred.cancel)

    async def _open_upstream_blob(self, namespace: str, repository: RepositoryConfig, digest: Digest) -> IResponse:
        name = self._remote_name(repository, namespace)
        return await self._ask(repository, f"{name}@{digest}", lambda upstream: upstream.get_blob(name, digest),
                               lambda: BlobUnknown(str(digest)))

    async def _fill(self, namespace: str, repository: RepositoryConfig, digest: Digest, response: IResponse,
                    client: BlobClient | None) -> None:
        uploads = self._registry.uploads
        try:
            session = await uploads.start(namespace, digest.algorithm)
            sink = await uploads.open_sink(namespace, session, 0)
        except BaseException:
            response.deliverBody(_Discard())  # read and drop the body so the connection is released
            raise
        if client is not None:
            client.begin(BlobFill(None if response.length is UNKNOWN_LENGTH else int(response.length)))
        body = _TeeBody(sink, client, self._clock, repository.upstreams[0].read_timeout_secs if repository.upstreams
                        else 300.0)
        response.deliverBody(body)
        try:
            await body.finished
            await sink.finish()
            await uploads.complete(namespace, session, digest)
        except BaseException as exc:
            sink.abort()
            await uploads.cancel(namespace, session)
            self.metrics.upstream_error(repository.name)
            _log.warn("fill of {digest} into {namespace} failed: {error}", digest=str(digest), namespace=namespace,
                      error=f"{type(exc).__name__}: {exc}")
            body.fail_client()
            return
        self.metrics.miss(repository.name)
        body.release_client()


class _Discard(TwistedProtocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class _TeeBody(TwistedProtocol):
    """Upstream body -> upload sink (always) and the client (while it listens).

    The client's transport throttles the upstream while the client is attached; after it
    disconnects the fill continues at full speed. The last chunk is withheld until the
    caller has verified the digest (`release_client`), or the connection is cut
    (`fail_client`).
    """

    def __init__(self, sink: Any, client: BlobClient | None, clock: IReactorTime, idle_timeout: float) -> None:
        self._sink = sink
        self._client = client
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._held = b""
        self._idle: IDelayedCall | None = None
        self._paused = False  # by the client: the idle timeout does not run meanwhile
        self._error: Exception | None = None
        self._producer: Any = None
        self.finished: Deferred[None] = Deferred()
        if client is not None:
            client.notifyFinish().addErrback(self._client_gone)

    def connectionMade(self) -> None:
        self._producer = self.transport  # the upstream connection, as an IPushProducer
        if self._client is not None:
            # Not the upstream transport itself: the client's transport calls stopProducing
            # on its producer when the client disconnects, which must not stop the fill.
            self._client.registerProducer(_ClientThrottle(self), True)
        self._arm()

    def _arm(self) -> None:
        if self._paused:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._error = UpstreamError(f"upstream sent nothing for {self._idle_timeout:.0f}s")
        if self._producer is not None:
            self._producer.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._arm()
        if self._error is not None:
            return
        try:
            self._sink.write(data)
        except Exception as exc:
            self._error = exc
            self._producer.stopProducing()
            return
        if self._client is not None:
            if self._held:
                self._client.write(self._held)
            self._held = data

    def connectionLost(self, reason: Failure | None = None) -> None:
        # twisted.web.client loads OpenSSL: imported here, where an upstream response exists
        from twisted.web.client import ResponseDone

        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self._client is not None:
            self._client.unregisterProducer()
        if self._error is not None:
            self.finished.errback(self._error)
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(UpstreamError(f"upstream body failed: {reason.getErrorMessage()}"))

    def _client_gone(self, _reason: object = None) -> None:
        """The client disconnected: go on filling at full speed. (Its connection is gone, so
        there is nothing to unregister from: the channel has already dropped the request.)"""
        client, self._client = self._client, None
        if client is not None and self._producer is not None:
            self._producer.resumeProducing()
            self._paused = False
            self._arm()

    def throttle(self, pause: bool) -> None:
        """The client's transport asks to pause or resume the upstream (while it listens).

        A pause is not the upstream going quiet: the idle timeout stops until the resume."""
        if self._client is not None and self._producer is not None:
            self._paused = pause
            if pause:
                self._producer.pauseProducing()
                if self._idle is not None and self._idle.active():
                    self._idle.cancel()
            else:
                self._producer.resumeProducing()
                self._arm()

    def release_client(self) -> None:
        if self._client is not None:
            if self._held:
                self._client.write(self._held)
            self._client.finish()

    def fail_client(self) -> None:
        if self._client is not None:
            self._client.abort()


@implementer(IPushProducer)
class _ClientThrottle:
    """The producer a filling client's transport sees: it pauses and resumes the upstream
    while the client listens; its stopProducing (the client is gone) only detaches the client."""

    def __init__(self, tee: _TeeBody) -> None:
        self._tee = tee

    def pauseProducing(self) -> None:
        self._tee.throttle(True)

    def resumeProducing(self) -> None:
        self._tee.throttle(False)

    def stopProducing(self) -> None:
        self._tee._client_gone()


def _shielded(deferred: Deferred[T]) -> Deferred[T]:
    """A Deferred with ``deferred``'s result whose cancellation leaves ``deferred`` running."""
    waiter: Deferred[T] = Deferred()

    def relay(result: T | Failure) -> None:
        if waiter.called:  # cancelled (the client left): the fill's outcome is not needed
            return
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)

    deferred.addBoth(relay)
    return waiter


def descriptors(manifest_body: bytes, media_type: str) -> list[Descriptor]:
    """Child manifests and blobs a cached manifest refers to (for prefetching)."""
    try:
        manifest = parse_manifest(manifest_body, media_type)
    except OciError:
        return []
    return [*manifest.manifests, *manifest.referenced_blobs()]

