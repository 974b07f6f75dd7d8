"""Small response helpers: every body gets an explicit Content-Length."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

JSON = "application/json"


def respond(request: IRequest, status: int, body: bytes = b"", content_type: str | None = None,
            headers: dict[str, str] | None = None) -> bytes:
    """Set status, headers and Content-Length; return the body for Klein to write."""
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if content_type is not None:
        request.setHeader("Content-Type", content_type)
    request.setHeader("Content-Length", str(len(body)))
    return body


def respond_head(request: IRequest, status: int, length: int, headers: dict[str, str]) -> None:
    """A bodiless answer to HEAD that still announces the length of the GET body."""
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader("Content-Length", str(length))


def respond_json(request: IRequest, status: int, document: Any, content_type: str = JSON,
                 headers: dict[str, str] | None = None) -> bytes:
    return respond(request, status, json.dumps(document).encode(), content_type, headers)


def upload_location(namespace: str, session: str) -> str:
    return f"/v2/{namespace}/blobs/uploads/{session}"


def upload_headers(namespace: str, session: str, size: int) -> dict[str, str]:
    """Location, Range (``0-<last byte>``, ``0-0`` when empty) and the session id."""
    return {
        "Location": upload_location(namespace, session),
        "Range": f"0-{max(size - 1, 0)}",
        "Docker-Upload-UUID": session,
    }
