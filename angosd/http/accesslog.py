"""The access log: one JSON line per request, through twisted.logger.

`AccessLog` is a `RequestObserver` of the site. When a request ends (response sent, or
connection lost) it emits one event in the ``angosd.access`` namespace whose text is a
single line of JSON (newlines and control characters in the path are escaped)::

    {"time": "2025-01-31T12:00:00.123Z", "client": "10.0.0.7", "identity": "user:ci",
     "method": "PUT", "path": "/v2/team/app/blobs/uploads/0d1c...", "query": ["digest"],
     "action": "complete-upload", "status": 201, "bytes_sent": 0, "bytes_received": 0,
     "duration_ms": 3.214, "aborted": false}

- ``identity`` is `Identity.describe()` when the request was authenticated (``anonymous``
  for a caller without credentials), ``-`` when authentication did not run or failed.
- ``query`` lists the query-string *keys* only; values (tokens, digests) are never logged,
  and neither is any header.
- ``status`` is the response code; ``499`` (client closed request) when the connection was
  lost before a response was started. ``aborted`` is true whenever the connection was lost
  before the response was complete.
- ``bytes_sent`` counts response body bytes, ``bytes_received`` request body bytes.

- ``trace_id`` (only when tracing is on): the request's OpenTelemetry trace id (32 hex digits).

The event also carries the same fields under ``access`` for structured (JSON) observers.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from angosd.actions import Action

__all__ = ["ABORTED_STATUS", "NAMESPACE", "AccessLog", "client_address", "received_bytes", "response_status"]

#: The twisted.logger namespace of access-log events.
NAMESPACE = "angosd.access"
#: Status reported for a request whose connection was lost before any response was started.
ABORTED_STATUS = 499
#: Longest path written to the log (longer ones are cut and marked with "...").
MAX_PATH = 2048
#: Longest method written to the log.
MAX_METHOD = 16
#: At most this many query keys are logged, each cut to `MAX_QUERY_KEY` characters.
MAX_QUERY_KEYS = 16
MAX_QUERY_KEY = 64


def response_status(request: Any, failed: bool) -> int:
    """The status a finished request is reported with: its response code, or `ABORTED_STATUS`
    when the connection was lost before the response was started."""
    if failed and not getattr(request, "startedWriting", False):
        return ABORTED_STATUS
    return int(getattr(request, "code", 0) or 0)


def received_bytes(request: Any) -> int:
    """Request body bytes read from the connection so far (0 for requests without a body)."""
    return int(getattr(request, "received_bytes", 0) or 0)


def client_address(request: Any) -> str:
    """The peer's IP address (or unix socket path), ``-`` when unknown."""
    try:
        address = request.getClientAddress()
    except Exception:
        return "-"
    host = getattr(address, "host", None) or getattr(address, "name", None)
    return str(host) if host else "-"


def _identity(request: Any) -> str:
    identity = getattr(request, "identity", None)
    return identity.describe() if identity is not None else "-"


def _timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class AccessLog:
    """Emits one access-log line per request that started.

    ``clock`` measures durations (monotonic seconds); ``wall`` gives the epoch seconds
    written as ``time``. Each request is logged exactly once, when it finishes.
    """

    def __init__(self, clock: Callable[[], float], wall: Callable[[], float], logger: Logger | None = None) -> None:
        self._clock = clock
        self._wall = wall
        self._log = logger if logger is not None else Logger(namespace=NAMESPACE)
        self._started: dict[Any, float] = {}

    def started(self, request: Any) -> None:
        """Remember when the request's headers were in."""
        self._started[request] = self._clock()

    def finished(self, request: Any, failed: bool) -> None:
        """Log the request once; a request never seen starting is ignored."""
        began = self._started.pop(request, None)
        if began is None:
            return
        fields = self.fields(request, failed, self._clock() - began)
        self._log.info("{access_line}", access_line=json.dumps(fields, separators=(", ", ": ")), access=fields)

    def fields(self, request: Any, failed: bool, seconds: float) -> dict[str, Any]:
        """The logged fields of a finished request (see the module docstring); no secrets."""
        route = getattr(request, "route", None)
        path = route.path if route is not None else "-"
        if len(path) > MAX_PATH:
            path = path[:MAX_PATH] + "..."
        method = route.method if route is not None else "-"
        fields: dict[str, Any] = {
            "time": _timestamp(self._wall()),
            "client": client_address(request),
            "identity": _identity(request),
            "method": method[:MAX_METHOD],
            "path": path,
            "query": sorted(key[:MAX_QUERY_KEY] for key in route.query)[:MAX_QUERY_KEYS] if route is not None else [],
            "action": str(route.action if route is not None else Action.UNKNOWN),
            "status": response_status(request, failed),
            "bytes_sent": int(getattr(request, "sentLength", 0) or 0),
            "bytes_received": received_bytes(request),
            "duration_ms": round(max(seconds, 0.0) * 1000, 3),
            "aborted": failed,
        }
        trace = getattr(request, "trace", None)
        trace_id = trace.trace_id if trace is not None else getattr(request, "trace_id", None)
        if trace_id is not None:
            fields["trace_id"] = trace_id
        return fields
