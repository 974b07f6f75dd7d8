"""A small S3 client on treq: SigV4 signing by botocore, retries, timeouts, clear errors.

Only what the S3 driver needs: path-style requests against one endpoint and bucket,
with every key below ``key_prefix``. Requests are signed with botocore's signer (no
hand-written crypto); the payload hash is computed off the reactor thread for large
bodies. Connection errors, timeouts, 5xx and 429 answers are retried with exponential
backoff up to ``max_attempts`` times (and within ``operation_timeout``); anything else
is returned to the caller, which maps it with `S3Client.error`. A request its caller
cancels (the client went away) fails at once with `CancelledError`, without retries.
"""

from __future__ import annotations

import hashlib
import random
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

import treq
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from angosd.storage.errors import PathNotFound, StorageError
from angosd.storage.pools import BoundedPool

#: Bodies at least this big are hashed (for the signature) on a pool thread.
_THREAD_HASH = 256 * 1024
#: First retry delay in seconds; doubled per attempt, capped at `_MAX_BACKOFF`.
_BACKOFF = 0.2
_MAX_BACKOFF = 5.0
#: Exceptions meaning "the request may not have reached S3 or its answer was lost": the
#: connection failed while the request was sent (``RequestTransmissionFailed``) or before
#: its answer came, or an attempt timed out. (Not a cancellation by our caller, e.g. the
#: client disconnected: `_call` re-raises that as `CancelledError`, see `_cancelled`.)
_TRANSIENT = (ConnectError, ConnectionLost, DNSLookupError, TimeoutError, DeferredTimeout, ResponseFailed,
              RequestGenerationFailed, RequestTransmissionFailed, ConnectionError)
_WRAPPERS = (ResponseFailed, RequestGenerationFailed, RequestTransmissionFailed)
#: Metadata header of objects that are the base of an append session (`s3_append`).
APPEND_TOKEN = "x-amz-meta-angosd-append"


@dataclass(frozen=True, slots=True)
class S3Options:
    """Where and how to reach the bucket (from ``[blob_store.s3]``)."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_key: str = ""
    region: str = "us-east-1"
    key_prefix: str = ""
    part_size: int = 16 * 1024 * 1024
    max_attempts: int = 3
    operation_timeout: float = 900.0
    attempt_timeout: float = 300.0

    def __repr__(self) -> str:  # never print the secret
        return f"S3Options(endpoint={self.endpoint!r}, bucket={self.bucket!r}, key_prefix={self.key_prefix!r})"


class S3Unavailable(StorageError):
    """S3 could not be reached or kept failing (connection errors, timeouts, 5xx)."""


class S3CredentialsError(StorageError):
    """S3 refused the credentials or the access."""


class S3PreconditionFailed(StorageError):
    """A conditional request (If-None-Match, If-Match) found the object in another state."""


@dataclass(frozen=True, slots=True)
class S3Response:
    """A complete answer; ``attempts`` counts every request sent for it (an earlier one may
    have been carried out even though its answer was lost)."""

    status: int
    headers: Headers
    body: bytes
    attempts: int

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written in slices as the connection drains.

    Handing a large body to the transport in one write would make it concatenate (copy)
    the whole body into its buffer; slices keep that copy to `SLICE` bytes.
    """

    SLICE = 256 * 1024

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)
        self._position = 0
        self._consumer: Any = None
        self._done: Deferred[None] = Deferred()
        self._paused = False
        self._pumping = False
        self._stopped = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        if self.length <= self.SLICE:
            consumer.write(self._data)
            self._release()
            return succeed(None)
        self._consumer = consumer
        self._pump()
        return self._done

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            view = memoryview(self._data)
            while not self._paused and not self._stopped and self._position < self.length:
                end = self._position + self.SLICE
                chunk = bytes(view[self._position:end])
                self._position = min(end, self.length)
                self._consumer.write(chunk)
            if self._position >= self.length and not self._stopped and not self._done.called:
                self._release()
                self._done.callback(None)
        finally:
            self._pumping = False

    def _release(self) -> None:
        """Drop the body: the HTTP client keeps its producer in reference cycles that only
        the garbage collector frees, which must not keep megabytes alive meanwhile."""
        self._data = b""
        self._consumer = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._consumer is not None:
            self._pump()

    def stopProducing(self) -> None:
        self._stopped = True  # and the Deferred never fires, as IBodyProducer requires
        self._release()


