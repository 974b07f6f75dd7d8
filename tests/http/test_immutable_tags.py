"""Immutable tags: a tag's first push wins, unless an exclusion or the repository says
otherwise. Over HTTP bytes to the application in memory."""

from __future__ import annotations

import json

from tests.daemon import Client
from tests.inmemory import InMemoryDaemon

INDEX = "application/vnd.oci.image.index.v1+json"


def index_manifest(marker: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [],
                       "annotations": {"marker": marker}}).encode()


def put_tag(daemon: Client, namespace: str, tag: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    response = daemon.request("PUT", f"/v2/{namespace}/manifests/{tag}", body,
                              {"Content-Type": INDEX, **(headers or {})})
    return response.status


def test_immutable_tags_allow_first_push_and_same_digest_only() -> None:
    daemon = InMemoryDaemon("""
[global]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]
[repository."apps"]
[repository."scratch"]
immutable_tags = false
""")
    first, second = index_manifest("one"), index_manifest("two")
    assert put_tag(daemon, "apps/web", "1.0", first) == 201
    assert put_tag(daemon, "apps/web", "1.0", first) == 201, "re-pushing the same digest is idempotent"
    refused = daemon.request("PUT", "/v2/apps/web/manifests/1.0", second, {"Content-Type": INDEX})
    assert refused.status == 409
    assert refused.error_codes == ["TAG_IMMUTABLE"]
    assert daemon.request("GET", "/v2/apps/web/manifests/1.0").body == first
    assert put_tag(daemon, "apps/web", "latest", first) == 201
    assert put_tag(daemon, "apps/web", "latest", second) == 201, "excluded tags stay mutable"
    assert put_tag(daemon, "scratch/x", "1.0", first) == 201
    assert put_tag(daemon, "scratch/x", "1.0", second) == 201, "the repository turned immutability off"


def test_repository_exclusions_replace_the_global_list() -> None:
    daemon = InMemoryDaemon("""
[global]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]
[repository."apps"]
immutable_tags_exclusions = ["^rc-"]
""")
    assert put_tag(daemon, "apps/a", "latest", index_manifest("1")) == 201
    assert put_tag(daemon, "apps/a", "latest", index_manifest("2")) == 409
    assert put_tag(daemon, "apps/a", "rc-1", index_manifest("1")) == 201
    assert put_tag(daemon, "apps/a", "rc-1", index_manifest("2")) == 201
