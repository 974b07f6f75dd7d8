"""The extension API (``/v2/_ext/...``): listings for the web UI and for operators.

Field names and types follow ``spec/API.md`` exactly; extra fields sit beside them.

- ``GET /v2/_ext/_repositories``: the configured repositories, sorted, with their
  namespace count and flags. With no repository configured (the embedded default),
  each first name component of a stored namespace stands for one (``"configured": false``),
  so the UI can still be browsed.
- ``GET /v2/_ext/REPO/_namespaces``: namespaces equal to REPO or below ``REPO/`` that
  belong to that repository (a nested repository keeps its own), holding a manifest or
  an upload session. An unknown repository is 404 ``NAME_UNKNOWN``; with no repository
  configured, REPO is a plain namespace prefix (404 when nothing is stored under it).
- ``GET /v2/_ext/NS/_revisions``: manifest revisions in the order of their digests, in pages
  (``n``, ``last``, ``Link``: `DigestPage`), each with its tags, the index that
  lists it (``parent``), push and last-pull times (epoch seconds), plus ``children``,
  ``platform``, ``referrers`` (manifests whose subject it is, and Docker attestation
  manifests that name it), ``size``, ``artifact_type`` and ``subject``.
- ``GET /v2/_ext/NS/_uploads``: upload sessions in progress.

A namespace's count of namespaces and its listing include namespaces that hold only an
upload session, so abandoned uploads can be found and cancelled.

``_repositories`` and ``_namespaces`` are paged like the catalog (``n``, ``last``, a ``Link``
to the next page; `DEFAULT_PAGE` items when no ``n`` is given), and a page reads only the
part of the store it lists: a repository's ``namespaces`` counts at most `COUNT_LIMIT` of them
(``namespaces_more`` is true when it holds more).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from angosd.actions import Action, Route
from angosd.config import Config, RepositoryConfig
from angosd.http.endpoints.base import Handler
from angosd.http.endpoints.digest_pages import DigestPage
from angosd.http.endpoints.listings import DEFAULT_PAGE, PageRequest
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond_json
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import ManifestUnknown, NameInvalid, NameUnknown
from angosd.oci.manifest import Descriptor
from angosd.oci.names import is_valid_name, validate_name
from angosd.registry import paths
from angosd.registry.listing import BATCH
from angosd.registry.manifests import BATCH as RECORDS_BATCH
from angosd.registry.registry import Registry
from angosd.registry.summaries import ManifestSummary

#: Config media types that do not make a manifest an artifact: runnable images' configs, and
#: the empty config (an artifact with it declares ``artifactType`` itself).
IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json",
                           "application/vnd.docker.container.image.v1+json", mt.OCI_EMPTY})
#: The most namespaces ``_repositories`` counts for one repository (``namespaces_more`` says
#: when it has more), so that a page costs the same whatever the store holds.
COUNT_LIMIT = 10
#: Annotations BuildKit puts on the index entry of an attestation manifest.
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"
DOCKER_REFERENCE_DIGEST = "vnd.docker.reference.digest"


@dataclass(frozen=True, slots=True)
class RepositoryView:
    """A repository as the extension API shows it (configured, or derived from storage)."""

    name: str
    is_pull_through: bool
    immutable_tags: bool
    configured: bool

    @classmethod
    def of(cls, repository: RepositoryConfig) -> RepositoryView:
        return cls(repository.name, repository.is_pull_through, repository.immutable_tags, True)


@dataclass(slots=True)
class _Entry:
    """One revision being assembled (mutable only while `revisions` builds it)."""

    digest: Digest
    media_type: str
    size: int
    pushed_at: int
    subject: Digest | None
    artifact_type: str | None
    children: tuple[Descriptor, ...] = ()
    parents: list[Digest] = field(default_factory=list)
    platform: dict[str, Any] | None = None
    referrers: list[dict[str, Any]] = field(default_factory=list)


def artifact_type(summary: ManifestSummary) -> str | None:
    """The artifact type of a manifest as the image spec defines it: ``artifactType``, else
    the config's media type unless that is an image config (plain images have none)."""
    if summary.artifact_type is not None:
        return summary.artifact_type
    if summary.config_media_type is not None and summary.config_media_type not in IMAGE_CONFIGS:
        return summary.config_media_type
    return None


