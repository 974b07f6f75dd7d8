"""The hash state of an upload across real worker processes and a killed daemon: chunks
sent alternately to each of two workers, then the whole daemon killed (SIGKILL) and
started again, then the completion: the digest is resumed, never rehashed, and right."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.daemon import Daemon
from tests.integration.ocihelpers import payload
from tests.integration.test_workers import Keep, one_per_worker, samples, start

NAMESPACE = "team/resumed"


def digests(daemon: Daemon) -> dict[str, float]:
    scrape = daemon.request("GET", "/metrics")
    assert scrape.status == 200, scrape
    return {dict(labels)["how"]: value for (name, labels), value in samples(scrape.body.decode()).items()
            if name == "angosd_upload_digests_total"}


def patch(keep: Keep | Daemon, location: str, offset: int, chunk: bytes) -> str:
    headers = {"Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Content-Type": "application/octet-stream"}
    response = keep.request("PATCH", location, chunk, headers)
    assert response.status == 202, response
    return response.headers["location"]


def test_chunks_through_both_workers_and_a_killed_daemon_complete_without_rehashing(tmp_path: Path) -> None:
    data = payload(3 * 1024 * 1024 + 17, seed=5)
    pieces = [data[:1_000_001], data[1_000_001:2_500_000], data[2_500_000:3_000_000], data[3_000_000:]]
    daemon = start(tmp_path)
    try:
        workers = one_per_worker(daemon)
        started = workers[0].request("POST", f"/v2/{NAMESPACE}/blobs/uploads/")
        assert started.status == 202, started
        location, offset = started.headers["location"], 0
        for index, piece in enumerate(pieces[:3]):
            location = patch(workers[(index + 1) % 2], location, offset, piece)
            offset += len(piece)
        for keep in workers:
            keep.close()
    finally:
        daemon.kill()
    daemon = start(tmp_path)
    try:
        location = patch(daemon, location, offset, pieces[3])
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = daemon.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")
        assert done.status == 201, done
        assert daemon.request("GET", f"/v2/{NAMESPACE}/blobs/{digest}").body == data
        assert digests(daemon) == {"resumed": 1.0, "rehashed": 0.0}
    finally:
        daemon.stop()
