"""Reading a CNCF distribution 2.x store (``registry:2``, Debian's ``docker-registry``).

Its layout, below the driver's ``rootdirectory`` (`ROOT` is ``docker/registry/v2``)::

    blobs/<alg>/<2 hex>/<hex>/data                              the bytes of a blob or manifest
    repositories/<name>/_layers/<alg>/<hex>/link                the repository may read the blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>/link   a revision (tagged or not)
    repositories/<name>/_manifests/tags/<tag>/current/link      what the tag points at now
    repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link   what it pointed at before
    repositories/<name>/_uploads/<uuid>/{data,startedat,hashstates/...}   an upload in progress

Each ``link`` holds ``<alg>:<hex>``. A repository name is nested directories; the
directory is a repository when it holds ``_manifests``, ``_layers`` or ``_uploads``.
Distribution deletes a revision or a layer link by removing the ``link`` file only (its
directory stays): such a directory is not an entry.

Nothing here trusts the store: a name that is not a valid repository or tag, a link that
is not exactly one digest (or names another digest than its path), a link or blob that
is missing, anything too large, is a `Problem` (reported by the caller, then skipped).
A tag is read before the revisions and the revisions before the layer links, the reverse
of the order distribution writes them in, so a snapshot of a live repository never holds
a tag whose revision it missed.
"""

from __future__ import annotations

from dataclasses import dataclass

from angosd.oci.digest import ALGORITHMS, Digest
from angosd.oci.errors import OciError
from angosd.oci.names import MAX_NAME_LENGTH, is_valid_name, validate_tag
from angosd.storage.errors import InvalidPath, PathNotFound, StorageError
from angosd.storage.interface import IStorageDriver

ROOT = "docker/registry/v2"
REPOSITORIES = f"{ROOT}/repositories"
#: Longest link file accepted (``sha512:`` plus 128 hex digits, and a newline).
MAX_LINK = 256
#: Nesting of repository names followed at most (a valid name of 255 characters has at most 128).
MAX_DEPTH = 128
_MARKERS = ("_layers", "_manifests", "_uploads")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the source that is not carried over: where it is, and why."""

    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload session in progress: its id and the bytes received so far."""

    session: str
    size: int


@dataclass(frozen=True, slots=True)
class RepositorySnapshot:
    """What one repository held when it was read."""

    name: str
    tags: tuple[tuple[str, Digest], ...]
    revisions: tuple[Digest, ...]
    layers: tuple[Digest, ...]
    uploads: tuple[Upload, ...]
    problems: tuple[Problem, ...]


def blob_data(digest: Digest) -> str:
    """The key of a blob's bytes."""
    return f"{ROOT}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def parse_link(content: bytes) -> Digest:
    """The digest a link file holds; raises `ValueError` saying why when it is not one."""
    if len(content) > MAX_LINK:
        raise ValueError(f"link of {len(content)} bytes")
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("link is not ASCII") from None
    try:
        return Digest.parse(text.strip())
    except OciError:
        raise ValueError(f"link does not hold a digest ({text[:80]!r})") from None


