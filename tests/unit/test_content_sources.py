"""The one seam between local and pull-through namespaces: `Sources` and its `ContentSource`s."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from angosd.actions import Action, Route
from angosd.auth.authorizer import AllowAll
from angosd.config import RepositoryConfig, UpstreamConfig
from angosd.http.endpoints.base import Context
from angosd.http.endpoints.sources import LocalSource, PullThroughSource, Sources
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import Unsupported
from angosd.oci.names import Reference
from angosd.proxy.cache import PullThroughCache
from angosd.registry.registry import Limits, Registry
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import run

HUB = RepositoryConfig("hub", upstreams=(UpstreamConfig("http://upstream.invalid"),))


def _registry() -> Registry:
    return Registry(MemoryDriver(), Clock(), Limits())


def _cache(registry: Registry) -> PullThroughCache:
    def repository_for(namespace: str) -> RepositoryConfig | None:
        return HUB if namespace == "hub" or namespace.startswith("hub/") else None

    return PullThroughCache(registry, repository_for, lambda _namespace, _tag: False, Clock())


def _store_manifest(registry: Registry, namespace: str) -> Digest:
    config = b"{}"
    session = run(registry.uploads.start(namespace))
    sink = run(registry.uploads.open_sink(namespace, session, 0))
    sink.write(config)
    run(sink.finish())
    run(registry.uploads.complete(namespace, session, Digest.of(config)))
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": mt.OCI_EMPTY, "digest": str(Digest.of(config)), "size": 2}}).encode()
    digest = Digest.of(body)
    run(registry.manifests.put(namespace, Reference(digest=digest), mt.OCI_MANIFEST, body))
    return digest


def test_without_a_cache_every_namespace_is_local() -> None:
    sources = Sources(_registry())
    assert isinstance(sources.for_namespace("hub/library/alpine"), LocalSource)
    assert not sources.is_pull_through("hub/library/alpine")


def test_a_pull_through_namespace_reads_through_its_cache_and_refuses_writes() -> None:
    registry = _registry()
    sources = Sources(registry, _cache(registry))
    assert isinstance(sources.for_namespace("hub/library/alpine"), PullThroughSource)
    assert isinstance(sources.for_namespace("team/app"), LocalSource)
    context = Context(registry, AllowAll(), sources)
    with pytest.raises(Unsupported):
        context.refuse_pull_through(Route(Action.PUT_MANIFEST, "PUT", "/v2/hub/x/manifests/v1", "hub/x", "v1"))
    context.refuse_pull_through(Route(Action.PUT_MANIFEST, "PUT", "/v2/team/app/manifests/v1", "team/app", "v1"))


def test_answers_say_how_they_were_produced_only_for_pull_through() -> None:
    registry = _registry()
    sources = Sources(registry, _cache(registry))
    cached = _store_manifest(registry, "hub/library/alpine")  # by digest: served without asking upstream
    local = _store_manifest(registry, "team/app")
    answer = run(sources.for_namespace("hub/library/alpine").manifest("hub/library/alpine",
                                                                      Reference(digest=cached)))
    assert answer.manifest.digest == cached and dict(answer.headers) == {"X-Angosd-Cache": "hit"}
    answer = run(sources.for_namespace("team/app").manifest("team/app", Reference(digest=local)))
    assert answer.manifest.digest == local and dict(answer.headers) == {}
    size = run(sources.for_namespace("hub/library/alpine").blob_size("hub/library/alpine", Digest.of(b"{}")))
    assert size == 2
