"""The scale benchmark's store generator (``bench/scale_store.py``) writes stores that angosd
and distribution (Debian's ``docker-registry``) both serve as if the content had been pushed:
the same repositories, tags, manifest bytes and blobs, and angosd's referrers; and that
``angosd scrub`` finds nothing to repair."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.daemon import REPO, Daemon
from tests.integration.upstreams import DockerRegistry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def scale_store() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_store", os.path.join(REPO, "bench", "scale_store.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_store"] = module
    spec.loader.exec_module(module)
    return module


def get(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def walk(url: str, path: str, key: str) -> list[Any]:
    """Every item of a paginated listing, following ``Link`` headers."""
    items: list[Any] = []
    next_path: str | None = path
    while next_path is not None:
        _status, headers, body = get(url + next_path)
        items += json.loads(body)[key] or []
        link = headers.get("Link")
        next_path = link[1:link.index(">")] if link else None
    return items


def expected_names(summary: Any) -> list[str]:
    others = [f"org{i % summary.groups:03d}/app{i:05d}" for i in range(summary.repositories - 2)]
    return sorted([summary.big, summary.signed, *others])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("scale")
    summary = scale_store().generate(str(out), tags=90, repos=12, big_tags=30, referrers=7, groups=3)
    return out, summary


def check_served(url: str, summary: Any, referrers: bool) -> None:
    assert walk(url, "/v2/_catalog?n=5", "repositories") == expected_names(summary)
    tags = walk(url, f"/v2/{summary.big}/tags/list?n=7", "tags")
    if not referrers:
        tags.sort()  # distribution 2.8 ignores n and lists tags in directory order
    assert tags == [f"v{n:05d}" for n in range(summary.big_tags)]
    assert len(summary.samples) >= 3
    for namespace, tag, digest, layer in summary.samples:
        for reference in (tag, f"sha256:{digest}"):
            status, headers, body = get(f"{url}/v2/{namespace}/manifests/{reference}", accept=OCI_MANIFEST)
            assert status == 200
            assert headers["Docker-Content-Digest"] == f"sha256:{digest}"
            assert hashlib.sha256(body).hexdigest() == digest
            assert json.loads(body)["layers"][-1]["digest"] == f"sha256:{layer}"
        status, headers, _ = get(f"{url}/v2/{namespace}/blobs/sha256:{layer}", method="HEAD")
        assert status == 200
        assert int(headers["Content-Length"]) > 0
    if referrers:
        _status, _headers, body = get(f"{url}/v2/{summary.signed}/referrers/{summary.subject}")
        manifests = json.loads(body)["manifests"]
        assert len(manifests) == summary.referrers
        assert {m["artifactType"] for m in manifests} == {"application/vnd.example.signature.v1+json"}
        # the tags' back-references are written as a push writes them
        revisions = walk(url, f"/v2/_ext/{summary.big}/_revisions?n=2", "revisions")
        assert sorted(t for r in revisions for t in r["tags"]) == [f"v{n:05d}" for n in range(summary.big_tags)]


def test_angosd_serves_the_generated_store(store: tuple[Path, Any], tmp_path: Path) -> None:
    out, summary = store
    scrub = subprocess.run([sys.executable, "-m", "angosd", "scrub", "--dry-run", "--root", str(out / "angosd")],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, check=True)
    assert f"{summary.tags} tags: 0 to repair, 0 to quarantine, 0 to clean up" in scrub.stdout, scrub.stdout
    daemon = Daemon(str(tmp_path / "daemon"), str(out / "angosd")).start()
    try:
        check_served(daemon.url, summary, referrers=True)
    finally:
        daemon.stop()


def test_distribution_serves_the_generated_store(store: tuple[Path, Any], tmp_path: Path) -> None:
    out, summary = store
    registry = DockerRegistry(tmp_path / "distribution")
    os.rmdir(registry.directory / "data")
    os.symlink(out / "distribution", registry.directory / "data")
    registry.start()
    try:
        check_served(registry.url, summary, referrers=False)
    finally:
        registry.stop()
