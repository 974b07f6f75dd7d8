"""What the HTTP layer writes to the audit log (`angosd.observability.audit`): a
`RequestObserver` of the site that records, when a request finishes,

- each state change: a successful ``put-manifest``, ``delete-manifest``, ``delete-blob``,
  ``cancel-upload``, ``mount-blob`` and completed upload (``complete-upload``, or a
  monolithic ``start-upload`` with ``digest``); opening a session and sending chunks change
  nothing an auditor follows and are not recorded;
- each denial: every 403, every 401 whose credentials were refused, and a 401 for an
  anonymous caller on a write or a delete (an anonymous read is a login challenge, not recorded).

Requests carrying the web interface's ``X-Angosd-Browse`` header are recorded ``via: ui``.
The source address is the peer's, or with ``[global] trusted_proxies`` the first address of
``X-Forwarded-For`` (from the right) that is not a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from angosd.actions import WRITE_ACTIONS, Action
from angosd.http.accesslog import client_address, response_status
from angosd.http.tracing import identity_kind
from angosd.observability.audit import AuditLog

__all__ = ["AUDITED_ACTIONS", "AuditRecorder"]

_log = Logger()

#: Actions whose success is recorded.
AUDITED_ACTIONS = frozenset({Action.PUT_MANIFEST, Action.DELETE_MANIFEST, Action.DELETE_BLOB, Action.CANCEL_UPLOAD,
                             Action.MOUNT_BLOB, Action.COMPLETE_UPLOAD, Action.START_UPLOAD})
_CHANGES = WRITE_ACTIONS | AUDITED_ACTIONS
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _identity(request: Any) -> dict[str, Any]:
    identity = getattr(request, "identity", None)
    found: dict[str, Any] = {"kind": identity_kind(request)}
    if identity is not None:
        if identity.id is not None:
            found["id"] = identity.id
        elif identity.oidc is not None:
            found["id"] = f"{identity.oidc.provider_name}:{identity.oidc.claims.get('sub', '?')}"
        elif identity.certificate:
            found["id"] = ",".join(identity.certificate.common_names) or "?"
    return found


def _header(request: Any, name: str) -> str | None:
    values = request.responseHeaders.getRawHeaders(name)
    return str(values[-1]) if values else None


class AuditRecorder:
    """Writes the audit line of each finished request that changed state or was denied.

    ``audit`` returns the current log (None: off). The source is the request's client
    address, which honours ``[global] trusted_proxies`` (`angosd.http.forwarded`).
    A line that cannot be written is logged as an error; the request is already answered.
    """

    def __init__(self, audit: Callable[[], AuditLog | None]) -> None:
        self._audit = audit

    def started(self, request: Any) -> None:
        """Nothing to do before the answer."""

    def finished(self, request: Any, failed: bool) -> None:
        audit = self._audit()
        route = getattr(request, "route", None)
        if audit is None or route is None:
            return
        result = self._result(request, route, response_status(request, failed), failed)
        if result is None:
            return
        status = response_status(request, failed)
        digest = _header(request, "Docker-Content-Digest") if result == "success" else None
        try:
            audit.record(
                "ui" if request.getHeader("X-Angosd-Browse") else "api", str(route.action), result,
                status=status, identity=_identity(request),
                source=client_address(request),
                repository=route.namespace, reference=route.reference,
                digest=digest or route.digest, session=route.session,
                reason=getattr(request, "denial", None) if result != "success" else None)
        except OSError as exc:
            _log.error("audit log {path}: {error}", path=audit.path, error=str(exc))

    @staticmethod
    def _result(request: Any, route: Any, status: int, failed: bool) -> str | None:
        if status == 403:
            return "denied"
        if status == 401:
            identity = getattr(request, "identity", None)
            refused = identity is None  # credentials were presented and refused
            if refused or route.action in _CHANGES or route.method == "DELETE":
                return "unauthenticated"
            return None
        if failed or not 200 <= status < 300 or route.action not in AUDITED_ACTIONS:
            return None
        if route.action == Action.START_UPLOAD and status != 201:
            return None  # a session was opened: nothing stored yet
        return "success"
