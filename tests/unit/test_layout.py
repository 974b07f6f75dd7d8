"""OCI layout archives (angosd.archive.layout) and the export/import planning over the memory driver.

Also the small pieces of the air-gap work that need no daemon: platform selection for
prefetch, and the non-terminal progress output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from angosd.archive.layout import (
    NAMESPACE_ANNOTATION,
    REF_NAME,
    ArchiveReader,
    ArchiveWriter,
    LayoutError,
    blob_member,
    index_file,
    layout_file,
    parse_ref_name,
)
from angosd.commands.export import plan_export, write_archive
from angosd.commands.import_ import plan_import, run_import
from angosd.commands.mirror import CommandFailed
from angosd.commands.progress import Progress
from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import ManifestUnknown
from angosd.oci.manifest import Descriptor
from angosd.oci.names import Reference
from angosd.proxy.prefetch import PlatformFilter
from angosd.registry.registry import Limits, Registry
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import run

CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest.of(data, algorithm)


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest(data)), "size": len(data), **extra}


def image(layer: bytes, subject: bytes | None = None) -> bytes:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                                "config": descriptor(CONFIG, b"{}"), "layers": [descriptor(LAYER, layer)]}
    if subject is not None:
        document["subject"] = descriptor(mt.OCI_MANIFEST, subject)
        document["artifactType"] = "application/vnd.example.sig"
    return json.dumps(document).encode()


def index(*children: tuple[bytes, str]) -> bytes:
    manifests = [descriptor(mt.OCI_MANIFEST, body, platform={"os": "linux", "architecture": arch})
                 for body, arch in children]
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}).encode()


def root(media_type: str, body: bytes, ref: str | None = None, **annotations: str) -> Descriptor:
    if ref is not None:
        annotations[REF_NAME] = ref
    return Descriptor(media_type, digest(body), len(body), annotations=annotations or None)


def write_layout(path: Path, roots: list[Descriptor], blobs: list[bytes]) -> Path:
    with open(path, "wb") as out:
        writer = ArchiveWriter(out)
        writer.add_file("oci-layout", layout_file())
        writer.add_file("index.json", index_file(roots))
        for blob in blobs:
            writer.add_blob(digest(blob), blob)
        writer.close()
    return path


def raw_tar(path: Path, members: list[tuple[str, bytes]], links: Sequence[tuple[str, str, bytes]] = ()) -> Path:
    """A tar written with the standard library, member names as given (hostile ones too)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return path


