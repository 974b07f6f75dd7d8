"""``get-manifest`` (GET and HEAD), ``put-manifest`` and ``delete-manifest``."""

from __future__ import annotations

from angosd.actions import Route
from angosd.http.endpoints.base import Endpoint, WriteEndpoint
from angosd.http.request import BodySink, MemorySink, RegistryRequest
from angosd.http.responses import respond
from angosd.oci.digest import Digest
from angosd.oci.errors import ManifestInvalid
from angosd.oci.names import Reference


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
    """The body is held in memory (bounded by the manifest size limit) and stored whole."""

    async def open_body(self, request: RegistryRequest, route: Route, length: int | None) -> BodySink | None:
        return MemorySink(self.context.registry.manifests.max_manifest_size)

    async def handle(self, request: RegistryRequest, route: Route) -> bytes:
        context = self.context
        namespace = context.namespace(route)
        reference = Reference.parse(route.argument or "")
        sink = request.sink
        if not isinstance(sink, MemorySink):  # admitted by `open_body`: always one
            raise ManifestInvalid("no manifest body")
        body = sink.getvalue()
        digest = reference.digest or Digest.of(body)
        await context.publish("manifest.push", request, namespace, digest=str(digest), reference=str(reference),
                              tag=reference.tag)
        if reference.tag is not None:
            await context.publish("tag.create", request, namespace, digest=str(digest), tag=reference.tag)
        manifest = await context.registry.manifests.put(namespace, reference, request.getHeader("Content-Type"),
                                                        body)
        headers = {"Location": f"/v2/{namespace}/manifests/{manifest.digest}",
                   "Docker-Content-Digest": str(manifest.digest)}
        if manifest.subject is not None:
            headers["OCI-Subject"] = str(manifest.subject.digest)
        return respond(request, 201, headers=headers)


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
