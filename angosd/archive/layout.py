"""OCI image layout archives: a streaming tar writer and a validating tar reader.

An archive holds (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)::

    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           an image index: one descriptor per root; tags carry REF_NAME
    blobs/<alg>/<hex>    content-addressed blobs (manifests, configs, layers)

Ref names written by angosd are ``NAMESPACE:TAG`` (e.g. ``apps/web:v1``); an untagged
root (a referrer) carries ``NAMESPACE_ANNOTATION`` instead. `parse_ref_name` also reads
plain tags (``v1``, as other tools write them), ``NAMESPACE@DIGEST`` and
``host/path:tag``.

The writer never holds a blob in memory: a blob's tar header is written from its size,
its bytes are streamed (and hashed) through `BlobEntry`, and a size or digest mismatch
is an error. The reader only indexes member headers; `open_blob` streams a member.
Hostile input (path traversal, links, devices, duplicate or truncated members, huge or
malformed JSON) raises `LayoutError` with a one-line reason before anything is used.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest, new_hasher
from angosd.oci.errors import OciError
from angosd.oci.manifest import Descriptor, parse_manifest
from angosd.oci.names import is_valid_name, validate_tag

REF_NAME = "org.opencontainers.image.ref.name"
#: On untagged roots written by angosd (referrers): the namespace they belong to.
NAMESPACE_ANNOTATION = "io.angosd.namespace"
LAYOUT_VERSION = "1.0.0"
#: Largest index.json accepted by default.
MAX_INDEX_SIZE = 16 * 1024 * 1024
#: Most members an archive may have (each costs a small header record in memory).
MAX_MEMBERS = 250_000
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


class LayoutError(Exception):
    """An archive that cannot be read or written; ``str()`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def blob_member(digest: Digest) -> str:
    """The archive member name of a blob: ``blobs/<alg>/<hex>``."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


def parse_ref_name(ref: str) -> tuple[str | None, str | None, Digest | None]:
    """``(namespace, tag, digest)`` named by a ref name or an image argument.

    ``apps/web:v1`` -> (``apps/web``, ``v1``, None); ``apps/web@sha256:...`` -> digest;
    ``v1`` (a plain tag, no ``/``) -> (None, ``v1``, None); ``apps/web`` -> (``apps/web``,
    None, None). Raises `LayoutError` for an invalid namespace, tag or digest.
    """
    namespace: str | None
    tag: str | None = None
    digest: Digest | None = None
    if "@" in ref:
        namespace, _, text = ref.partition("@")
        try:
            digest = Digest.parse(text)
        except OciError:
            raise LayoutError(f"ref name {ref[:300]!r}: invalid digest") from None
    else:
        head, colon, tail = ref.rpartition(":")
        if colon and "/" not in tail:
            namespace, tag = head, tail
        elif "/" in ref:
            namespace = ref
        else:
            namespace, tag = None, ref
    if tag is not None:
        try:
            validate_tag(tag)
        except OciError:
            raise LayoutError(f"ref name {ref[:300]!r}: invalid tag {tag[:200]!r}") from None
    if namespace is not None and not is_valid_name(namespace):
        raise LayoutError(f"ref name {ref[:300]!r}: invalid namespace {namespace[:300]!r}")
    return namespace, tag, digest


def layout_file() -> bytes:
    """The bytes of ``oci-layout``."""
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


def index_file(descriptors: Iterable[Descriptor]) -> bytes:
    """The bytes of ``index.json`` listing ``descriptors`` (annotations included)."""
    document = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                "manifests": [descriptor.to_json() for descriptor in descriptors]}
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"


# --------------------------------------------------------------------------- writing


class ArchiveWriter:
    """Writes an OCI layout tar to ``out`` (any writable binary file, seekable or not).

    Call `add_file` / `add_blob` / `begin_blob` in any order, then `close`. Every blob
    name is written at most once (a repeated digest is skipped). Members get mode 0644
    and modification time ``mtime`` (0 by default, so the same content gives the same
    archive).
    """

    def __init__(self, out: BinaryIO | IO[bytes], mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._names: set[str] = set()
        self._open: BlobEntry | None = None
        self.size = 0  # bytes written so far

    def __contains__(self, digest: Digest) -> bool:
        return blob_member(digest) in self._names

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.size += len(data)

    def _header(self, name: str, size: int, directory: bool = False) -> None:
        if self._open is not None:
            raise LayoutError(f"blob {self._open.name} is still being written")
        if name in self._names:
            raise LayoutError(f"member {name} written twice")
        self._names.add(name)
        info = tarfile.TarInfo(name + "/" if directory else name)
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.mode = 0o755 if directory else 0o644
        info.size = 0 if directory else size
        info.mtime = self._mtime
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))

    def _directories(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for end in range(1, len(parts) + 1):
            directory = "/".join(parts[:end])
            if directory not in self._names:
                self._header(directory, 0, directory=True)

    def _pad(self, size: int) -> None:
        remainder = size % _BLOCK
        if remainder:
            self._write(b"\0" * (_BLOCK - remainder))

    def add_file(self, name: str, data: bytes) -> None:
        """A small regular member (``oci-layout``, ``index.json``)."""
        self._directories(name)
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))

    def add_blob(self, digest: Digest, data: bytes) -> None:
        """A small blob held in memory (a manifest); its digest is checked."""
        if digest in self:
            return
        entry = self.begin_blob(digest, len(data))
        entry.write(data)
        entry.finish()

    def begin_blob(self, digest: Digest, size: int) -> BlobEntry:
        """Start blob ``digest`` of ``size`` bytes; stream them with `BlobEntry.write`.

        Nothing else may be written until `BlobEntry.finish`.
        """
        name = blob_member(digest)
        self._directories(name)
        self._header(name, size)
        self._open = BlobEntry(self, name, digest, size)
        return self._open

    def _ended(self, entry: BlobEntry) -> None:
        self._pad(entry.size)
        self._open = None

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks, padded to a whole record)."""
        if self._open is not None:
            raise LayoutError(f"blob {self._open.name} is still being written")
        self._write(b"\0" * (2 * _BLOCK))
        remainder = self.size % _RECORD
        if remainder:
            self._write(b"\0" * (_RECORD - remainder))
        self._out.flush()


@implementer(IConsumer)
class BlobEntry:
    """The bytes of one blob on their way into the archive: counted and hashed.

    Also an `IConsumer`, so a storage read handle can stream straight into it.
    """

    def __init__(self, writer: ArchiveWriter, name: str, digest: Digest, size: int) -> None:
        self._writer = writer
        self.name = name
        self.digest = digest
        self.size = size
        self.written = 0
        self._hasher = new_hasher(digest.algorithm)

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.size:
            raise LayoutError(f"{self.name}: more than the announced {self.size} bytes")
        self._writer._write(data)
        self._hasher.update(data)
        self.written += len(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Writes are synchronous: the producer is never paused."""

    def unregisterProducer(self) -> None:
        pass

    def finish(self) -> None:
        """Complete the member; raises `LayoutError` on a short or wrong-digest body."""
        if self.written != self.size:
            raise LayoutError(f"{self.name}: {self.written} bytes written, {self.size} announced")
        if self._hasher.hexdigest() != self.digest.hex:
            raise LayoutError(f"{self.name}: content hashes to {self.digest.algorithm}:{self._hasher.hexdigest()}")
        self._writer._ended(self)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Member:
    """Where a regular member's bytes are in the archive."""

    name: str
    offset: int
    size: int


class ArchiveReader:
    """A validated OCI layout tar, opened for random access (uncompressed tar only).

    `open` checks the member table (names, types, duplicates, truncation), ``oci-layout``
    and ``index.json`` (size, JSON, descriptors); it does not read blobs. `roots` are the
    descriptors of index.json, annotations included.
    """

    def __init__(self, path: str, source: BinaryIO, members: dict[str, Member]) -> None:
        self.path = path
        self._source = source
        self._members = members
        self.roots: tuple[Descriptor, ...] = ()

    @classmethod
    def open(cls, path: str, max_index_size: int = MAX_INDEX_SIZE, max_members: int = MAX_MEMBERS) -> ArchiveReader:
        """Open and validate the archive at ``path``; raises `LayoutError`."""
        try:
            source = open(path, "rb")  # noqa: SIM115 - owned by the reader
        except OSError as exc:
            raise LayoutError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            magic = source.read(3)
            if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic == b"\xfd7z":
                raise LayoutError(f"{path}: compressed archive; decompress it first (an OCI archive is a plain tar)")
            source.seek(0)
            members = _index_members(path, source, os.fstat(source.fileno()).st_size, max_members)
            reader = cls(path, source, members)
            reader._check_layout_file()
            reader.roots = reader._read_index(max_index_size)
        except BaseException:
            source.close()
            raise
        return reader

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read_member(self, name: str, limit: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise LayoutError(f"{self.path}: not an OCI layout archive (no {name})")
        if member.size > limit:
            raise LayoutError(f"{self.path}: {name} is {member.size} bytes, more than the limit of {limit}")
        return self._read(member)

    def _read(self, member: Member) -> bytes:
        try:
            self._source.seek(member.offset)
            data = self._source.read(member.size)
        except OSError as exc:
            raise LayoutError(f"{self.path}: {member.name}: {exc.strerror or exc}") from None
        if len(data) != member.size:
            raise LayoutError(f"{self.path}: archive is truncated inside {member.name}")
        return data

    def _check_layout_file(self) -> None:
        data = self._read_member("oci-layout", 64 * 1024)
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise LayoutError(f"{self.path}: oci-layout is not a JSON object")
        version = document.get("imageLayoutVersion")
        if version != LAYOUT_VERSION:
            raise LayoutError(f"{self.path}: unsupported imageLayoutVersion {str(version)[:40]!r}")

    def _read_index(self, limit: int) -> tuple[Descriptor, ...]:
        data = self._read_member("index.json", limit)
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            raise LayoutError(f"{self.path}: index.json is not valid JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
            raise LayoutError(f"{self.path}: index.json has no manifests list")
        try:
            index = parse_manifest(data, None)
        except OciError as exc:
            raise LayoutError(f"{self.path}: index.json: {exc}") from None
        return index.manifests

    def has_member(self, name: str) -> bool:
        return name in self._members

    def read_member(self, name: str, limit: int) -> bytes:
        """The bytes of regular member ``name`` (at most ``limit``); raises `LayoutError`."""
        return self._read_member(name, limit)

    def blob_sizes(self) -> dict[Digest, int]:
        """Every ``blobs/<alg>/<hex>`` member with a valid digest name, and its size."""
        found: dict[Digest, int] = {}
        for name, member in self._members.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "blobs":
                try:
                    found[Digest.parse(f"{parts[1]}:{parts[2]}")] = member.size
                except OciError:
                    raise LayoutError(f"{self.path}: {name[:200]!r} is not named by a digest") from None
        return found

    def has_blob(self, digest: Digest) -> bool:
        return blob_member(digest) in self._members

    def blob_size(self, digest: Digest) -> int:
        """The size of blob ``digest``; raises `LayoutError` when the archive lacks it."""
        return self._blob(digest).size

    def _blob(self, digest: Digest) -> Member:
        member = self._members.get(blob_member(digest))
        if member is None:
            raise LayoutError(f"{self.path}: missing blob {digest}")
        return member

    def read_blob(self, digest: Digest, limit: int) -> bytes:
        """A small blob's bytes (at most ``limit``), verified against ``digest``."""
        member = self._blob(digest)
        if member.size > limit:
            raise LayoutError(f"{self.path}: {member.name} is {member.size} bytes, more than the limit of {limit}")
        data = self._read(member)
        if Digest.of(data, digest.algorithm) != digest:
            raise LayoutError(f"{self.path}: {member.name} does not hash to {digest}")
        return data

    def open_blob(self, digest: Digest) -> BinaryIO:
        """A file object streaming blob ``digest`` (unverified: the caller hashes it)."""
        member = self._blob(digest)
        return _Window(self.path, member.offset, member.size)  # type: ignore[return-value]


class _Window:
    """A read-only file object over ``size`` bytes of ``path`` starting at ``offset``."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file.seek(offset)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _member_name(raw: str, path: str) -> str:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = name.split("/")
    if not name or raw.startswith("/") or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise LayoutError(f"{path}: unsafe member name {raw[:200]!r}")
    return name


def _index_members(path: str, source: BinaryIO, file_size: int, limit: int) -> dict[str, Member]:
    """The regular members of the tar in ``source``, checked; raises `LayoutError`."""
    members: dict[str, Member] = {}
    count = 0
    try:
        with tarfile.open(path, "r:", fileobj=source) as tar:
            for info in tar:
                count += 1
                if count > limit:
                    raise LayoutError(f"{path}: more than {limit} members")
                name = _checked(path, info, file_size)
                if name is None:
                    continue
                if name in members:
                    raise LayoutError(f"{path}: member {name[:200]!r} appears twice")
                members[name] = Member(name, info.offset_data, info.size)
    except tarfile.TarError as exc:
        raise LayoutError(f"{path}: not a valid tar archive ({exc})") from None
    return members


def _checked(path: str, info: tarfile.TarInfo, file_size: int) -> str | None:
    """The member's name if it is a regular file, None for a directory; else `LayoutError`."""
    if info.name in (".", "./"):
        return None
    name = _member_name(info.name, path)
    if info.isdir():
        return None
    if not info.isreg():
        raise LayoutError(f"{path}: member {name[:200]!r} is not a regular file (links and devices are refused)")
    if info.offset_data + info.size > file_size:
        raise LayoutError(f"{path}: archive is truncated inside {name[:200]!r}")
    return name
