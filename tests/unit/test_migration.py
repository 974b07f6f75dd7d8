"""Reading a distribution store and migrating it (`angosd.registry.distribution`, `.migration`).

The happy path, idempotence and every kind of corrupt or hostile source entry run over
memory stores; symbolic links and real hard links over the filesystem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from angosd.oci.digest import Digest
from angosd.oci.names import Reference, is_valid_name, validate_tag
from angosd.registry import paths
from angosd.registry.distribution import DistributionStore, Problem, parse_link
from angosd.registry.migration import MigrationReport, Migrator, verify
from angosd.registry.registry import Limits, Registry
from angosd.storage.confined import ConfinedFilesystemDriver
from angosd.storage.fs import FilesystemDriver
from angosd.storage.interface import IStorageDriver
from angosd.storage.memory import MemoryDriver
from tests.distribution_store import DistributionWriter, blob_key, repository_key
from tests.pools import started_pools
from tests.unit.helpers import fired


def run(work: Any) -> Any:
    """The result of a coroutine or Deferred that completes at once (memory stores)."""
    return fired(work if isinstance(work, Deferred) else Deferred.fromCoroutine(work))

UPLOAD = "3f0c2b8e-6a1d-4c55-9d6e-0a1b2c3d4e5f"


def migrate(source: IStorageDriver, registry: Registry, dry_run: bool = False) -> tuple[MigrationReport, Migrator]:
    migrator = Migrator(DistributionStore(source), registry, dry_run)
    return run(migrator.run()), migrator


def snapshot(driver: MemoryDriver) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for top in ("repositories", "blobs", "_gc"):
        for key in run(driver.walk(top)):
            data = run(driver.read(f"{top}/{key}"))
            if "/_manifests/revisions/" in f"{top}/{key}":
                record = json.loads(data)
                record.pop("pushed_at")
                found[f"{top}/{key}"] = record
            else:
                found[f"{top}/{key}"] = data
    return found


@pytest.fixture
def store() -> tuple[MemoryDriver, DistributionWriter, dict[str, Any]]:
    """A distribution store with every kind of content the migration carries."""
    source = MemoryDriver()
    writer = DistributionWriter(source)
    made: dict[str, Any] = {}

    async def fill() -> None:
        shared = b"shared base layer" * 100
        made["app"] = await writer.image("lib/app", [shared, b"app layer"], tag="v1")
        await writer.tag("lib/app", "latest", made["app"][0])  # two tags, one revision
        made["old"] = await writer.image("lib/app", [shared, b"old layer"])  # untagged
        made["other"] = await writer.image("other", [shared], tag="1.0")  # shares a layer
        amd = await writer.image("multi", [b"amd64 layer"])
        arm = await writer.image("multi", [b"arm64 layer"])
        made["multi"] = await writer.index("multi", [amd, arm], tag="latest")
        made["children"] = (amd, arm)
        made["sig"] = await writer.image("lib/app", [b"signature"], tag="sig", subject=made["app"])
        await writer.upload("lib/app", UPLOAD, b"partial upload bytes")

    run(fill())
    return source, writer, made


def test_migration_carries_everything(store: tuple[MemoryDriver, DistributionWriter, dict[str, Any]]) -> None:
    source, _writer, made = store
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits())
    report, migrator = migrate(source, registry)

    assert report.problems == []
    assert (report.repositories, report.tags, report.revisions, report.uploads) == (3, 5, 7, 1)
    manifests = registry.manifests
    for name, tag, key in [("lib/app", "v1", "app"), ("lib/app", "latest", "app"), ("other", "1.0", "other"),
                           ("multi", "latest", "multi"), ("lib/app", "sig", "sig")]:
        stored = run(manifests.get(name, Reference(tag=tag)))
        assert (stored.digest, stored.body) == made[key], (name, tag)
    untagged = run(manifests.get("lib/app", Reference(digest=made["old"][0])))
    assert untagged.body == made["old"][1]
    for child, body in made["children"]:
        assert run(manifests.get("multi", Reference(digest=child))).body == body
    # Referrers: the OCI 1.1 subject is indexed.
    referrers = run(target.children(paths.referrers_dir("lib/app", made["app"][0])))
    assert referrers == [f"sha256-{made['sig'][0].hex}"]
    # Ownership follows the layer links: the shared layer is owned by both, read by both.
    shared = Digest.of(b"shared base layer" * 100)
    assert run(registry.blobs.owns("lib/app", shared)) and run(registry.blobs.owns("other", shared))
    assert sorted(run(registry.blobs.owners(shared))) == ["lib/app", "other"]
    assert not run(registry.blobs.owns("multi", shared))
    # The bytes are shared with the source (memory's analogue of a hard link), not copied.
    assert report.bytes_copied == 0 and report.bytes_server_copied == 0
    assert report.bytes_linked == sum(len(run(source.read(blob_key(d)))) for d in migrator._counted)
    # The upload in progress goes on under its own id.
    info = run(registry.uploads.info("lib/app", UPLOAD))
    assert info.size == len(b"partial upload bytes")
    assert info.started_at == 1714564800
    assert run(verify(DistributionStore(source), registry, migrator.carried, lambda p: pytest.fail(str(p)))) == 0


def test_second_run_changes_nothing_and_a_dry_run_nothing_at_all(
        store: tuple[MemoryDriver, DistributionWriter, dict[str, Any]]) -> None:
    source, _writer, _made = store
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits())
    dry, _ = migrate(source, registry, dry_run=True)
    assert run(target.walk("repositories")) == [] and run(target.walk("blobs")) == []
    first, _ = migrate(source, registry)
    assert (dry.tags, dry.revisions, dry.blobs, dry.uploads) == (first.tags, first.revisions, first.blobs,
                                                                  first.uploads)
    assert dry.bytes_linked == first.bytes_linked
    after_first = snapshot(target)
    again, _ = migrate(source, registry)
    assert snapshot(target) == after_first
    assert (again.tags, again.revisions, again.blobs, again.uploads) == (0, 0, 0, 0)
    assert (again.tags_present, again.revisions_present, again.blobs_present) == (5, 7, first.blobs)


def test_a_run_interrupted_anywhere_resumes_to_the_same_store(
        store: tuple[MemoryDriver, DistributionWriter, dict[str, Any]]) -> None:
    """Stop the target store after its n-th write (a crash), for every n: the second run
    gives the store an uninterrupted run gives."""
    source, _writer, _made = store
    complete = _CrashingDriver(None)
    migrate(source, Registry(complete, Clock(), Limits()))
    expected = snapshot(complete)
    assert complete.count > 50
    for limit in range(complete.count):
        target = _CrashingDriver(limit)
        with pytest.raises(_Crash):
            migrate(source, Registry(target, Clock(), Limits()))
        target.limit = None
        migrate(source, Registry(target, Clock(), Limits()))
        assert snapshot(target) == expected, limit


class _Crash(Exception):
    pass


class _CrashingDriver(MemoryDriver):
    """A memory store whose writes, links and deletes fail once ``limit`` of them were made."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.limit = limit
        self.count = 0

    def _step(self) -> None:
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            raise _Crash()

    def write(self, key: str, data: bytes) -> Any:
        self._step()
        return super().write(key, data)

    def link_from(self, source: IStorageDriver, source_key: str, key: str) -> Any:
        self._step()
        return super().link_from(source, source_key, key)

    def delete(self, key: str) -> Any:
        self._step()
        return super().delete(key)


