"""``get-manifest`` (GET and HEAD), ``put-manifest`` and ``delete-manifest``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from angosd.actions import Action, Route
from angosd.http.endpoints.base import Context, Endpoint, WriteEndpoint
from angosd.http.request import BodySink, MemorySink, RegistryRequest
from angosd.http.responses import respond
from angosd.oci.errors import ManifestInvalid, OciError
from angosd.oci.manifest import certainly_too_dense, density
from angosd.oci.names import Reference, validate_tag


class GetManifest(Endpoint):
    """The manifest's exact bytes (headers only for HEAD). A GET is a pull: published as
    ``manifest.pull`` and recorded as the namespace's last pull, except the web UI's reads."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        context = self.context
        namespace = context.namespace(route)
        reference = Reference.parse(route.argument or "")
        answer = await context.source(namespace).manifest(namespace, reference)
        stored = answer.manifest
        headers = {**answer.headers, "Docker-Content-Digest": str(stored.digest),
                   "X-Content-Type-Options": "nosniff"}
        if route.method == "GET":
            await context.publish("manifest.pull", request, namespace, digest=str(stored.digest),
                                  reference=str(reference), tag=reference.tag)
            if request.getHeader("X-Angosd-Browse") is None:  # the web UI's reads are not pulls
                context.registry.pulls.record(namespace, stored.digest)  # in memory; flushed in batches
        return respond(request, 200, stored.body, stored.media_type, headers)


class PutManifest(WriteEndpoint):
    """The body is held in memory (bounded by the manifest size limit) and stored whole.

    ``?tag=A&tag=B`` (OCI distribution, development version) tags the pushed manifest with
    each tag in the same request; every tag set is echoed in an ``OCI-Tag`` response header,
    which tells the client the parameters were honoured. References the namespace does not
    have are mounted from namespaces the caller may read (as a ``get-blob`` there)."""

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        limit = self.context.registry.manifests.max_manifest_size
        return ManifestSink(limit, length if length is not None else limit)

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        context = self.context
        namespace = context.namespace(route)
        reference = Reference.parse(route.argument or "")
        extra_tags = [validate_tag(tag) for tag in route.query.get("tag", [])]
        sink = request.sink
        if not isinstance(sink, MemorySink):  # admitted by `open_body`: always one
            raise ManifestInvalid("no manifest body")
        body = sink.getvalue()
        digest = reference.digest or await context.registry.manifests.parser.digest(body)
        await context.publish("manifest.push", request, namespace, digest=str(digest), reference=str(reference),
                              tag=reference.tag)
        tags = list(dict.fromkeys(([reference.tag] if reference.tag is not None else []) + extra_tags))
        for tag in tags:
            await context.publish("tag.create", request, namespace, digest=str(digest), tag=tag)
        manifest = await context.registry.manifests.put(namespace, reference, request.getHeader("Content-Type"),
                                                        body, tags=extra_tags, may_read=may_read(context, request))
        headers = {"Location": f"/v2/{namespace}/manifests/{manifest.digest}",
                   "Docker-Content-Digest": str(manifest.digest)}
        if manifest.subject is not None:
            headers["OCI-Subject"] = str(manifest.subject.digest)
        for tag in extra_tags:
            request.responseHeaders.addRawHeader("OCI-Tag", tag)
        return respond(request, 201, headers=headers)


class ManifestSink(MemorySink):
    """A manifest body that is refused (`ManifestInvalid`) while it arrives when its first
    `EARLY_CHECK` bytes already make it denser in JSON values than a large manifest may be
    (`certainly_too_dense`, for a body of at most ``length`` bytes): a body of nested lists is
    then neither kept nor hashed. The full check runs when the body is parsed. A body longer
    than ``limit`` is left to the size check (413, as before)."""

    EARLY_CHECK = 512 * 1024

    def __init__(self, limit: int, length: int) -> None:
        super().__init__(limit)
        self._length = length
        self._seen = 0
        self._containers = 0
        self._commas = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if self._seen >= self.EARLY_CHECK or self._length > self._limit:
            return
        head = data[:self.EARLY_CHECK - self._seen]
        self._seen += len(head)
        containers, commas = density(head)
        self._containers += containers
        self._commas += commas
        if certainly_too_dense(self._containers, self._commas, self._length):
            raise ManifestInvalid("manifest holds too many JSON values for its size")


def may_read(context: Context, request: RegistryRequest) -> Callable[[str], Awaitable[bool]]:
    """Whether the caller may read blobs of a namespace (as a ``get-blob`` there)."""

    async def check(namespace: str) -> bool:
        source_route = Route(Action.GET_BLOB, "GET", f"/v2/{namespace}/blobs/", namespace)
        try:
            await context.authorizer.authorize(request, source_route)
        except OciError:
            return False
        return True

    return check


class DeleteManifest(Endpoint):
    """Deletes a tag, or a manifest by digest (published as ``tag.delete`` / ``manifest.delete``)."""

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        context = self.context
        namespace = context.namespace(route)
        reference = Reference.parse(route.argument or "")
        if reference.tag is not None:
            await context.publish("tag.delete", request, namespace, reference=reference.tag, tag=reference.tag)
        else:
            await context.publish("manifest.delete", request, namespace, digest=str(reference.digest),
                                  reference=str(reference))
        await context.registry.manifests.delete(namespace, reference)
        return respond(request, 202)
