"""LDAP identities against a real slapd: Basic users bound against the directory, their groups
in ``identity.groups`` for policies, a clear 503 when the directory is down, and podman and
skopeo, docker and ctr logging in and pushing or pulling through the token service as a directory
user."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.certs import CA
from tests.daemon import Daemon
from tests.integration.containerd import Containerd
from tests.integration.dockerd import running_dockerd
from tests.integration.images import build_image, inspect_raw, skopeo, skopeo_may_fail
from tests.integration.test_podman_docker import NO_TLS, Podman, sha256
from tests.ldap_server import SEARCH_DN, SEARCH_PASSWORD, SUFFIX, Slapd, ldif

CONFIG = r'''
[global.access_policy]
default = "deny"
rules = [
  """request.action in ['get-api-version', 'get-manifest', 'get-blob', 'list-tags', 'get-referrers'] \
     && !(has(request.namespace) && request.namespace.startsWith('private/'))""",
  "'builders' in identity.groups",
]

[auth.ldap]
url = "{url}"
bind_dn = "{search_dn}"
bind_password = "{search_password}"
user_base_dn = "ou=people,{suffix}"
user_filter = "(uid={{username}})"
group_base_dn = "ou=groups,{suffix}"
group_filter = "(member={{dn}})"
timeout_secs = 3
cache_ttl_secs = 60

[auth.token_service]
signing_key = "{key}"
'''


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.load(ldif({"alice": "alice-pass", "bob": "bob-pass"}, {"builders": ["alice"], "readers": ["bob"]}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registry(slapd: Slapd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ldap-registry")
    key = ec.generate_private_key(ec.SECP256R1())
    (base / "token.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    config = base / "angosd.toml"
    config.write_text(CONFIG.format(url=slapd.url, search_dn=SEARCH_DN, search_password=SEARCH_PASSWORD,
                                    suffix=SUFFIX, key=base / "token.pem"))
    running = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()
    try:
        yield running
    finally:
        running.stop()


def token(registry: Daemon, scope: str, headers: dict[str, str]) -> tuple[int, str]:
    response = registry.request("GET", f"/token?service=angosd&scope={scope}", headers=headers)
    return response.status, (response.json().get("token", "") if response.status == 200 else "")


def test_directory_users_and_groups(registry: Daemon) -> None:
    scope = "repository:team/app:pull,push"
    status, alice = token(registry, scope, basic("alice", "alice-pass"))
    assert status == 200
    data = b"ldap layer"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pushed = registry.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", data,
                              {"Authorization": f"Bearer {alice}", "Content-Type": "application/octet-stream"})
    assert pushed.status == 201, pushed.body
    status, bob = token(registry, scope, basic("bob", "bob-pass"))
    assert status == 200
    refused = registry.request("POST", "/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {bob}"})
    assert refused.status == 401  # bob is not a builder: his token grants pull only
    assert token(registry, scope, basic("alice", "wrong"))[0] == 401
    assert token(registry, scope, basic("alice", ""))[0] == 401
    assert token(registry, scope, basic("nobody", "x"))[0] == 401
    assert token(registry, scope, basic("*", "alice-pass"))[0] == 401  # filter metacharacters are escaped
    direct = registry.request("GET", "/v2/team/app/tags/list", headers=basic("bob", "bob-pass"))
    assert direct.status == 404  # bob may read


def test_directory_down_is_a_503_naming_it(slapd: Slapd, registry: Daemon) -> None:
    assert token(registry, "repository:team/app:pull", basic("bob", "bob-pass"))[0] == 200  # cached from now on
    slapd.stop()
    try:
        response = registry.request("GET", "/token?scope=repository:team/app:pull", headers=basic("carol", "x"))
        assert response.status == 503
        assert slapd.url.encode() in response.body
        # A bind verified a moment ago still works from the cache.
        assert token(registry, "repository:team/app:pull", basic("bob", "bob-pass"))[0] == 200
    finally:
        slapd.start()


@pytest.mark.parametrize("mode", ["start_tls", "ldaps"])
def test_start_tls_and_ldaps_verify_the_directory(tmp_path: Path, mode: str) -> None:
    ca, stranger = CA("directory CA"), CA("stranger CA")
    cert, key = ca.server().write(tmp_path, "slapd")
    ca_file = ca.write(tmp_path / "ca.pem")
    server = Slapd(tmp_path / "slapd", tls=(cert, key), ldaps=mode == "ldaps")
    server.load(ldif({"alice": "alice-pass"}, {"builders": ["alice"]})).start()
    try:
        for trusted, expected in ((ca_file, 200), (stranger.write(tmp_path / "stranger.pem"), 503)):
            config = tmp_path / f"{mode}-{expected}.toml"
            extra = 'start_tls = true\n' if mode == "start_tls" else ""
            config.write_text(CONFIG.format(url=server.url, search_dn=SEARCH_DN, search_password=SEARCH_PASSWORD,
                                            suffix=SUFFIX, key=write_token_key(tmp_path)).replace(
                "timeout_secs = 3\n", f'timeout_secs = 3\nca_file = "{trusted}"\n{extra}'))
            daemon = Daemon(str(tmp_path / f"work-{expected}"), str(tmp_path / f"store-{expected}"),
                            configs=(str(config),)).start()
            try:
                status, _ = token(daemon, "repository:team/app:push", basic("alice", "alice-pass"))
                assert status == expected, (mode, trusted, daemon.log()[-2000:])
            finally:
                daemon.stop()
    finally:
        server.stop()


def write_token_key(directory: Path) -> Path:
    path = directory / "token.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def test_podman_and_skopeo_as_a_directory_user(registry: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096,), seed=51)
    target = f"docker://{registry.host}/team/ldap:v1"
    denied = skopeo_may_fail("copy", "--dest-tls-verify=false", "--dest-creds", "bob:bob-pass", image.ref, target)
    assert denied.returncode != 0
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pass", image.ref, target)
    assert sha256(inspect_raw(target, NO_TLS)) == sha256(inspect_raw(image.ref))
    run_dir = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    try:
        podman = Podman(tmp_path / "podman", run_dir)
        with pytest.raises(AssertionError):
            podman("login", NO_TLS, "-u", "alice", "-p", "wrong", registry.host)
        podman("login", NO_TLS, "-u", "alice", "-p", "alice-pass", registry.host)
        podman("pull", NO_TLS, "-q", f"{registry.host}/team/ldap:v1")
        podman("tag", f"{registry.host}/team/ldap:v1", f"{registry.host}/team/ldap:v2")
        digest_file = tmp_path / "digest"
        podman("push", NO_TLS, "--digestfile", str(digest_file), f"{registry.host}/team/ldap:v2")
        pushed = digest_file.read_text().strip()
        assert sha256(inspect_raw(f"docker://{registry.host}/team/ldap:v2", NO_TLS)) == pushed
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_docker_and_ctr_as_a_directory_user(registry: Daemon, tmp_path: Path) -> None:
    """docker logs in with the directory password (a wrong one fails), pushes as a ``builders``
    member (a non-member is refused) and pulls the image back identical; ctr pulls it with the
    same directory credentials. ``private/`` is closed to anonymous readers, so both clients must
    present the credentials to pull, and a wrong password fails."""
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096, 1 << 20), seed=52)
    source = f"{registry.host}/team/docker-seed:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pass", image.ref, f"docker://{source}")
    remote = f"{registry.host}/private/docker:v1"
    with running_dockerd(str(tmp_path / "docker-data"), [registry.host]) as dockerd:
        dockerd.docker("pull", source)  # anonymous may pull outside private/
        image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", source).stdout.strip()
        dockerd.docker("tag", source, remote)
        wrong = dockerd.docker("login", "-u", "alice", "-p", "wrong", registry.host, check=False)
        assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stdout + wrong.stderr
        dockerd.docker("login", "-u", "bob", "-p", "bob-pass", registry.host)
        refused = dockerd.docker("push", remote, check=False)  # bob is a reader, not a builder
        assert refused.returncode != 0 and "denied" in refused.stderr, refused.stdout + refused.stderr
        dockerd.docker("login", "-u", "alice", "-p", "alice-pass", registry.host)
        output = dockerd.docker("push", remote).stdout
        found = re.search(r"digest: (sha256:[0-9a-f]{64})", output)
        assert found, output
        pushed = found.group(1)
        assert sha256(inspect_raw(f"docker://{remote}", NO_TLS, "--creds", "alice:alice-pass")) == pushed
        dockerd.docker("logout", registry.host)
        dockerd.docker("rmi", source, remote)
        anonymous = dockerd.docker("pull", remote, check=False)
        assert anonymous.returncode != 0 and "denied" in anonymous.stderr, anonymous.stderr
        dockerd.docker("login", "-u", "alice", "-p", "alice-pass", registry.host)
        dockerd.docker("pull", remote)
        dockerd.docker("logout", registry.host)
        assert dockerd.docker("image", "inspect", "--format", "{{.Id}}", remote).stdout.strip() == image_id
        assert f"{registry.host}/private/docker@{pushed}" in dockerd.docker(
            "image", "inspect", "--format", "{{json .RepoDigests}}", remote).stdout
    containerd = Containerd(tmp_path / "containerd")
    try:
        pull = ("images", "pull", "--plain-http", "--snapshotter", "native")
        anonymous_ctr = containerd.ctr(*pull, remote, check=False)
        assert anonymous_ctr.returncode != 0 and "insufficient_scope" in anonymous_ctr.stderr, anonymous_ctr.stderr
        wrong_ctr = containerd.ctr(*pull, "--user", "alice:wrong", remote, check=False)
        assert wrong_ctr.returncode != 0 and "401" in wrong_ctr.stderr, wrong_ctr.stderr
        assert containerd.ctr("images", "ls", "-q").stdout.strip() == ""
        containerd.ctr(*pull, "--user", "alice:alice-pass", remote)
        listed = containerd.ctr("images", "ls").stdout
        assert remote in listed and pushed in listed, listed
    finally:
        containerd.stop()