def test_corrupt_and_dangling_entries_are_reported_and_skipped() -> None:
    source = MemoryDriver()
    writer = DistributionWriter(source)
    made: dict[str, Any] = {}

    async def fill() -> None:
        made["good"] = await writer.image("app", [b"good layer"], tag="good")
        made["missing"] = await writer.image("app", [b"layer whose bytes vanish"], tag="missing-layer")
        await source.delete(blob_key(Digest.of(b"layer whose bytes vanish")))
        made["bad"] = await writer.image("app", [b"layer that will rot"], tag="rotten")
        await source.write(blob_key(Digest.of(b"layer that will rot")), b"bit rot!")
        await writer.layer_link("app", Digest.of(b"never stored"))  # dangling layer link
        await writer.tag("app", "to-nowhere", Digest.of(b"no such manifest"))
        await writer.revision_link("app", Digest.of(b"no such manifest"))
        await source.write(f"{repository_key('app')}/_manifests/tags/bad-link/current/link", b"sha256:zz")
        await source.write(f"{repository_key('app')}/_manifests/tags/.hidden/current/link",
                           str(made["good"][0]).encode())
        liar = Digest.of(b"liar")
        await source.write(f"{repository_key('app')}/_manifests/revisions/sha256/{liar.hex}/link",
                           str(made["good"][0]).encode())
        await source.write(f"{repository_key('app')}/_manifests/revisions/md5/abcd/link", b"md5:abcd")
        not_json = await writer.blob(b"not json at all")
        await writer.revision_link("app", not_json)
        await writer.tag("app", "not-json", not_json)
        amd = await writer.image("app", [b"ok child layer"])
        made["broken-index"] = await writer.index("app", [amd, made["missing"]], tag="index")
        await source.write(f"{repository_key('Bad_Name')}/_manifests/tags/x/current/link", b"sha256:00")
        await writer.upload("app", "not-a-uuid", b"x")

    run(fill())
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits())
    report, migrator = migrate(source, registry)
    reasons = {problem.where: problem.why for problem in report.problems}

    assert run(registry.manifests.get("app", Reference(tag="good"))).body == made["good"][1]
    carried_tags = run(registry.manifests.tags("app"))
    assert carried_tags == ["good"]
    assert "its bytes are missing" in reasons[f"app: blob {Digest.of(b'layer whose bytes vanish')}"]
    assert "do not match its digest" in reasons[f"app: blob {Digest.of(b'layer that will rot')}"]
    assert "its bytes are missing" in reasons[f"app: blob {Digest.of(b'never stored')}"]
    assert "is not carried" in reasons["app:missing-layer"]
    assert "is not carried" in reasons["app:rotten"]
    assert "is not carried" in reasons["app:index"]
    assert "not carried" in reasons[f"app@{made['broken-index'][0]}"]
    assert "does not hold a digest" in reasons["app:bad-link"]
    assert reasons["app:.hidden"] == "not a valid tag name"
    assert "its link names" in reasons[f"app@sha256:{Digest.of(b'liar').hex}"]
    assert "unknown digest algorithm" in reasons["app: revision md5"]
    assert "not valid JSON" in reasons[f"app@{Digest.of(b'not json at all')}"]
    assert reasons["repositories/Bad_Name"] == "not a valid repository name"
    assert "not a UUID" in reasons["app: upload not-a-uuid"]
    # Nothing skipped left a trace in the target: no blob, no ownership, no revision.
    for digest in (Digest.of(b"layer whose bytes vanish"), Digest.of(b"layer that will rot"),
                   Digest.of(b"never stored")):
        assert run(target.stat(paths.blob_data(digest))) is None
        assert run(target.stat(paths.owned_blob("app", digest))) is None
    assert run(verify(DistributionStore(source), registry, migrator.carried, lambda p: pytest.fail(str(p)))) == 0