def good_members(*extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    layer = b"layer bytes"
    body = image(layer)
    return [("oci-layout", layout_file()), ("index.json", index_file([root(mt.OCI_MANIFEST, body, "a/b:v1")])),
            (blob_member(digest(body)), body), (blob_member(digest(b"{}")), b"{}"),
            (blob_member(digest(layer)), layer), *extra]


def open_error(path: Path, **limits: int) -> str:
    with pytest.raises(LayoutError) as caught:
        ArchiveReader.open(str(path), **limits)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- ref names


@pytest.mark.parametrize(("ref", "expected"), [
    ("apps/web:v1", ("apps/web", "v1", None)),
    ("web:v1.2-rc_1", ("web", "v1.2-rc_1", None)),
    ("v1", (None, "v1", None)),
    ("apps/web", ("apps/web", None, None)),
    ("docker.io/library/alpine:3.20", ("docker.io/library/alpine", "3.20", None)),
    ("apps/web@sha256:" + "a" * 64, ("apps/web", None, Digest("sha256", "a" * 64))),
])
def test_parse_ref_name(ref: str, expected: tuple[Any, ...]) -> None:
    assert parse_ref_name(ref) == expected


@pytest.mark.parametrize("ref", ["Apps/Web:v1", "apps/web:", "apps/web@sha256:xyz", "../x:v1", "a//b:v1",
                                 "localhost:5000/a:v1"])
def test_parse_ref_name_rejects(ref: str) -> None:
    with pytest.raises(LayoutError):
        parse_ref_name(ref)


# --------------------------------------------------------------------------- write/read roundtrip


def test_roundtrip_and_standard_tar(tmp_path: Path) -> None:
    layer = bytes(range(256)) * 1000 + b"x"  # not a multiple of the tar block size
    body = image(layer)
    sha512 = b"sha512 content"
    with open(tmp_path / "b.tar", "wb") as out:
        writer = ArchiveWriter(out)
        writer.add_file("oci-layout", layout_file())
        writer.add_file("index.json", index_file([root(mt.OCI_MANIFEST, body, "apps/web:v1")]))
        writer.add_blob(digest(body), body)
        writer.add_blob(digest(body), body)  # a repeated digest is written once
        writer.add_blob(digest(b"{}"), b"{}")
        entry = writer.begin_blob(digest(layer), len(layer))
        for start in range(0, len(layer), 1000):
            entry.write(layer[start:start + 1000])
        entry.finish()
        writer.add_blob(digest(sha512, "sha512"), sha512)  # a member name longer than 100 characters
        writer.close()
        assert writer.size % tarfile.RECORDSIZE == 0
    with tarfile.open(tmp_path / "b.tar") as tar:  # a standard tar
        names = tar.getnames()
        assert "blobs/sha512/" + hashlib.sha512(sha512).hexdigest() in names
        assert names.count(blob_member(digest(body))) == 1
        member = tar.extractfile(blob_member(digest(layer)))
        assert member is not None and member.read() == layer
    with ArchiveReader.open(str(tmp_path / "b.tar")) as archive:
        assert [(r.digest, (r.annotations or {}).get(REF_NAME)) for r in archive.roots] == [
            (digest(body), "apps/web:v1")]
        assert archive.read_blob(digest(body), 10_000) == body
        assert archive.blob_size(digest(layer)) == len(layer)
        with archive.open_blob(digest(layer)) as stream:
            chunks = []
            while chunk := stream.read(4096):
                chunks.append(chunk)
        assert b"".join(chunks) == layer
        assert archive.read_blob(digest(sha512, "sha512"), 100) == sha512
        assert not archive.has_blob(digest(b"absent"))


def test_writer_refuses_wrong_bytes(tmp_path: Path) -> None:
    writer = ArchiveWriter(io.BytesIO())
    entry = writer.begin_blob(digest(b"right"), 5)
    entry.write(b"wrong")
    with pytest.raises(LayoutError, match="content hashes to"):
        entry.finish()
    writer = ArchiveWriter(io.BytesIO())
    entry = writer.begin_blob(digest(b"right"), 5)
    entry.write(b"rig")
    with pytest.raises(LayoutError, match="3 bytes written, 5 announced"):
        entry.finish()
    with pytest.raises(LayoutError, match="still being written"):
        writer.add_file("x", b"")
    writer = ArchiveWriter(io.BytesIO())
    entry = writer.begin_blob(digest(b"right"), 5)
    with pytest.raises(LayoutError, match="more than the announced"):
        entry.write(b"right!")


# --------------------------------------------------------------------------- hostile archives


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "blobs/../../x", "blobs/sha256/./x", "a\\..\\b"])
def test_path_traversal_names_are_refused(tmp_path: Path, name: str) -> None:
    path = raw_tar(tmp_path / "t.tar", good_members((name, b"boo")))
    assert "unsafe member name" in open_error(path)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    path = raw_tar(tmp_path / "t.tar", good_members(), [("blobs/sha256/" + "0" * 64, "/etc/shadow", kind)])
    assert "not a regular file" in open_error(path)


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    path = raw_tar(tmp_path / "t.tar", good_members(("index.json", b"{}")))
    assert "appears twice" in open_error(path)


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    big = b"z" * 100_000
    path = raw_tar(tmp_path / "t.tar", [("oci-layout", layout_file()), ("index.json", index_file([])),
                                        (blob_member(digest(big)), big)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in open_error(path)


@pytest.mark.parametrize(("members", "problem"), [
    ([("index.json", index_file([]))], "no oci-layout"),
    ([("oci-layout", layout_file())], "no index.json"),
    ([("oci-layout", b'{"imageLayoutVersion": "9"}'), ("index.json", index_file([]))], "imageLayoutVersion"),
    ([("oci-layout", b"[]"), ("index.json", index_file([]))], "oci-layout is not a JSON object"),
    ([("oci-layout", layout_file()), ("index.json", b"{nope")], "index.json is not valid JSON"),
    ([("oci-layout", layout_file()), ("index.json", b'{"schemaVersion": 2}')], "no manifests list"),
    ([("oci-layout", layout_file()),
      ("index.json", b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:zz"}]}')], "index.json: "),
])
def test_bad_layout_files_are_refused(tmp_path: Path, members: list[tuple[str, bytes]], problem: str) -> None:
    assert problem in open_error(raw_tar(tmp_path / "t.tar", members))


def test_huge_index_json_is_refused_before_reading(tmp_path: Path) -> None:
    entries = [root(mt.OCI_MANIFEST, str(n).encode(), f"a/b:t{n}") for n in range(2000)]
    path = raw_tar(tmp_path / "t.tar", [("oci-layout", layout_file()), ("index.json", index_file(entries))])
    assert "index.json is" in open_error(path, max_index_size=64 * 1024)
    assert "more than the limit of 65536" in open_error(path, max_index_size=64 * 1024)


def test_compressed_and_non_tar_files_are_refused(tmp_path: Path) -> None:
    plain = raw_tar(tmp_path / "t.tar", good_members())
    zipped = tmp_path / "t.tar.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert "compressed archive" in open_error(zipped)
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    assert "tar archive" in open_error(junk)
    assert "cannot read" in open_error(tmp_path / "absent.tar")


def test_wrong_digest_and_missing_blob(tmp_path: Path) -> None:
    body = image(b"layer bytes")
    members = good_members()
    members[2] = (blob_member(digest(body)), body.replace(b"layer", b"LAYER"))  # same size, other bytes
    with ArchiveReader.open(str(raw_tar(tmp_path / "t.tar", members))) as archive:
        with pytest.raises(LayoutError, match="does not hash to"):
            archive.read_blob(digest(body), 100_000)
        with pytest.raises(LayoutError, match="missing blob"):
            archive.blob_size(digest(b"absent"))
        with pytest.raises(LayoutError, match="more than the limit"):
            archive.read_blob(digest(body), 10)


# --------------------------------------------------------------------------- export/import over the memory driver


def make_registry() -> Registry:
    clock = Clock()
    clock.advance(1_700_000_000)
    return Registry(MemoryDriver(), clock, Limits())


def push(registry: Registry, namespace: str, reference: str, body: bytes, *blobs: bytes) -> Digest:
    for blob in blobs:
        session = run(registry.uploads.start(namespace))
        sink = run(registry.uploads.open_sink(namespace, session, 0))
        sink.write(blob)
        run(sink.finish())
        run(registry.uploads.complete(namespace, session, digest(blob)))
    media_type = json.loads(body)["mediaType"]
    return run(registry.manifests.put(namespace, Reference.parse(reference), media_type, body)).digest


def filled_store() -> tuple[Registry, dict[str, bytes]]:
    registry = make_registry()
    amd, arm = image(b"amd64 layer"), image(b"arm64 layer")
    multi = index((amd, "amd64"), (arm, "arm64"))
    single = image(b"single layer")
    signature = image(b"signature payload", subject=single)
    push(registry, "apps/multi", str(digest(amd)), amd, b"{}", b"amd64 layer")
    push(registry, "apps/multi", str(digest(arm)), arm, b"{}", b"arm64 layer")
    push(registry, "apps/multi", "v2", multi)
    push(registry, "apps/single", "v1", single, b"{}", b"single layer")
    push(registry, "apps/single", "latest", single)
    push(registry, "apps/single", str(digest(signature)), signature, b"{}", b"signature payload")
    return registry, {"amd": amd, "arm": arm, "multi": multi, "single": single, "signature": signature}


def export_to(registry: Registry, targets: list[str], path: Path) -> Path:
    plan = run(plan_export(registry, targets))
    with open(path, "wb") as out:
        run(write_archive(registry, plan, out, lambda _n: None))
    return path


def import_from(registry: Registry, path: Path, prefix: str | None = None) -> Any:
    with ArchiveReader.open(str(path)) as archive:
        plan = plan_import(archive, registry, prefix, 4 * 1024 * 1024)
        return run(run_import(registry, archive, plan, lambda _n: None, lambda _n: None))


def snapshot(registry: Registry, namespace: str) -> dict[str, Any]:
    tags = {tag: str(run(registry.manifests.resolve(namespace, Reference(tag=tag))))
            for tag in run(registry.manifests.tags(namespace))}
    revisions = sorted(str(d) for d in run(registry.manifests.revisions(namespace)))
    return {"tags": tags, "revisions": revisions}


def test_export_import_roundtrip_is_exact_and_idempotent(tmp_path: Path) -> None:
    source, bodies = filled_store()
    path = export_to(source, ["apps/multi:v2", "apps/single"], tmp_path / "bundle.tar")
    with ArchiveReader.open(str(path)) as archive:
        refs = [(r.annotations or {}).get(REF_NAME) or (r.annotations or {}).get(NAMESPACE_ANNOTATION)
                for r in archive.roots]
    assert refs == ["apps/multi:v2", "apps/single:latest", "apps/single:v1", "apps/single"]
    target = make_registry()
    first = import_from(target, path)
    assert (first.tags, first.manifests, first.blobs_streamed, first.blobs_shared) == (3, 5, 5, 1)
    for namespace in ("apps/multi", "apps/single"):
        assert snapshot(target, namespace) == snapshot(source, namespace)
    single = digest(bodies["single"])
    assert [d.digest for d in run(target.manifests.referrers("apps/single", single, None))] == [
        digest(bodies["signature"])]
    assert run(target.manifests.get("apps/multi", Reference(tag="v2"))).body == bodies["multi"]
    again = import_from(target, path)
    assert (again.tags, again.manifests, again.blobs_streamed, again.blobs_shared) == (0, 0, 0, 0)


def test_import_with_prefix_and_plain_tags(tmp_path: Path) -> None:
    source, bodies = filled_store()
    path = export_to(source, ["apps/single:v1"], tmp_path / "bundle.tar")
    target = make_registry()
    import_from(target, path, prefix="site")
    assert snapshot(target, "site/apps/single")["tags"] == {"v1": str(digest(bodies["single"]))}
    body = bodies["single"]
    plain = write_layout(tmp_path / "plain.tar", [root(mt.OCI_MANIFEST, body, "v7")],
                         [body, b"{}", b"single layer"])
    with pytest.raises(LayoutError, match="names no namespace; give one with --namespace-prefix"):
        import_from(make_registry(), plain)
    import_from(target, plain, prefix="other/app")
    assert snapshot(target, "other/app")["tags"] == {"v7": str(digest(body))}


def test_export_of_a_partial_closure_fails_clearly(tmp_path: Path) -> None:
    registry = make_registry()
    amd, arm = image(b"amd64 layer"), image(b"arm64 layer")
    push(registry, "hub/x", str(digest(amd)), amd, b"{}", b"amd64 layer")
    push(registry, "hub/x", "v1", index((amd, "amd64"), (arm, "arm64")))  # arm64 never pulled
    with pytest.raises(CommandFailed, match=f"manifest {digest(arm)} is not in the store"):
        run(plan_export(registry, ["hub/x:v1"]))


def test_import_refuses_missing_blob_before_writing_anything(tmp_path: Path) -> None:
    body = image(b"layer bytes")
    path = write_layout(tmp_path / "t.tar", [root(mt.OCI_MANIFEST, body, "a/b:v1")], [body, b"{}"])
    target = make_registry()
    with pytest.raises(LayoutError, match=f"missing blob {digest(b'layer bytes')}"):
        import_from(target, path)
    assert run(target.catalog()) == [] and run(target.namespaces()) == []


def test_import_refuses_wrong_blob_size_and_wrong_manifest_digest(tmp_path: Path) -> None:
    body = image(b"layer bytes")
    members = good_members()
    members[4] = (blob_member(digest(b"layer bytes")), b"layer bytes!")
    with pytest.raises(LayoutError, match=r"has 12 bytes, manifest .* says 11"):
        import_from(make_registry(), raw_tar(tmp_path / "size.tar", members))
    members = good_members()
    members[2] = (blob_member(digest(body)), body.replace(b"layer", b"LAYER"))
    with pytest.raises(LayoutError, match="does not hash to"):
        import_from(make_registry(), raw_tar(tmp_path / "manifest.tar", members))


def test_import_of_a_corrupt_blob_tags_nothing_and_resumes(tmp_path: Path) -> None:
    good = image(b"layer bytes")
    members = good_members()
    members[4] = (blob_member(digest(b"layer bytes")), b"LAYER BYTES")  # same size, wrong bytes
    target = make_registry()
    with pytest.raises(CommandFailed, match=r"is corrupt .*nothing was tagged"):
        import_from(target, raw_tar(tmp_path / "bad.tar", members))
    assert run(target.manifests.tags("a/b")) == []
    with pytest.raises(ManifestUnknown):
        run(target.manifests.get("a/b", Reference(digest=digest(good))))
    assert run(target.catalog()) == []
    assert not run(target.blobs.exists(digest(b"layer bytes")))
    assert run(target.uploads.list("a/b")) == []  # the session was removed
    result = import_from(target, raw_tar(tmp_path / "good.tar", good_members()))
    assert result.tags == 1
    assert result.blobs_streamed == 1  # the config verified in the failed run is not fetched again


# --------------------------------------------------------------------------- prefetch platforms, progress


def test_platform_filter() -> None:
    def child(arch: str, variant: str | None = None, **annotations: str) -> Descriptor:
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return Descriptor(mt.OCI_MANIFEST, digest(f"{arch}{variant}{annotations}".encode()), 1,
                          annotations=annotations or None, platform=platform)

    amd, arm7, arm64 = child("amd64"), child("arm", "v7"), child("arm64")
    nested = Descriptor(mt.OCI_INDEX, digest(b"nested"), 1)
    attestation = child("unknown", **{"vnd.docker.reference.digest": str(amd.digest)})
    children = [amd, arm7, arm64, nested, attestation]
    assert PlatformFilter.parse(["all"]).select(children) == children
    assert PlatformFilter.parse(["linux/amd64"]).select(children) == [amd, nested, attestation]
    assert PlatformFilter.parse(["linux/arm/v7", "linux/arm64/v8"]).select(children) == [arm7, arm64, nested]
    assert PlatformFilter.parse(["linux/arm/v6"]).select(children) == [nested]
    assert not PlatformFilter.parse([])


def test_progress_without_terminal_prints_plain_lines() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, tty=False, interval=5, clock=lambda: now[0])
    bar = progress.bar("hub/x:v1", 0)
    bar.grow(2 * 1024 * 1024)
    bar.advance(1024 * 1024)
    now[0] = 6
    bar.advance(512 * 1024, status="2/3 blobs")
    progress.note("a note")
    bar.close("done")
    assert out.getvalue().splitlines() == ["hub/x:v1: 75% 1.5 MiB/2.0 MiB 2/3 blobs", "a note", "hub/x:v1: done"]
    tty = io.StringIO()
    bar = Progress(tty, tty=True).bar("x", 10, unit="files")
    bar.advance(5)
    bar.close()
    assert "\r" in tty.getvalue() and tty.getvalue().endswith("x: 50% 5/10 files\n")


class FakeCache:
    """The parts of PullThroughCache a CacheFill uses, answering from dicts synchronously."""

    def __init__(self, registry: Registry, manifests: dict[Digest, bytes], referrers: dict[Digest, list[Digest]],
                 bad_blobs: frozenset[Digest] = frozenset()) -> None:
        self.registry = registry
        self.manifests = manifests
        self.referrer_map = referrers
        self.bad_blobs = bad_blobs
        self.filled: list[Digest] = []

    async def manifest(self, namespace: str, repository: Any, reference: Reference) -> Any:
        from angosd.proxy.cache import Served
        from angosd.registry.manifests import StoredManifest

        assert reference.digest is not None
        if reference.digest not in self.manifests:
            raise ManifestUnknown(str(reference.digest))
        body = self.manifests[reference.digest]
        return Served(StoredManifest(reference.digest, json.loads(body)["mediaType"], body), "miss")

    async def referrers(self, namespace: str, repository: Any, subject: Digest, artifact_type: Any) -> Any:
        if subject == Digest.of(b"broken"):
            raise RuntimeError("no referrers API")
        return [{"digest": str(d)} for d in self.referrer_map.get(subject, [])]

    async def serve_blob(self, namespace: str, repository: Any, blob: Digest, client: Any) -> bool:
        if blob in self.bad_blobs:
            raise ManifestUnknown("upstream lost it")
        self.filled.append(blob)
        run(self.registry.blobs.store_small(blob, b"x"))  # what a real fill leaves behind (bytes aside)
        run(self.registry.blobs.grant(namespace, blob))
        return False


def test_cache_fill_selects_platforms_and_treats_referrers_as_best_effort() -> None:
    from angosd.proxy.prefetch import CacheFill

    registry = make_registry()
    amd, arm = image(b"amd64 layer"), image(b"arm64 layer")
    multi = index((amd, "amd64"), (arm, "arm64"))
    signature = image(b"sig payload", subject=multi)
    ghost = digest(b"a referrer the upstream cannot serve")
    manifests = {digest(body): body for body in (amd, arm, multi, signature)}
    cache = FakeCache(registry, manifests, {digest(multi): [digest(signature), ghost]})
    run(registry.blobs.store_small(digest(b"{}"), b"{}"))
    run(registry.blobs.grant("hub/x", digest(b"{}")))
    fill = CacheFill(cache, registry)  # type: ignore[arg-type]
    result = run(fill.fill("hub/x", None, Reference(digest=digest(multi)),  # type: ignore[arg-type]
                           PlatformFilter.parse(["linux/arm64"])))
    assert result.manifests == 3  # the index, arm64, the signature (the ghost is a note)
    assert sorted(cache.filled, key=str) == sorted([digest(b"arm64 layer"), digest(b"sig payload")], key=str)
    assert result.blobs_cached == 1 and result.blobs_fetched == 2
    assert len(result.notes) == 1 and str(ghost) in result.notes[0]

    cache = FakeCache(registry, manifests, {}, bad_blobs=frozenset({digest(b"amd64 layer")}))
    with pytest.raises(ManifestUnknown):
        run(CacheFill(cache, registry).fill("hub/x", None, Reference(digest=digest(multi))))  # type: ignore[arg-type]
    assert digest(b"amd64 layer") not in cache.filled  # failed, but the other blobs were still tried
    assert run(registry.blobs.owns("hub/x", digest(b"arm64 layer")))
