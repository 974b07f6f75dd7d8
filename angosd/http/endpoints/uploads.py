"""``start-upload`` and ``mount-blob``, ``get-upload``, ``update-upload``,
``complete-upload`` and ``cancel-upload``.

Upload bodies are admitted into the session's `UploadSink` before the first byte is
read, so they stream to the store while being hashed; the endpoint then answers from
what the sink took.
"""

from __future__ import annotations

from angosd.actions import Action, Route
from angosd.http.endpoints.base import Endpoint, WriteEndpoint
from angosd.http.endpoints.manifests import may_read
from angosd.http.request import BodySink, RegistryRequest
from angosd.http.responses import respond, upload_headers
from angosd.oci.digest import ALGORITHMS, Digest
from angosd.oci.errors import BlobUploadInvalid, DigestInvalid, OciError, SizeInvalid
from angosd.oci.names import is_valid_name
from angosd.oci.ranges import parse_content_range
from angosd.registry.uploads import (
    MAX_UNSIZED_RANGE,
    RangeSink,
    UploadDigestMismatch,
    UploadOffsetMismatch,
    UploadSink,
    parse_session_id,
)


def blob_created(request: RegistryRequest, namespace: str, digest: Digest) -> bytes:
    """201 with the blob's location and digest."""
    return respond(request, 201, headers={"Location": f"/v2/{namespace}/blobs/{digest}",
                                          "Docker-Content-Digest": str(digest)})


class _UploadEndpoint(WriteEndpoint):
    async def publish_blob_push(self, request: RegistryRequest, namespace: str, session: str,
                                digest: Digest) -> None:
        """``blob.push`` before an upload completes; a refusal discards the session's bytes."""
        try:
            await self.context.publish("blob.push", request, namespace, digest=str(digest))
        except OciError:
            await self.context.registry.uploads.cancel(namespace, session)
            raise


class StartUpload(_UploadEndpoint):
    """``POST /v2/NS/blobs/uploads/``: a monolithic upload (``?digest=``, body admitted into
    a new session), a mount (``?mount=&from=``, action ``mount-blob``; a session is started
    when it cannot be satisfied), or a new session."""

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        if route.action != Action.START_UPLOAD or route.param("digest") is None:
            return None
        uploads = self.context.registry.uploads
        namespace = self.context.namespace(route)
        digest = Digest.parse(route.param("digest") or "")
        session = await uploads.start(namespace, digest.algorithm)
        # Completed (or cancelled) by this request: nothing would continue a saved hash state.
        return await uploads.open_sink(namespace, session, 0, save_state=False)

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        context = self.context
        namespace = context.namespace(route)
        uploads = context.registry.uploads
        if route.param("digest") is not None and isinstance(request.sink, UploadSink):
            digest = Digest.parse(route.param("digest") or "")
            await self.publish_blob_push(request, namespace, request.sink.session, digest)
            try:
                await uploads.complete(namespace, request.sink.session, digest)
            except UploadDigestMismatch as mismatch:  # a single-request upload leaves nothing behind
                await uploads.cancel(namespace, request.sink.session)
                raise DigestInvalid(mismatch.detail) from None
            return blob_created(request, namespace, digest)
        mount = route.param("mount")
        if mount is not None:
            digest = Digest.parse(mount)
            source = route.param("from")
            # A malformed ``from`` cannot own anything: an unsatisfiable mount, never an error.
            mountable = source is None or is_valid_name(source)
            if mountable and await context.registry.mount(namespace, digest, source, may_read(context, request)):
                try:
                    await context.publish("blob.push", request, namespace, digest=str(digest))
                except OciError:
                    await context.registry.blobs.revoke(namespace, digest)
                    raise
                return blob_created(request, namespace, digest)
        algorithm = route.param("digest-algorithm")
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:40]!r}")
        session = await uploads.start(namespace, algorithm)
        return respond(request, 202, headers=upload_headers(namespace, session, 0))

class GetUpload(Endpoint):
    """``GET`` of a session: its location and the range received so far."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        info = await self.context.registry.uploads.info(namespace, parse_session_id(route.argument or ""))
        return respond(request, 204, headers=upload_headers(namespace, info.session, info.size))


class _ChunkEndpoint(_UploadEndpoint):
    """Admits a chunk into its session at the offset ``Content-Range`` names (if any).

    A ``Content-Range`` must describe the body exactly: with a ``Content-Length`` that
    disagrees the chunk is refused before a byte is read; without one (a chunked body) the
    chunk is held in memory (at most `MAX_UNSIZED_RANGE` bytes) and appended only once it
    is whole and of the announced length, so a refused chunk writes nothing."""

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        uploads = self.context.registry.uploads
        namespace = self.context.namespace(route)
        session = parse_session_id(route.argument or "")
        first = None
        content_range = request.getHeader("Content-Range")
        if content_range is not None:
            first, last = parse_content_range(content_range)
            declared = last - first + 1
            size = (await uploads.info(namespace, session)).size
            if length is not None and declared != length:
                raise UploadOffsetMismatch(namespace, session, size, "Content-Range does not match Content-Length")
            if length is None:
                if first != size:
                    raise UploadOffsetMismatch(namespace, session, size,
                                               f"chunk starts at {first}, upload has {size} bytes")
                if declared > MAX_UNSIZED_RANGE:
                    raise SizeInvalid(f"a chunk with Content-Range but no Content-Length may hold at most "
                                      f"{MAX_UNSIZED_RANGE} bytes")
                return RangeSink(uploads, namespace, session, first, declared)
        return await uploads.open_sink(namespace, session, first)


class UpdateUpload(_ChunkEndpoint):
    """``PATCH``: a chunk appended; answers with the range received so far."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self.context.namespace(route)
        sink = request.sink
        if not isinstance(sink, UploadSink | RangeSink):
            raise BlobUploadInvalid("no upload body")
        return respond(request, 202, headers=upload_headers(namespace, sink.session, sink.offset))


class CompleteUpload(_ChunkEndpoint):
    """``PUT ?digest=``: a last chunk (if any) appended, then the blob verified and stored.
    Without a valid ``digest`` the request is refused before its body is read (nothing is
    appended); a digest that does not match keeps the session, so the client can resume."""

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        digest_text = route.param("digest")
        if digest_text is None:
            raise DigestInvalid("the digest query parameter is required")
        Digest.parse(digest_text)
        if length == 0:
            return None
        return await super().open_body(request, route, length)

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        uploads = self.context.registry.uploads
        namespace = self.context.namespace(route)
        session = parse_session_id(route.argument or "")
        digest = Digest.parse(route.param("digest") or "")
        await uploads.info(namespace, session)
        await self.publish_blob_push(request, namespace, session, digest)
        await uploads.complete(namespace, session, digest)
        return blob_created(request, namespace, digest)


class CancelUpload(_UploadEndpoint):
    """``DELETE`` of a session: its bytes are discarded."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        uploads = self.context.registry.uploads
        namespace = self.context.namespace(route)
        session = parse_session_id(route.argument or "")
        await uploads.info(namespace, session)
        await uploads.cancel(namespace, session)
        return respond(request, 204)
