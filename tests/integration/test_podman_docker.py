"""Real clients, real daemon: podman and docker push images in and pull them back.

The images are built locally (no network) as OCI layouts, loaded into each
client's private storage, pushed to angosd, deleted locally and pulled back.
The registry's copy is then checked independently of the client: the
manifest bytes must hash to the digest the client reported, and every blob it
references must be served with matching digest and size.

Neither podman nor docker is optional here: if they are not installed
(``scripts/install-e2e-clients``) or cannot run, the tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tests.integration.dockerd import Dockerd, running_dockerd
from tests.integration.images import build_image, build_index, inspect_raw, skopeo

NO_TLS = "--tls-verify=false"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: One small and one incompressible 3 MiB layer: uploads take more than one read/write.
LAYERS = (4096, 3 << 20)
INSTALL_HINT = "install the end-to-end clients with scripts/install-e2e-clients"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_registry_holds(daemon: Daemon, repository: str, reference: str, digest: str) -> dict[str, Any]:
    """Assert ``repository`` at ``reference`` (tag or digest) is the manifest ``digest``, blobs all intact."""
    separator = "@" if reference.startswith("sha256:") else ":"
    raw = inspect_raw(f"docker://{daemon.host}/{repository}{separator}{reference}", NO_TLS)
    assert sha256(raw) == digest
    manifest: dict[str, Any] = json.loads(raw)
    by_digest = daemon.request("GET", f"/v2/{repository}/manifests/{digest}",
                               headers={"Accept": manifest["mediaType"]})
    assert (by_digest.status, by_digest.body) == (200, raw)
    assert by_digest.headers["docker-content-digest"] == digest
    for descriptor in [manifest["config"], *manifest["layers"]]:
        path = f"/v2/{repository}/blobs/{descriptor['digest']}"
        head = daemon.request("HEAD", path)
        assert head.status == 200, (path, head)
        assert head.headers["docker-content-digest"] == descriptor["digest"]
        assert int(head.headers["content-length"]) == descriptor["size"]
        body = daemon.request("GET", path).body
        assert (sha256(body), len(body)) == (descriptor["digest"], descriptor["size"])
    return manifest


# --------------------------------------------------------------------------
# podman


class Podman:
    """``podman`` on a private vfs store: ``--root`` under ``base``, run state under ``run_dir``.

    podman refuses a ``--runroot`` of 50 characters or more, so ``run_dir`` should be short.
    """

    def __init__(self, base: Path, run_dir: Path) -> None:
        executable = shutil.which("podman")
        if executable is None:
            pytest.fail(f"podman is not installed: {INSTALL_HINT}")
        self.command = [executable, "--root", str(base / "root"), "--runroot", str(run_dir / "run"),
                        "--tmpdir", str(run_dir / "tmp"), "--storage-driver", "vfs", "--events-backend", "none"]
        base.mkdir(parents=True, exist_ok=True)
        (base / "auth.json").write_text('{"auths": {}}')  # no credentials of the user's
        self.env = dict(os.environ, REGISTRY_AUTH_FILE=str(base / "auth.json"))

    def __call__(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(proc.args)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def inspect(self, image: str, template: str) -> str:
        return self("image", "inspect", "--format", template, image).strip()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    run_dir = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    try:
        yield Podman(tmp_path / "podman", run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize(("options", "manifest_type", "layer_type"), [
    pytest.param((), OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+gzip", id="oci-gzip"),
    pytest.param(("--format", "v2s2"), DOCKER_MANIFEST, DOCKER_LAYER, id="docker-v2s2"),
    pytest.param(("--compression-format", "zstd"), OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+zstd",
                 id="oci-zstd"),
])
def test_podman_push_pull_round_trip(daemon: Daemon, podman: Podman, tmp_path: Path, options: tuple[str, ...],
                                     manifest_type: str, layer_type: str) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=LAYERS, seed=11)
    image_id = podman("pull", "-q", image.ref).strip()
    remote = f"{daemon.host}/e2e/podman:v1"
    podman("tag", image_id, remote)
    digest_file = tmp_path / "pushed-digest"
    podman("push", NO_TLS, "--digestfile", str(digest_file), *options, remote)
    pushed = digest_file.read_text().strip()

    manifest = check_registry_holds(daemon, "e2e/podman", "v1", pushed)
    assert manifest["mediaType"] == manifest_type
    assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type] * len(LAYERS)

    podman("rmi", "--force", image_id)
    podman("pull", NO_TLS, "-q", remote)
    assert podman.inspect(remote, "{{.Id}}") == image_id.removeprefix("sha256:")
    assert podman.inspect(remote, "{{.Digest}}") == pushed


def test_podman_manifest_list_push(daemon: Daemon, podman: Podman, tmp_path: Path) -> None:
    platforms = [("linux", "amd64"), ("linux", "arm64")]
    src = str(tmp_path / "src")
    images = [build_image(src, arch, layer_sizes=(4096,), seed=20 + i, platform=(os_name, arch))
              for i, (os_name, arch) in enumerate(platforms)]
    podman("manifest", "create", "localhost/e2e-multi:1")
    for image in images:
        podman("manifest", "add", "localhost/e2e-multi:1", image.ref)
    digest_file = tmp_path / "pushed-digest"
    podman("manifest", "push", "--all", NO_TLS, "--digestfile", str(digest_file),
           "localhost/e2e-multi:1", f"docker://{daemon.host}/e2e/multi:1")
    pushed = digest_file.read_text().strip()

    raw = inspect_raw(f"docker://{daemon.host}/e2e/multi:1", NO_TLS)
    assert sha256(raw) == pushed
    index = json.loads(raw)
    assert sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]) == platforms
    for child in index["manifests"]:
        assert child["size"] == len(inspect_raw(f"docker://{daemon.host}/e2e/multi@{child['digest']}", NO_TLS))
        check_registry_holds(daemon, "e2e/multi", child["digest"], child["digest"])

    podman("pull", NO_TLS, "--arch", "arm64", "-q", f"{daemon.host}/e2e/multi:1")
    assert podman.inspect(f"{daemon.host}/e2e/multi:1", "{{.Architecture}}") == "arm64"


# --------------------------------------------------------------------------
# docker


@pytest.fixture
def dockerd(daemon: Daemon, tmp_path: Path) -> Iterator[Dockerd]:
    """A private dockerd that treats the (already running) registry as insecure, i.e. plain HTTP."""
    with running_dockerd(str(tmp_path / "docker-data"), [daemon.host]) as running:
        yield running


def docker_push(dockerd: Dockerd, image: str) -> tuple[str, str]:
    """``docker push IMAGE``; return its output and the manifest digest it reports."""
    output = dockerd.docker("push", image).stdout
    match = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", output)
    assert match, output
    return output, match.group(1)


def test_docker_push_pull_and_cross_repository_mount(daemon: Daemon, dockerd: Dockerd, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=LAYERS, seed=30)
    archive = tmp_path / "image.tar"
    skopeo("copy", image.ref, f"docker-archive:{archive}:e2e-local/app:v1")
    dockerd.docker("load", "-i", str(archive))
    image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", "e2e-local/app:v1").stdout.strip()

    first, second = f"{daemon.host}/e2e/app:v1", f"{daemon.host}/e2e/copy:v1"
    dockerd.docker("tag", image_id, first)
    _, pushed = docker_push(dockerd, first)
    manifest = check_registry_holds(daemon, "e2e/app", "v1", pushed)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert len(manifest["layers"]) == len(LAYERS)

    # Same layers into another repository: docker asks the registry to mount them from the first.
    dockerd.docker("tag", image_id, second)
    output, pushed_again = docker_push(dockerd, second)
    assert pushed_again == pushed
    assert output.count("Mounted from e2e/app") == len(LAYERS), output
    check_registry_holds(daemon, "e2e/copy", "v1", pushed)

    dockerd.docker("rmi", "e2e-local/app:v1", first, second)
    assert dockerd.docker("image", "inspect", image_id, check=False).returncode != 0
    for remote, repository in ((first, "e2e/app"), (second, "e2e/copy")):
        dockerd.docker("pull", remote)
        assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip() == image_id
        repo_digests = json.loads(dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}",
                                                 remote).stdout)
        assert f"{daemon.host}/{repository}@{pushed}" in repo_digests


def test_docker_pulls_oci_index_pushed_by_skopeo(daemon: Daemon, dockerd: Dockerd, tmp_path: Path) -> None:
    index = build_index(str(tmp_path / "src"), "multi", seed=31)
    remote = f"{daemon.host}/e2e/multi:1"
    skopeo("copy", "--all", "--dest-tls-verify=false", index.ref, f"docker://{remote}")
    children = {m["platform"]["architecture"]: m["digest"] for m in json.loads(inspect_raw(index.ref))["manifests"]}

    for reference in (remote, f"{daemon.host}/e2e/multi@{index.digest}"):
        output = dockerd.docker("pull", "--platform", "linux/arm64", reference).stdout
        assert f"Digest: {index.digest}" in output, output
        details = json.loads(dockerd.docker("image", "inspect", reference).stdout)[0]
        assert details["Architecture"] == "arm64"
        assert f"{daemon.host}/e2e/multi@{index.digest}" in details["RepoDigests"]
    check_registry_holds(daemon, "e2e/multi", children["arm64"], children["arm64"])