def test_verify_finds_a_target_that_differs() -> None:
    source = MemoryDriver()
    writer = DistributionWriter(source)
    image = run(writer.image("app", [b"layer"], tag="v1"))
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits())
    _report, migrator = migrate(source, registry)
    run(target.write(paths.blob_data(Digest.of(b"layer")), b"changed"))  # not the linked object any more
    run(target.delete(paths.tag("app", "v1")))
    found: list[Problem] = []
    assert run(verify(DistributionStore(source), registry, migrator.carried, found.append)) == 2
    assert {p.where for p in found} == {"app:v1", f"app: blob {Digest.of(b'layer')}"}
    assert run(registry.manifests.get("app", Reference(digest=image[0]))).body == image[1]


# -- hostile input -------------------------------------------------------------------------


@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_a_link_is_exactly_one_digest_or_refused(content: bytes) -> None:
    try:
        digest = parse_link(content)
    except ValueError:
        return
    assert str(digest) == content.decode("ascii").strip()


NAMES = st.text(alphabet=st.sampled_from("abz09._-/A\\ :\x00é"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(repositories=st.lists(NAMES, max_size=4), tags=st.lists(NAMES, max_size=4))
def test_names_from_the_source_are_carried_only_when_valid(repositories: list[str], tags: list[str]) -> None:
    source = MemoryDriver()
    writer = DistributionWriter(source)
    carried: set[tuple[str, str]] = set()
    for repository in repositories:
        for tag in tags:
            try:
                image = run(writer.image(repository, [b"layer"]))
                run(writer.tag(repository, tag, image[0]))
            except Exception:  # a name no store can hold (the memory store refuses it)
                continue
            if is_valid_name(repository.strip("/")) and "//" not in repository and _valid_tag(tag):
                carried.add((repository, tag))
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits())
    report, _ = migrate(source, registry)
    found = {(name, tag) for name in _names(target) for tag in run(registry.manifests.tags(name))}
    assert found == {(name.strip("/"), tag) for name, tag in carried}
    assert all(isinstance(problem, Problem) for problem in report.problems)


def _valid_tag(tag: str) -> bool:
    try:
        validate_tag(tag)
        return True
    except Exception:
        return False


def _names(target: MemoryDriver) -> set[str]:
    return {key.split("/_manifests/")[0] for key in run(target.walk("repositories")) if "/_manifests/tags/" in key}


@pytest_twisted.ensureDeferred
async def test_symbolic_links_out_of_the_source_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"not for the registry")
    root = tmp_path / "dist"
    writer = DistributionWriter(FilesystemDriver(str(root), started_pools(reactor).io))
    good = await writer.image("app", [b"good layer"], tag="v1")
    # A layer whose data is a symbolic link to a file outside, with the right digest.
    stolen = Digest.of(b"not for the registry")
    await writer.layer_link("app", stolen)
    data = root / blob_key(stolen)
    data.parent.mkdir(parents=True)
    os.symlink(secret, data)
    # A repository that is a symbolic link to a directory outside, and a symlinked tag.
    (outside / "repo" / "_manifests").mkdir(parents=True)
    os.symlink(outside / "repo", root / repository_key("evil"))
    tags = root / repository_key("app") / "_manifests" / "tags"
    os.symlink(tags / "v1", tags / "alias")

    target = FilesystemDriver(str(tmp_path / "target"), started_pools(reactor).io)
    registry = Registry(target, reactor, Limits())
    source = ConfinedFilesystemDriver(str(root), started_pools(reactor).io)
    migrator = Migrator(DistributionStore(source), registry)
    report = await migrator.run()
    reasons = {problem.where: problem.why for problem in report.problems}
    assert "symbolic link" in reasons[f"app: blob {stolen}"]
    assert "symbolic link" in reasons["repositories/evil"]
    assert "symbolic link" in reasons["app:alias"]
    assert await target.stat(paths.blob_data(stolen)) is None
    assert (await registry.manifests.get("app", Reference(tag="v1"))).body == good[1]
    # Carried blobs are hard links of the source's files.
    layer = Digest.of(b"good layer")
    assert os.path.samefile(target.local_path(paths.blob_data(layer)), root / blob_key(layer))
    assert report.bytes_copied == 0 and report.bytes_linked > 0


