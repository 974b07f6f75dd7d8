"""The extension API (``/v2/_ext/``) against content pushed by skopeo to a real daemon.

Field names and JSON types are checked exactly as ``spec/API.md`` states them; the
extra fields angosd adds (``children``, ``platform``, ``referrers``...) are checked
where the UI relies on them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from angosd.auth.basic import hash_password
from tests.daemon import Daemon
from tests.integration.images import Layout, build_artifact, build_image, build_index, skopeo

CONFIG = """
[global]
update_pull_time = true

[repository."library"]
immutable_tags = true

[repository."team"]

[repository."team/special"]

[repository."mirror"]
[[repository."mirror".upstream]]
url = "http://127.0.0.1:9"
"""

#: Longest wait for the pull-time flush (it runs every 3 s).
FLUSH_WAIT = 15.0


def push(daemon: Daemon, layout: Layout, target: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, layout.ref, f"docker://{daemon.host}/{target}")


def get_json(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> Any:
    response = daemon.request("GET", path, headers=headers)
    assert response.status == 200, (path, response.status, response.body[:300])
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_fields(item: dict[str, Any], fields: dict[str, type | tuple[type, ...]]) -> None:
    """Every field of API.md is present with exactly its JSON type (bool is not an int)."""
    for name, kind in fields.items():
        assert name in item, f"{name} missing from {item}"
        value = item[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if bool not in kinds:
            assert not isinstance(value, bool), f"{name} is a bool in {item}"
        assert isinstance(value, kinds), f"{name}={value!r} is not {kinds} in {item}"


REPOSITORY_FIELDS = {"name": str, "namespaces": int, "is_pull_through": bool, "immutable_tags": bool}
NAMESPACE_FIELDS = {"name": str, "manifests": int, "uploads": int}
REVISION_FIELDS = {"digest": str, "media_type": str, "tags": list, "parent": (str, type(None)),
                   "pushed_at": int, "last_pulled_at": (int, type(None))}
UPLOAD_FIELDS = {"uuid": str, "size": int, "started_at": int}


@dataclass(frozen=True)
class Content:
    daemon: Daemon
    image: Layout
    index: Layout
    artifact: Layout
    children: tuple[str, ...]
    uploads: tuple[str, ...]
    started: int


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Content]:
    base = tmp_path_factory.mktemp("extensions")
    config = base / "angosd.toml"
    config.write_text(CONFIG)
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()
    try:
        src = str(base / "src")
        started = int(time.time())
        image = build_image(src, "v1", seed=1)
        push(daemon, image, "library/alpine:3.19")
        push(daemon, image, "library/alpine:latest")
        artifact = build_artifact(src, image, "sig")
        push(daemon, artifact, "library/alpine:sig")
        index = build_index(src, "multi", seed=2)
        push(daemon, index, "library/multi:1.0", "--all")
        push(daemon, build_image(src, "app", seed=3), "team/app:v1")
        push(daemon, build_image(src, "tool", seed=4), "team/special/tool:v1")
        uploads = []
        for namespace, body in (("team/app", b""), ("team/app", b"x" * 1000), ("team/uploading", b"")):
            started_upload = daemon.request("POST", f"/v2/{namespace}/blobs/uploads/")
            assert started_upload.status == 202
            location = started_upload.headers["location"]
            if body:
                patched = daemon.request("PATCH", location, body, {"Content-Type": "application/octet-stream"})
                assert patched.status == 202
            uploads.append(location.rsplit("/", 1)[-1])
        children = tuple(d["digest"] for d in json.loads(Path(index.blob_path()).read_bytes())["manifests"])
        yield Content(daemon, image, index, artifact, children, tuple(uploads), started)
    finally:
        daemon.stop()


def revisions_of(daemon: Daemon, namespace: str) -> dict[str, dict[str, Any]]:
    document = get_json(daemon, f"/v2/_ext/{namespace}/_revisions")
    assert set(document) >= {"revisions"}
    revisions = document["revisions"]
    for revision in revisions:
        assert_fields(revision, REVISION_FIELDS)
        assert all(isinstance(tag, str) for tag in revision["tags"])
    return {revision["digest"]: revision for revision in revisions}


# -- repositories and namespaces ------------------------------------------------------------------


def test_repositories(content: Content) -> None:
    document = get_json(content.daemon, "/v2/_ext/_repositories")
    repositories = document["repositories"]
    for repository in repositories:
        assert_fields(repository, REPOSITORY_FIELDS)
    summary = {r["name"]: (r["namespaces"], r["is_pull_through"], r["immutable_tags"]) for r in repositories}
    assert [r["name"] for r in repositories] == ["library", "mirror", "team", "team/special"]
    assert summary == {
        "library": (2, False, True),
        "mirror": (0, True, False),
        "team": (2, False, False),  # team/app and team/uploading; team/special/tool is team/special's
        "team/special": (1, False, False),
    }


def test_namespaces(content: Content) -> None:
    library = get_json(content.daemon, "/v2/_ext/library/_namespaces")
    for namespace in library["namespaces"]:
        assert_fields(namespace, NAMESPACE_FIELDS)
    assert [(n["name"], n["manifests"], n["uploads"]) for n in library["namespaces"]] == [
        ("library/alpine", 2, 0), ("library/multi", 3, 0)]
    team = get_json(content.daemon, "/v2/_ext/team/_namespaces")
    assert [(n["name"], n["manifests"], n["uploads"]) for n in team["namespaces"]] == [
        ("team/app", 1, 2), ("team/uploading", 0, 1)]
    special = get_json(content.daemon, "/v2/_ext/team/special/_namespaces")
    assert [n["name"] for n in special["namespaces"]] == ["team/special/tool"]
    assert get_json(content.daemon, "/v2/_ext/mirror/_namespaces")["namespaces"] == []


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v2/_ext/nothere/_namespaces", 404, "NAME_UNKNOWN"),
    ("/v2/_ext/library/alpine/_namespaces", 404, "NAME_UNKNOWN"),  # a namespace, not a repository
    ("/v2/_ext/Bad..Name/_namespaces", 400, "NAME_INVALID"),
    ("/v2/_ext/library/nothing/_revisions", 404, "NAME_UNKNOWN"),
    ("/v2/_ext/outside/x/_revisions", 404, "NAME_UNKNOWN"),  # not in any repository
    ("/v2/_ext/outside/x/_uploads", 404, "NAME_UNKNOWN"),
])
def test_unknown_names(content: Content, path: str, status: int, code: str) -> None:
    response = content.daemon.request("GET", path)
    assert response.status == status
    assert response.error_codes == [code]


# -- revisions ---------------------------------------------------------------------------------------


def test_revisions_of_an_image_with_a_referrer(content: Content) -> None:
    revisions = revisions_of(content.daemon, "library/alpine")
    assert set(revisions) == {content.image.digest, content.artifact.digest}
    image = revisions[content.image.digest]
    assert image["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert image["tags"] == ["3.19", "latest"]
    assert image["parent"] is None
    assert content.started - 5 <= image["pushed_at"] <= time.time() + 5
    assert image["artifact_type"] is None
    assert [r["digest"] for r in image["referrers"]] == [content.artifact.digest]
    assert image["referrers"][0]["artifact_type"] == "application/vnd.example.signature.v1"
    artifact = revisions[content.artifact.digest]
    assert artifact["tags"] == ["sig"]
    assert artifact["parent"] is None
    assert artifact["subject"] == content.image.digest
    assert artifact["artifact_type"] == "application/vnd.example.signature.v1"


def test_revisions_of_an_index(content: Content) -> None:
    revisions = revisions_of(content.daemon, "library/multi")
    assert set(revisions) == {content.index.digest, *content.children}
    index = revisions[content.index.digest]
    assert index["media_type"] == "application/vnd.oci.image.index.v1+json"
    assert index["tags"] == ["1.0"]
    assert index["parent"] is None
    assert [c["digest"] for c in index["children"]] == list(content.children)
    platforms = set()
    for child in content.children:
        assert revisions[child]["parent"] == content.index.digest
        assert revisions[child]["tags"] == []
        platform = revisions[child]["platform"]
        platforms.add(f"{platform['os']}/{platform['architecture']}")
    assert platforms == {"linux/amd64", "linux/arm64"}


# -- uploads -------------------------------------------------------------------------------------------


def test_uploads(content: Content) -> None:
    document = get_json(content.daemon, "/v2/_ext/team/app/_uploads")
    uploads = document["uploads"]
    for upload in uploads:
        assert_fields(upload, UPLOAD_FIELDS)
        assert content.started - 5 <= upload["started_at"] <= time.time() + 5
    assert sorted((u["uuid"], u["size"]) for u in uploads) == sorted(
        [(content.uploads[0], 0), (content.uploads[1], 1000)])
    assert get_json(content.daemon, "/v2/_ext/library/alpine/_uploads")["uploads"] == []


def test_cancelled_upload_disappears(content: Content) -> None:
    daemon = content.daemon
    location = daemon.request("POST", "/v2/team/cancelled/blobs/uploads/").headers["location"]
    uuid = location.rsplit("/", 1)[-1]
    assert [u["uuid"] for u in get_json(daemon, "/v2/_ext/team/cancelled/_uploads")["uploads"]] == [uuid]
    assert daemon.request("DELETE", location).status == 204
    assert get_json(daemon, "/v2/_ext/team/cancelled/_uploads")["uploads"] == []


# -- pull times ----------------------------------------------------------------------------------------


def pull_record(daemon: Daemon, namespace: str, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":")
    return Path(daemon.root) / "repositories" / namespace / "_manifests" / "pulls" / algorithm / hex_digest


def test_pull_time_recorded_on_get_and_flushed(content: Content, tmp_path: Path) -> None:
    daemon = content.daemon
    image = build_image(str(tmp_path / "src"), "pulled", seed=11)
    push(daemon, image, "library/pulled:v1")
    assert revisions_of(daemon, "library/pulled")[image.digest]["last_pulled_at"] is None

    assert daemon.request("HEAD", "/v2/library/pulled/manifests/v1").status == 200  # HEAD is not a pull
    assert revisions_of(daemon, "library/pulled")[image.digest]["last_pulled_at"] is None

    before = int(time.time())
    assert daemon.request("GET", "/v2/library/pulled/manifests/v1").status == 200
    pulled = revisions_of(daemon, "library/pulled")[image.digest]["last_pulled_at"]
    assert isinstance(pulled, int) and before - 1 <= pulled <= time.time() + 1  # seen at once, from memory

    record = pull_record(daemon, "library/pulled", image.digest)
    deadline = time.monotonic() + FLUSH_WAIT
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.exists(), f"pull time not flushed within {FLUSH_WAIT}s"
    assert json.loads(record.read_bytes()) == {"last_pulled_at": pulled}
    assert revisions_of(daemon, "library/pulled")[image.digest]["last_pulled_at"] == pulled


def test_pull_time_survives_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "angosd.toml"
    config.write_text("[global]\nupdate_pull_time = true\n")
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),)).start()
    try:
        image = build_image(str(tmp_path / "src"), "v1", seed=12)
        push(daemon, image, "team/restart:v1")
        assert daemon.request("GET", f"/v2/team/restart/manifests/{image.digest}").status == 200
        pulled = revisions_of(daemon, "team/restart")[image.digest]["last_pulled_at"]
        assert isinstance(pulled, int)
    finally:
        daemon.stop()  # SIGTERM: the last flush runs while stopping
    assert json.loads(pull_record(daemon, "team/restart", image.digest).read_bytes()) == {"last_pulled_at": pulled}
    daemon.start()
    try:
        assert revisions_of(daemon, "team/restart")[image.digest]["last_pulled_at"] == pulled
    finally:
        daemon.stop()


def test_pull_time_not_recorded_when_disabled(daemon: Daemon, tmp_path: Path) -> None:
    image = build_image(str(tmp_path / "src"), "v1", seed=13)
    push(daemon, image, "plain/app:v1")
    assert daemon.request("GET", "/v2/plain/app/manifests/v1").status == 200
    assert revisions_of(daemon, "plain/app")[image.digest]["last_pulled_at"] is None


# -- without configured repositories, and under a policy ---------------------------------------------


def test_without_repositories_first_components_stand_for_repositories(daemon: Daemon, tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    push(daemon, build_image(src, "a", seed=14), "acme/web:1")
    push(daemon, build_image(src, "b", seed=15), "acme/db/main:1")
    push(daemon, build_image(src, "c", seed=16), "solo:1")
    repositories = get_json(daemon, "/v2/_ext/_repositories")["repositories"]
    for repository in repositories:
        assert_fields(repository, REPOSITORY_FIELDS)
    assert [(r["name"], r["namespaces"]) for r in repositories] == [("acme", 2), ("solo", 1)]
    namespaces = get_json(daemon, "/v2/_ext/acme/_namespaces")["namespaces"]
    assert [n["name"] for n in namespaces] == ["acme/db/main", "acme/web"]
    assert [n["name"] for n in get_json(daemon, "/v2/_ext/acme/db/_namespaces")["namespaces"]] == ["acme/db/main"]
    assert daemon.request("GET", "/v2/_ext/nothing/_namespaces").status == 404


POLICY = """
[global.access_policy]
default = "deny"
rules = [
  "identity.username == 'admin'",
  "identity.username == 'viewer' && request.action != 'list-revisions'",
]

