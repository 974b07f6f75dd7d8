"""A client that dies in the middle of an upload, through the real daemon: the request is
counted and logged as aborted (499) and nothing stays in flight.

The rest of the metrics and access-log tests run in memory (`tests.http.test_metrics_and_logs`);
this one needs a real socket that is closed mid-body.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from angosd.auth.basic import hash_password
from tests.daemon import Daemon
from tests.http.test_metrics_and_logs import CONFIG, LAYER, NAMESPACE, PASSWORD, access_lines, metric_samples, value


def start(base: Path, access_log: bool = True) -> Daemon:
    config = base / "angosd.toml"
    config.write_text(CONFIG.format(access_log=str(access_log).lower(), hash=hash_password(PASSWORD)))
    return Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()


def test_a_client_that_disconnects_mid_upload_leaves_nothing_in_flight(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        location = daemon.request("POST", f"/v2/{NAMESPACE}/blobs/uploads/").headers["location"]
        part = LAYER[:100_000]
        with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
            raw.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {len(LAYER)}\r\n\r\n").encode() + part)
            deadline = time.monotonic() + 10
            while daemon.request("GET", location).headers.get("range") != f"0-{len(part) - 1}":
                assert time.monotonic() < deadline, "the part never reached the session"
                time.sleep(0.02)
        deadline = time.monotonic() + 10
        while True:
            samples = metric_samples(daemon.request("GET", "/metrics").body.decode())
            if value(samples, "angosd_http_requests_in_flight") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert value(samples, "angosd_http_requests_in_flight") == 1  # the scrape itself
        assert value(samples, "angosd_uploads_in_progress") == 0
        assert value(samples, "angosd_http_requests_total", action="update-upload", method="PATCH", status="499") == 1
        assert value(samples, "angosd_http_request_bytes_total", action="update-upload") == len(part)
        resumed = daemon.request("PATCH", location, LAYER[len(part):],
                                 {"Content-Type": "application/octet-stream",
                                  "Content-Range": f"{len(part)}-{len(LAYER) - 1}"})
        assert resumed.status == 202
    finally:
        daemon.stop()
    aborted = [entry for entry in access_lines(daemon.log()) if entry["status"] == 499]
    assert len(aborted) == 1
    assert (aborted[0]["action"], aborted[0]["aborted"], aborted[0]["bytes_received"]) == \
        ("update-upload", True, len(part))


def test_each_thread_pool_reports_its_queue_and_busy_threads(tmp_path: Path) -> None:
    """The pools are built by the daemon's service tree (not by the in-memory application)."""
    daemon = start(tmp_path)
    try:
        samples = metric_samples(daemon.request("GET", "/metrics").body.decode())
    finally:
        daemon.stop()
    for pool in ("io", "cpu"):
        for name in ("angosd_thread_pool_queued_jobs", "angosd_thread_pool_active_threads"):
            assert (name, frozenset({("pool", pool)})) in samples, (name, pool)
    assert value(samples, "angosd_thread_pool_queued_jobs", pool="io") == 0  # nothing waits at rest
    assert value(samples, "angosd_thread_pool_queued_jobs", pool="cpu") == 0
