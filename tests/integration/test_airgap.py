"""Air-gapped sites: ``angosd export``/``import``, ``angosd mirror`` and ``prefetch_platforms``.

Real daemons (`tests.daemon.Daemon`), real skopeo, the real command line. Upstreams are
angosd daemons; "offline" means the upstream has been stopped before the pulls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import REPO, Daemon
from tests.integration.images import (
    SKOPEO,
    Layout,
    build_artifact,
    build_image,
    build_index,
    digest_of_file,
    inspect_raw,
    manifest_digest,
    skopeo,
)
from tests.integration.upstreams import require_tool, wait_for

NO_TLS = "--tls-verify=false"
ARTIFACT_TYPE = "application/vnd.example.signature.v1"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool(SKOPEO, "skopeo")


# -- helpers -----------------------------------------------------------------------------------


def angosd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``angosd`` command line, as a child process."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "angosd", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stderr


def failed(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The one-line reason of a failed command."""
    assert result.returncode == 1, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"angosd {command}: "), result.stderr
    return last


def push(daemon: Daemon, layout: Layout, target: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, layout.ref, f"docker://{daemon.host}/{target}")


def closure(layout: Layout, digest: str | None = None) -> tuple[list[str], list[str]]:
    """(manifest digests, blob digests) of a manifest of a source layout, children included."""
    digest = digest or layout.digest
    document = json.loads(Path(layout.blob_path(digest)).read_bytes())
    manifests, blobs = [digest], [d["digest"] for d in [document.get("config"), *document.get("layers", [])] if d]
    for child in document.get("manifests", []):
        more_manifests, more_blobs = closure(layout, child["digest"])
        manifests += more_manifests
        blobs += more_blobs
    return manifests, blobs


def owned(root: Path, namespace: str, digest: str) -> bool:
    """Whether the store holds ``digest`` for ``namespace`` (bytes and ownership)."""
    algorithm, _, hexdigest = digest.partition(":")
    data = root / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"
    return data.is_file() and (root / "repositories" / namespace / "_blobs" / algorithm / hexdigest).exists()


def assert_pulled_identical(source: Layout, pulled: Path) -> None:
    """Every blob skopeo wrote has its digest and is byte-identical to the source's."""
    blobs = sorted((pulled / "blobs" / "sha256").iterdir())
    assert blobs
    for blob in blobs:
        assert digest_of_file(str(blob)) == f"sha256:{blob.name}"
        assert blob.read_bytes() == Path(source.blob_path(f"sha256:{blob.name}")).read_bytes()


def mirror_config(path: Path, store: Path, upstream: Daemon, **repositories: dict[str, Any]) -> str:
    """A configuration whose pull-through repositories (name -> extra keys) mirror ``upstream``."""
    lines = ["[blob_store.fs]", f"root_dir = {json.dumps(str(store))}"]
    for name, keys in (repositories or {"hub": {}}).items():
        lines.append(f'[repository."{name}"]')
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
        lines += [f'[[repository."{name}".upstream]]', f"url = {json.dumps(upstream.url)}",
                  "connect_timeout_secs = 2", "read_timeout_secs = 15"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tags_written(root: Path) -> list[str]:
    found = []
    for directory, _subdirs, files in os.walk(root / "repositories"):
        if directory.endswith("/_manifests/tags"):
            found += files
    return found


# -- (a) export from one store, import into another --------------------------------------------


def test_export_import_between_stores(tmp_path: Path) -> None:
    source = tmp_path / "src"
    single = build_image(str(source), "v1", layer_sizes=(4096, 300_000), seed=1)
    multi = build_index(str(source), "multi", seed=2)
    signature = build_artifact(str(source), single, "sig")
    a = Daemon(str(tmp_path / "a" / "work"), str(tmp_path / "a" / "store")).start()
    try:
        push(a, single, "apps/single:v1")
        push(a, multi, "apps/multi:v2", "--all")
        push(a, multi, "apps/multi:latest", "--all")
        push(a, signature, "apps/single:sig")
        assert a.request("DELETE", "/v2/apps/single/manifests/sig").status == 202  # an untagged referrer now
        bundle = tmp_path / "bundle.tar"
        # alongside the running daemon, on its store
        ok(angosd("export", "--root", a.root, "apps/single:v1", "apps/multi", "-o", str(bundle)))
    finally:
        a.stop()
    assert not Path(f"{bundle}.partial").exists()

    with tarfile.open(bundle) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    entries = {(m["digest"], json.dumps(m.get("annotations"), sort_keys=True)) for m in index["manifests"]}
    assert entries == {
        (single.digest, '{"org.opencontainers.image.ref.name": "apps/single:v1"}'),
        (multi.digest, '{"org.opencontainers.image.ref.name": "apps/multi:latest"}'),
        (multi.digest, '{"org.opencontainers.image.ref.name": "apps/multi:v2"}'),
        (signature.digest, '{"io.angosd.namespace": "apps/single"}'),
    }

    # skopeo reads the archive directly, with the ref names written
    copies = tmp_path / "copies"
    skopeo("copy", f"oci-archive:{bundle}:apps/single:v1", f"oci:{copies}:single")
    skopeo("copy", "--all", f"oci-archive:{bundle}:apps/multi:v2", f"oci:{copies}:multi")
    assert manifest_digest(f"oci:{copies}:single") == single.digest
    assert manifest_digest(f"oci:{copies}:multi") == multi.digest
    assert_pulled_identical(single, copies)  # every layout of the test shares one directory

    b_store = tmp_path / "b" / "store"
    ok(angosd("import", "--root", str(b_store), str(bundle)))
    again = ok(angosd("import", "--root", str(b_store), str(bundle)))
    assert "0 tags and 0 manifests written, 0 blobs imported" in again

    b = Daemon(str(tmp_path / "b" / "work"), str(b_store)).start()  # no upstream at all
    try:
        assert inspect_raw(f"docker://{b.host}/apps/single:v1", NO_TLS) == inspect_raw(single.ref)
        assert inspect_raw(f"docker://{b.host}/apps/multi:v2", NO_TLS) == inspect_raw(multi.ref)
        pulled = tmp_path / "pulled"
        skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{b.host}/apps/multi:latest",
               f"oci:{pulled}:multi")
        skopeo("copy", "--src-tls-verify=false", f"docker://{b.host}/apps/single:v1", f"oci:{pulled}:single")
        skopeo("copy", "--src-tls-verify=false", f"docker://{b.host}/apps/single@{signature.digest}",
               f"oci:{pulled}:sig")
        assert manifest_digest(f"oci:{pulled}:multi") == multi.digest
        assert manifest_digest(f"oci:{pulled}:sig") == signature.digest
        assert_pulled_identical(single, pulled)
        listed = b.request("GET", f"/v2/apps/single/referrers/{single.digest}").json()
        assert [(m["digest"], m.get("artifactType")) for m in listed["manifests"]] == [
            (signature.digest, ARTIFACT_TYPE)]
        assert sorted(b.request("GET", "/v2/apps/single/tags/list").json()["tags"]) == ["v1"]
    finally:
        b.stop()


