"""``get-blob`` (GET and HEAD) and ``delete-blob``.

A GET is answered, in this order: by the pull-through cache streaming a blob it is
filling; by a redirect to the store's own URL (when enabled and the store offers one);
else from the local store, with ``sendfile`` on plain TCP connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from angosd.actions import Route
from angosd.compat import request_disconnected
from angosd.http.endpoints.base import Endpoint
from angosd.http.endpoints.sources import cache_headers
from angosd.http.request import RegistryRequest
from angosd.http.responses import respond, respond_head
from angosd.http.sendfile import SendfileProducer, sendfile_transport
from angosd.oci.digest import Digest
from angosd.oci.errors import BlobRangeNotSatisfiable, OciError
from angosd.oci.ranges import parse_range
from angosd.proxy.cache import BlobFill

#: A blob is never rendered or run by a browser: not sniffed, downloaded, and sandboxed if opened.
BLOB_SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Disposition": "attachment",
               "Content-Security-Policy": "sandbox; default-src 'none'"}


class BlobResponse:
    """A `BlobClient` over a response: the blob's headers, then the cache's status and state."""

    def __init__(self, request: RegistryRequest, headers: dict[str, str]) -> None:
        self._request = request
        self._headers = headers

    def begin(self, fill: BlobFill) -> None:
        self._request.setResponseCode(200)
        for name, value in {**self._headers, **cache_headers(fill.state)}.items():
            self._request.setHeader(name, value)
        if fill.length is not None:
            self._request.setHeader("Content-Length", str(fill.length))

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def finish(self) -> None:
        self._request.finish()

    def abort(self) -> None:
        self._request.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def notifyFinish(self) -> Deferred[None]:
        return self._request.notifyFinish()


class GetBlob(Endpoint):
    """The blob's bytes (a range of them with ``Range``), or its size for HEAD."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes | None:
        context = self.context
        namespace = context.namespace(route)
        digest = Digest.parse(route.argument or "")
        headers = {"Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "ETag": f'"{digest}"', **BLOB_SAFETY}
        source = context.source(namespace)
        if route.method == "HEAD":
            respond_head(request, 200, await source.blob_size(namespace, digest), headers)
            return None
        client = BlobResponse(request, headers) if request.getHeader("Range") is None else None
        if await source.blob(namespace, digest, client):
            return None
        location = await self._redirect_url(request, namespace, digest)
        if location is not None:
            await context.publish("blob.pull", request, namespace, digest=str(digest))
            return respond(request, 307, headers={"Location": location, "Docker-Content-Digest": str(digest)})
        return await self._send(request, namespace, digest, headers)

    async def _send(self, request: RegistryRequest, namespace: str, digest: Digest,
                    headers: dict[str, str]) -> bytes | None:
        """The blob from the local store: 200, or 206 for a satisfiable ``Range``."""
        handle = await self.context.registry.blobs.open(namespace, digest)
        try:
            byte_range = parse_range(request.getHeader("Range"), handle.size)
        except BlobRangeNotSatisfiable:
            handle.close()
            raise
        first, last, status = 0, handle.size - 1, 200
        if byte_range is not None:
            first, last, status = byte_range.first, byte_range.last, 206
            headers["Content-Range"] = byte_range.content_range()
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader("Content-Length", str(last - first + 1))
        try:
            await self.context.publish("blob.pull", request, namespace, digest=str(digest))
        except OciError:
            handle.close()
            raise
        if handle.size == 0 or request_disconnected(request):
            handle.close()
            return b""
        fd = handle.fileno()
        transport = sendfile_transport(request) if fd is not None else None
        if fd is None or transport is None:
            await handle.write_to(request, first, last)
            return None
        try:
            await SendfileProducer(request, transport, fd, first, last - first + 1).start()
        finally:
            handle.close()
        return None

    async def _redirect_url(self, request: RegistryRequest, namespace: str, digest: Digest) -> str | None:
        """A URL the client may fetch the blob from directly, when the store offers one and
        redirects are on; None for other stores, ranges, ``X-Angosd-No-Redirect``, and a
        browser's fetch() (``Sec-Fetch-Dest: empty``: the web UI, whose CSP only allows its
        own origin). Raises `BlobUnknown` (before any URL exists) when the namespace does
        not own the blob."""
        ttl = self.context.blob_redirect()
        inline = any(request.getHeader(name) is not None for name in ("Range", "X-Angosd-No-Redirect",
                                                                      "X-Angosd-Browse"))
        if ttl is None or inline or request.getHeader("Sec-Fetch-Dest") == "empty":
            return None
        return await self.context.registry.blob_redirect_url(namespace, digest, ttl)


class DeleteBlob(Endpoint):
    """Revokes the namespace's ownership of the blob (the bytes go at garbage collection)."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        await self.context.registry.blobs.revoke(namespace, Digest.parse(route.argument or ""))
        return respond(request, 202)
