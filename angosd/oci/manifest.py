"""Manifest and index parsing and validation on push.

A manifest is stored as the exact bytes the client sent; this module only reads them to
validate and to learn what they reference (config, layers, child manifests, subject).
"""

from __future__ import annotations

import json
import json.scanner
from dataclasses import dataclass, field
from typing import Any

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import ManifestInvalid, OciError


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = field(default=None, hash=False, compare=False)
    platform: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    #: Where a non-distributable layer may be fetched from (OCI ``urls``); such a layer need
    #: not be in the registry.
    urls: tuple[str, ...] = field(default=(), hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as an OCI JSON object."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """What angosd needs to know about a validated manifest or index."""

    media_type: str
    digest: Digest
    size: int
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None = field(default=None, hash=False, compare=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    def referenced_blobs(self) -> tuple[Descriptor, ...]:
        """Config and layers: the blobs this manifest needs in its namespace."""
        return ((self.config,) if self.config is not None else ()) + self.layers

    def as_referrer(self) -> Descriptor:
        """This manifest as an entry of its subject's referrers index."""
        artifact_type = self.artifact_type
        if artifact_type is None and self.config is not None and self.config.media_type != mt.OCI_EMPTY:
            artifact_type = self.config.media_type
        return Descriptor(self.media_type, self.digest, self.size, artifact_type, self.annotations)


#: The most JSON objects and arrays a large manifest may hold per byte, counted on the raw
#: bytes (brackets inside strings count too): a descriptor, the smallest element of a
#: manifest, is far larger than this many bytes.
BYTES_PER_CONTAINER = 32
#: The same for commas (JSON values after the first of a list or object): an annotation
#: ``"k":"v",`` takes 8 bytes.
BYTES_PER_COMMA = 8
#: Bodies up to this size are never refused for their density (their decoding is cheap).
DENSITY_FREE = 64 * 1024


#: Bytes counted in one call while checking the density (a thread holds the interpreter
#: lock for one call at a time: about a millisecond at most).
_DENSITY_SLICE = 256 * 1024


def _too_dense(body: bytes) -> bool:
    """Whether ``body`` (larger than `DENSITY_FREE`) holds more ``[`` and ``{`` than one per
    `BYTES_PER_CONTAINER` bytes, or more commas than one per `BYTES_PER_COMMA`; stops
    counting as soon as that is certain."""
    if len(body) <= DENSITY_FREE:
        return False
    containers, commas = len(body) // BYTES_PER_CONTAINER, len(body) // BYTES_PER_COMMA
    for start in range(0, len(body), _DENSITY_SLICE):
        end = start + _DENSITY_SLICE
        containers -= body.count(b"[", start, end) + body.count(b"{", start, end)
        commas -= body.count(b",", start, end)
        if containers < 0 or commas < 0:
            return True
    return False


def density(part: bytes) -> tuple[int, int]:
    """The ``[`` and ``{`` bytes, and the commas, in ``part`` of a body."""
    return part.count(b"[") + part.count(b"{"), part.count(b",")


def certainly_too_dense(containers: int, commas: int, length: int) -> bool:
    """Whether a body of at most ``length`` bytes, of which a part already holds these
    counts (`density`), is one a ``large`` parse refuses, whatever the rest holds (for
    refusing a body while it arrives)."""
    return length > DENSITY_FREE and (containers * BYTES_PER_CONTAINER > length or commas * BYTES_PER_COMMA > length)


def _yielding_decoder() -> json.JSONDecoder:
    """A decoder that runs as Python code rather than in one C call, so a thread decoding
    a large body gives up the interpreter lock at every switch interval instead of holding
    it until the whole body is decoded."""
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def parse_manifest(body: bytes, content_type: str | None, digest_algorithm: str = "sha256",
                   large: bool = False) -> Manifest:
    """Validate a pushed manifest and describe it.

    ``large`` (for a body parsed on a thread pool) first refuses, in one pass over the raw
    bytes, a body larger than `DENSITY_FREE` with more than one JSON object or array per
    `BYTES_PER_CONTAINER` bytes or one comma per `BYTES_PER_COMMA` (no manifest is made of
    nested lists or lists of numbers: decoding them is what costs), then decodes with a
    decoder that lets other threads run meanwhile.

    The body must be UTF-8 JSON (no byte order mark, no other encoding). The media type
    comes from ``Content-Type`` (falling back to the body's ``mediaType``); when both are
    present they must agree. Raises `ManifestInvalid` for a body that is not UTF-8, malformed JSON,
    a wrong ``schemaVersion``, an unsupported media type, malformed descriptors, or
    image and index fields mixed in one document.
    """
    if large and _too_dense(body):
        raise ManifestInvalid("manifest holds too many JSON values for its size")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestInvalid("manifest is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise ManifestInvalid("manifest starts with a byte order mark; send plain UTF-8")
    try:
        document = _yielding_decoder().decode(text) if large else json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    if type(document.get("schemaVersion")) is not int or document["schemaVersion"] != 2:
        raise ManifestInvalid("schemaVersion must be 2")

    header_type = mt.base_type(content_type)
    body_type = document.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestInvalid("mediaType must be a string")
    if header_type and body_type and header_type != body_type:
        raise ManifestInvalid(f"Content-Type {header_type!r} does not match mediaType {body_type!r}")
    media_type = header_type or body_type or ""
    if not media_type:
        media_type = mt.OCI_INDEX if "manifests" in document else mt.OCI_MANIFEST
    if media_type not in mt.MANIFESTS:
        raise ManifestInvalid(f"unsupported manifest media type {media_type[:100]!r}")

    is_index = media_type in mt.INDEXES
    if is_index and ("layers" in document or "config" in document):
        raise ManifestInvalid("an index must not have config or layers")
    if not is_index and "manifests" in document:
        raise ManifestInvalid("an image manifest must not have manifests")

    config = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if is_index:
        manifests = _descriptor_list(document.get("manifests"), "manifests")
    else:
        config = _descriptor(document.get("config"), "config")
        layers = _descriptor_list(document.get("layers", []), "layers")

    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject")
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    return Manifest(
        media_type=media_type,
        digest=Digest.of(body, digest_algorithm),
        size=len(body),
        config=config,
        layers=layers,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=_annotations(document.get("annotations"), "annotations"),
    )


def _descriptor_list(value: Any, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise ManifestInvalid(f"{where} must be a list")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value))


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    media_type, digest_text, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    if not isinstance(digest_text, str):
        raise ManifestInvalid(f"{where}.digest must be a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    try:
        digest = Digest.parse(digest_text)
    except OciError:
        raise ManifestInvalid(f"{where}.digest {digest_text[:150]!r} is not a valid digest") from None
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(f"{where}.artifactType must be a string")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalid(f"{where}.platform must be an object")
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(url, str) and url for url in urls):
        raise ManifestInvalid(f"{where}.urls must be a list of URLs")
    return Descriptor(media_type, digest, size, artifact_type, _annotations(value.get("annotations"), where), platform,
                      tuple(urls))


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestInvalid(f"{where}.annotations must map strings to strings")
    return value
