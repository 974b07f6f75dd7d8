"""Cross-site request refusal: a browser must not be made to change the registry for its user.

A state-changing request (POST, PUT, PATCH, DELETE) that a browser marks as coming from
another site (``Sec-Fetch-Site: cross-site`` or ``same-site``), or whose ``Origin`` is not
this registry, is refused with 403 before authentication, so saved Basic credentials or a
client certificate cannot be used by a hostile page. Registry clients (docker, podman,
skopeo, containerd, oras) send neither header and are unaffected; the web UI's own
requests are same-origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from angosd.oci.errors import Denied

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FOREIGN_SITES = frozenset({"cross-site", "same-site"})


def _header(request: IRequest, name: str) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def refuse_cross_site(request: IRequest, method: str) -> None:
    """Raise `Denied` for a state-changing request a browser sent from another site."""
    if method not in STATE_CHANGING:
        return
    fetch_site = (_header(request, "Sec-Fetch-Site") or "").strip().lower()
    if fetch_site in _FOREIGN_SITES:
        raise Denied(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = _header(request, "Origin")
    if origin is None:
        return
    origin = origin.strip()
    hosts = {(_header(request, name) or "").strip().lower() for name in ("Host", "X-Forwarded-Host")} - {""}
    try:
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    except ValueError:
        netloc = ""
    if not netloc or netloc not in hosts:
        raise Denied(f"cross-site request refused (Origin {origin[:100]!r} is not this registry)")
