"""The OCI error codes as exceptions, each carrying its HTTP status.

Every client-visible failure in angosd is one of these; the HTTP layer turns them into
the OCI JSON error envelope in exactly one place.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class OciError(Exception):
    """An error reported to the client as ``{"errors": [{code, message, detail}]}``."""

    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    message: ClassVar[str] = "unknown error"

    def __init__(self, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if detail is not None else self.message)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        """The JSON envelope for this error."""
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()


def _error(code: str, status: int, message: str) -> type[OciError]:
    return type(
        "".join(part.title() for part in code.split("_")),
        (OciError,),
        {"code": code, "status": status, "message": message, "__doc__": message},
    )


BlobUnknown = _error("BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DigestInvalid = _error("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
ManifestInvalid = _error("MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("MANIFEST_UNKNOWN", 404, "manifest unknown")
ManifestBlobUnknown = _error("MANIFEST_BLOB_UNKNOWN", 404, "manifest references a blob unknown to the namespace")
NameInvalid = _error("NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NAME_UNKNOWN", 404, "repository name not known to registry")
SizeInvalid = _error("SIZE_INVALID", 400, "provided length did not match content length")
TagInvalid = _error("TAG_INVALID", 400, "manifest tag did not match URI")
TagImmutable = _error("TAG_IMMUTABLE", 409, "tag is immutable and points at another manifest")
Unauthorized = _error("UNAUTHORIZED", 401, "authentication required")
Denied = _error("DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("UNSUPPORTED", 415, "the operation is unsupported")
PaginationNumberInvalid = _error("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")


class RangeNotSatisfiable(OciError):
    """A chunk's Content-Range that cannot be honoured (416): the upload's state is reported."""

    code = "BLOB_UPLOAD_INVALID"
    status = 416
    message = "requested range not satisfiable"


class BlobRangeNotSatisfiable(OciError):
    """A blob GET whose Range lies outside the blob (416; ``SIZE_INVALID``, as Angos answers)."""

    code = "SIZE_INVALID"
    status = 416
    message = "requested range not satisfiable"


class TooLarge(OciError):
    """A manifest or blob above the configured size limit (413). A size that does not match
    the content is `SizeInvalid` (400)."""

    code = "SIZE_INVALID"
    status = 413
    message = "content exceeds the configured size limit"


class MethodNotAllowed(OciError):
    """A known route with a method it does not accept (405, as the OCI distribution
    specification requires for a method an endpoint does not support; every other
    unsupported operation is `Unsupported`, 415)."""

    code = "UNSUPPORTED"
    status = 405
    message = "the method is not allowed on this route"


class NotFound(OciError):
    """No route matches the path (404)."""

    code = "NAME_UNKNOWN"
    status = 404
    message = "no such endpoint"


class StorageUnavailable(OciError):
    """The storage failed for a reason that is not the client's (disk full, I/O error)."""

    code = "UNKNOWN"
    status = 507
    message = "insufficient storage"


class StorageFailure(OciError):
    """The storage failed with an I/O error (503); the client may retry."""

    code = "UNKNOWN"
    status = 503
    message = "storage unavailable"


class TooManyRequests(OciError):
    """More work than the daemon takes right now (429); ``Retry-After`` says when to try again."""

    code = "TOOMANYREQUESTS"
    status = 429
    message = "too many requests"

    def __init__(self, detail: Any = None, headers: dict[str, str] | None = None, retry_after: int = 1) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after), **(headers or {})})
