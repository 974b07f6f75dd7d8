"""Pure routing: (method, raw path) -> `Route` with its policy action.

The same `Route` feeds pre-body admission (authorization, opening upload sinks), the
handlers, and metric labels, so a request is parsed exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

_NS = r"(?P<ns>.+?)"
_SEGMENT = r"(?P<arg>[^/]+)"

# (pattern, {method: action}); first match wins, so more specific patterns come first.
_V2_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"^/v2/?$"), {"GET": "get-api-version", "HEAD": "get-api-version"}),
    (re.compile(r"^/v2/_catalog$"), {"GET": "list-catalog"}),
    (re.compile(r"^/v2/_ext/_repositories$"), {"GET": "list-repositories"}),
    (re.compile(rf"^/v2/_ext/{_NS}/_namespaces$"), {"GET": "list-namespaces"}),
    (re.compile(rf"^/v2/_ext/{_NS}/_revisions$"), {"GET": "list-revisions"}),
    (re.compile(rf"^/v2/_ext/{_NS}/_uploads$"), {"GET": "list-uploads"}),
    (re.compile(rf"^/v2/{_NS}/tags/list$"), {"GET": "list-tags"}),
    (re.compile(rf"^/v2/{_NS}/manifests/{_SEGMENT}$"),
     {"GET": "get-manifest", "HEAD": "get-manifest", "PUT": "put-manifest", "DELETE": "delete-manifest"}),
    (re.compile(rf"^/v2/{_NS}/blobs/uploads/?$"), {"POST": "start-upload"}),
    (re.compile(rf"^/v2/{_NS}/blobs/uploads/{_SEGMENT}$"),
     {"GET": "get-upload", "PATCH": "update-upload", "PUT": "complete-upload", "DELETE": "cancel-upload"}),
    (re.compile(rf"^/v2/{_NS}/blobs/{_SEGMENT}$"), {"GET": "get-blob", "HEAD": "get-blob", "DELETE": "delete-blob"}),
    (re.compile(rf"^/v2/{_NS}/referrers/{_SEGMENT}$"), {"GET": "get-referrers"}),
]

_OTHER_ROUTES: dict[str, str] = {
    "/health": "healthz",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/_ui/config": "ui-config",
}

#: Actions that write; refused on pull-through repositories.
WRITE_ACTIONS = frozenset({
    "start-upload", "mount-blob", "update-upload", "complete-upload", "cancel-upload", "put-manifest",
})


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed request target. ``action`` is ``unknown`` when nothing matched;
    ``method_allowed`` is False for a known path with a method it does not accept."""

    action: str
    method: str
    path: str
    namespace: str | None = None
    argument: str | None = None
    query: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)
    method_allowed: bool = True

    def param(self, name: str) -> str | None:
        """The first value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def reference(self) -> str | None:
        return self.argument if self.action.endswith("-manifest") else None

    @property
    def digest(self) -> str | None:
        if self.action in ("get-blob", "delete-blob", "get-referrers"):
            return self.argument
        if self.action in ("start-upload", "mount-blob", "complete-upload"):
            return self.param("mount") if self.action == "mount-blob" else self.param("digest")
        return None

    @property
    def session(self) -> str | None:
        return self.argument if self.action.endswith("-upload") and self.action != "start-upload" else None


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
            if action == "start-upload" and "mount" in query:
                action = "mount-blob"
            return Route(action or "unknown", method, path, groups.get("ns"), groups.get("arg"), query,
                         method_allowed=action is not None)
        return Route("unknown", method, path, query=query)

    action = _OTHER_ROUTES.get(path)
    if action is not None:
        allowed = method in ("GET", "HEAD")
        return Route(action if allowed else "unknown", method, path, query=query, method_allowed=allowed)
    if method in ("GET", "HEAD"):
        return Route("ui-asset", method, path, query=query)
    return Route("unknown", method, path, query=query)
