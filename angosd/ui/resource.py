"""Serve the web UI: its static files, ``index.html`` for every page route, ``/_ui/config``.

The assets are the files of ``angosd/ui/static`` (package data), read once at start:
no build step, nothing fetched at install or run time. Requests are answered only from
that in-memory table, so no request path ever reaches the filesystem.

- ``GET /_ui/static/NAME``: the file NAME, or 404.
- ``GET /_ui/config``: ``{"name": <[ui] name>}``.
- any other GET/HEAD outside ``/v2/`` (action ``ui-asset``): ``index.html``; the app
  reads the route from the address bar.

With ``[ui] enabled = false`` (read on every request, so a reload applies) all of these
answer 404, as when no UI exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from angosd.actions import Action, Route
from angosd.config import UiConfig
from angosd.http.endpoints.base import Handler
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond, respond_json
from angosd.oci.errors import NotFound

#: Where the static files are served from (namespaces never start with ``_``).
STATIC_PREFIX = "/_ui/static/"
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "json": "application/json",
}
#: Sent with every UI response: the app only talks to its own origin and is never framed.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of the ``static`` package directory by name (one level, no subdirectories)."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("angosd.ui").joinpath("static").iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        body = entry.read_bytes()
        content_type = _TYPES.get(entry.name.rsplit(".", 1)[-1], "application/octet-stream")
        assets[entry.name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    if "index.html" not in assets:
        raise RuntimeError("the web UI's static/index.html is missing from the package")
    return assets


class UserInterface:
    """Handlers of the ``ui-asset`` and ``ui-config`` actions. ``config`` returns the current
    ``[ui]`` section (it may reload)."""

    def __init__(self, config: Callable[[], UiConfig], assets: dict[str, Asset] | None = None) -> None:
        self._config = config
        self._assets = assets if assets is not None else load_assets()

    def handlers(self) -> dict[Action, Handler]:
        """The handlers by action, for `RegistryAPI(extensions=...)`."""
        return {Action.UI_ASSET: self._asset, Action.UI_CONFIG: self._ui_config}

    def _check_enabled(self, route: Route) -> None:
        if not self._config().enabled:
            raise NotFound(route.path)

    async def _ui_config(self, request: RegistryRequest, route: Route) -> bytes:
        self._check_enabled(route)
        return respond_json(request, 200, {"name": self._config().name},
                            headers={"Cache-Control": "no-store", **SECURITY_HEADERS})

    async def _asset(self, request: RegistryRequest, route: Route) -> bytes:
        """The named static file, or the app's page for any route outside ``/_ui/``."""
        self._check_enabled(route)
        if route.path.startswith("/_ui/"):
            name = route.path[len(STATIC_PREFIX):] if route.path.startswith(STATIC_PREFIX) else ""
            asset = self._assets.get(name) if "/" not in name else None
            if asset is None:
                raise NotFound(route.path)
        else:
            asset = self._assets["index.html"]
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
        if request.getHeader("If-None-Match") == asset.etag:
            return respond(request, 304, headers=headers)
        return respond(request, 200, asset.body, asset.content_type, headers)