def test_import_refuses_a_corrupt_archive_and_tags_nothing(tmp_path: Path) -> None:
    source = tmp_path / "src"
    image = build_image(str(source), "v1", layer_sizes=(50_000,), seed=3)
    a = Daemon(str(tmp_path / "a" / "work"), str(tmp_path / "a" / "store")).start()
    try:
        push(a, image, "apps/app:v1")
    finally:
        a.stop()
    bundle = tmp_path / "bundle.tar"
    ok(angosd("export", "--root", a.root, "apps/app:v1", "-o", str(bundle)))
    layer = json.loads(Path(image.blob_path()).read_bytes())["layers"][0]["digest"]
    data = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        member = tar.getmember(f"blobs/sha256/{layer.partition(':')[2]}")
    data[member.offset_data + 1000] ^= 0xFF  # one flipped bit inside the layer
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(bytes(data))

    store = tmp_path / "b" / "store"
    reason = failed(angosd("import", "--root", str(store), str(corrupt)), "import")
    assert "corrupt" in reason and layer.partition(":")[2] in reason
    assert tags_written(store) == []
    assert not owned(store, "apps/app", layer)

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(bytes(data[: member.offset_data + 100]))
    reason = failed(angosd("import", "--root", str(store), str(truncated)), "import")
    assert "truncated" in reason or "missing blob" in reason
    assert tags_written(store) == []

    ok(angosd("import", "--root", str(store), str(bundle)))  # the good archive still goes in
    assert tags_written(store) == ["v1"]


# -- (b) mirror, then serve offline ------------------------------------------------------------


