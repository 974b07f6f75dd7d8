"""Writing a CNCF distribution 2.x store (``docker/registry/v2``) through a storage driver,
exactly as distribution lays it out, for the migration tests."""

from __future__ import annotations

import json
from typing import Any

from angosd.oci.digest import Digest
from angosd.storage.interface import IStorageDriver

V2 = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def blob_key(digest: Digest) -> str:
    return f"{V2}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def repository_key(name: str) -> str:
    return f"{V2}/repositories/{name}"


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data), **extra}


class DistributionWriter:
    """Writes blobs, links, tags and uploads as distribution does."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    async def blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        await self.driver.write(blob_key(digest), data)
        return digest

    async def link(self, key: str, digest: Digest) -> None:
        await self.driver.write(key, str(digest).encode())

    async def layer_link(self, name: str, digest: Digest) -> None:
        await self.link(f"{repository_key(name)}/_layers/{digest.algorithm}/{digest.hex}/link", digest)

    async def revision_link(self, name: str, digest: Digest) -> None:
        await self.link(f"{repository_key(name)}/_manifests/revisions/{digest.algorithm}/{digest.hex}/link", digest)

    async def tag(self, name: str, tag: str, digest: Digest) -> None:
        base = f"{repository_key(name)}/_manifests/tags/{tag}"
        await self.link(f"{base}/index/{digest.algorithm}/{digest.hex}/link", digest)
        await self.link(f"{base}/current/link", digest)

    async def manifest(self, name: str, document: dict[str, Any], tag: str | None = None) -> tuple[Digest, bytes]:
        body = json.dumps(document, indent=3).encode()  # not canonical: bytes must be kept as they are
        digest = await self.blob(body)
        await self.revision_link(name, digest)
        if tag is not None:
            await self.tag(name, tag, digest)
        return digest, body

    async def image(self, name: str, layers: list[bytes], tag: str | None = None,
                    subject: tuple[Digest, bytes] | None = None, config: bytes = b'{"architecture":"amd64"}',
                    ) -> tuple[Digest, bytes]:
        """Push an image: blobs and their layer links first, then the manifest, then the tag."""
        for data in (config, *layers):
            await self.layer_link(name, await self.blob(data))
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                    "config": descriptor(OCI_CONFIG, config),
                                    "layers": [descriptor(OCI_LAYER, data) for data in layers]}
        if subject is not None:
            document["subject"] = {"mediaType": OCI_MANIFEST, "digest": str(subject[0]), "size": len(subject[1])}
            document["artifactType"] = "application/vnd.example.sig"
        return await self.manifest(name, document, tag)

    async def index(self, name: str, children: list[tuple[Digest, bytes]], tag: str | None = None,
                    ) -> tuple[Digest, bytes]:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                    "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(d), "size": len(b),
                                   "platform": {"os": "linux", "architecture": f"arch{i}"}}
                                  for i, (d, b) in enumerate(children)]}
        return await self.manifest(name, document, tag)

    async def upload(self, name: str, session: str, data: bytes) -> None:
        base = f"{repository_key(name)}/_uploads/{session}"
        await self.driver.write(f"{base}/startedat", b"2024-05-01T12:00:00.123456789Z")
        await self.driver.write(f"{base}/data", data)
        await self.driver.write(f"{base}/hashstates/sha256/{len(data)}", b"\x00state")
