"""``[metadata_store]``: the registry over a `SplitDriver` keeps its metadata in one store and
its blobs and upload sessions in the other, and works as over one store."""

from __future__ import annotations

from twisted.internet.task import Clock

from angosd.oci import media_types as mt
from angosd.oci.names import Reference
from angosd.registry.gc import GarbageCollector
from angosd.registry.registry import Limits, Registry
from angosd.storage.memory import MemoryDriver
from angosd.storage.split import is_metadata, split
from tests.unit.helpers import fired, push_blob, run


async def _nothing() -> None:
    return None


def test_keys_are_routed_by_kind() -> None:
    assert is_metadata("repositories/team/app/_manifests/tags/v1/current")
    assert is_metadata("repositories/team/app/_blobs/sha256/ab")
    assert not is_metadata("repositories/team/app/_uploads/0190/data")
    assert not is_metadata("blobs/sha256/ab/abcd/data")
    assert not is_metadata("_gc/marks/sha256/ab")
    assert not is_metadata("repositories")


def test_a_registry_over_a_split_store() -> None:
    blobs, metadata, clock = MemoryDriver(), MemoryDriver(), Clock()
    clock.advance(1_767_225_600)
    registry = Registry(split(blobs, metadata), clock, Limits(), require_references=lambda _ns: True)
    config = push_blob(registry, "team/app", b'{"os": "linux"}')
    layer = push_blob(registry, "team/app", b"layer bytes" * 100)
    unused = push_blob(registry, "team/app", b"never referenced")
    pending = run(registry.uploads.start("team/app"))
    body = (b'{"schemaVersion": 2, "mediaType": "' + mt.OCI_MANIFEST.encode() + b'", "config": {"mediaType": '
            b'"application/vnd.oci.image.config.v1+json", "digest": "' + str(config).encode() + b'", "size": 15}, '
            b'"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "' + str(layer).encode()
            + b'", "size": 1100}]}')
    manifest = run(registry.manifests.put("team/app", Reference(tag="v1"), mt.OCI_MANIFEST, body))
    assert run(registry.manifests.list_tags("team/app")) == ["v1"]
    assert run(registry.catalog()) == ["team/app"]
    assert run(registry.namespaces()) == ["team/app"]
    assert run(registry.manifests.get("team/app", Reference(tag="v1"))).body == body

    meta_keys = [f"{top}/{key}" for top in ("repositories", "blobs", "_gc") for key in fired(metadata.walk(top))]
    blob_keys = [f"{top}/{key}" for top in ("repositories", "blobs", "_gc") for key in fired(blobs.walk(top))]
    assert meta_keys and all(is_metadata(key) for key in meta_keys), meta_keys
    assert not [key for key in blob_keys if is_metadata(key)], blob_keys
    assert any(key.startswith(f"repositories/team/app/_uploads/{pending}/") for key in blob_keys)
    assert any(key.startswith("repositories/team/app/_manifests/tags/v1") for key in meta_keys)
    assert f"blobs/sha256/{manifest.digest.hex[:2]}/{manifest.digest.hex}/data" in blob_keys

    # Garbage collection sees references (metadata) and reclaims bytes (blob store).
    run(registry.blobs.revoke("team/app", unused))
    run(registry.blobs.revoke("team/app", layer))  # still referenced by the manifest
    collector = GarbageCollector(registry.driver, registry.blobs, clock, lambda: 0, _nothing)
    run(collector.collect())
    clock.advance(5)
    run(collector.collect())
    assert not run(registry.blobs.exists(unused))
    assert run(registry.blobs.exists(layer)) and run(registry.blobs.exists(config))