class DistributionStore:
    """A distribution store seen through ``driver`` (rooted at the ``rootdirectory``)."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    async def exists(self) -> bool:
        """Whether the driver holds a distribution layout at all."""
        return bool(await self.driver.children(ROOT))

    async def _children(self, key: str, where: str, problems: list[Problem]) -> list[str]:
        """The names below ``key``; none, and a problem, when its path is refused (a symbolic link)."""
        try:
            return await self.driver.children(key)
        except InvalidPath:
            problems.append(Problem(where, "its path goes through a symbolic link"))
            return []

    async def repositories(self, problems: list[Problem]) -> list[str]:
        """Every repository name, sorted; invalid names go to ``problems``."""
        found: list[str] = []
        pending: list[tuple[str, int]] = [("", 0)]
        while pending:
            name, depth = pending.pop()
            children = await self._children(f"{REPOSITORIES}/{name}" if name else REPOSITORIES,
                                            f"repositories/{name}", problems)
            if name and any(marker in children for marker in _MARKERS):
                if is_valid_name(name):
                    found.append(name)
                else:
                    problems.append(Problem(f"repositories/{name[:300]}", "not a valid repository name"))
            for child in children:
                if child.startswith("_"):
                    continue
                nested = f"{name}/{child}" if name else child
                if depth >= MAX_DEPTH or len(nested) > MAX_NAME_LENGTH:
                    problems.append(Problem(f"repositories/{nested[:300]}", "nested too deep"))
                    continue
                pending.append((nested, depth + 1))
        return sorted(found)

    async def read_link(self, key: str) -> Digest:
        """The digest of link file ``key``; `ValueError` saying why when there is none."""
        try:
            size = await self.driver.stat(key)
        except InvalidPath:
            raise ValueError("its path goes through a symbolic link") from None
        if size is None:
            raise ValueError("link file is missing")
        if size > MAX_LINK:
            raise ValueError(f"link of {size} bytes")
        try:
            return parse_link(await self.driver.read(key))
        except PathNotFound:
            raise ValueError("link file is missing") from None

    async def snapshot(self, name: str) -> RepositorySnapshot:
        """Tags, revisions, layer links and uploads of repository ``name`` (in that order)."""
        base = f"{REPOSITORIES}/{name}"
        problems: list[Problem] = []
        tags: list[tuple[str, Digest]] = []
        for tag in await self._children(f"{base}/_manifests/tags", f"{name}: tags", problems):
            where = f"{name}:{tag[:200]}"
            try:
                validate_tag(tag)
            except OciError:
                problems.append(Problem(where, "not a valid tag name"))
                continue
            try:
                tags.append((tag, await self.read_link(f"{base}/_manifests/tags/{tag}/current/link")))
            except (ValueError, StorageError) as exc:
                problems.append(Problem(where, f"{exc}"))
        revisions = await self._digest_links(f"{base}/_manifests/revisions", name, "revision", problems)
        layers = await self._digest_links(f"{base}/_layers", name, "layer link", problems)
        uploads = []
        for session in await self._children(f"{base}/_uploads", f"{name}: uploads", problems):
            try:
                size = await self.driver.stat(f"{base}/_uploads/{session}/data")
            except InvalidPath:
                problems.append(Problem(f"{name}: upload {session[:200]}", "a symbolic link in its path"))
                continue
            if size is None:
                problems.append(Problem(f"{name}: upload {session[:200]}",
                                        "its bytes are not readable (on S3, distribution keeps them in an "
                                        "unfinished multipart upload); its client will start it again"))
                continue
            uploads.append(Upload(session[:200], size))
        return RepositorySnapshot(name, tuple(tags), tuple(revisions), tuple(layers), tuple(uploads),
                                  tuple(problems))

    async def _digest_links(self, prefix: str, name: str, what: str, problems: list[Problem]) -> list[Digest]:
        """The digests of ``prefix/<alg>/<hex>/link`` files whose content names their own path."""
        found: list[Digest] = []
        for algorithm in await self._children(prefix, f"{name}: {what}s", problems):
            if algorithm not in ALGORITHMS:
                problems.append(Problem(f"{name}: {what} {algorithm[:80]}", "unknown digest algorithm"))
                continue
            for hex_digest in await self._children(f"{prefix}/{algorithm}", f"{name}: {what}s", problems):
                where = f"{name}@{algorithm}:{hex_digest[:140]}"
                try:
                    digest = Digest(algorithm, hex_digest)
                except OciError:
                    problems.append(Problem(where, f"{what} is not named by a digest"))
                    continue
                key = f"{prefix}/{algorithm}/{hex_digest}/link"
                try:
                    if await self.driver.stat(key) is None:
                        continue  # how distribution records a deletion: the link goes, the directory stays
                    linked = await self.read_link(key)
                except (ValueError, StorageError) as exc:
                    problems.append(Problem(where, f"{exc}"))
                    continue
                if linked != digest:
                    problems.append(Problem(where, f"its link names {linked}"))
                    continue
                found.append(digest)
        return found

    async def blob_size(self, digest: Digest) -> int | None:
        """The size of a blob's bytes, None when they are missing; `ValueError` when its path
        is refused (a symbolic link)."""
        try:
            return await self.driver.stat(blob_data(digest))
        except InvalidPath:
            raise ValueError("its path goes through a symbolic link") from None

    async def read_blob(self, digest: Digest, limit: int) -> bytes:
        """A small blob (a manifest) whose bytes hash to ``digest``; `ValueError` saying why otherwise."""
        size = await self.blob_size(digest)
        if size is None:
            raise ValueError("its bytes are missing")
        if size > limit:
            raise ValueError(f"{size} bytes, more than the {limit} bytes a manifest may have")
        try:
            data = await self.driver.read(blob_data(digest))
        except PathNotFound:
            raise ValueError("its bytes are missing") from None
        except InvalidPath:
            raise ValueError("its path goes through a symbolic link") from None
        if Digest.of(data, digest.algorithm) != digest:
            raise ValueError("its bytes do not match its digest")
        return data

    async def check_blob(self, digest: Digest) -> None:
        """Raise `ValueError` saying why unless the blob's bytes exist and hash to ``digest``."""
        try:
            actual = await self.driver.hash_object(blob_data(digest), digest.algorithm)
        except PathNotFound:
            raise ValueError("its bytes are missing") from None
        except InvalidPath:
            raise ValueError("its path goes through a symbolic link") from None
        if actual != digest.hex:
            raise ValueError("its bytes do not match its digest")
