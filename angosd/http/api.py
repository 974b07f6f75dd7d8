"""The Klein application: one catch-all route dispatching on the parsed `Route`.

Handlers translate between HTTP and the registry; they never set an error status by
hand. Every failure is raised and turned into an OCI error body by `_oci_error`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from angosd.auth.authorizer import Authorizer
from angosd.compat import request_disconnected
from angosd.config import RepositoryConfig
from angosd.http.request import MemorySink, RegistryRequest
from angosd.http.responses import JSON, respond, respond_head, respond_json, upload_headers
from angosd.http.router import WRITE_ACTIONS, Route
from angosd.http.sendfile import SendfileProducer, sendfile_transport
from angosd.oci import media_types as mt
from angosd.oci.digest import ALGORITHMS, Digest
from angosd.oci.errors import (
    BlobUploadInvalid,
    DigestInvalid,
    MethodNotAllowed,
    NotFound,
    OciError,
    PaginationNumberInvalid,
    RangeNotSatisfiable,
    StorageFailure,
    StorageUnavailable,
    Unauthorized,
)
from angosd.oci.names import Reference, is_valid_name
from angosd.oci.ranges import parse_content_range, parse_range
from angosd.proxy.cache import PullThroughCache
from angosd.registry import paths
from angosd.registry.registry import Registry, paginate
from angosd.registry.uploads import UploadOffsetMismatch, UploadSink, parse_session_id
from angosd.storage.errors import OutOfSpace, StorageError
from angosd.storage.interface import IRedirectingDriver
from angosd.webhooks.events import EventBus

Handler = Callable[[RegistryRequest, Route], Awaitable[bytes | None]]
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
MAX_PAGE = 10_000
_log = Logger()


class _AnyPath(PathConverter):
    """Werkzeug's ``path`` converter, but also matching decoded newlines (``%0a``): the
    catch-all route must see every path, and `parse_route` judges it."""

    regex = "(?s:[^/].*?)"


def _cache_headers(state: str) -> dict[str, str]:
    """How a pull-through answer was produced; stale answers also carry a standard Warning."""
    headers = {"X-Angosd-Cache": state}
    if state == "stale":
        headers["Warning"] = '110 angosd "Response is Stale: upstream unreachable"'
    return headers


class RegistryAPI:
    """The registry's HTTP face. Also the request gate (`admit`) of `RegistryRequest`."""

    app = Klein()
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["path"] = _AnyPath  # before the branch route below compiles its rule

    def __init__(self, registry: Registry, authorizer: Authorizer, realm: str = "angosd",
                 extensions: Mapping[str, Handler] | None = None, cache: PullThroughCache | None = None,
                 events: EventBus | None = None, blob_redirect: Callable[[], int | None] = lambda: None) -> None:
        """``extensions`` adds or replaces handlers by action (extension API, UI, metrics);
        ``cache`` serves the namespaces of pull-through repositories; ``events`` publishes
        registry events to webhooks before each operation; ``blob_redirect`` gives the
        lifetime (seconds) of blob redirect URLs, None when blob GETs are not redirected."""
        self.blob_redirect = blob_redirect
        self.registry = registry
        self.cache = cache
        self.events = events
        self.authorizer = authorizer
        self.realm = realm
        self._handlers: dict[str, Handler] = {
            "get-api-version": self._api_version,
            "list-catalog": self._catalog,
            "list-tags": self._tags,
            "get-manifest": self._get_manifest,
            "put-manifest": self._put_manifest,
            "delete-manifest": self._delete_manifest,
            "start-upload": self._start_upload,
            "mount-blob": self._start_upload,
            "get-upload": self._upload_status,
            "update-upload": self._update_upload,
            "complete-upload": self._complete_upload,
            "cancel-upload": self._cancel_upload,
            "get-blob": self._get_blob,
            "delete-blob": self._delete_blob,
            "get-referrers": self._referrers,
            "healthz": self._health,
            "readyz": self._ready,
            **(extensions or {}),
        }

    # -- admission: runs on the headers, before the body -------------------------------

    async def admit(self, request: RegistryRequest, length: int | None) -> Any:
        """Authorize the request and open the sink its body streams into (or None)."""
        route = request.route
        await self.authorizer.authorize(request, route)
        action = route.action
        if action in WRITE_ACTIONS and self._mirror(route) is not None:
            raise MethodNotAllowed(f"{route.namespace} is served by a pull-through cache: pushes are refused")
        if action in ("update-upload", "complete-upload"):
            if action == "complete-upload" and length == 0:
                return None
            namespace = self.registry.check_namespace(route.namespace or "")
            session = parse_session_id(route.argument or "")
            first = None
            content_range = request.getHeader("Content-Range")
            if content_range is not None:
                first, last = parse_content_range(content_range)
                if length is not None and last - first + 1 != length:
                    size = (await self.registry.uploads.info(namespace, session)).size
                    raise UploadOffsetMismatch(namespace, session, size, "Content-Range does not match Content-Length")
            return await self.registry.uploads.open_sink(namespace, session, first)
        if action == "start-upload" and route.param("digest") is not None:
            namespace = self.registry.check_namespace(route.namespace or "")
            digest = Digest.parse(route.param("digest") or "")
            session = await self.registry.uploads.start(namespace, digest.algorithm)
            return await self.registry.uploads.open_sink(namespace, session, 0)
        if action == "put-manifest":
            return MemorySink(self.registry.manifests.max_manifest_size)
        return None

    # -- dispatch ------------------------------------------------------------------------

    @app.route("/", branch=True, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def dispatch(self, request: RegistryRequest) -> bytes | None:
        route = request.route
        request.check_admitted()
        if not route.method_allowed:
            raise MethodNotAllowed(f"{route.method} {route.path}")
        handler = self._handlers.get(route.action)
        if handler is None:
            raise NotFound(route.path)
        return await handler(request, route)

    async def _publish(self, kind: str, request: RegistryRequest, namespace: str, **details: str | None) -> None:
        """Publish an event; a required webhook's refusal raises and stops the operation."""
        if self.events is not None:
            await self.events.publish(kind, namespace, getattr(request, "identity", None), **details)

    async def _publish_blob_push(self, request: RegistryRequest, namespace: str, session: str,
                                 digest: Digest) -> None:
        """``blob.push`` before an upload completes; a refusal discards the session's bytes."""
        try:
            await self._publish("blob.push", request, namespace, digest=str(digest))
        except OciError:
            await self.registry.uploads.cancel(namespace, session)
            raise

    def _mirror(self, route: Route) -> RepositoryConfig | None:
        """The pull-through repository of the route's namespace, if it has one."""
        if self.cache is None or route.namespace is None:
            return None
        return self.cache.repository(route.namespace)

    def _namespace(self, route: Route) -> str:
        return self.registry.check_namespace(route.namespace or "")

    # -- base, health --------------------------------------------------------------------

    async def _api_version(self, request: RegistryRequest, route: Route) -> bytes:
        return respond(request, 200, b"{}", JSON, API_VERSION)

    async def _health(self, request: RegistryRequest, route: Route) -> bytes:
        return respond_json(request, 200, {"status": "ok"})

    async def _ready(self, request: RegistryRequest, route: Route) -> bytes:
        try:
            await self.registry.driver.children("repositories")
        except Exception as exc:
            return respond_json(request, 503, {"status": "unavailable", "detail": str(exc)[:200]})
        return respond_json(request, 200, {"status": "ready"})

    # -- listings --------------------------------------------------------------------------

    def _page(self, route: Route, items: list[str], base: str) -> tuple[list[str], dict[str, str]]:
        n_text, last = route.param("n"), route.param("last")
        n = None
        if n_text is not None:
            if not n_text.isdigit() or len(n_text) > 9:
                raise PaginationNumberInvalid(n_text[:20])
            n = min(int(n_text), MAX_PAGE)
        page, more = paginate(items, n, last)
        headers = {}
        if more and page:
            headers["Link"] = f'<{base}?n={n}&last={page[-1]}>; rel="next"'
        return page, headers

    async def _catalog(self, request: RegistryRequest, route: Route) -> bytes:
        page, headers = self._page(route, await self.registry.catalog(), "/v2/_catalog")
        return respond_json(request, 200, {"repositories": page}, headers=headers)

    async def _tags(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        mirror = self._mirror(route)
        if mirror is not None and self.cache is not None:
            tags = await self.cache.tags(namespace, mirror)
        else:
            tags = await self.registry.manifests.list_tags(namespace)
        page, headers = self._page(route, tags, f"/v2/{namespace}/tags/list")
        return respond_json(request, 200, {"name": namespace, "tags": page}, headers=headers)

    async def _referrers(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        subject = Digest.parse(route.argument or "")
        artifact_type = route.param("artifactType")
        mirror = self._mirror(route)
        if mirror is not None and self.cache is not None:
            manifests = await self.cache.referrers(namespace, mirror, subject, artifact_type)
        else:
            found = await self.registry.manifests.referrers(namespace, subject, artifact_type)
            manifests = [d.to_json() for d in found]
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        return respond_json(request, 200, index, mt.OCI_INDEX, headers)

    # -- manifests -------------------------------------------------------------------------

    async def _get_manifest(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        reference = Reference.parse(route.argument or "")
        headers: dict[str, str] = {}
        mirror = self._mirror(route)
        if mirror is not None and self.cache is not None:
            served = await self.cache.manifest(namespace, mirror, reference)
            stored = served.manifest
            headers.update(_cache_headers(served.state))
        else:
            stored = await self.registry.manifests.get(namespace, reference)
        headers["Docker-Content-Digest"] = str(stored.digest)
        if route.method == "GET":
            await self._publish("manifest.pull", request, namespace, digest=str(stored.digest),
                                reference=str(reference), tag=reference.tag)
            if request.getHeader("X-Angosd-Browse") is None:  # the web UI's reads are not pulls
                self.registry.pulls.record(namespace, stored.digest)  # in memory; flushed in batches
        return respond(request, 200, stored.body, stored.media_type, headers)

    async def _put_manifest(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        reference = Reference.parse(route.argument or "")
        assert isinstance(request.sink, MemorySink)
        body = request.sink.getvalue()
        digest = reference.digest or Digest.of(body)
        await self._publish("manifest.push", request, namespace, digest=str(digest), reference=str(reference),
                            tag=reference.tag)
        if reference.tag is not None:
            await self._publish("tag.create", request, namespace, digest=str(digest), tag=reference.tag)
        manifest = await self.registry.manifests.put(namespace, reference, request.getHeader("Content-Type"), body)
        headers = {"Location": f"/v2/{namespace}/manifests/{manifest.digest}",
                   "Docker-Content-Digest": str(manifest.digest)}
        if manifest.subject is not None:
            headers["OCI-Subject"] = str(manifest.subject.digest)
        return respond(request, 201, headers=headers)

    async def _delete_manifest(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        reference = Reference.parse(route.argument or "")
        if reference.tag is not None:
            await self._publish("tag.delete", request, namespace, reference=reference.tag, tag=reference.tag)
        else:
            await self._publish("manifest.delete", request, namespace, digest=str(reference.digest),
                                reference=str(reference))
        await self.registry.manifests.delete(namespace, reference)
        return respond(request, 202)

    # -- blobs -------------------------------------------------------------------------------

    async def _get_blob(self, request: RegistryRequest, route: Route) -> bytes | None:
        namespace = self._namespace(route)
        digest = Digest.parse(route.argument or "")
        headers = {"Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "ETag": f'"{digest}"'}
        mirror = self._mirror(route)
        if route.method == "HEAD":
            if mirror is not None and self.cache is not None:
                size = await self.cache.blob_size(namespace, mirror, digest)
            else:
                size = await self.registry.blobs.size(namespace, digest)
            respond_head(request, 200, size, headers)
            return None
        if mirror is not None and self.cache is not None:
            client = request if request.getHeader("Range") is None else None
            if await self.cache.serve_blob(namespace, mirror, digest, client, headers):
                return None
        location = await self._redirect_url(request, namespace, digest)
        if location is not None:
            await self._publish("blob.pull", request, namespace, digest=str(digest))
            return respond(request, 307, headers={"Location": location, "Docker-Content-Digest": str(digest)})
        handle = await self.registry.blobs.open(namespace, digest)
        try:
            byte_range = parse_range(request.getHeader("Range"), handle.size)
        except RangeNotSatisfiable:
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
            await self._publish("blob.pull", request, namespace, digest=str(digest))
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
        ttl = self.blob_redirect()
        driver = IRedirectingDriver(self.registry.driver, None)
        inline = any(request.getHeader(name) is not None for name in ("Range", "X-Angosd-No-Redirect",
                                                                      "X-Angosd-Browse"))
        if ttl is None or driver is None or inline or request.getHeader("Sec-Fetch-Dest") == "empty":
            return None
        await self.registry.blobs.size(namespace, digest)
        return driver.redirect_url(paths.blob_data(digest), ttl)

    async def _delete_blob(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        await self.registry.blobs.revoke(namespace, Digest.parse(route.argument or ""))
        return respond(request, 202)

    # -- uploads -----------------------------------------------------------------------------

    async def _start_upload(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        uploads = self.registry.uploads
        if route.param("digest") is not None and isinstance(request.sink, UploadSink):
            digest = Digest.parse(route.param("digest") or "")
            await self._publish_blob_push(request, namespace, request.sink.session, digest)
            await uploads.complete(namespace, request.sink.session, digest)
            return self._blob_created(request, namespace, digest)
        mount = route.param("mount")
        if mount is not None:
            digest = Digest.parse(mount)
            source = route.param("from")
            # A malformed ``from`` cannot own anything: an unsatisfiable mount, never an error.
            mountable = source is None or is_valid_name(source)
            if mountable and await self.registry.mount(namespace, digest, source, self._may_read(request)):
                try:
                    await self._publish("blob.push", request, namespace, digest=str(digest))
                except OciError:
                    await self.registry.blobs.revoke(namespace, digest)
                    raise
                return self._blob_created(request, namespace, digest)
        algorithm = route.param("digest-algorithm")
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:40]!r}")
        session = await uploads.start(namespace, algorithm)
        return respond(request, 202, headers=upload_headers(namespace, session, 0))

    def _may_read(self, request: RegistryRequest) -> Callable[[str], Awaitable[bool]]:
        async def may_read(namespace: str) -> bool:
            source_route = Route("get-blob", "GET", f"/v2/{namespace}/blobs/", namespace)
            try:
                await self.authorizer.authorize(request, source_route)
            except OciError:
                return False
            return True

        return may_read

    def _blob_created(self, request: RegistryRequest, namespace: str, digest: Digest) -> bytes:
        return respond(request, 201, headers={"Location": f"/v2/{namespace}/blobs/{digest}",
                                              "Docker-Content-Digest": str(digest)})

    async def _upload_status(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        info = await self.registry.uploads.info(namespace, parse_session_id(route.argument or ""))
        return respond(request, 204, headers=upload_headers(namespace, info.session, info.size))

    async def _update_upload(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        sink = request.sink
        if not isinstance(sink, UploadSink):
            raise BlobUploadInvalid("no upload body")
        return respond(request, 202, headers=upload_headers(namespace, sink.session, sink.offset))

    async def _complete_upload(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        session = parse_session_id(route.argument or "")
        digest_text = route.param("digest")
        if digest_text is None:
            raise DigestInvalid("the digest query parameter is required")
        digest = Digest.parse(digest_text)
        await self.registry.uploads.info(namespace, session)
        await self._publish_blob_push(request, namespace, session, digest)
        await self.registry.uploads.complete(namespace, session, digest)
        return self._blob_created(request, namespace, digest)

    async def _cancel_upload(self, request: RegistryRequest, route: Route) -> bytes:
        namespace = self._namespace(route)
        session = parse_session_id(route.argument or "")
        await self.registry.uploads.info(namespace, session)
        await self.registry.uploads.cancel(namespace, session)
        return respond(request, 204)

    # -- errors: the one place that turns failures into responses -----------------------------

    @app.handle_errors(OciError)
    def _oci_error(self, request: IRequest, failure: Failure) -> bytes | None:
        error = failure.value
        assert isinstance(error, OciError)
        return self._error_response(request, error)

    @app.handle_errors(StorageError)
    def _storage_error(self, request: IRequest, failure: Failure) -> bytes | None:
        _log.failure("storage failure on {method} {path}", failure, method=request.method, path=request.path)
        error: OciError
        if failure.check(OutOfSpace):
            error = StorageUnavailable("insufficient storage: the registry's disk is full")
        else:
            error = StorageFailure(f"storage error: {failure.value}")
        return self._error_response(request, error)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes | None:
        """Klein's own URL map refused the request before `dispatch` ran (e.g. a path holding
        a decoded newline, which its catch-all rule cannot match): answer as `dispatch` would."""
        path = request.path.decode("latin-1")[:200]
        error: OciError = MethodNotAllowed(path) if getattr(failure.value, "code", None) == 405 else NotFound(path)
        return self._error_response(request, error)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes | None:
        _log.failure("unhandled error on {method} {path}", failure, method=request.method, path=request.path)
        error = OciError("internal error")
        return self._error_response(request, error)

    def _error_response(self, request: IRequest, error: OciError) -> bytes | None:
        if getattr(request, "startedWriting", False):
            request.loseConnection()  # type: ignore[attr-defined]  # headers are gone: all we can do is cut the body short
            return None
        headers = dict(error.headers)
        if isinstance(error, UploadOffsetMismatch):
            headers.update(upload_headers(error.namespace, error.session, error.size))
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = f'Basic realm="{self.realm}", charset="UTF-8"'
        return respond(request, error.status, error.body(), JSON, headers)