[auth.identity.admin]
username = "admin"
password = "{admin}"

[auth.identity.viewer]
username = "viewer"
password = "{viewer}"
"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_listings_are_policy_actions(tmp_path: Path) -> None:
    config = tmp_path / "angosd.toml"
    config.write_text(POLICY.format(admin=hash_password("admin-pass"), viewer=hash_password("viewer-pass")))
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),)).start()
    try:
        image = build_image(str(tmp_path / "src"), "v1", seed=17)
        push(daemon, image, "team/guarded:v1", "--dest-creds", "admin:admin-pass")
        admin, viewer = basic("admin", "admin-pass"), basic("viewer", "viewer-pass")
        paths = ["/v2/_ext/_repositories", "/v2/_ext/team/_namespaces", "/v2/_ext/team/guarded/_revisions",
                 "/v2/_ext/team/guarded/_uploads"]
        for path in paths:
            anonymous = daemon.request("GET", path)
            assert anonymous.status == 401, path
            assert anonymous.error_codes == ["UNAUTHORIZED"]
            assert anonymous.headers["www-authenticate"].startswith("Basic ")
            assert daemon.request("GET", path, headers=admin).status == 200, path
        denied = daemon.request("GET", "/v2/_ext/team/guarded/_revisions", headers=viewer)
        assert denied.status == 403
        assert denied.error_codes == ["DENIED"]
        for path in (p for p in paths if not p.endswith("_revisions")):
            assert daemon.request("GET", path, headers=viewer).status == 200, path
    finally:
        daemon.stop()
