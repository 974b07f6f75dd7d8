"""``list-catalog``, ``list-tags`` and ``get-referrers``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from angosd.actions import Route
from angosd.http.endpoints.base import Endpoint
from angosd.http.endpoints.digest_pages import DigestPage
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond_json
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import NameInvalid, OciError, PaginationNumberInvalid, TagInvalid

#: A valid ``n``: one to nine ASCII digits.
_COUNT = re.compile(r"[0-9]{1,9}")
#: A valid ``last``: printable ASCII, no longer than a name can be.
_MARKER = re.compile(r"[\x21-\x7e]{1,512}")
#: The largest page a listing returns, whatever ``n`` asks for.
MAX_PAGE = 10_000
#: The page size of the catalog and the extension listings when ``n`` is not given (as distribution).
DEFAULT_PAGE = 100
#: The page size of a tag list when ``n`` is not given.
DEFAULT_TAGS_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a listing request asks for: at most ``n`` items after ``last``."""

    n: int
    last: str | None

    @classmethod
    def of(cls, route: Route, default: int, invalid_marker: type[OciError]) -> PageRequest:
        """The route's ``n`` (``default`` when absent; at most `MAX_PAGE`) and ``last``.

        Raises `PaginationNumberInvalid` for a malformed ``n`` and ``invalid_marker`` for a
        ``last`` that is not printable ASCII of at most 512 characters (an empty one is none).
        """
        n_text, last = route.param("n"), route.param("last")
        n = default
        if n_text is not None:
            if _COUNT.fullmatch(n_text) is None:  # ASCII only: isdigit() takes superscripts, other scripts
                raise PaginationNumberInvalid(n_text[:20])
            n = min(int(n_text), MAX_PAGE)
        if last is not None and last and _MARKER.fullmatch(last) is None:
            raise invalid_marker(f"invalid pagination marker {last[:40]!r}")
        return cls(n, last or None)

    def link(self, base: str, items: list[str], more: bool) -> dict[str, str]:
        """The ``Link`` header to the next page when ``more`` items follow ``items``."""
        if not (more and items):
            return {}
        return {"Link": f'<{base}?n={self.n}&last={items[-1]}>; rel="next"'}


class Catalog(Endpoint):
    """``GET /v2/_catalog``: served namespaces holding a manifest that the caller may list
    (`Authorizer.may_list`), paginated after that filtering: `DEFAULT_PAGE` names when no
    ``n`` is given, and a ``Link`` to the next page. A page reads only what it lists."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        authorizer = self.context.authorizer
        wanted = PageRequest.of(route, DEFAULT_PAGE, NameInvalid)
        names, more = await self.context.registry.catalog_page(
            wanted.last, wanted.n, lambda namespace: authorizer.may_list(request, namespace))
        return respond_json(request, 200, {"repositories": names}, headers=wanted.link("/v2/_catalog", names, more))


class Tags(Endpoint):
    """``GET /v2/NS/tags/list``: the namespace's tags (upstream ones too, for pull-through),
    paginated (`DEFAULT_TAGS_PAGE` tags when no ``n`` is given)."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        wanted = PageRequest.of(route, DEFAULT_TAGS_PAGE, TagInvalid)
        names, more = await self.context.source(namespace).tags_page(namespace, wanted.last, wanted.n)
        headers = wanted.link(f"/v2/{namespace}/tags/list", names, more)
        return respond_json(request, 200, {"name": namespace, "tags": names}, headers=headers)


class Referrers(Endpoint):
    """``GET /v2/NS/referrers/DIGEST``: an index of the manifests whose subject is DIGEST,
    in pages (`DigestPage`) in the order of their digests."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        subject = Digest.parse(route.argument or "")
        artifact_type = route.param("artifactType")
        wanted = DigestPage.of(route)
        manifests = await self.context.source(namespace).referrers(namespace, subject, artifact_type,
                                                                   wanted.last, wanted.n + 1)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        if len(manifests) > wanted.n:
            manifests = manifests[:wanted.n]
            filters = {"artifactType": artifact_type} if artifact_type is not None else {}
            headers.update(wanted.link(f"/v2/{namespace}/referrers/{subject}", str(manifests[-1].get("digest")),
                                       **filters))
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        return respond_json(request, 200, index, mt.OCI_INDEX, headers)
