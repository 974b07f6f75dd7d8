"""The only places that turn failures into responses.

Endpoints raise; these functions answer. `RegistryAPI` hands every failure of a request
to one of the first four (Klein's error handlers), and `angosd.http.site` answers a path
that is not UTF-8 with `invalid_path` before routing:

- `oci_error`: an `OciError`, with its status and OCI error body;
- `routing_error`: Klein's own URL map refused the request (404 or 405, as routing would);
- `unexpected`: a storage failure, as `angosd.registry.failures.storage_failure` says
  (507 full store, 503 otherwise), else a bug (500 ``internal error``);
- `invalid_path`: 400 ``NAME_INVALID``.

A failure after the response started (headers sent) cannot change the status: the
connection is cut instead, so the client sees an incomplete body, never a wrong one.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from angosd.http.responses import JSON, respond, upload_headers
from angosd.oci.errors import MethodNotAllowed, NameInvalid, NotFound, OciError, Unauthorized
from angosd.registry.failures import storage_failure
from angosd.registry.uploads import UploadDigestMismatch, UploadOffsetMismatch

_log = Logger()


def oci_error(request: IRequest, failure: Failure, realm: str) -> bytes | None:
    """Answer an `OciError` (the failure's value)."""
    error = failure.value
    assert isinstance(error, OciError)
    return error_response(request, error, realm)


def routing_error(request: IRequest, failure: Failure, realm: str) -> bytes | None:
    """Klein's URL map refused the request before dispatch (e.g. a path holding a decoded
    newline, which its catch-all rule cannot match): answer as dispatch would."""
    path = request.path.decode("latin-1")[:200]
    error: OciError = MethodNotAllowed(path) if getattr(failure.value, "code", None) == 405 else NotFound(path)
    return error_response(request, error, realm)


def unexpected(request: IRequest, failure: Failure, realm: str) -> bytes | None:
    """A storage failure is answered as `storage_failure` says (507 or 503) and logged as
    one error line (a full disk is an operating condition, not a bug); anything else is a
    bug: 500, logged with its traceback."""
    error = storage_failure(failure.value)
    if error is not None:
        _log.error("storage failure on {method} {path}: {status} {error}", method=request.method.decode("latin-1"),
                   path=request.path.decode("latin-1")[:200], status=error.status,
                   error=f"{type(failure.value).__name__}: {failure.value}"[:300])
        request.storage_error = "out_of_space" if error.status == 507 else "error"  # type: ignore[attr-defined]
        return error_response(request, error, realm)
    _log.failure("unhandled error on {method} {path}", failure, method=request.method, path=request.path)
    return error_response(request, OciError("internal error"), realm)


def invalid_path(request: IRequest) -> bytes:
    """A request path whose percent-escapes are not UTF-8."""
    error = NameInvalid("the request path is not valid UTF-8")
    return respond(request, error.status, error.body(), JSON)


def error_response(request: IRequest, error: OciError, realm: str) -> bytes | None:
    """``error``'s status, headers and body; a challenge for `Unauthorized`, the session's
    state for `UploadOffsetMismatch` and `UploadDigestMismatch`. Cuts the connection when the response has started."""
    if getattr(request, "startedWriting", False):
        request.loseConnection()  # type: ignore[attr-defined]  # headers are gone: all we can do is cut the body short
        return None
    headers = dict(error.headers)
    if isinstance(error, UploadOffsetMismatch | UploadDigestMismatch):
        headers.update(upload_headers(error.namespace, error.session, error.size))
    if isinstance(error, Unauthorized):  # a Bearer challenge (token service) was set by the authorizer
        headers.setdefault("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"')
    return respond(request, error.status, error.body(), JSON, headers)