def test_mirror_then_serve_offline(tmp_path: Path) -> None:
    source = tmp_path / "src"
    multi = build_index(str(source), "multi", seed=4)
    single = build_image(str(source), "v1", layer_sizes=(4096, 200_000), seed=5)
    signature = build_artifact(str(source), single, "sig")
    upstream = Daemon(str(tmp_path / "u" / "work"), str(tmp_path / "u" / "store")).start()
    store = tmp_path / "mirror" / "store"
    config = mirror_config(tmp_path / "mirror.toml", store, upstream)
    try:
        push(upstream, multi, "library/app:multi", "--all")
        push(upstream, single, "library/app:v1")
        push(upstream, signature, "library/app:sig")

        # one platform first: the full run then fetches only what is missing (resumes)
        ok(angosd("mirror", "-c", config, "--platform", "linux/amd64", "hub/library/app:multi"))
        manifests, blobs = closure(multi)
        present = [digest for digest in blobs if owned(store, "hub/library/app", digest)]
        assert 0 < len(present) < len(blobs)

        images = tmp_path / "images.txt"
        images.write_text("# what the site needs\nhub/library/app:multi\n\nhub/library/app:v1  # with referrers\n")
        output = ok(angosd("mirror", "-c", config, "--from-file", str(images)))
        assert "hub/library/app:multi: " in output and "hub/library/app:v1: " in output
        for digest in blobs + closure(single)[1] + closure(signature)[1]:
            assert owned(store, "hub/library/app", digest), digest

        started = time.monotonic()
        again = ok(angosd("mirror", "-c", config, "hub/library/app:multi", f"hub/library/app@{single.digest}"))
        assert again.count(", 0 blobs fetched") == 2, again
        assert time.monotonic() - started < 20

        unknown = failed(angosd("mirror", "-c", config, "hub/library/nothing:v1"), "mirror")
        assert "1 of 1 images failed" in unknown
        outside = failed(angosd("mirror", "-c", config, "local/app:v1"), "mirror")
        assert "not inside a pull-through repository" in outside
    finally:
        upstream.stop()

    offline = failed(angosd("mirror", "-c", config, "hub/library/app:multi"), "mirror")  # cannot revalidate
    assert "1 of 1 images failed" in offline

    mirror = Daemon(str(tmp_path / "mirror" / "work"), str(store), configs=(config,)).start()
    try:
        pulled = tmp_path / "pulled"
        skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/app:multi",
               f"oci:{pulled}:multi")
        assert manifest_digest(f"oci:{pulled}:multi") == multi.digest
        assert all((pulled / "blobs" / "sha256" / child.partition(":")[2]).is_file() for child in manifests)
        skopeo("copy", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/app:v1",
               f"oci:{pulled}:single")
        skopeo("copy", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/app@{signature.digest}",
               f"oci:{pulled}:sig")
        assert_pulled_identical(multi, pulled)
        listed = mirror.request("GET", f"/v2/hub/library/app/referrers/{single.digest}").json()
        assert [m["digest"] for m in listed["manifests"]] == [signature.digest]
    finally:
        mirror.stop()


# -- (c) prefetch_platforms --------------------------------------------------------------------


def test_prefetch_fills_every_platform_in_the_background(tmp_path: Path) -> None:
    source = tmp_path / "src"
    multi = build_index(str(source), "multi", seed=6)
    signature = build_artifact(str(source), multi, "idxsig")  # a referrer of the index itself
    upstream = Daemon(str(tmp_path / "u" / "work"), str(tmp_path / "u" / "store")).start()
    store = tmp_path / "mirror" / "store"
    config = mirror_config(tmp_path / "mirror.toml", store, upstream, hub={"prefetch_platforms": "all"},
                           arm={"prefetch_platforms": ["linux/arm64"]})
    mirror = Daemon(str(tmp_path / "mirror" / "work"), str(store), configs=(config,)).start()
    try:
        push(upstream, multi, "library/app:multi", "--all")
        push(upstream, signature, "library/app:idxsig")
        manifests, blobs = closure(multi)
        accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
        for repository in ("hub", "arm"):
            answer = mirror.request("GET", f"/v2/{repository}/library/app/manifests/multi", headers=accept)
            assert answer.status == 200 and answer.headers["x-angosd-cache"] == "miss", answer
        wanted = blobs + closure(signature)[1]
        wait_for(lambda: all(owned(store, "hub/library/app", digest) for digest in wanted), 10,
                 "every blob of every platform (and of the referrer) in the cache")

        children = json.loads(Path(multi.blob_path()).read_bytes())["manifests"]
        arm64 = next(c for c in children if c["platform"]["architecture"] == "arm64")
        amd64 = next(c for c in children if c["platform"]["architecture"] == "amd64")
        arm_blobs = closure(multi, arm64["digest"])[1]
        wait_for(lambda: all(owned(store, "arm/library/app", digest) for digest in arm_blobs), 10, "arm64 blobs")
        time.sleep(0.5)
        assert not any(owned(store, "arm/library/app", digest) for digest in closure(multi, amd64["digest"])[1])
        assert mirror.request("GET", f"/v2/arm/library/app/manifests/{amd64['digest']}",
                              headers={"Accept": amd64["mediaType"]}).headers["x-angosd-cache"] == "miss"
    finally:
        upstream.stop()
    try:
        pulled = tmp_path / "pulled"
        skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/app:multi",
               f"oci:{pulled}:multi")
        assert manifest_digest(f"oci:{pulled}:multi") == multi.digest
        assert all((pulled / "blobs" / "sha256" / child.partition(":")[2]).is_file() for child in manifests)
        assert_pulled_identical(multi, pulled)
        skopeo("copy", "--src-tls-verify=false", f"docker://{mirror.host}/hub/library/app@{signature.digest}",
               f"oci:{pulled}:sig")
    finally:
        mirror.stop()
    log = mirror.log()
    assert "prefetched hub/library/app@" in log
    assert "Traceback" not in log and "Unhandled" not in log
