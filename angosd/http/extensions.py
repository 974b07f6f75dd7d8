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
- ``GET /v2/_ext/NS/_revisions``: manifest revisions, newest push first, in pages
  (``n``, ``last``, ``Link``: `DigestPage`), each with its tags, the index that
  lists it (``parent``), push and last-pull times (epoch seconds), plus ``children``,
  ``platform``, ``referrers`` (manifests whose subject it is, and Docker attestation
  manifests that name it), ``size``, ``artifact_type`` and ``subject``.
- ``GET /v2/_ext/NS/_uploads``: upload sessions in progress.

A namespace's count of namespaces and its listing include namespaces that hold only an
upload session, so abandoned uploads can be found and cancelled.

``_repositories`` and ``_namespaces`` are paged like the catalog (``n``, ``last``, a ``Link``
to the next page; `DEFAULT_PAGE` items when no ``n`` is given), and a page reads only the
part of the store it lists, except each repository's namespace count.
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
from angosd.oci.errors import ManifestUnknown, NameInvalid, NameUnknown, OciError
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
        namespaces), each counting only the namespaces the caller may see; a page of
        `DEFAULT_PAGE` when no ``n`` is given, with a ``Link`` to the next one."""
        wanted = PageRequest.of(route, DEFAULT_PAGE, NameInvalid)
        listed: list[dict[str, Any]] = []
        more = False
        async for repository in self.repositories():
            if wanted.last is not None and repository.name <= wanted.last:
                continue
            try:
                every, _ = await self.namespaces_of(repository.name)
            except NameUnknown:  # a derived repository whose namespaces hold nothing any more
                continue
            count = sum(1 for name in every if self._visible(request, name))
            if count == 0 and not self._visible(request, repository.name):
                continue
            if len(listed) == wanted.n:
                more = True
                break
            listed.append({"name": repository.name, "namespaces": count,
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
        """The revisions of ``namespace`` as listed by ``_revisions``, newest push first: the
        ``page`` asked for (all without one), and whether more follow. Raises
        `ManifestUnknown` when the page's ``last`` is not a revision of ``namespace``.

        What a revision says of its manifest comes from its stored summary (no manifest is
        parsed unless its summary is missing: `ManifestStore.summary`). Summaries are read
        for the page's revisions, their referrers and the namespace's indexes (which name
        parents) only; the walk pauses every `RECORDS_BATCH` records for other requests.
        """
        manifests = self.registry.manifests
        entries: dict[Digest, _Entry] = {}
        for count, digest in enumerate(await manifests.revisions(namespace), 1):
            with contextlib.suppress(ManifestUnknown):  # deleted meanwhile
                revision = await manifests.revision(namespace, digest)
                entries[digest] = _Entry(digest, revision.media_type, 0, revision.pushed_at, revision.subject, None)
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
        ordered = sorted(entries.values(), key=lambda e: (-e.pushed_at, str(e.digest)))
        more = False
        if page is not None:
            if page.last is not None:
                if page.last not in entries:
                    raise ManifestUnknown(f"last: {page.last} is not a revision of {namespace}")
                ordered = ordered[ordered.index(entries[page.last]) + 1:]
            more = len(ordered) > page.n
            ordered = ordered[:page.n]
        listed_digests = {entry.digest for entry in ordered}
        summarized = [entry for entry in entries.values() if entry.digest in listed_digests
                      or entry.media_type in mt.INDEXES or entry.subject in listed_digests]
        for count, entry in enumerate(summarized, 1):
            await self._summarize(namespace, entry)
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
        for entry in sorted(summarized, key=lambda e: str(e.digest)):
            for child in entry.children:
                target = entries.get(child.digest)
                if target is not None and target.digest in listed_digests:
                    target.parents.append(entry.digest)
                    if target.platform is None:
                        target.platform = child.platform
                attested = (child.annotations or {}).get(DOCKER_REFERENCE_DIGEST)
                if attested is not None and (child.annotations or {}).get(DOCKER_REFERENCE_TYPE):
                    try:
                        subject = entries.get(Digest.parse(attested))
                    except OciError:
                        subject = None
                    if subject is not None and subject.digest in listed_digests:
                        subject.referrers.append(_descriptor_json(child))
            if entry.subject is not None and entry.subject in listed_digests:
                referrer = Descriptor(entry.media_type, entry.digest, entry.size, entry.artifact_type)
                entries[entry.subject].referrers.append(_descriptor_json(referrer))
        tags = await manifests.tags_of(namespace)
        pulled: dict[Digest, int | None] = {}
        for count, entry in enumerate(ordered, 1):
            pulled[entry.digest] = await self.registry.pulls.last_pulled(namespace, entry.digest)
            if count % RECORDS_BATCH == 0:
                await manifests.breathe()
        listed = []
        for entry in ordered:
            listed.append({
                "digest": str(entry.digest),
                "media_type": entry.media_type,
                "tags": sorted(tags.get(entry.digest, [])),
                "parent": str(entry.parents[0]) if entry.parents else None,
                "pushed_at": entry.pushed_at,
                "last_pulled_at": pulled.get(entry.digest),
                "size": entry.size,
                "artifact_type": entry.artifact_type,
                "subject": str(entry.subject) if entry.subject is not None else None,
                "parents": [str(p) for p in entry.parents],
                "platform": entry.platform,
                "children": [_descriptor_json(child) for child in entry.children],
                "referrers": sorted(entry.referrers, key=lambda r: r["digest"]),
            })
        return listed, more

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
