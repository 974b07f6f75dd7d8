"""Self-check of the image-layout builders in ``images.py``, without a registry.

Every layout built is copied by skopeo to another OCI layout and the copy's
raw manifest must be byte-identical to the source (hence same digest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.images import (
    EMPTY_JSON_DIGEST,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_EMPTY,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    build_artifact,
    build_image,
    build_index,
    digest_of_file,
    inspect_raw,
    manifest_digest,
    skopeo,
    skopeo_may_fail,
)

MiB = 1 << 20


def _blob(root: str | Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (Path(root) / "blobs" / algorithm / hexdigest).read_bytes()


def _tags(root: str | Path) -> dict[str, str]:
    index = json.loads((Path(root) / "index.json").read_text())
    return {d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"] for d in index["manifests"]}


def test_image_layout_skeleton(tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), layer_sizes=(4096, 10_000))
    assert json.loads((tmp_path / "src" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert _tags(image.path) == {"v1": image.digest}
    manifest = json.loads(_blob(image.path, image.digest))
    assert manifest["mediaType"] == image.media_type == MEDIA_TYPE_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MEDIA_TYPE_LAYER_GZIP] * 2
    # Every descriptor matches its blob (digest and size).
    for d in [{"digest": image.digest}, manifest["config"], *manifest["layers"]]:
        path = image.blob_path(d["digest"])
        assert digest_of_file(path) == d["digest"]
        assert "size" not in d or os.path.getsize(path) == d["size"]
    config = json.loads(_blob(image.path, manifest["config"]["digest"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(config["rootfs"]["diff_ids"]) == 2


def test_images_are_deterministic_and_seeded(tmp_path: Path) -> None:
    a = build_image(str(tmp_path / "a"), seed=1)
    b = build_image(str(tmp_path / "b"), seed=1)
    c = build_image(str(tmp_path / "c"), seed=2)
    assert a.digest == b.digest
    layers_a = json.loads(_blob(a.path, a.digest))["layers"]
    layers_c = json.loads(_blob(c.path, c.digest))["layers"]
    assert layers_a[0]["digest"] != layers_c[0]["digest"]
    # Re-tagging in one layout replaces the old entry instead of duplicating it.
    d = build_image(a.path, seed=3)
    assert _tags(a.path) == {"v1": d.digest}


def test_build_image_copies_identically(tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), layer_sizes=(4096, 100_000), seed=7)
    assert image.ref == f"oci:{tmp_path / 'src'}:v1"

    info = json.loads(skopeo("inspect", image.ref).stdout)
    assert info["Digest"] == image.digest
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert len(info["Layers"]) == 2

    dst = f"oci:{tmp_path / 'dst'}:v1"
    skopeo("copy", image.ref, dst)
    raw = inspect_raw(image.ref)
    assert raw == _blob(image.path, image.digest)
    assert inspect_raw(dst) == raw
    assert manifest_digest(dst) == image.digest


def test_build_index_copies_identically(tmp_path: Path) -> None:
    platforms = (("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x"))
    index = build_index(str(tmp_path / "src"), platforms=platforms, seed=3)
    assert index.media_type == MEDIA_TYPE_INDEX
    assert _tags(index.path) == {"multi": index.digest}
    parsed = json.loads(_blob(index.path, index.digest))
    assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in parsed["manifests"]] == [*platforms]
    assert len({m["digest"] for m in parsed["manifests"]}) == len(platforms)

    dst_dir = tmp_path / "dst"
    skopeo("copy", "--all", index.ref, f"oci:{dst_dir}:multi")
    raw = inspect_raw(index.ref)
    assert raw == _blob(index.path, index.digest)
    assert inspect_raw(f"oci:{dst_dir}:multi") == raw
    assert manifest_digest(f"oci:{dst_dir}:multi") == index.digest
    for m in parsed["manifests"]:  # --all copied every child manifest unchanged
        assert _blob(dst_dir, m["digest"]) == _blob(index.path, m["digest"])
    # Platform selection works on the layout too.
    info = json.loads(skopeo("--override-arch", "arm64", "inspect", index.ref).stdout)
    assert (info["Digest"], info["Architecture"]) == (index.digest, "arm64")
    arm64 = json.loads(_blob(index.path, parsed["manifests"][1]["digest"]))
    assert info["Layers"] == [layer["digest"] for layer in arm64["layers"]]


def test_build_artifact_refers_to_subject(tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"))
    sig = build_artifact(image.path, image)
    assert sig.path == image.path and sig.ref == f"oci:{image.path}:sig"
    assert _tags(image.path) == {"v1": image.digest, "sig": sig.digest}

    raw = inspect_raw(sig.ref)
    assert raw == _blob(sig.path, sig.digest)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["artifactType"] == "application/vnd.example.signature.v1"
    assert manifest["config"] == {
        "mediaType": MEDIA_TYPE_EMPTY,
        "digest": EMPTY_JSON_DIGEST,
        "size": 2,
    }
    assert _blob(sig.path, EMPTY_JSON_DIGEST) == b"{}"
    assert len(manifest["layers"]) == 1
    assert manifest["subject"] == {
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": image.digest,
        "size": len(_blob(image.path, image.digest)),
    }
    # The subject is untouched, and skopeo can copy the artifact as-is too.
    assert manifest_digest(image.ref) == image.digest
    dst = f"oci:{tmp_path / 'dst'}:sig"
    skopeo("copy", sig.ref, dst)
    assert inspect_raw(dst) == raw


def test_skopeo_helpers_report_failures(tmp_path: Path) -> None:
    missing = f"oci:{tmp_path / 'nowhere'}:v1"
    proc = skopeo_may_fail("inspect", "--raw", missing)
    assert proc.returncode != 0 and proc.stderr
    with pytest.raises(AssertionError, match="--insecure-policy inspect"):
        skopeo("inspect", missing)


_BIG_BUILD = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from images import build_image
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = build_image(sys.argv[2], "big", layer_sizes=(int(sys.argv[3]),), seed=42)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"digest": image.digest, "before_kib": before, "after_kib": after}))
    """
)


@pytest.mark.slow
def test_big_layer_is_streamed(tmp_path: Path) -> None:
    """A 200 MiB layer is built with bounded memory.

    The build runs in a fresh interpreter so that its ru_maxrss (peak RSS, in
    KiB on Linux) is not masked by whatever pytest itself peaked at before.
    """
    size = 200 * MiB
    root = tmp_path / "big"
    proc = subprocess.run(
        [sys.executable, "-c", _BIG_BUILD, os.path.dirname(__file__), str(root), str(size)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(proc.stdout)
    peak_delta = (result["after_kib"] - result["before_kib"]) * 1024
    assert peak_delta < 32 * MiB, f"building a 200 MiB layer grew peak RSS by {peak_delta} B"

    manifest = json.loads(_blob(root, result["digest"]))
    (layer,) = manifest["layers"]
    layer_path = root / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
    # Random data does not compress: the gzip'd tar is a bit bigger than its file.
    assert size < layer["size"] == layer_path.stat().st_size < size + MiB
    assert digest_of_file(str(layer_path)) == layer["digest"]
    assert not [p for p in (root / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    info = json.loads(skopeo("inspect", f"oci:{root}:big").stdout)
    assert info["Layers"] == [layer["digest"]]
