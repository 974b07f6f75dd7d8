"""``list-catalog``, ``list-tags`` and ``get-referrers``."""

from __future__ import annotations

import re

from angosd.actions import Route
from angosd.http.endpoints.base import Endpoint
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


def page(route: Route, items: list[str], base: str) -> tuple[list[str], dict[str, str]]:
    """The page of ``items`` the route's ``n`` and ``last`` ask for, and its ``Link`` header
    when more follow; raises `PaginationNumberInvalid` for a malformed ``n``."""
    n_text, last = route.param("n"), route.param("last")
    n = None
    if n_text is not None:
        if _COUNT.fullmatch(n_text) is None:  # ASCII only: isdigit() takes superscripts, other scripts
            raise PaginationNumberInvalid(n_text[:20])
        n = min(int(n_text), MAX_PAGE)
    items_page, more = paginate(items, n, last)
    headers = {}
    if more and items_page:
        headers["Link"] = f'<{base}?n={n}&last={items_page[-1]}>; rel="next"'
    return items_page, headers


class Catalog(Endpoint):
    """``GET /v2/_catalog``: served namespaces holding a manifest, paginated."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        names, headers = page(route, await self.context.registry.catalog(), "/v2/_catalog")
        return respond_json(request, 200, {"repositories": names}, headers=headers)


class Tags(Endpoint):
    """``GET /v2/NS/tags/list``: the namespace's tags (upstream ones too, for pull-through), paginated."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        tags = await self.context.source(namespace).tags(namespace)
        names, headers = page(route, tags, f"/v2/{namespace}/tags/list")
        return respond_json(request, 200, {"name": namespace, "tags": names}, headers=headers)


class Referrers(Endpoint):
    """``GET /v2/NS/referrers/DIGEST``: an index of the manifests whose subject is DIGEST."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        subject = Digest.parse(route.argument or "")
        artifact_type = route.param("artifactType")
        manifests = await self.context.source(namespace).referrers(namespace, subject, artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        return respond_json(request, 200, index, mt.OCI_INDEX, headers)
