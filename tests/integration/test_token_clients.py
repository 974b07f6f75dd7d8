"""Real clients against a registry with a token service: anyone may pull, only ``ci`` may push.

docker, podman, skopeo and ctr (with a private containerd) each: pull anonymously, fail to log
in (or push) with a wrong password, log in and push, and pull the pushed image back
byte-identical (same manifest digest, same image id). None of them is optional.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from angosd.auth.basic import hash_password
from tests.daemon import Daemon
from tests.integration.containerd import Containerd
from tests.integration.dockerd import Dockerd, running_dockerd
from tests.integration.images import build_image, inspect_raw, skopeo, skopeo_may_fail
from tests.integration.test_podman_docker import NO_TLS, Podman, sha256

PUBLIC_READ_CI_PUSH = """
[global.access_policy]
default = "deny"
rules = [
  "request.action in ['get-api-version', 'get-manifest', 'get-blob', 'list-tags', 'get-referrers']",
  "identity.username == 'ci'",
]

[auth.identity.ci]
username = "ci"
password = "{hash}"

[auth.token_service]
signing_key = "{key}"
ttl_secs = 300
"""
PASSWORD = "ci-secret-password"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("token-registry")
    key = ec.generate_private_key(ec.SECP256R1())
    (base / "token.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    config = base / "angosd.toml"
    config.write_text(PUBLIC_READ_CI_PUSH.format(hash=hash_password(PASSWORD), key=base / "token.pem"))
    running = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def seeded(registry: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image pushed by ``ci`` with skopeo (``e2e/seed:v1``); its manifest digest."""
    image = build_image(str(tmp_path_factory.mktemp("seed")), "v1", layer_sizes=(4096, 1 << 20), seed=41)
    target = f"docker://{registry.host}/e2e/seed:v1"
    refused = skopeo_may_fail("copy", "--dest-tls-verify=false", image.ref, target)
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), refused.stderr
    wrong = skopeo_may_fail("copy", "--dest-tls-verify=false", "--dest-creds", "ci:wrong", image.ref, target)
    assert wrong.returncode != 0, wrong.stderr
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"ci:{PASSWORD}", image.ref, target)
    raw = inspect_raw(target, NO_TLS)  # anonymous
    assert sha256(raw) == sha256(inspect_raw(image.ref))
    return sha256(raw)


def test_skopeo_login_checks_the_password(registry: Daemon, tmp_path: Path) -> None:
    auth = str(tmp_path / "auth.json")
    wrong = skopeo_may_fail("login", "--authfile", auth, NO_TLS, "-u", "ci", "-p", "wrong", registry.host)
    assert wrong.returncode != 0, wrong.stdout
    skopeo("login", "--authfile", auth, NO_TLS, "-u", "ci", "-p", PASSWORD, registry.host)


def test_podman_anonymous_pull_login_push(registry: Daemon, seeded: str, tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    try:
        podman = Podman(tmp_path / "podman", run_dir)
        podman("pull", NO_TLS, "-q", f"{registry.host}/e2e/seed:v1")
        image_id = podman.inspect(f"{registry.host}/e2e/seed:v1", "{{.Id}}")
        remote = f"{registry.host}/e2e/podman:v1"
        podman("tag", image_id, remote)
        with pytest.raises(AssertionError):
            podman("push", NO_TLS, remote)  # anonymous
        with pytest.raises(AssertionError, match=r"(?i)unauthorized|invalid username"):
            podman("login", NO_TLS, "-u", "ci", "-p", "wrong", registry.host)
        podman("login", NO_TLS, "-u", "ci", "-p", PASSWORD, registry.host)
        digest_file = tmp_path / "digest"
        podman("push", NO_TLS, "--digestfile", str(digest_file), remote)
        podman("logout", registry.host)
        podman("rmi", "--force", image_id)
        podman("pull", NO_TLS, "-q", remote)
        assert podman.inspect(remote, "{{.Id}}") == image_id
        assert podman.inspect(remote, "{{.Digest}}") == digest_file.read_text().strip()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def dockerd(registry: Daemon, tmp_path: Path) -> Iterator[Dockerd]:
    with running_dockerd(str(tmp_path / "docker-data"), [registry.host]) as running:
        yield running


def test_docker_anonymous_pull_login_push(registry: Daemon, seeded: str, dockerd: Dockerd) -> None:
    source = f"{registry.host}/e2e/seed:v1"
    dockerd.docker("pull", source)
    image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", source).stdout.strip()
    remote = f"{registry.host}/e2e/docker:v1"
    dockerd.docker("tag", source, remote)
    anonymous = dockerd.docker("push", remote, check=False)
    assert anonymous.returncode != 0
    wrong = dockerd.docker("login", "-u", "ci", "-p", "wrong", registry.host, check=False)
    assert wrong.returncode != 0, wrong.stdout
    assert "Login Succeeded" not in wrong.stdout
    dockerd.docker("login", "-u", "ci", "-p", PASSWORD, registry.host)
    output = dockerd.docker("push", remote).stdout
    assert "digest: sha256:" in output, output
    dockerd.docker("logout", registry.host)
    dockerd.docker("rmi", source, remote)
    dockerd.docker("pull", remote)
    assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip() == image_id
    digests = json.loads(dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", remote).stdout)
    assert any(d.startswith(f"{registry.host}/e2e/docker@sha256:") for d in digests)


def test_ctr_anonymous_pull_and_authenticated_push(registry: Daemon, seeded: str, tmp_path: Path) -> None:
    containerd = Containerd(tmp_path / "containerd")
    try:
        source = f"{registry.host}/e2e/seed:v1"
        containerd.ctr("content", "fetch", "--plain-http", source)
        listed = containerd.ctr("images", "ls").stdout
        assert seeded in listed, listed
        remote = f"{registry.host}/e2e/ctr:v1"
        containerd.ctr("images", "tag", source, remote)
        assert containerd.ctr("images", "push", "--plain-http", remote, check=False).returncode != 0
        assert containerd.ctr("images", "push", "--plain-http", "--user", "ci:wrong", remote,
                              check=False).returncode != 0
        containerd.ctr("images", "push", "--plain-http", "--user", f"ci:{PASSWORD}", remote)
        assert sha256(inspect_raw(f"docker://{remote}", NO_TLS)) == seeded
        containerd.ctr("images", "rm", source, remote)
        containerd.ctr("content", "fetch", "--plain-http", remote)
        assert seeded in containerd.ctr("images", "ls").stdout
    finally:
        containerd.stop()
