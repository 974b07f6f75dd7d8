"""Pure routing: (method, raw path) -> `Route` with its policy action.

The same `Route` feeds pre-body admission (authorization, opening upload sinks), the
endpoints, and metric labels, so a request is parsed exactly once. The vocabulary
(`Action`, `Route`, `WRITE_ACTIONS`) lives in `angosd.actions`, below every layer that
names actions; it is re-exported here for the HTTP layer.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote

from angosd.actions import WRITE_ACTIONS, Action, Route

__all__ = ["WRITE_ACTIONS", "Action", "Route", "parse_route"]

_NS = r"(?P<ns>.+?)"
_SEGMENT = r"(?P<arg>[^/]+)"

# (pattern, {method: action}); first match wins, so more specific patterns come first.
_V2_ROUTES: list[tuple[re.Pattern[str], dict[str, Action]]] = [
    (re.compile(r"^/v2/?$"), {"GET": Action.GET_API_VERSION, "HEAD": Action.GET_API_VERSION}),
    (re.compile(r"^/v2/_catalog$"), {"GET": Action.LIST_CATALOG}),
    (re.compile(r"^/v2/_ext/_repositories$"), {"GET": Action.LIST_REPOSITORIES}),
    (re.compile(rf"^/v2/_ext/{_NS}/_namespaces$"), {"GET": Action.LIST_NAMESPACES}),
    (re.compile(rf"^/v2/_ext/{_NS}/_revisions$"), {"GET": Action.LIST_REVISIONS}),
    (re.compile(rf"^/v2/_ext/{_NS}/_uploads$"), {"GET": Action.LIST_UPLOADS}),
    (re.compile(rf"^/v2/{_NS}/tags/list$"), {"GET": Action.LIST_TAGS}),
    (re.compile(rf"^/v2/{_NS}/manifests/{_SEGMENT}$"),
     {"GET": Action.GET_MANIFEST, "HEAD": Action.GET_MANIFEST, "PUT": Action.PUT_MANIFEST,
      "DELETE": Action.DELETE_MANIFEST}),
    (re.compile(rf"^/v2/{_NS}/blobs/uploads/?$"), {"POST": Action.START_UPLOAD}),
    (re.compile(rf"^/v2/{_NS}/blobs/uploads/{_SEGMENT}$"),
     {"GET": Action.GET_UPLOAD, "PATCH": Action.UPDATE_UPLOAD, "PUT": Action.COMPLETE_UPLOAD,
      "DELETE": Action.CANCEL_UPLOAD}),
    (re.compile(rf"^/v2/{_NS}/blobs/{_SEGMENT}$"),
     {"GET": Action.GET_BLOB, "HEAD": Action.GET_BLOB, "DELETE": Action.DELETE_BLOB}),
    (re.compile(rf"^/v2/{_NS}/referrers/{_SEGMENT}$"), {"GET": Action.GET_REFERRERS}),
]

_OTHER_ROUTES: dict[str, Action] = {
    "/health": Action.HEALTHZ,
    "/healthz": Action.HEALTHZ,
    "/readyz": Action.READYZ,
    "/metrics": Action.METRICS,
    "/_ui/config": Action.UI_CONFIG,
}


def parse_route(method: bytes | str, target: bytes | str) -> Route:
    """Parse a request line's method and target. Never raises."""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    raw_path, _, raw_query = target.partition("?")
    # An encoded slash must not become a path separator: keep it literal (and invalid).
    path = unquote(re.sub("%2[fF]", "%252F", raw_path), errors="replace")
    query = parse_qs(raw_query, keep_blank_values=True) if raw_query else {}

    if path == "/v2" or path.startswith("/v2/"):
        for pattern, actions in _V2_ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            groups = match.groupdict()
            action = actions.get(method)
            if action == Action.START_UPLOAD and "mount" in query:
                action = Action.MOUNT_BLOB
            return Route(action or Action.UNKNOWN, method, path, groups.get("ns"), groups.get("arg"), query,
                         method_allowed=action is not None)
        return Route(Action.UNKNOWN, method, path, query=query)

    if path == "/v1" or path.startswith("/v1/"):  # the v1 API (podman search): 404 JSON, not the UI
        return Route(Action.UNKNOWN, method, path, query=query)
    if path == "/token":  # the token service: GET (Docker) and POST (OAuth2 form)
        allowed = method in ("GET", "HEAD", "POST")
        return Route(Action.TOKEN if allowed else Action.UNKNOWN, method, path, query=query, method_allowed=allowed)
    action = _OTHER_ROUTES.get(path)
    if action is not None:
        allowed = method in ("GET", "HEAD")
        return Route(action if allowed else Action.UNKNOWN, method, path, query=query, method_allowed=allowed)
    if method in ("GET", "HEAD"):
        return Route(Action.UI_ASSET, method, path, query=query)
    return Route(Action.UNKNOWN, method, path, query=query)
