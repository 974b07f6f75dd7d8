"""Signed, incremental bundles: the contents manifest, its signature, and state files.

A bundle is one or more volumes; each volume is an OCI layout tar (`angosd.archive.layout`)
with three more members::

    angosd-bundle.json     the contents manifest (the same bytes in every volume)
    angosd-bundle.sig      its detached Ed25519 signature (64 bytes)
    angosd-volume.json     {"volume": K}: which volume this file is

The contents manifest (`BundleContents`) lists every blob the bundle carries (digest,
size, volume), every manifest to store (namespace, digest, media type; children before
parents), the blobs each namespace must own, every tag and its manifest, and the *base*:
the blobs the bundle relies on without carrying them (what the other side already holds,
from its state file). Only the manifest is signed: every blob is verified against it.

A state file (`StoreState`) says what a store holds: its blobs, its manifests per
namespace and its tags. The import side writes one (``angosd import --state``, ``angosd
state``), an export writes the state its bundle leads to (its record); ``angosd export
--since STATE`` leaves out what STATE holds. Its `StoreState.id` is the SHA-256 of its
canonical bytes.

Parsers here take hostile input: any problem raises `BundleError` with one line, never
anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.oci.names import is_valid_name, validate_tag

CONTENTS_MEMBER = "angosd-bundle.json"
SIGNATURE_MEMBER = "angosd-bundle.sig"
VOLUME_MEMBER = "angosd-volume.json"
BUNDLE_FORMAT = "angosd-bundle/1"
STATE_FORMAT = "angosd-state/1"
#: Largest contents manifest or state file read.
MAX_DOCUMENT = 256 * 1024 * 1024
MAX_VOLUMES = 100_000
_MAX_MEDIA_TYPE = 255


class BundleError(Exception):
    """A bundle, state file or key that cannot be used; ``str()`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _load(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT:
        raise BundleError(f"{what} is larger than {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise BundleError(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise BundleError(f"{what} is not a JSON object")
    return document


def _digest(value: object, what: str) -> Digest:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a digest string")
    try:
        return Digest.parse(value)
    except OciError:
        raise BundleError(f"{what}: invalid digest {value[:100]!r}") from None


def _namespace(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_valid_name(value):
        raise BundleError(f"{what}: invalid namespace {str(value)[:100]!r}")
    return value


def _tag(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a tag string")
    try:
        return validate_tag(value)
    except OciError:
        raise BundleError(f"{what}: invalid tag {value[:100]!r}") from None


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleError(f"{what}: expected an integer from {low} to {high}")
    return value


def _list(document: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise BundleError(f"{what}: {key} is not a list")
    return value


# --------------------------------------------------------------------------- contents manifest


@dataclass(frozen=True, slots=True)
class CarriedBlob:
    digest: Digest
    size: int
    volume: int


@dataclass(frozen=True, slots=True)
class BundleManifestEntry:
    """A manifest to store in ``namespace`` (its bytes are carried or in the base)."""

    namespace: str
    digest: Digest
    media_type: str


@dataclass(frozen=True, slots=True)
class BundleContents:
    """What a bundle holds and what it relies on (see the module doc)."""

    volumes: int
    created: int
    base_state: str | None
    base: tuple[Digest, ...]
    blobs: tuple[CarriedBlob, ...]
    manifests: tuple[BundleManifestEntry, ...]
    owned: Mapping[str, tuple[Digest, ...]]
    tags: tuple[tuple[str, str, Digest], ...]
    carried: Mapping[Digest, CarriedBlob] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "carried", {blob.digest: blob for blob in self.blobs})

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)

    def in_volume(self, volume: int) -> dict[Digest, int]:
        return {blob.digest: blob.size for blob in self.blobs if blob.volume == volume}

    def to_json(self) -> bytes:
        return canonical({
            "format": BUNDLE_FORMAT, "volumes": self.volumes, "created": self.created,
            "base": {"state": self.base_state, "blobs": sorted(str(d) for d in self.base)},
            "blobs": [[str(b.digest), b.size, b.volume] for b in self.blobs],
            "manifests": [[m.namespace, str(m.digest), m.media_type] for m in self.manifests],
            "owned": {ns: sorted(str(d) for d in digests) for ns, digests in self.owned.items()},
            "tags": [[ns, tag, str(digest)] for ns, tag, digest in self.tags],
        })

    @classmethod
    def parse(cls, data: bytes) -> BundleContents:
        """The contents in ``data``; raises `BundleError` for anything malformed or inconsistent."""
        what = CONTENTS_MEMBER
        document = _load(data, what)
        if document.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{what}: unsupported format {str(document.get('format'))[:40]!r}")
        volumes = _int(document.get("volumes"), f"{what}: volumes", 1, MAX_VOLUMES)
        created = _int(document.get("created"), f"{what}: created", 0, 2**62)
        base = document.get("base")
        if not isinstance(base, dict):
            raise BundleError(f"{what}: base is not an object")
        state = base.get("state")
        if state is not None and not isinstance(state, str):
            raise BundleError(f"{what}: base.state is not a string")
        base_blobs = tuple(_digest(d, f"{what}: base.blobs") for d in _list(base, "blobs", what))
        blobs: list[CarriedBlob] = []
        seen: set[Digest] = set()
        for entry in _list(document, "blobs", what):
            if not isinstance(entry, list) or len(entry) != 3:
                raise BundleError(f"{what}: blobs: expected [digest, size, volume] entries")
            digest = _digest(entry[0], f"{what}: blobs")
            if digest in seen:
                raise BundleError(f"{what}: blob {digest} is listed twice")
            seen.add(digest)
            blobs.append(CarriedBlob(digest, _int(entry[1], f"{what}: size of {digest}", 0, 2**62),
                                     _int(entry[2], f"{what}: volume of {digest}", 1, volumes)))
        known = seen | set(base_blobs)
        manifests: list[BundleManifestEntry] = []
        for entry in _list(document, "manifests", what):
            if not isinstance(entry, list) or len(entry) != 3:
                raise BundleError(f"{what}: manifests: expected [namespace, digest, mediaType] entries")
            namespace = _namespace(entry[0], f"{what}: manifests")
            digest = _digest(entry[1], f"{what}: manifests")
            if not isinstance(entry[2], str) or not 0 < len(entry[2]) <= _MAX_MEDIA_TYPE:
                raise BundleError(f"{what}: manifests: invalid media type for {digest}")
            if digest not in known:
                raise BundleError(f"{what}: manifest {digest} is neither carried nor in the base")
            manifests.append(BundleManifestEntry(namespace, digest, entry[2]))
        owned_document = document.get("owned")
        if not isinstance(owned_document, dict):
            raise BundleError(f"{what}: owned is not an object")
        owned: dict[str, tuple[Digest, ...]] = {}
        for namespace, digests in owned_document.items():
            _namespace(namespace, f"{what}: owned")
            if not isinstance(digests, list):
                raise BundleError(f"{what}: owned.{namespace[:100]} is not a list")
            owned[namespace] = tuple(_digest(d, f"{what}: owned") for d in digests)
            stray = next((d for d in owned[namespace] if d not in known), None)
            if stray is not None:
                raise BundleError(f"{what}: blob {stray} of {namespace} is neither carried nor in the base")
        stored = {(m.namespace, m.digest) for m in manifests}
        tags: list[tuple[str, str, Digest]] = []
        for entry in _list(document, "tags", what):
            if not isinstance(entry, list) or len(entry) != 3:
                raise BundleError(f"{what}: tags: expected [namespace, tag, digest] entries")
            namespace = _namespace(entry[0], f"{what}: tags")
            tag = _tag(entry[1], f"{what}: tags")
            digest = _digest(entry[2], f"{what}: tags")
            if (namespace, digest) not in stored:
                raise BundleError(f"{what}: tag {namespace}:{tag} points to {digest}, which the bundle does not "
                                  "store in that namespace")
            tags.append((namespace, tag, digest))
        return cls(volumes, created, state, base_blobs, tuple(blobs), tuple(manifests), owned, tuple(tags))


# --------------------------------------------------------------------------- signatures


def load_private_key(path: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file ``path`` (``angosd keygen``, or ``openssl genpkey
    -algorithm ed25519``); raises `BundleError`."""
    try:
        with open(path, "rb") as source:
            key = serialization.load_pem_private_key(source.read(64 * 1024), password=None)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file ``path`` (a private key file gives its public half)."""
    try:
        with open(path, "rb") as source:
            data = source.read(64 * 1024)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise BundleError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key (the start of the SHA-256 of its raw bytes)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Digest.of(raw, "sha256").hex[:16]


def verify(contents: bytes, signature: bytes, trusted: Iterable[tuple[str, Ed25519PublicKey]]) -> str:
    """The name of the trusted key that signed ``contents``; raises `BundleError` when none did."""
    keys = list(trusted)
    if not keys:
        raise BundleError("no trusted keys configured ([bundle] trusted_keys or --trusted-key): cannot verify "
                          "the bundle's signature")
    for name, key in keys:
        try:
            key.verify(signature, contents)
            return name
        except InvalidSignature:
            continue
    raise BundleError(f"the signature of {CONTENTS_MEMBER} does not verify with any trusted key "
                      f"({', '.join(name for name, _ in keys)}): the bundle was altered or signed by an untrusted key")


# --------------------------------------------------------------------------- state files


@dataclass(frozen=True, slots=True)
class StoreState:
    """What a store holds (see the module doc)."""

    blobs: frozenset[Digest] = frozenset()
    manifests: Mapping[str, frozenset[Digest]] = field(default_factory=dict)
    tags: Mapping[str, Mapping[str, Digest]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return canonical({
            "format": STATE_FORMAT,
            "blobs": sorted(str(d) for d in self.blobs),
            "manifests": {ns: sorted(str(d) for d in digests) for ns, digests in sorted(self.manifests.items())},
            "tags": {ns: {tag: str(d) for tag, d in sorted(tags.items())} for ns, tags in sorted(self.tags.items())},
        })

    @property
    def id(self) -> str:
        return str(Digest.of(self.to_json(), "sha256"))

    def merged(self, other: StoreState) -> StoreState:
        """What a store holding this and then importing ``other`` holds (tags of ``other`` win)."""
        manifests = {ns: frozenset(d) for ns, d in self.manifests.items()}
        for ns, digests in other.manifests.items():
            manifests[ns] = manifests.get(ns, frozenset()) | digests
        tags = {ns: dict(t) for ns, t in self.tags.items()}
        for ns, more in other.tags.items():
            tags.setdefault(ns, {}).update(more)
        return StoreState(self.blobs | other.blobs, manifests, tags)

    @classmethod
    def parse(cls, data: bytes, what: str = "state file") -> StoreState:
        """The state in ``data``; raises `BundleError`."""
        document = _load(data, what)
        if document.get("format") != STATE_FORMAT:
            raise BundleError(f"{what}: not an angosd state file (format {str(document.get('format'))[:40]!r})")
        blobs = frozenset(_digest(d, f"{what}: blobs") for d in _list(document, "blobs", what))
        manifests_document = document.get("manifests")
        tags_document = document.get("tags")
        if not isinstance(manifests_document, dict) or not isinstance(tags_document, dict):
            raise BundleError(f"{what}: manifests and tags must be objects")
        manifests: dict[str, frozenset[Digest]] = {}
        for ns, digests in manifests_document.items():
            _namespace(ns, f"{what}: manifests")
            if not isinstance(digests, list):
                raise BundleError(f"{what}: manifests.{ns[:100]} is not a list")
            manifests[ns] = frozenset(_digest(d, f"{what}: manifests") for d in digests)
        tags: dict[str, dict[str, Digest]] = {}
        for ns, entries in tags_document.items():
            _namespace(ns, f"{what}: tags")
            if not isinstance(entries, dict):
                raise BundleError(f"{what}: tags.{ns[:100]} is not an object")
            tags[ns] = {_tag(tag, f"{what}: tags"): _digest(d, f"{what}: tags") for tag, d in entries.items()}
        return cls(blobs, manifests, tags)


def read_state(path: str) -> StoreState:
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return StoreState.parse(data, path)