def _descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    return {"digest": str(descriptor.digest), "media_type": descriptor.media_type, "size": descriptor.size,
            "artifact_type": descriptor.artifact_type, "platform": descriptor.platform,
            "annotations": descriptor.annotations or {}}


class ExtensionAPI:
    """Handlers of the ``list-repositories``, ``list-namespaces``, ``list-revisions`` and
    ``list-uploads`` actions. ``config`` returns the current configuration (it may reload)."""

    def __init__(self, registry: Registry, config: Callable[[], Config],
                 visible: Callable[[RegistryRequest, str], bool] | None = None) -> None:
        """``visible`` says whether a request's caller may see a namespace in listings
        (`angosd.auth.authorizer.Authorizer.may_list`); None: everything is visible."""
        self.registry = registry
        self._config = config
        self._visible = visible or (lambda request, namespace: True)

    def handlers(self) -> dict[Action, Handler]:
        """The handlers by action, for `RegistryAPI(extensions=...)`."""
        return {
            Action.LIST_REPOSITORIES: self._list_repositories,
            Action.LIST_NAMESPACES: self._list_namespaces,
            Action.LIST_REVISIONS: self._list_revisions,
            Action.LIST_UPLOADS: self._list_uploads,
        }

    # -- repositories and namespaces ---------------------------------------------------------

    async def repositories(self) -> AsyncIterator[RepositoryView]:
        """Configured repositories in name order; derived ones when none is configured
        (each first name component of the store's directories, listed a batch at a time)."""
        config = self._config()
        if config.repositories:
            for repository in sorted((RepositoryView.of(r) for r in config.repositories), key=lambda r: r.name):
                yield repository
            return
        cursor: str | None = None
        while True:
            tops = await self.registry.driver.children_after(paths.REPOSITORIES, cursor, BATCH)
            for top in tops:
                if is_valid_name(top):
                    yield RepositoryView(top, False, config.global_.immutable_tags, False)
            if len(tops) < BATCH:
                return
            cursor = tops[-1]

    async def namespaces_of(self, repository: str, after: str | None = None, limit: int | None = None,
                            visible: Callable[[str], bool] = lambda _name: True) -> tuple[list[str], bool]:
        """Namespaces of ``repository`` (see the module docstring) that ``visible`` accepts,
        sorted: at most ``limit`` (all when None) after ``after``; and whether more follow.

        Raises `NameInvalid` for a malformed name and `NameUnknown` for an unknown
        repository (or, with none configured, a prefix under which nothing is stored).
        """
        validate_name(repository)
        config = self._config()
        if not config.repositories:
            found, more = await self.registry.namespaces_page(repository, after, limit, visible)
            if not found and (after is None or not (await self.registry.namespaces_page(repository, None, 1))[0]):
                raise NameUnknown(repository)
            return found, more
        if not any(r.name == repository for r in config.repositories):
            raise NameUnknown(repository)

        def owned(name: str) -> bool:
            owner = config.repository_for(name)
            return owner is not None and owner.name == repository and visible(name)

        return await self.registry.namespaces_page(repository, after, limit, owned)

    async def _list_repositories(self, request: RegistryRequest, route: Route) -> bytes:
        """Repositories the caller may see (it may list the repository's name or one of its
        namespaces), each counting (up to `COUNT_LIMIT`) only the namespaces the caller may see; a page of
        `DEFAULT_PAGE` when no ``n`` is given, with a ``Link`` to the next one."""
        wanted = PageRequest.of(route, DEFAULT_PAGE, NameInvalid)
        listed: list[dict[str, Any]] = []
        more = False
        async for repository in self.repositories():
            if wanted.last is not None and repository.name <= wanted.last:
                continue
            try:
                counted, beyond = await self.namespaces_of(repository.name, None, COUNT_LIMIT,
                                                           lambda name: self._visible(request, name))
            except NameUnknown:  # a derived repository whose namespaces hold nothing any more
                continue
            count = len(counted)
            if count == 0 and not self._visible(request, repository.name):
                continue
            if len(listed) == wanted.n:
                more = True
                break
            listed.append({"name": repository.name, "namespaces": count, "namespaces_more": beyond,
                           "is_pull_through": repository.is_pull_through,
                           "immutable_tags": repository.immutable_tags, "configured": repository.configured})
        headers = wanted.link("/v2/_ext/_repositories", [r["name"] for r in listed], more)
        return respond_json(request, 200, {"repositories": listed}, headers=headers)

    async def _list_namespaces(self, request: RegistryRequest, route: Route) -> bytes:
        """A page of the repository's namespaces the caller may see (`DEFAULT_PAGE` when no
        ``n`` is given, with a ``Link`` to the next one), each with its counts."""
        name = route.namespace or ""
        wanted = PageRequest.of(route, DEFAULT_PAGE, NameInvalid)
        namespaces, more = await self.namespaces_of(name, wanted.last, wanted.n,
                                                    lambda namespace: self._visible(request, namespace))
        listed = []
        manifests = self.registry.manifests
        for namespace in namespaces:
            listed.append({"name": namespace, "manifests": await manifests.count_revisions(namespace),
                           "uploads": len(await self.registry.uploads.list(namespace)),
                           "tags": await manifests.count_tags(namespace)})
        config = self._config()
        repository = next((r for r in config.repositories if r.name == name), None)
        view = RepositoryView.of(repository) if repository is not None else \
            RepositoryView(name, False, config.global_.immutable_tags, False)
        headers = wanted.link(f"/v2/_ext/{name}/_namespaces", namespaces, more)
        return respond_json(request, 200, {"namespaces": listed, "repository": view.name,
                                           "is_pull_through": view.is_pull_through,
                                           "immutable_tags": view.immutable_tags}, headers=headers)

    # -- revisions and uploads ---------------------------------------------------------------

    async def revisions(self, namespace: str, page: DigestPage | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The revisions of ``namespace`` as listed by ``_revisions``, in the order of their
        digests: the ``page`` asked for (all without one), and whether more follow. Raises
        `ManifestUnknown` when the page's ``last`` is not a revision of ``namespace``.

        A page reads only what it lists: its revision records and summaries (no manifest is
        parsed unless its summary is missing: `ManifestStore.summary`), the back-references
        naming each revision's tags and parent indexes (each checked against the tag or the
        index), the parents' summaries and the revisions' referrers. A namespace written
        before back-references existed (not `ManifestStore.is_linked`, until a scrub adds
        them) has its tags and indexes read in full instead, pausing every `RECORDS_BATCH`
        records for other requests; every other walk of the page pauses as often.
        """
        manifests = self.registry.manifests
        if page is not None and page.last is not None \
                and await self.registry.driver.stat(paths.revision(namespace, page.last)) is None:
            raise ManifestUnknown(f"last: {page.last} is not a revision of {namespace}")
        digests, more = await manifests.revisions_page(namespace, page.last if page is not None else None,
                                                        page.n if page is not None else None)
        entries: dict[Digest, _Entry] = {}
        for count, digest in enumerate(digests, 1):
            with contextlib.suppress(ManifestUnknown):  # deleted meanwhile
                revision = await manifests.revision(namespace, digest)
                entries[digest] = _Entry(digest, revision.media_type, 0, revision.pushed_at, revision.subject, None)
                await self._summarize(namespace, entries[digest])
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
        if await manifests.is_linked(namespace):
            tags: dict[Digest, list[str]] = {}
            parents: dict[Digest, list[Digest]] = {}
            for count, digest in enumerate(entries, 1):
                tags[digest] = await manifests.tags_on(namespace, digest)
                parents[digest] = await manifests.parents_of(namespace, digest)
                if count % RECORDS_BATCH == 0:
                    await manifests.breathe()
        else:
            every_tag = await manifests.tags_of(namespace)
            tags = {digest: sorted(every_tag.get(digest, [])) for digest in entries}
            parents = await self._parents_by_walk(namespace, entries)
        indexes: dict[Digest, ManifestSummary | None] = {}
        for count, entry in enumerate(entries.values(), 1):
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
            for parent in parents.get(entry.digest, []):
                if parent not in indexes:
                    try:
                        indexes[parent] = await manifests.summary(namespace, parent)
                    except ManifestUnknown:
                        indexes[parent] = None
                self._relate(entry, parent, indexes[parent])
            for referrer in await manifests.referrers(namespace, entry.digest, None):
                entry.referrers.append(_descriptor_json(referrer))
        listed = []
        for count, entry in enumerate(entries.values(), 1):
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
            listed.append({
                "digest": str(entry.digest),
                "media_type": entry.media_type,
                "tags": tags.get(entry.digest, []),
                "parent": str(entry.parents[0]) if entry.parents else None,
                "pushed_at": entry.pushed_at,
                "last_pulled_at": await self.registry.pulls.last_pulled(namespace, entry.digest),
                "size": entry.size,
                "artifact_type": entry.artifact_type,
                "subject": str(entry.subject) if entry.subject is not None else None,
                "parents": [str(p) for p in entry.parents],
                "platform": entry.platform,
                "children": [_descriptor_json(child) for child in entry.children],
                "referrers": sorted(entry.referrers, key=lambda r: r["digest"]),
            })
        return listed, more

    @staticmethod
    def _relate(entry: _Entry, parent: Digest, index: ManifestSummary | None) -> None:
        """What the index ``parent`` says of ``entry``: that it is its parent (when it does list
        it), its platform, and the Docker attestation manifests in it that name ``entry``."""
        if index is None or not index.parsed:
            return
        listed = False
        for child in index.children:
            if child.digest == entry.digest:
                listed = True
                if entry.platform is None:
                    entry.platform = child.platform
            attested = (child.annotations or {}).get(DOCKER_REFERENCE_DIGEST)
            if attested == str(entry.digest) and (child.annotations or {}).get(DOCKER_REFERENCE_TYPE) \
                    and all(r["digest"] != str(child.digest) for r in entry.referrers):
                entry.referrers.append(_descriptor_json(child))
        if listed:
            entry.parents.append(parent)

    async def _parents_by_walk(self, namespace: str, entries: dict[Digest, _Entry]) -> dict[Digest, list[Digest]]:
        """The indexes of ``namespace`` listing each of ``entries``, found by reading every
        revision record and every index's summary (a namespace without back-references)."""
        manifests = self.registry.manifests
        found: dict[Digest, list[Digest]] = {}
        for count, digest in enumerate(await manifests.revisions(namespace), 1):
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
            try:
                if (await manifests.revision(namespace, digest)).media_type not in mt.INDEXES:
                    continue
                summary = await manifests.summary(namespace, digest)
            except ManifestUnknown:
                continue
            for child in summary.children:
                if child.digest in entries:
                    found.setdefault(child.digest, []).append(digest)
        return {digest: sorted(parents, key=str) for digest, parents in found.items()}

    async def _summarize(self, namespace: str, entry: _Entry) -> None:
        """Fill in what ``entry``'s summary says (nothing when the revision vanished meanwhile)."""
        try:
            summary = await self.registry.manifests.summary(namespace, entry.digest)
        except ManifestUnknown:  # the store's "not found" is ManifestUnknown already
            return
        entry.size = summary.size
        if summary.parsed:  # unparsable: listed, without children
            entry.children = summary.children
            entry.artifact_type = artifact_type(summary)

    async def _list_revisions(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.registry.check_namespace(route.namespace or "")
        page = DigestPage.of(route)
        revisions, more = await self.revisions(namespace, page)
        if not revisions and page.last is None and not await self.registry.uploads.list(namespace):
            raise NameUnknown(namespace)
        headers = page.link(f"/v2/_ext/{namespace}/_revisions", revisions[-1]["digest"]) if more else {}
        return respond_json(request, 200, {"name": namespace, "revisions": revisions}, headers=headers)

    async def _list_uploads(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.registry.check_namespace(route.namespace or "")
        sessions = sorted(await self.registry.uploads.list(namespace), key=lambda s: (s.started_at, s.session))
        uploads = [{"uuid": s.session, "size": s.size, "started_at": s.started_at} for s in sessions]
        return respond_json(request, 200, {"name": namespace, "uploads": uploads})
