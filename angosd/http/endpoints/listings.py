"""``list-catalog``, ``list-tags`` and ``get-referrers``."""

from __future__ import annotations

import re
from collections.abc import Callable

from angosd.actions import Route
from angosd.http.endpoints.base import Endpoint
from angosd.http.endpoints.digest_pages import DigestPage
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond_json
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import PaginationNumberInvalid
from angosd.registry.registry import paginate

#: A valid ``n``: one to nine ASCII digits.
_COUNT = re.compile(r"[0-9]{1,9}")
#: The largest page a listing returns, whatever ``n`` asks for.
MAX_PAGE = 10_000


def visible_only(items: list[str], n: int | None, last: str | None,
                 visible: Callable[[str], bool]) -> tuple[list[str], bool]:
    """`paginate` over the ``visible`` items only, deciding visibility no further than the
    page needs (its ``n`` items and one more, to know whether more follow)."""
    found: list[str] = []
    for item in items:
        if last is not None and item <= last:
            continue
        if not visible(item):
            continue
        if n is not None and len(found) == n:
            return found, True
        found.append(item)
    return found, False


def page(route: Route, items: list[str], base: str,
         visible: Callable[[str], bool] | None = None) -> tuple[list[str], dict[str, str]]:
    """The page of ``items`` the route's ``n`` and ``last`` ask for, and its ``Link`` header
    when more follow; raises `PaginationNumberInvalid` for a malformed ``n``. With
    ``visible``, items it refuses are left out before paginating."""
    n_text, last = route.param("n"), route.param("last")
    n = None
    if n_text is not None:
        if _COUNT.fullmatch(n_text) is None:  # ASCII only: isdigit() takes superscripts, other scripts
            raise PaginationNumberInvalid(n_text[:20])
        n = min(int(n_text), MAX_PAGE)
    items_page, more = paginate(items, n, last) if visible is None else visible_only(items, n, last, visible)
    headers = {}
    if more and items_page:
        headers["Link"] = f'<{base}?n={n}&last={items_page[-1]}>; rel="next"'
    return items_page, headers


class Catalog(Endpoint):
    """``GET /v2/_catalog``: served namespaces holding a manifest that the caller may list
    (`Authorizer.may_list`), paginated after that filtering."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        authorizer = self.context.authorizer
        names, headers = page(route, await self.context.registry.catalog(), "/v2/_catalog",
                              lambda namespace: authorizer.may_list(request, namespace))
        return respond_json(request, 200, {"repositories": names}, headers=headers)


class Tags(Endpoint):
    """``GET /v2/NS/tags/list``: the namespace's tags (upstream ones too, for pull-through), paginated."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        tags = await self.context.source(namespace).tags(namespace)
        names, headers = page(route, tags, f"/v2/{namespace}/tags/list")
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
