"""Real client, real daemon: skopeo copies images in and out, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.integration.images import (
    Layout,
    build_artifact,
    build_image,
    build_index,
    inspect_raw,
    manifest_digest,
    skopeo,
    skopeo_may_fail,
)

NO_TLS = "--tls-verify=false"


def push(layout: Layout, daemon: Daemon, target: str, *extra: str) -> str:
    reference = f"docker://{daemon.host}/{target}"
    skopeo("copy", "--dest-tls-verify=false", *extra, layout.ref, reference)
    return reference


def test_single_image_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", layer_sizes=(4096, 70_000), seed=1)
    remote = push(image, daemon, "team/app:v1")

    assert inspect_raw(remote, NO_TLS) == inspect_raw(image.ref)
    assert manifest_digest(remote, NO_TLS) == image.digest
    skopeo("copy", "--src-tls-verify=false", remote, f"oci:{tmp_path / 'back'}:v1")
    assert inspect_raw(f"oci:{tmp_path / 'back'}:v1") == inspect_raw(image.ref)
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "back" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    details = json.loads(skopeo("inspect", NO_TLS, remote).stdout)
    assert details["Digest"] == image.digest
    assert details["Architecture"] == "amd64"


def test_multi_platform_index_with_all(daemon: Daemon, tmp_path: Path) -> None:
    index = build_index(str(tmp_path / "src"), "multi", seed=2)
    remote = push(index, daemon, "team/multi:1.0", "--all")

    assert inspect_raw(remote, NO_TLS) == inspect_raw(index.ref)
    skopeo("copy", "--all", "--src-tls-verify=false", remote, f"oci:{tmp_path / 'back'}:1.0")
    assert manifest_digest(f"oci:{tmp_path / 'back'}:1.0") == index.digest
    children = json.loads(inspect_raw(index.ref))["manifests"]
    assert len(children) == 2
    for child in children:
        response = daemon.request("GET", f"/v2/team/multi/manifests/{child['digest']}",
                                  headers={"Accept": child["mediaType"]})
        assert response.status == 200
        assert response.headers["docker-content-digest"] == child["digest"]


def test_artifact_is_listed_as_referrer(daemon: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", seed=3)
    push(image, daemon, "team/signed:v1")
    artifact = build_artifact(image.path, image)
    push(artifact, daemon, "team/signed:sig")

    response = daemon.request("GET", f"/v2/team/signed/referrers/{image.digest}")
    assert response.status == 200
    referrers = response.json()["manifests"]
    assert [r["digest"] for r in referrers] == [artifact.digest]
    assert referrers[0]["artifactType"] == "application/vnd.example.signature.v1"
    filtered = daemon.request("GET", f"/v2/team/signed/referrers/{image.digest}?artifactType=other/type")
    assert filtered.json()["manifests"] == []
    assert filtered.headers["oci-filters-applied"] == "artifactType"


def test_list_tags_and_delete(daemon: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", seed=4)
    for tag in ("v1", "v2", "latest"):
        push(image, daemon, f"team/tags:{tag}")
    listed = json.loads(skopeo("list-tags", NO_TLS, f"docker://{daemon.host}/team/tags").stdout)
    assert listed["Tags"] == ["latest", "v1", "v2"]

    skopeo("delete", NO_TLS, f"docker://{daemon.host}/team/tags:v2")
    gone = skopeo_may_fail("inspect", NO_TLS, f"docker://{daemon.host}/team/tags:v2")
    assert gone.returncode != 0
    # skopeo deletes by digest, which removes the revision and every tag pointing at it
    assert daemon.request("GET", "/v2/team/tags/manifests/v1").status == 404


@pytest.mark.slow
def test_image_with_200_mib_layer(daemon: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "big", layer_sizes=(200 * 1024 * 1024,), seed=5)
    remote = push(image, daemon, "team/big:big")
    skopeo("copy", "--src-tls-verify=false", remote, f"oci:{tmp_path / 'back'}:big")
    assert manifest_digest(f"oci:{tmp_path / 'back'}:big") == image.digest
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        copy = tmp_path / "back" / "blobs" / "sha256" / blob.name
        assert copy.stat().st_size == blob.stat().st_size