def test_a_tag_moved_in_the_source_moves_unless_immutable_here() -> None:
    source = MemoryDriver()
    writer = DistributionWriter(source)
    first = run(writer.image("app", [b"one"], tag="mutable"))
    run(writer.tag("app", "pinned", first[0]))
    target = MemoryDriver()
    registry = Registry(target, Clock(), Limits(), tag_immutable=lambda _name, tag: tag == "pinned")
    migrate(source, registry)
    second = run(writer.image("app", [b"two"]))  # distribution moves both tags meanwhile
    run(writer.tag("app", "mutable", second[0]))
    run(writer.tag("app", "pinned", second[0]))

    report, migrator = migrate(source, registry)
    assert run(registry.manifests.resolve("app", Reference(tag="mutable"))) == second[0]
    assert run(registry.manifests.resolve("app", Reference(tag="pinned"))) == first[0]
    assert [(p.where, "immutable here" in p.why) for p in report.problems] == [("app:pinned", True)]
    assert (report.tags, report.revisions) == (1, 1)
    assert run(verify(DistributionStore(source), registry, migrator.carried, lambda p: pytest.fail(str(p)))) == 0


def test_tagging_a_stored_revision() -> None:
    """`ManifestStore.tag`: the last step of a push, for a manifest already stored."""
    registry = Registry(MemoryDriver(), Clock(), Limits(), tag_immutable=lambda _name, tag: tag == "fixed")
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": []}).encode()
    media_type = "application/vnd.oci.image.index.v1+json"
    digest = run(registry.manifests.put("app", Reference(digest=Digest.of(body)), media_type, body)).digest
    other = Digest.of(b"not stored")
    run(registry.manifests.tag("app", "v1", digest))
    assert run(registry.manifests.get("app", Reference(tag="v1"))).body == body
    from angosd.oci.errors import ManifestUnknown, TagImmutable

    with pytest.raises(ManifestUnknown):
        run(registry.manifests.tag("app", "v2", other))
    with pytest.raises(ManifestUnknown):
        run(registry.manifests.tag("elsewhere", "v1", digest))  # a revision of another namespace
    assert run(registry.manifests.tags("app")) == ["v1"]
    run(registry.manifests.tag("app", "fixed", digest))
    run(registry.manifests.tag("app", "fixed", digest))  # the same target again is fine
    run(registry.driver.write(paths.revision("app", other), b'{"media_type": "x"}'))
    run(registry.driver.write(paths.blob_data(other), b"not stored"))
    with pytest.raises(TagImmutable):
        run(registry.manifests.tag("app", "fixed", other))
    assert run(registry.manifests.resolve("app", Reference(tag="fixed"))) == digest
