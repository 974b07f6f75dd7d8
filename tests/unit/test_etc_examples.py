"""The shipped configuration (etc/angosd.toml) and every set-up in etc/examples/ load with the
real loader and pass `angosd check-config` with no warning; the shipped default is safe
(loopback only, refuses to open without a policy) and serves the README's ``team/app``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from angosd.config import Config, load_config
from angosd.config.exposure import exposure_problem
from angosd.proxy.imageset import read_image_set
from tests.certs import CA, key_pem, write_pem
from tests.inmemory import InMemoryDaemon

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "etc" / "angosd.toml"
EXAMPLES = REPO / "etc" / "examples"
FILES = [DEFAULT, *sorted(EXAMPLES.glob("*.toml"))]
CONFIGS = [path for path in FILES if path.name != "image-set.toml"]  # an image set is not a configuration


def load(path: Path) -> Config:
    warnings: list[str] = []
    config = load_config([str(path)], warn=warnings.append)
    assert warnings == [], warnings
    return config


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def stand_ins(config: Config, directory: Path) -> str:
    """TOML replacing, with files written into ``directory``, the key and certificate files the
    configuration names (they exist only on a real server): "" when it names none."""
    lines: list[str] = []
    if config.server.tls is not None:
        ca = CA()
        certificate, key = ca.server().write(directory, "server")
        lines += ["[server.tls]", f"server_certificate_bundle = {_toml_string(certificate)}",
                  f"server_private_key = {_toml_string(key)}"]
        if config.server.tls.client_ca_bundle is not None:
            lines.append(f"client_ca_bundle = {_toml_string(ca.write(directory / 'clients-ca.crt'))}")
    token_service = config.auth.token_service
    if token_service is not None and token_service.signing_key is not None:
        from cryptography.hazmat.primitives.asymmetric import ec

        signing_key = write_pem(directory / "token.pem", key_pem(ec.generate_private_key(ec.SECP256R1())))
        lines += ["[auth.token_service]", f"signing_key = {_toml_string(signing_key)}"]
    return "\n".join(lines) + "\n" if lines else ""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_loads_and_passes_check_config(path: Path, tmp_path: Path) -> None:
    config = load(path)
    arguments = ["-c", str(path)]
    override = stand_ins(config, tmp_path)
    if override:
        override_path = tmp_path / "stand-ins.toml"
        override_path.write_text(override, encoding="utf-8")
        warnings: list[str] = []
        merged = load_config([str(path), str(override_path)], warn=warnings.append)
        assert warnings == []
        # Only the file names changed: the policies, repositories and listening address are the example's.
        assert (merged.global_, merged.repositories, merged.server.bind_address) == \
            (config.global_, config.repositories, config.server.bind_address)
        arguments += ["-c", str(override_path)]
    result = subprocess.run([sys.executable, "-m", "angosd", "check-config", *arguments], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", ""), result


def test_the_examples_are_there() -> None:
    names = {path.name for path in EXAMPLES.glob("*.toml")}
    assert {"pull-through-mirror.toml", "s3-redis.toml", "air-gapped-mirror.toml", "image-set.toml"} <= names
    assert len([path for path in names if path.startswith("auth-")]) >= 4
    assert "etc/examples/" in DEFAULT.read_text(encoding="utf-8")


def test_shipped_default_listens_on_loopback_and_refuses_to_open_without_a_policy() -> None:
    config = load(DEFAULT)
    assert (config.server.bind_address, config.server.port, config.server.listen) == ("127.0.0.1", 5000, None)
    assert config.blob_store.root_dir == "/var/lib/angosd"
    assert exposure_problem(config) is None
    opened = dataclasses.replace(config, server=dataclasses.replace(config.server, bind_address="0.0.0.0"))
    assert exposure_problem(opened) is not None, "opening the network must require choosing an access policy"


def test_shipped_default_admits_a_push_and_pull_of_team_app(tmp_path: Path) -> None:
    config = load(DEFAULT)
    assert config.repositories == ()
    daemon = InMemoryDaemon(DEFAULT.read_text(encoding="utf-8"), root=str(tmp_path / "store"))
    layer = b"a layer of the README's image"
    digests = []
    for blob in (b"{}", layer):
        digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
        response = daemon.request("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", blob,
                                  {"Content-Type": "application/octet-stream"})
        assert response.status == 201, response.body
        digests.append((digest, len(blob)))
    (config_digest, config_size), (layer_digest, layer_size) = digests
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": layer_size}]}).encode()
    pushed = daemon.request("PUT", "/v2/team/app/manifests/1.0", manifest,
                            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert pushed.status == 201, pushed.body
    assert daemon.request("GET", "/v2/team/app/manifests/1.0").body == manifest
    assert daemon.request("GET", f"/v2/team/app/blobs/{layer_digest}").body == layer
    assert json.loads(daemon.request("GET", "/v2/team/app/tags/list").body)["tags"] == ["1.0"]


def test_air_gapped_mirror_image_set_names_its_pull_through_repository() -> None:
    config = load(EXAMPLES / "air-gapped-mirror.toml")
    image_set = read_image_set(str(EXAMPLES / "image-set.toml"))
    assert config.mirror.set_file is not None and Path(config.mirror.set_file).name == "image-set.toml"
    assert config.bundle.trusted_keys
    assert image_set.images
    for image in image_set.images:
        repository = config.repository_for(image.namespace)
        assert repository is not None and repository.is_pull_through, image.namespace


def test_pull_through_mirror_serves_only_pulls() -> None:
    config = load(EXAMPLES / "pull-through-mirror.toml")
    hub = config.repository_for("hub/library/alpine")
    assert hub is not None and hub.is_pull_through and hub.namespace == "docker.io"
    assert not config.namespace_allowed("team/app")
    assert config.global_.access_policy.default == "deny"


def test_s3_redis_shares_store_and_locks() -> None:
    config = load(EXAMPLES / "s3-redis.toml")
    assert config.blob_store_s3 is not None and config.redis is not None
    assert config.server.bind_address == "0.0.0.0" and config.access_policy_configured
