"""The vocabulary of requests: what a request asks for (`Action`) and where (`Route`).

Below every layer that names actions: access policies (``request.action``), webhook
headers, metric labels and the access log all speak these values, and `angosd.http`
parses requests into them. An `Action` is a `StrEnum`, so it equals (and serializes as)
its string: ``Action.GET_MANIFEST == "get-manifest"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    """Every action a request can be routed to; ``unknown`` when nothing matched."""

    GET_API_VERSION = "get-api-version"
    LIST_CATALOG = "list-catalog"
    LIST_TAGS = "list-tags"
    GET_MANIFEST = "get-manifest"
    PUT_MANIFEST = "put-manifest"
    DELETE_MANIFEST = "delete-manifest"
    START_UPLOAD = "start-upload"
    MOUNT_BLOB = "mount-blob"
    GET_UPLOAD = "get-upload"
    UPDATE_UPLOAD = "update-upload"
    COMPLETE_UPLOAD = "complete-upload"
    CANCEL_UPLOAD = "cancel-upload"
    GET_BLOB = "get-blob"
    DELETE_BLOB = "delete-blob"
    GET_REFERRERS = "get-referrers"
    # extension API
    LIST_REPOSITORIES = "list-repositories"
    LIST_NAMESPACES = "list-namespaces"
    LIST_REVISIONS = "list-revisions"
    LIST_UPLOADS = "list-uploads"
    # probes, metrics, web UI
    HEALTHZ = "healthz"
    READYZ = "readyz"
    METRICS = "metrics"
    UI_CONFIG = "ui-config"
    UI_ASSET = "ui-asset"
    # registry token service (``/token``)
    TOKEN = "token"
    UNKNOWN = "unknown"


#: Actions that write; refused on pull-through repositories.
WRITE_ACTIONS = frozenset({
    Action.START_UPLOAD, Action.MOUNT_BLOB, Action.UPDATE_UPLOAD, Action.COMPLETE_UPLOAD, Action.CANCEL_UPLOAD,
    Action.PUT_MANIFEST,
})
_MANIFEST_ACTIONS = frozenset({Action.GET_MANIFEST, Action.PUT_MANIFEST, Action.DELETE_MANIFEST})
_SESSION_ACTIONS = frozenset({Action.GET_UPLOAD, Action.UPDATE_UPLOAD, Action.COMPLETE_UPLOAD, Action.CANCEL_UPLOAD})


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed request target. ``action`` is ``unknown`` when nothing matched;
    ``method_allowed`` is False for a known path with a method it does not accept."""

    action: Action
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
        return self.argument if self.action in _MANIFEST_ACTIONS else None

    @property
    def digest(self) -> str | None:
        if self.action in (Action.GET_BLOB, Action.DELETE_BLOB, Action.GET_REFERRERS):
            return self.argument
        if self.action in (Action.START_UPLOAD, Action.MOUNT_BLOB, Action.COMPLETE_UPLOAD):
            return self.param("mount") if self.action == Action.MOUNT_BLOB else self.param("digest")
        return None

    @property
    def session(self) -> str | None:
        return self.argument if self.action in _SESSION_ACTIONS else None
