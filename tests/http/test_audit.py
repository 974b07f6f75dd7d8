"""The audit log in memory: every state change and every denial of the API (and of the web
interface) is exactly one line; reads and login challenges are none."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from angosd.auth.basic import hash_password
from angosd.config import AuditConfig
from angosd.observability.audit import AuditLog, verify_lines
from tests.inmemory import EPOCH, InMemoryDaemon
from tests.integration.ocihelpers import digest, image_manifest, payload

CONFIG = """
[global]
trusted_proxies = ["127.0.0.0/8"]

[global.access_policy]
default = "deny"
rules = ["identity.username == 'ci'",
         "identity.username == 'reader' && !(request.action in ['put-manifest', 'delete-manifest', 'start-upload'])"]

[auth.identity.ci]
username = "ci"
password = "{ci}"

[auth.identity.reader]
username = "reader"
password = "{reader}"
"""
MANIFEST = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


CI = basic("ci", "ci-pass")
READER = basic("reader", "reader-pass")


class Audited:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "audit" / "audit.log"
        self.log = AuditLog(AuditConfig(path=str(self.path), hash_chain=True, fsync="never"), lambda: EPOCH + 0.5)
        self.daemon = InMemoryDaemon(CONFIG.format(ci=hash_password("ci-pass"), reader=hash_password("reader-pass")),
                                     audit=self.log)
        self.seen = 0

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                expect: int | None = None) -> Any:
        response = self.daemon.request(method, path, body, headers)
        if expect is not None:
            assert response.status == expect, (method, path, response.status, response.body)
        return response

    def new_lines(self) -> list[dict[str, Any]]:
        lines = self.path.read_bytes().splitlines() if self.path.exists() else []
        fresh, self.seen = lines[self.seen:], len(lines)
        return [json.loads(line) for line in fresh]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    state = Audited(tmp_path_factory.mktemp("audited"))
    yield state
    state.log.close()


def only(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(lines) == 1, lines
    return lines[0]


def test_monolithic_blob_push_is_one_line(audited: Audited) -> None:
    data = payload(500, 1)
    audited.request("POST", f"/v2/audit/app/blobs/uploads/?digest={digest(data)}", data, CI, expect=201)
    line = only(audited.new_lines())
    assert (line["via"], line["action"], line["result"], line["status"]) == ("api", "start-upload", "success", 201)
    assert line["identity"] == {"kind": "basic", "id": "ci"}
    assert (line["repository"], line["digest"], line["source"]) == ("audit/app", digest(data), "127.0.0.1")
    assert line["time"] == "2026-01-01T00:00:00.500Z"


def test_chunked_upload_is_one_line_when_completed(audited: Audited) -> None:
    data = payload(700, 2)
    location = audited.request("POST", "/v2/audit/app/blobs/uploads/", None, CI, expect=202).headers["location"]
    assert audited.new_lines() == []
    location = audited.request("PATCH", location, data, {**CI, "Content-Type": "application/octet-stream"},
                               expect=202).headers["location"]
    assert audited.new_lines() == []
    separator = "&" if "?" in location else "?"
    audited.request("PUT", f"{location}{separator}digest={digest(data)}", None, CI, expect=201)
    line = only(audited.new_lines())
    assert (line["action"], line["digest"], line["result"]) == ("complete-upload", digest(data), "success")
    assert line["session"]


def test_mount_and_manifest_push_and_deletes(audited: Audited) -> None:
    config, layer = b'{"os":"linux"}', payload(900, 3)
    for blob in (config, layer):
        audited.request("POST", f"/v2/audit/src/blobs/uploads/?digest={digest(blob)}", blob, CI, expect=201)
    audited.new_lines()
    for blob in (config, layer):
        audited.request("POST", f"/v2/audit/dst/blobs/uploads/?mount={digest(blob)}&from=audit/src", None, CI,
                        expect=201)
    assert [(line["action"], line["digest"]) for line in audited.new_lines()] == [
        ("mount-blob", digest(config)), ("mount-blob", digest(layer))]
    body = image_manifest(config, [layer])
    audited.request("PUT", "/v2/audit/dst/manifests/v1", body, {**CI, **MANIFEST}, expect=201)
    line = only(audited.new_lines())
    assert (line["action"], line["reference"], line["digest"]) == ("put-manifest", "v1", digest(body))
    audited.request("GET", "/v2/audit/dst/manifests/v1", None, CI, expect=200)  # a read: nothing
    assert audited.new_lines() == []
    audited.request("DELETE", "/v2/audit/dst/manifests/v1", None, CI, expect=202)
    line = only(audited.new_lines())
    assert (line["action"], line["reference"], line["result"]) == ("delete-manifest", "v1", "success")
    audited.request("DELETE", f"/v2/audit/dst/manifests/{digest(body)}", None, {**CI, "X-Angosd-Browse": "1"},
                    expect=202)
    line = only(audited.new_lines())
    assert (line["via"], line["action"], line["reference"]) == ("ui", "delete-manifest", digest(body))


def test_cancelled_upload_is_one_line(audited: Audited) -> None:
    location = audited.request("POST", "/v2/audit/app/blobs/uploads/", None, CI, expect=202).headers["location"]
    audited.new_lines()
    audited.request("DELETE", location, None, CI, expect=204)
    line = only(audited.new_lines())
    assert (line["action"], line["result"]) == ("cancel-upload", "success")


def test_denials_are_one_line_each(audited: Audited) -> None:
    audited.request("PUT", "/v2/audit/app/manifests/v2", b"{}", {**READER, **MANIFEST}, expect=403)
    line = only(audited.new_lines())
    assert (line["action"], line["result"], line["status"]) == ("put-manifest", "denied", 403)
    assert line["identity"] == {"kind": "basic", "id": "reader"} and "reason" in line and "digest" not in line
    audited.request("PUT", "/v2/audit/app/manifests/v2", b"{}", {**basic("ci", "wrong"), **MANIFEST}, expect=401)
    line = only(audited.new_lines())
    assert (line["result"], line["identity"]) == ("unauthenticated", {"kind": "none"})
    audited.request("DELETE", "/v2/audit/app/manifests/v2", None, {"X-Forwarded-For": "203.0.113.9"}, expect=401)
    line = only(audited.new_lines())
    assert (line["result"], line["identity"], line["source"]) == ("unauthenticated", {"kind": "anonymous"},
                                                                   "203.0.113.9")


def test_reads_and_challenges_are_not_recorded(audited: Audited) -> None:
    audited.request("GET", "/v2/", None, None, expect=401)  # the login challenge of every client
    audited.request("GET", "/v2/", None, READER, expect=200)
    audited.request("GET", "/v2/audit/app/tags/list", None, READER)
    assert audited.new_lines() == []


def test_the_log_written_by_the_api_verifies(audited: Audited) -> None:
    verdict = verify_lines(audited.path.read_bytes().splitlines())
    assert verdict.problem is None and verdict.lines >= 10
    secrets = audited.path.read_text()
    assert "ci-pass" not in secrets and "reader-pass" not in secrets and "Basic " not in secrets
