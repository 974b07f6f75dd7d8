"""The registry facade: OCI semantics for one store, with no HTTP in sight."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from angosd.oci.digest import Digest
from angosd.oci.errors import NameUnknown
from angosd.oci.names import validate_name
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.listing import namespaces_after
from angosd.registry.manifests import ManifestStore
from angosd.registry.parsing import ManifestParser
from angosd.registry.pulls import PullTimes
from angosd.registry.uploads import UploadSessions
from angosd.storage.interface import IRedirectingDriver, IStorageDriver
from angosd.storage.pools import BoundedPool

#: Decides whether a caller may read blobs of another namespace (for mounts).
ReadCheck = Callable[[str], Awaitable[bool]]


class NotReady(Exception):
    """The store cannot be used right now; the message says why (no secrets, no paths of ours)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_manifest_size: int = 4 * 1024 * 1024
    max_blob_size: int = 100 * 1024**3


class Registry:
    """Blobs, uploads, manifests, tags, referrers and the catalog of one store.

    ``namespace_allowed`` says whether a (valid) namespace is served at all: with
    repositories configured, only namespaces inside one of them are. ``tag_immutable``
    says whether a tag of a namespace may not be moved once it exists; ``require_references``
    whether a manifest pushed into a namespace must only reference content it has. All are asked
    on every call, so they may follow a reloaded configuration.
    """

    def __init__(self, driver: IStorageDriver, clock: IReactorTime, limits: Limits,
                 namespace_allowed: Callable[[str], bool] = lambda _name: True,
                 tag_immutable: Callable[[str, str], bool] = lambda _namespace, _tag: False,
                 update_pull_time: Callable[[], bool] = lambda: False,
                 require_references: Callable[[str], bool] = lambda _namespace: False,
                 parse_pool: BoundedPool | None = None) -> None:
        """``parse_pool`` parses and hashes large manifests (`ManifestParser`; the daemon gives
        its ``io`` pool: on the ``cpu`` pool they would wait behind password checks); None: inline."""
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.uploads = UploadSessions(driver, self.blobs, clock, limits.max_blob_size)
        self.manifests = ManifestStore(driver, self.blobs, clock, limits.max_manifest_size,
                                       require_references=require_references, tag_immutable=tag_immutable,
                                       served=namespace_allowed, parser=ManifestParser(parse_pool))
        self._namespace_allowed = namespace_allowed
        #: Last-pull times, recorded when ``update_pull_time()`` says so.
        self.pulls = PullTimes(driver, clock, update_pull_time)

    def check_namespace(self, namespace: str) -> str:
        """Validate a namespace and check it is served; raises `NameInvalid`/`NameUnknown`."""
        validate_name(namespace)
        if not self._namespace_allowed(namespace):
            raise NameUnknown(namespace)
        return namespace

    async def mount(self, namespace: str, digest: Digest, source: str | None, may_read: ReadCheck) -> bool:
        """Give ``namespace`` a blob it can read elsewhere; False when it cannot.

        With ``source``, only that namespace is considered; without it, any owner the
        caller may read from. An unsatisfiable mount is not an error.
        """
        if await self.blobs.owns(namespace, digest):
            return True
        candidates = [source] if source is not None else await self.blobs.owners(digest)
        for candidate in candidates:
            if candidate == namespace or not self._namespace_allowed(candidate):
                continue
            if await self.blobs.owns(candidate, digest) and await may_read(candidate):
                await self.blobs.grant(namespace, digest)
                return True
        return False

    async def ready(self) -> None:
        """Return once the store answered a listing; raise `NotReady` (with the store's
        reason) when it cannot."""
        try:
            await self.driver.children(paths.REPOSITORIES)
        except Exception as exc:
            raise NotReady(str(exc)) from exc

    async def blob_redirect_url(self, namespace: str, digest: Digest, ttl: int) -> str | None:
        """A URL valid for ``ttl`` seconds from which the blob can be fetched directly, when the
        store offers such URLs; None (nothing checked) when it does not. Raises `BlobUnknown`
        before making a URL when ``namespace`` does not own the blob."""
        driver = IRedirectingDriver(self.driver, None)
        if driver is None:
            return None
        await self.blobs.size(namespace, digest)
        url: str | None = driver.redirect_url(paths.blob_data(digest), ttl)
        return url

    async def catalog(self) -> list[str]:
        """Every served namespace holding at least one manifest, sorted."""
        return (await self.catalog_page())[0]

    async def catalog_page(self, after: str | None = None, limit: int | None = None,
                           visible: Callable[[str], bool] = lambda _name: True) -> tuple[list[str], bool]:
        """Served namespaces holding at least one manifest that ``visible`` accepts, sorted:
        at most ``limit`` of them (all when None) after ``after``; and whether more follow.
        Reads only the part of the store the page needs (`angosd.registry.listing`)."""

        async def holds(name: str) -> bool:
            return self._namespace_allowed(name) and visible(name) and await self.manifests.exists(name)

        return await _take(namespaces_after(self.driver, after, holds), limit)

    async def namespaces(self, under: str | None = None) -> list[str]:
        """Every served namespace holding a manifest or an upload session (with ``under``,
        see `namespaces_page`), sorted."""
        return (await self.namespaces_page(under))[0]

    async def namespaces_page(self, under: str | None = None, after: str | None = None, limit: int | None = None,
                              visible: Callable[[str], bool] = lambda _name: True) -> tuple[list[str], bool]:
        """Served namespaces holding a manifest or an upload session that ``visible`` accepts,
        sorted: at most ``limit`` (all when None) after ``after``; and whether more follow.

        With ``under`` (a valid name), only ``under`` itself and the namespaces below
        ``under/``; only that part of the store is walked.
        """

        async def holds(name: str) -> bool:
            return (self._namespace_allowed(name) and visible(name)
                    and (await self.manifests.exists(name)
                         or bool(await self.driver.children_after(paths.uploads_dir(name), None, 1))))

        if under is not None:
            validate_name(under)
        return await _take(namespaces_after(self.driver, after, holds, under), limit)


async def _take(names: AsyncIterator[str], limit: int | None) -> tuple[list[str], bool]:
    """The first ``limit`` names (all when None), and whether more follow."""
    found: list[str] = []
    async for name in names:
        if limit is not None and len(found) == limit:
            await names.aclose()  # type: ignore[attr-defined]
            return found, True
        found.append(name)
    return found, False


def paginate(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Items after ``last`` (lexically), at most ``n``; and whether more follow."""
    if last is not None:
        items = [item for item in items if item > last]
    if n is None:
        return items, False
    return items[:n], len(items) > n
