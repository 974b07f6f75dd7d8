"""Paging of the listings whose items are manifests named by digest: ``_revisions`` and
referrers.

``n`` asks for a page size (1 to `MAX_PAGE`; without it, `DEFAULT_PAGE`), ``last`` names the
last digest of the previous page. When more items follow, the response carries an RFC 5988
``Link`` header to the next page, which clients follow as for ``tags/list``. A malformed
``n`` is 400 ``PAGINATION_NUMBER_INVALID``, a malformed ``last`` 400 ``DIGEST_INVALID``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode

from angosd.actions import Route
from angosd.oci.digest import Digest
from angosd.oci.errors import PaginationNumberInvalid

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "DigestPage"]

#: The page size when the request gives no ``n``.
DEFAULT_PAGE = 100
#: The largest page, whatever ``n`` asks for.
MAX_PAGE = 1000
_COUNT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class DigestPage:
    """The page a request asks for: at most ``n`` items after the digest ``last``."""

    n: int
    last: Digest | None

    @classmethod
    def of(cls, route: Route) -> DigestPage:
        """The route's ``n`` and ``last``; raises `PaginationNumberInvalid` or `DigestInvalid`."""
        n_text, last_text = route.param("n"), route.param("last")
        n = DEFAULT_PAGE
        if n_text is not None:
            if _COUNT.fullmatch(n_text) is None or int(n_text) == 0:  # ASCII digits only, at least one item
                raise PaginationNumberInvalid(n_text[:20])
            n = min(int(n_text), MAX_PAGE)
        return cls(n, Digest.parse(last_text) if last_text is not None else None)

    def link(self, path: str, last: Digest | str, **params: str) -> dict[str, str]:
        """The ``Link`` header to the page after ``last`` (``params`` are kept in it)."""
        query = urlencode({**params, "n": str(self.n), "last": str(last)}, safe=":/")
        return {"Link": f'<{path}?{query}>; rel="next"'}
