"""A chunked push whose requests land on different workers (two applications on one
filesystem store, as the workers of one daemon are): the hash state travels with the
upload, so completion never reads the bytes again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from angosd.registry import paths
from tests.inmemory import InMemoryDaemon

NAMESPACE = "team/app"


def digests(daemon: InMemoryDaemon) -> dict[str, float]:
    """``angosd_upload_digests_total`` of ``daemon``, by ``how``."""
    found = {}
    for family in text_string_to_metric_families(daemon.request("GET", "/metrics").body.decode()):
        for sample in family.samples:
            if sample.name == "angosd_upload_digests_total":
                found[sample.labels["how"]] = sample.value
    return found


def push_across(workers: list[InMemoryDaemon], chunks: list[bytes], lose_state: Path | None = None) -> str:
    """POST on the first worker, each PATCH on the next one in turn, PUT on the next;
    with ``lose_state`` (the store root) the saved state is removed before the PUT."""
    turn = iter(workers * (len(chunks) + 2))
    started = next(turn).request("POST", f"/v2/{NAMESPACE}/blobs/uploads/")
    assert started.status == 202, started.body
    location = started.headers["location"]
    offset = 0
    for chunk in chunks:
        headers = {"Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Content-Type": "application/octet-stream"}
        response = next(turn).request("PATCH", location, chunk, headers)
        assert response.status == 202, response.body
        offset += len(chunk)
    if lose_state is not None:
        session = location.rsplit("/", 1)[1]
        os.unlink(lose_state / paths.upload_hash_state(NAMESPACE, session))
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
    done = next(turn).request("PUT", f"{location}?digest={digest}")
    assert done.status == 201, done.body
    return digest


def test_chunks_on_alternating_workers_complete_without_rehashing(tmp_path: Path) -> None:
    workers = [InMemoryDaemon(root=str(tmp_path)), InMemoryDaemon(root=str(tmp_path))]
    chunks = [os.urandom(300_000), os.urandom(1), os.urandom(70_001), os.urandom(5)]
    digest = push_across(workers, chunks)
    # 1 POST + 4 PATCHes: the PUT lands on the second worker, which wrote chunks 1 and 3 only.
    assert digests(workers[1]) == {"resumed": 1.0, "rehashed": 0.0}
    assert digests(workers[0]) == {"resumed": 0.0, "rehashed": 0.0}
    assert workers[0].request("GET", f"/v2/{NAMESPACE}/blobs/{digest}").body == b"".join(chunks)


def test_without_the_saved_state_completion_rehashes(tmp_path: Path) -> None:
    workers = [InMemoryDaemon(root=str(tmp_path)), InMemoryDaemon(root=str(tmp_path))]
    chunks = [os.urandom(1000), os.urandom(2000)]
    digest = push_across(workers, chunks, lose_state=tmp_path)
    # 1 POST + 2 PATCHes: the PUT lands on the second worker, which wrote only the first chunk.
    assert digests(workers[1]) == {"resumed": 0.0, "rehashed": 1.0}
    assert digests(workers[0]) == {"resumed": 0.0, "rehashed": 0.0}
    assert workers[0].request("GET", f"/v2/{NAMESPACE}/blobs/{digest}").body == b"".join(chunks)
