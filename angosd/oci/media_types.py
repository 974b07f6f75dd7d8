"""Manifest media types and ``Accept`` negotiation."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFESTS = IMAGE_MANIFESTS | INDEXES


def base_type(content_type: str | None) -> str:
    """The media type without parameters (``;charset=...``), lower-cased."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def accepts(accept_headers: list[str], media_type: str) -> bool:
    """Whether a client's ``Accept`` headers admit ``media_type``.

    No header, ``*/*`` and ``application/*`` admit everything. Registries serve the
    stored type regardless (clients often list only some types), so this only informs
    the caller; it never fails a request by itself.
    """
    if not accept_headers:
        return True
    for header in accept_headers:
        for item in header.split(","):
            wanted = base_type(item)
            if wanted in ("*/*", "application/*", media_type):
                return True
    return False