def strip_namespace(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ElementTree.Element:
    """The root element of an S3 XML answer; `StorageError` when it is not XML."""
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise StorageError(f"S3 sent an unreadable answer: {exc}") from None


def children_text(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if strip_namespace(child.tag) == name]


def child_text(element: ElementTree.Element, name: str, default: str = "") -> str:
    for child in element:
        if strip_namespace(child.tag) == name:
            return child.text or ""
    return default


def error_code(body: bytes) -> tuple[str, str]:
    """``(Code, Message)`` of an S3 error document, empty strings when there is none."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    if strip_namespace(root.tag) != "Error":
        return "", ""
    return child_text(root, "Code"), child_text(root, "Message")


class S3Client:
    """Signed requests to one bucket. ``http`` is a treq client; ``reactor`` runs timers; large
    payloads are hashed on ``pool`` (the ``io`` pool)."""

    def __init__(self, reactor: Any, http: HTTPClient, options: S3Options, pool: BoundedPool) -> None:
        self._reactor = reactor
        self._pool = pool
        self._http = http
        self.options = options
        self._credentials = Credentials(options.access_key_id, options.secret_key)
        self._base = options.endpoint.rstrip("/") + "/" + quote(options.bucket, safe="")
        prefix = options.key_prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""

    # -- addressing ------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        """The bucket key of driver key ``key``."""
        return self.prefix + key

    def url(self, full_key: str | None, query: Sequence[tuple[str, str | None]] = ()) -> str:
        """Path-style URL, with the key and query encoded exactly as SigV4 canonicalizes them."""
        url = self._base + ("/" + quote(full_key, safe="/") if full_key is not None else "")
        if query:
            url += "?" + "&".join(name if value is None else f"{name}={quote(value, safe='')}"
                                  for name, value in query)
        return url

    def presign(self, full_key: str, ttl: int) -> str:
        """A URL that GETs ``full_key`` without credentials for ``ttl`` seconds."""
        request = AWSRequest(method="GET", url=self.url(full_key))
        S3SigV4QueryAuth(self._credentials, "s3", self.options.region, expires=ttl).add_auth(request)
        return str(request.url)

    # -- requests --------------------------------------------------------------------------

    async def _payload_hash(self, body: bytes) -> str:
        if len(body) < _THREAD_HASH:
            return hashlib.sha256(body).hexdigest()
        digest: str = await self._pool.run(lambda: hashlib.sha256(body).hexdigest())
        return digest

    def _sign(self, method: str, url: str, headers: Mapping[str, str], payload_hash: str) -> Headers:
        request = AWSRequest(method=method, url=url, headers={**headers, "X-Amz-Content-SHA256": payload_hash})
        S3SigV4Auth(self._credentials, "s3", self.options.region).add_auth(request)
        signed = Headers()
        for name, value in request.headers.items():
            signed.addRawHeader(name, value)
        return signed

    async def _attempt(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                       payload_hash: str) -> IResponse:
        signed = self._sign(method, url, headers, payload_hash)
        producer = BytesBody(body) if body is not None else None
        pending = self._http.request(method, url, headers=signed, data=producer, unbuffered=True,
                                     allow_redirects=False)
        pending.addTimeout(self.options.attempt_timeout, self._reactor, onTimeoutCancel=_timed_out)
        response: IResponse = await pending
        return response

    async def _read(self, response: IResponse) -> bytes:
        pending = treq.content(response)
        pending.addTimeout(self.options.attempt_timeout, self._reactor, onTimeoutCancel=_timed_out)
        body: bytes = await pending
        return body

    async def call(self, method: str, full_key: str | None, query: Sequence[tuple[str, str | None]] = (),
                   headers: Mapping[str, str] | None = None, body: bytes | None = None) -> S3Response:
        """One operation, retried on transient failures; the final answer whatever its status.

        Raises `S3Unavailable` when every attempt failed with a connection error, a timeout,
        a 5xx or a 429 answer.
        """
        response = await self._call(method, full_key, query, headers, body, stream=False)
        assert isinstance(response, S3Response)
        return response

    async def open(self, method: str, full_key: str,
                   headers: Mapping[str, str] | None = None) -> IResponse | S3Response:
        """Like `call`, but a 2xx answer comes back unread (an `IResponse`) for streaming."""
        return await self._call(method, full_key, (), headers, None, stream=True)

    async def _call(self, method: str, full_key: str | None, query: Sequence[tuple[str, str | None]],
                    headers: Mapping[str, str] | None, body: bytes | None, stream: bool) -> S3Response | IResponse:
        url = self.url(full_key, query)
        payload_hash = await self._payload_hash(body or b"")
        started = time.monotonic()
        problem = "no attempt made"
        stale_retry = True
        attempt = tries = 0
        while attempt < max(1, self.options.max_attempts):
            attempt += 1
            tries += 1
            if attempt > 1:
                delay = min(_BACKOFF * 2 ** (attempt - 2), _MAX_BACKOFF) * (0.5 + random.random() / 2)
                if time.monotonic() - started + delay > self.options.operation_timeout:
                    break
                await deferLater(self._reactor, delay)
            try:
                response = await self._attempt(method, url, headers or {}, body, payload_hash)
                if stream and response.code < 300:
                    return response
                data = await self._read(response)
            except _TRANSIENT as exc:
                if _cancelled(exc):
                    raise CancelledError(f"{method} {full_key or '/'} cancelled") from exc
                problem = _describe(exc, self.options.attempt_timeout)
                if stale_retry and _stale_connection(exc):
                    stale_retry = False  # a pooled connection the server had closed: free retry
                    attempt -= 1
                continue
            if response.code >= 500 or response.code == 429:
                code, message = error_code(data)
                problem = f"HTTP {response.code} {code} {message}".strip()
                continue
            if data.startswith(b"<?xml") and response.code == 200 and method in ("PUT", "POST"):
                code, message = error_code(data)  # CopyObject/CompleteMultipartUpload report errors in a 200
                if code:
                    problem = f"{code} {message}".strip()
                    continue
            return S3Response(response.code, response.headers, data, tries)
        raise S3Unavailable(f"S3 endpoint {self.options.endpoint} (bucket {self.options.bucket!r}) is "
                            f"unavailable: {problem} ({method} {full_key or '/'})")

    def error(self, response: S3Response, method: str, key: str) -> StorageError:
        """The `StorageError` an unexpected answer to ``method`` on driver key ``key`` stands for."""
        code, message = error_code(response.body)
        if response.status == 404 and code in ("", "NoSuchKey"):
            return PathNotFound(key)
        if response.status == 404 and code == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.options.bucket!r} does not exist at {self.options.endpoint}")
        if response.status == 403:
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return S3CredentialsError(f"S3 rejected the credentials ({code}): check [blob_store.s3] "
                                          f"access_key_id and secret_key")
            return S3CredentialsError(f"S3 denied access ({code or 'HTTP 403'}) to bucket {self.options.bucket!r}: "
                                      f"check [blob_store.s3] credentials and the bucket policy")
        if response.status == 412:
            return S3PreconditionFailed(f"{key}: {code or 'precondition failed'}")
        detail = f"{code}: {message}" if code else f"HTTP {response.status}"
        return StorageError(f"S3 {method} {key} failed: {detail}")

    # -- listings ---------------------------------------------------------------------------

    async def list(self, full_prefix: str, delimiter: str | None, start_after: str | None = None,
                   limit: int | None = None) -> tuple[list[tuple[str, int]], list[str]]:
        """Every ``(key, size)`` and common prefix below ``full_prefix``, all pages read; with
        ``start_after``, only those after it (S3's ``StartAfter``); with ``limit``, reading
        stops once that many keys and prefixes were listed (S3 counts both in ``MaxKeys``)."""
        objects: list[tuple[str, int]] = []
        prefixes: list[str] = []
        token: str | None = None
        while True:
            query: list[tuple[str, str | None]] = [("list-type", "2"), ("encoding-type", "url"),
                                                    ("prefix", full_prefix)]
            if delimiter is not None:
                query.append(("delimiter", delimiter))
            if token is not None:
                query.append(("continuation-token", token))
            elif start_after is not None:
                query.append(("start-after", start_after))
            if limit is not None:
                query.append(("max-keys", str(max(1, min(1000, limit - len(objects) - len(prefixes))))))
            response = await self.call("GET", None, sorted(query))
            if response.status != 200:
                raise self.error(response, "LIST", full_prefix)
            root = parse_xml(response.body)
            for entry in children_text(root, "Contents"):
                objects.append((unquote_plus(child_text(entry, "Key")), int(child_text(entry, "Size", "0"))))
            for entry in children_text(root, "CommonPrefixes"):
                prefixes.append(unquote_plus(child_text(entry, "Prefix")))
            token = child_text(root, "NextContinuationToken") or None
            if child_text(root, "IsTruncated") != "true" or token is None:
                return objects, prefixes
            if limit is not None and len(objects) + len(prefixes) >= limit:
                return objects, prefixes

    async def delete_keys(self, full_keys: Iterable[str]) -> None:
        """Delete objects, 1000 per request (DeleteObjects); missing keys are fine."""
        keys = list(full_keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            document = ElementTree.Element("Delete")
            ElementTree.SubElement(document, "Quiet").text = "true"
            for key in batch:
                ElementTree.SubElement(ElementTree.SubElement(document, "Object"), "Key").text = key
            body = ElementTree.tostring(document, encoding="utf-8", xml_declaration=True)
            md5 = _base64(hashlib.md5(body).digest())
            response = await self.call("POST", None, [("delete", None)], {"Content-MD5": md5,
                                                                            "Content-Type": "application/xml"}, body)
            if response.status != 200:
                raise self.error(response, "DELETE", batch[0])
            failed = children_text(parse_xml(response.body), "Error")
            if failed:
                raise StorageError(f"S3 could not delete {child_text(failed[0], 'Key')}: "
                                   f"{child_text(failed[0], 'Code')}")


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _timed_out(result: object, timeout: float) -> object:
    """``addTimeout``'s translation when an attempt timed out: whatever the cancellation
    made of the request (a plain `CancelledError`, or one wrapped in `ResponseNeverReceived`
    or, while the body was being sent, `RequestGenerationFailed`) is a timeout."""
    if isinstance(result, Failure):
        raise DeferredTimeout(timeout, "S3 request")
    return result


def _cancelled(exc: BaseException) -> bool:
    """Whether a failed attempt was cancelled by our caller (timeouts are `DeferredTimeout`)."""
    return isinstance(exc, _WRAPPERS) and any(reason.check(CancelledError) for reason in exc.reasons)


def _stale_connection(exc: BaseException) -> bool:
    """Whether a request died before any answer, not by timing out: what a kept-alive
    connection that the server closed meanwhile looks like."""
    return isinstance(exc, ResponseNeverReceived)


def _describe(exc: BaseException, timeout: float) -> str:
    """A short, readable reason for a failed attempt."""
    if isinstance(exc, _WRAPPERS):
        causes = [reason.value for reason in exc.reasons]
        return "connection failed: " + ", ".join(str(cause) or type(cause).__name__ for cause in causes)
    if isinstance(exc, (DeferredTimeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    return str(exc) or type(exc).__name__
