"""Build OCI image layouts locally and drive ``skopeo`` against them.

The integration tests push real images into the registry with Debian's
``skopeo`` and copy them back, without any network access.  The images are
therefore built here, on disk, as OCI image layouts
(https://github.com/opencontainers/image-spec/blob/main/image-layout.md)::

    <root>/oci-layout          {"imageLayoutVersion": "1.0.0"}
    <root>/index.json          image index; each tag is a descriptor carrying
                               an ``org.opencontainers.image.ref.name``
                               annotation
    <root>/blobs/sha256/<hex>  content-addressed blobs

which skopeo reads and writes as ``oci:<root>:<tag>``.

Everything is deterministic: the same arguments give the same digests, and a
different ``seed`` gives different layer contents (hence digests).  Layers are
written streaming (tar -> gzip -> temporary file, hashed on the way) so a
layer of hundreds of MiB never sits in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

__all__ = [
    "ARTIFACT_LAYER_MEDIA_TYPE",
    "EMPTY_JSON_DIGEST",
    "MEDIA_TYPE_CONFIG",
    "MEDIA_TYPE_EMPTY",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_MANIFEST",
    "SKOPEO",
    "Layout",
    "build_artifact",
    "build_image",
    "build_index",
    "digest_of_file",
    "inspect_raw",
    "manifest_digest",
    "skopeo",
    "skopeo_may_fail",
]

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
#: Media type of the single (small, non-tar) layer of artifacts.
ARTIFACT_LAYER_MEDIA_TYPE = "application/vnd.example.payload.v1+json"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:" + hashlib.sha256(EMPTY_JSON).hexdigest()

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"

_CHUNK = 1 << 20  # pseudo-random data is generated / copied 1 MiB at a time
#: Layers at least this big are gzip'd with level 0 (stored blocks, still a
#: valid gzip stream): their data is random hence incompressible anyway, and
#: even level 1 deflate costs ~25 s/GiB on a slow CI machine.
_BIG_LAYER = 32 << 20


@dataclass(frozen=True)
class Layout:
    """One tagged manifest (or index) inside an OCI image layout directory."""

    path: str
    """The layout directory (holding ``oci-layout``, ``index.json``, ``blobs``)."""
    tag: str
    """The ``org.opencontainers.image.ref.name`` of the manifest in index.json."""
    digest: str
    """Digest of the top-level manifest or index, ``sha256:<hex>``."""
    media_type: str
    """Media type of the top-level manifest or index."""

    @property
    def ref(self) -> str:
        """The skopeo/containers-image reference, ``oci:<path>:<tag>``."""
        return f"oci:{self.path}:{self.tag}"

    def blob_path(self, digest: str | None = None) -> str:
        """Path of the blob ``digest`` (default: the top-level manifest)."""
        return _blob_path(self.path, digest or self.digest)


# --------------------------------------------------------------------------
# Builders


def build_image(
    root: str,
    tag: str = "v1",
    *,
    layer_sizes: Sequence[int] = (4096,),
    seed: int = 0,
    platform: tuple[str, str] = ("linux", "amd64"),
) -> Layout:
    """Write a single-platform OCI image into the layout ``root``, tagged ``tag``.

    Each entry of ``layer_sizes`` becomes one gzip'd tar layer holding a single
    regular file of that many pseudo-random bytes (derived from ``seed`` and
    the layer's position).  ``platform`` is ``(os, architecture)``.  The
    layout directory is created if needed; existing contents are kept, and an
    existing entry for ``tag`` in index.json is replaced.
    """
    _init_layout(root)
    descriptor = _write_image(root, layer_sizes, f"{seed}", platform)
    return _tag(root, descriptor, tag)


def build_index(
    root: str,
    tag: str = "multi",
    platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
    seed: int = 0,
) -> Layout:
    """Write a multi-platform OCI image index into the layout ``root``.

    One image (one 4 KiB layer each, different contents per platform) is
    written per ``(os, architecture)`` in ``platforms``; their manifests are
    stored as blobs and referenced by the index (with a ``platform`` in each
    descriptor).  Only the index itself is tagged in index.json.
    """
    _init_layout(root)
    manifests = []
    for os_name, arch in platforms:
        descriptor = _write_image(root, (4096,), f"{seed}/{os_name}/{arch}", (os_name, arch))
        descriptor["platform"] = {"architecture": arch, "os": os_name}
        manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
    return _tag(root, _write_json_blob(root, index, MEDIA_TYPE_INDEX), tag)


def build_artifact(
    root: str,
    subject: Layout,
    tag: str = "sig",
    artifact_type: str = "application/vnd.example.signature.v1",
) -> Layout:
    """Write an OCI artifact manifest referring to ``subject``, tagged ``tag``.

    The artifact is an image manifest with ``artifactType``, the empty config
    descriptor (``application/vnd.oci.empty.v1+json``, ``{}``), one small
    layer of ``ARTIFACT_LAYER_MEDIA_TYPE`` and ``subject`` set to the subject's
    descriptor.  ``root`` must be the layout holding the subject (pass
    ``subject.path``): the subject's manifest blob is read from it, and both
    tags are then listed in its index.json.
    """
    subject_blob = _blob_path(root, subject.digest)
    if not os.path.isfile(subject_blob):
        raise ValueError(f"subject {subject.digest} is not a blob of layout {root}")
    payload = {"artifactType": artifact_type, "subject": subject.digest}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": artifact_type,
        "config": _write_blob(root, EMPTY_JSON, MEDIA_TYPE_EMPTY),
        "layers": [_write_json_blob(root, payload, ARTIFACT_LAYER_MEDIA_TYPE)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": os.path.getsize(subject_blob),
        },
    }
    return _tag(root, _write_json_blob(root, manifest, MEDIA_TYPE_MANIFEST), tag)


# --------------------------------------------------------------------------
# skopeo and digest helpers


def digest_of_file(path: str) -> str:
    """Return ``sha256:<hex>`` of the file at ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def skopeo_may_fail(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo --insecure-policy ARGS...``; return the result, even on failure."""
    return subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def skopeo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo --insecure-policy ARGS...``; raise AssertionError if it fails.

    The error message carries the command line, exit status and stderr.
    """
    proc = skopeo_may_fail(*args, timeout=timeout)
    _check(proc)
    return proc


def inspect_raw(ref: str, *extra: str) -> bytes:
    """Return the raw manifest bytes of ``ref`` (``skopeo inspect --raw EXTRA... REF``).

    ``extra`` holds further skopeo inspect options (e.g. ``--tls-verify=false``).
    Output is kept as bytes so it can be compared and hashed exactly.
    """
    proc = subprocess.run(
        [SKOPEO, "--insecure-policy", "inspect", "--raw", *extra, ref],
        capture_output=True,
        timeout=600,
        check=False,
    )
    _check(proc)
    return proc.stdout


def manifest_digest(ref: str, *extra: str) -> str:
    """Return ``sha256:<hex>`` of the raw manifest of ``ref`` (see inspect_raw)."""
    return "sha256:" + hashlib.sha256(inspect_raw(ref, *extra)).hexdigest()


def _check(proc: subprocess.CompletedProcess[Any]) -> None:
    if proc.returncode != 0:
        stderr = proc.stderr
        if isinstance(stderr, bytes):
            stderr = stderr.decode("utf-8", "replace")
        raise AssertionError(f"{' '.join(proc.args)} exited with status {proc.returncode}:\n{stderr}")


# --------------------------------------------------------------------------
# Layout internals


def _blob_path(root: str, digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return os.path.join(root, "blobs", algorithm, hexdigest)


def _init_layout(root: str) -> None:
    """Create the layout skeleton (``oci-layout``, ``blobs/sha256``) if missing."""
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    marker = os.path.join(root, "oci-layout")
    if not os.path.exists(marker):
        _write_atomic(marker, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_blob(root: str, data: bytes, media_type: str) -> dict[str, Any]:
    """Store ``data`` as a blob; return its descriptor."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(root, digest)
    if not os.path.exists(path):
        _write_atomic(path, data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _write_json_blob(root: str, obj: Any, media_type: str) -> dict[str, Any]:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _write_blob(root, data, media_type)


def _tag(root: str, descriptor: dict[str, Any], tag: str) -> Layout:
    """Point ``tag`` at ``descriptor`` in ``root``/index.json (replacing any old entry)."""
    index_path = os.path.join(root, "index.json")
    try:
        with open(index_path, "rb") as f:
            index = json.load(f)
    except FileNotFoundError:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}
    index["manifests"] = [
        d for d in index.get("manifests", []) if d.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
    ]
    index["manifests"].append({**descriptor, "annotations": {REF_NAME_ANNOTATION: tag}})
    _write_atomic(index_path, json.dumps(index, indent=2).encode())
    return Layout(path=root, tag=tag, digest=descriptor["digest"], media_type=descriptor["mediaType"])


def _write_image(root: str, layer_sizes: Sequence[int], key: str, platform: tuple[str, str]) -> dict[str, Any]:
    """Write layers, config and manifest of one image; return the manifest descriptor."""
    os_name, arch = platform
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        descriptor, diff_id = _write_layer(root, size, f"{key}/{i}")
        layers.append(descriptor)
        diff_ids.append(diff_id)
    config = {
        "architecture": arch,
        "os": os_name,
        "config": {"Labels": {"org.example.seed": key}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": _write_json_blob(root, config, MEDIA_TYPE_CONFIG),
        "layers": layers,
    }
    return _write_json_blob(root, manifest, MEDIA_TYPE_MANIFEST)


class _HashingWriter:
    """Write-only file object that hashes (and counts) what passes through it."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class _PseudoRandomReader:
    """Read-only file object: ``size`` deterministic pseudo-random bytes from ``key``.

    Chunk ``n`` is SHAKE-128 of ``key/n``: fast, reproducible, incompressible.
    """

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self.counter = 0  # number of chunks generated so far
        self.chunk = b""
        self.pos = 0  # read position within self.chunk

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.counter * _CHUNK + len(self.chunk) - self.pos
        n = left if n < 0 else min(n, left)
        out = bytearray()
        while len(out) < n:
            if self.pos == len(self.chunk):
                seed = f"{self.key}/{self.counter}".encode()
                self.chunk = hashlib.shake_128(seed).digest(min(_CHUNK, self.size - self.counter * _CHUNK))
                self.counter += 1
                self.pos = 0
            take = min(n - len(out), len(self.chunk) - self.pos)
            out += memoryview(self.chunk)[self.pos : self.pos + take]
            self.pos += take
        return bytes(out)


def _write_layer(root: str, size: int, key: str) -> tuple[dict[str, Any], str]:
    """Stream a tar+gzip layer holding one file of ``size`` bytes into blobs/.

    Returns ``(descriptor, diff_id)``; the diff_id is the sha256 of the
    uncompressed tar.  Memory use is bounded by a few chunk buffers.
    """
    blobs = os.path.join(root, "blobs", "sha256")
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".tmp-layer-")
    try:
        with os.fdopen(fd, "wb") as raw:
            compressed = _HashingWriter(raw)
            level = 0 if size >= _BIG_LAYER else 1
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=level, mtime=0) as gz:
                uncompressed = _HashingWriter(gz)
                with tarfile.TarFile(
                    fileobj=cast(IO[bytes], uncompressed), mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK
                ) as tar:
                    info = tarfile.TarInfo(f"data/{key.replace('/', '-')}.bin")
                    info.size = size
                    info.mode = 0o644
                    info.mtime = 0
                    tar.addfile(info, _PseudoRandomReader(key, size))
        descriptor = {
            "mediaType": MEDIA_TYPE_LAYER_GZIP,
            "digest": compressed.digest,
            "size": compressed.size,
        }
        os.chmod(tmp, 0o644)
        os.replace(tmp, _blob_path(root, compressed.digest))
    except BaseException:
        os.unlink(tmp)
        raise
    return descriptor, uncompressed.digest
