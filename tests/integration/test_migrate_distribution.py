"""Migrating a real CNCF distribution store (Debian's ``docker-registry``, 2.8) into angosd.

A distribution registry is filled through skopeo: single images, a two-platform index,
several repositories sharing layers, several tags on one revision, an untagged revision,
a deleted tag, an OCI 1.1 artifact with a subject, an upload left in progress and a large
layer. Then it is stopped, ``angosd migrate --from-distribution`` runs, angosd starts on
the result, and everything is pulled back with skopeo and compared, digests and bytes,
with what distribution served. The same on S3 (moto), distribution's bucket into another
bucket of the same server. And the migration is killed (SIGKILL) at random points, then
run again: the store equals the one an uninterrupted run makes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import REPO, Daemon
from tests.integration.images import build_artifact, build_image, build_index, inspect_raw, skopeo
from tests.integration.upstreams import DockerRegistry, MiB, require_tool
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, s3_config, shared_s3

NO_TLS = "--tls-verify=false"
LARGE_LAYER = 64 * MiB


@dataclass
class Filled:
    """What a distribution registry was filled with, and what it served."""

    registry: DockerRegistry
    tags: list[tuple[str, str]] = field(default_factory=list)
    untagged: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    #: Every (repository, manifest digest) distribution holds: tagged, untagged, index children.
    revisions: set[tuple[str, str]] = field(default_factory=set)
    upload: tuple[str, str, bytes] = ("", "", b"")
    #: Raw manifest bytes distribution served, by ``repository:tag`` or ``repository@digest``.
    manifests: dict[str, bytes] = field(default_factory=dict)
    #: Blob files distribution served (pulled with skopeo into OCI layouts), by digest hex.
    blobs: dict[str, Path] = field(default_factory=dict)


def push(source: str, registry: DockerRegistry, target: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, source, f"docker://{registry.host}/{target}")


def fill(registry: DockerRegistry, work: Path, large: int) -> Filled:
    filled = Filled(registry)
    oci = str(work / "oci")
    app = build_image(oci, "app", layer_sizes=(4096, 70_000), seed=1)
    for target in ("lib/app:v1", "lib/app:v1.0", "lib/app:latest", "team/x/app:1", "other:1"):  # shared layers
        push(app.ref, registry, target)
        filled.tags.append(tuple(target.split(":")))  # type: ignore[arg-type]
    index = build_index(oci, "multi", seed=2)
    push(index.ref, registry, "multi:latest", "--all")
    filled.tags.append(("multi", "latest"))
    old = build_image(oci, "old", seed=3)
    push(old.ref, registry, "lib/app:moving")
    new = build_image(oci, "new", seed=4)
    push(new.ref, registry, "lib/app:moving")  # the old revision stays, untagged
    filled.tags.append(("lib/app", "moving"))
    filled.untagged.append(("lib/app", old.digest))
    gone = build_image(oci, "gone", seed=5)
    push(gone.ref, registry, "lib/app:gone")
    skopeo("delete", NO_TLS, f"docker://{registry.host}/lib/app:gone")  # distribution deletes by digest
    filled.deleted.append(("lib/app", "gone"))
    signature = build_artifact(oci, app, tag="sig")
    push(signature.ref, registry, "lib/app:sig")
    filled.tags.append(("lib/app", "sig"))
    big = build_image(str(work / "big"), "big", layer_sizes=(large,), seed=6)
    push(big.ref, registry, "big:v1")
    filled.tags.append(("big", "v1"))
    filled.upload = ("lib/app", *start_upload(registry, b"first chunk of an upload in progress"))

    for repository, tag in filled.tags:
        remote = f"docker://{registry.host}/{repository}:{tag}"
        raw = filled.manifests[f"{repository}:{tag}"] = inspect_raw(remote, NO_TLS)
        filled.revisions.add((repository, manifest_digest(raw)))
        filled.revisions.update((repository, child["digest"]) for child in json.loads(raw).get("manifests", []))
        served = work / "served" / repository / tag
        served.parent.mkdir(parents=True, exist_ok=True)
        skopeo("copy", "--all", "--src-tls-verify=false", remote, f"oci:{served}:{tag}")
        for blob in (served / "blobs" / "sha256").iterdir():
            filled.blobs[blob.name] = blob
    for repository, digest in filled.untagged:
        filled.revisions.add((repository, digest))
        filled.manifests[f"{repository}@{digest}"] = inspect_raw(f"docker://{registry.host}/{repository}@{digest}",
                                                                 NO_TLS)
    return filled


def start_upload(registry: DockerRegistry, chunk: bytes) -> tuple[str, bytes]:
    """Start an upload and send one chunk: the session id and the bytes sent."""
    connection = registry.connection()
    connection.request("POST", "/v2/lib/app/blobs/uploads/", body=b"")
    response = connection.getresponse()
    response.read()
    assert response.status == 202, response.status
    location = response.getheader("Location") or ""
    connection.request("PATCH", location, body=chunk, headers={"Content-Type": "application/octet-stream"})
    response = connection.getresponse()
    response.read()
    assert response.status == 202, response.status
    session = response.getheader("Docker-Upload-UUID") or ""
    assert session
    return session, chunk


def migrate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, "-m", "angosd", "migrate", *args], capture_output=True, text=True,
                          env=environment, timeout=900, check=False)


def check_served_alike(filled: Filled, daemon: Daemon, work: Path, upload_carried: bool = True) -> None:
    """angosd serves every carried manifest byte for byte, and every blob distribution served."""
    for repository, tag in filled.tags:
        remote = f"docker://{daemon.host}/{repository}:{tag}"
        assert inspect_raw(remote, NO_TLS) == filled.manifests[f"{repository}:{tag}"], (repository, tag)
        back = work / "back" / repository / tag
        back.parent.mkdir(parents=True, exist_ok=True)
        skopeo("copy", "--all", "--src-tls-verify=false", remote, f"oci:{back}:{tag}")
        for blob in (back / "blobs" / "sha256").iterdir():
            assert same_bytes(blob, filled.blobs[blob.name]), blob.name
    for repository, digest in filled.untagged:
        assert inspect_raw(f"docker://{daemon.host}/{repository}@{digest}", NO_TLS) == \
            filled.manifests[f"{repository}@{digest}"]
    for repository, tag in filled.deleted:
        assert daemon.request("GET", f"/v2/{repository}/manifests/{tag}").status == 404
    listed = daemon.request("GET", "/v2/lib/app/tags/list").json()["tags"]
    assert sorted(listed) == sorted(tag for repository, tag in filled.tags if repository == "lib/app")
    # The referrer (an OCI 1.1 subject) is indexed.
    subject = json.loads(filled.manifests["lib/app:sig"])["subject"]["digest"]
    referrers = daemon.request("GET", f"/v2/lib/app/referrers/{subject}").json()["manifests"]
    assert [r["digest"] for r in referrers] == [manifest_digest(filled.manifests["lib/app:sig"])]
    # The upload in progress goes on in angosd, under the id distribution gave it.
    repository, session, chunk = filled.upload
    status = daemon.request("GET", f"/v2/{repository}/blobs/uploads/{session}")
    if not upload_carried:
        assert status.status == 404
        return
    assert status.status == 204 and status.headers["range"] == f"0-{len(chunk) - 1}"
    rest = b" and its end, sent to angosd"
    digest = manifest_digest(chunk + rest)
    done = daemon.request("PUT", f"/v2/{repository}/blobs/uploads/{session}?digest={digest}", body=rest,
                          headers={"Content-Type": "application/octet-stream"})
    assert done.status == 201, done.body
    assert daemon.request("GET", f"/v2/{repository}/blobs/{digest}").body == chunk + rest


def manifest_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        while True:
            x, y = first.read(MiB), second.read(MiB)
            if x != y:
                return False
            if not x:
                return True


# -- filesystem ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    require_tool("/usr/bin/skopeo", "skopeo")
    work = tmp_path_factory.mktemp("distribution")
    registry = DockerRegistry(work / "registry").start()
    try:
        filled = fill(registry, work, LARGE_LAYER)
    finally:
        registry.stop()
    yield filled


def source_root(filled: Filled) -> Path:
    return filled.registry.directory / "data"


def test_migrated_filesystem_store_serves_what_distribution_served(distribution: Filled, tmp_path: Path) -> None:
    target = tmp_path / "angosd"
    dry = migrate("--from-distribution", str(source_root(distribution)), "--root", str(target), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would carry" in dry.stdout and not any(path.is_file() for path in target.rglob("*"))

    done = migrate("--from-distribution", str(source_root(distribution)), "--root", str(target), "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout
    counts = f"carried {len(distribution.tags)} tags, {len(distribution.revisions)} revisions"
    assert f"{len({r for r, _ in distribution.tags})} repositories; {counts}" in summary, summary
    assert ", 1 uploads (" in summary and " 0 B copied by the store, 0 B copied)" in summary, summary
    assert "0 skipped" in summary and "verify: OK" in summary, summary
    # No blob bytes copied: the large layer is the same file (a hard link).
    big = max((p for p in target.glob("blobs/sha256/*/*/data")), key=lambda p: p.stat().st_size)
    assert big.stat().st_size >= LARGE_LAYER and big.stat().st_nlink == 2
    hex_digest = big.parent.name
    assert os.path.samefile(big, source_root(distribution) / "docker/registry/v2/blobs/sha256" / hex_digest[:2]
                            / hex_digest / "data")

    again = migrate("--from-distribution", str(source_root(distribution)), "--root", str(target))
    assert again.returncode == 0 and "carried 0 tags, 0 revisions, 0 blobs, 0 uploads" in again.stdout, again.stdout

    daemon = Daemon(str(tmp_path / "work"), str(target)).start()
    try:
        check_served_alike(distribution, daemon, tmp_path)
    finally:
        daemon.stop()


def store_state(root: Path, source: Path) -> dict[str, Any]:
    """Every file of an angosd store: blob bytes by the source file they link to, revision
    records without their push time, everything else by content; hidden temporary files
    (left by a kill) are not part of the store."""
    state: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".tmp-"):
            continue
        key = str(path.relative_to(root))
        if key.startswith("blobs/") and path.name == "data":
            hex_digest = path.parent.name
            origin = source / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
            state[key] = ("linked", os.path.samefile(path, origin))
        elif "/_manifests/revisions/" in key:
            record = json.loads(path.read_bytes())
            record.pop("pushed_at")
            state[key] = record
        else:
            state[key] = path.read_bytes()
    return state


def test_a_migration_killed_at_random_points_resumes_to_the_same_store(distribution: Filled,
                                                                       tmp_path: Path) -> None:
    source = source_root(distribution)
    reference = tmp_path / "uninterrupted"
    started = time.monotonic()
    assert migrate("--from-distribution", str(source), "--root", str(reference)).returncode == 0
    duration = time.monotonic() - started
    expected = store_state(reference, source)

    seed = random.randrange(1 << 30)
    chooser = random.Random(seed)
    target = tmp_path / "killed"
    kills = 0
    for _attempt in range(6):
        process = subprocess.Popen([sys.executable, "-m", "angosd", "migrate", "--from-distribution", str(source),
                                    "--root", str(target)], env={**os.environ, "PYTHONPATH": REPO},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chooser.uniform(0.2, duration))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
    assert kills >= 2, f"the migration ended before most kills (seed {seed}, {duration:.1f}s a run)"
    final = migrate("--from-distribution", str(source), "--root", str(target))
    assert final.returncode == 0, final.stderr
    assert store_state(target, source) == expected, f"seed {seed}"
    assert "0 skipped" in final.stdout


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture
def s3() -> S3Server:
    return shared_s3()


def test_migrated_s3_store_serves_what_distribution_served(s3: S3Server, tmp_path: Path) -> None:
    require_tool("/usr/bin/skopeo", "skopeo")
    source_bucket, target_bucket = s3.new_bucket("dist"), s3.new_bucket("angosd")
    settings = {"regionendpoint": s3.endpoint, "bucket": source_bucket, "region": REGION, "accesskey": ACCESS_KEY,
                "secretkey": SECRET_KEY, "secure": "false", "v4auth": "true", "rootdirectory": "/registry"}
    registry = DockerRegistry(tmp_path / "registry", s3=settings).start()
    try:
        filled = fill(registry, tmp_path, 8 * MiB)
    finally:
        registry.stop()
    assert any(key.startswith("registry/docker/registry/v2/blobs/") for key in s3.keys(source_bucket))

    config = tmp_path / "angosd.toml"
    config.write_text(s3_config(s3, target_bucket))
    done = migrate("--from-distribution", f"s3://{source_bucket}/registry", "-c", str(config), "--verify",
                   env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    counts = f"carried {len(filled.tags)} tags, {len(filled.revisions)} revisions"
    assert counts in done.stdout and "verify: OK" in done.stdout, done.stdout
    assert "0 B linked" in done.stdout and " 0 B copied)" in done.stdout, done.stdout  # all copied server-side
    # On S3, distribution keeps the bytes of an upload in progress in an unfinished multipart
    # upload, which nothing can read: the session is reported, not carried.
    assert f"skipped: lib/app: upload {filled.upload[1]}: its bytes are not readable" in done.stdout
    assert "1 skipped" in done.stdout
    again = migrate("--from-distribution", f"s3://{source_bucket}/registry", "-c", str(config))
    assert "carried 0 tags, 0 revisions, 0 blobs, 0 uploads" in again.stdout, again.stdout

    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "unused"), configs=(str(config),)).start()
    try:
        check_served_alike(filled, daemon, tmp_path, upload_carried=False)
    finally:
        daemon.stop()


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    missing = migrate("--from-distribution", str(tmp_path), "--root", str(tmp_path / "t"))
    assert missing.returncode == 1 and "holds no docker/registry/v2" in missing.stderr
    both = migrate("--from-distribution", str(tmp_path), "--root", str(tmp_path / "t"), "--dry-run", "--verify")
    assert both.returncode == 1

