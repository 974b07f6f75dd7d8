"""Abandoned upload sessions purged by the running daemon (``[global] upload_max_age_secs``):
by the single daemon, by the supervisor of two workers, and never with 0.

Passes run every quarter of the age, at least every second (`angosd.registry.expiry.interval_for`);
a pass removes a session started at least the age ago whose size the previous pass already saw.
So with ``AGE`` seconds an idle session goes between ``AGE + INTERVAL`` and ``AGE + 2 * INTERVAL``
seconds after its start, while one receiving a chunk more often than every ``INTERVAL`` stays.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import urlsplit

from angosd.registry.expiry import interval_for
from tests.daemon import Daemon, Response
from tests.integration.ocihelpers import assert_error, patch, payload, start_upload, wait_for

AGE = 8
INTERVAL = interval_for(AGE)  # 2 s
CHUNK_EVERY = 0.1  # seconds between two chunks of the session kept alive, far below INTERVAL


def write_config(base: Path, age: int) -> Path:
    path = base / "angosd.toml"
    path.write_text(f"[global]\nupload_max_age_secs = {age}\n")
    return path


def start(base: Path, config: Path, workers: int = 1) -> Daemon:
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),), workers=workers).start()
    if workers > 1:
        wait_for(lambda: f"all {workers} workers are ready" in daemon.log(), timeout=30)
    return daemon


def session_dir(base: Path, namespace: str, location: str) -> Path:
    """Where the store keeps the session ``location`` names."""
    return base / "store" / "repositories" / namespace / "_uploads" / urlsplit(location).path.rsplit("/", 1)[1]


def status(daemon: Daemon, location: str) -> Response:
    return daemon.request("GET", location)


class Feeder:
    """An upload session that receives a chunk each time `feed` is called."""

    def __init__(self, daemon: Daemon, namespace: str) -> None:
        self.daemon = daemon
        self.location = start_upload(daemon, namespace)
        self.sent = b""

    def feed(self) -> None:
        chunk = payload(64, seed=len(self.sent))
        response = patch(self.daemon, self.location, chunk, first=len(self.sent))
        assert response.status == 202, (response.status, response.body[:300])
        self.sent += chunk
        self.location = response.headers["location"]

    def feed_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.feed()
            time.sleep(CHUNK_EVERY)


def check_idle_purged_and_fed_kept(daemon: Daemon, base: Path, namespace: str) -> None:
    """An idle session disappears (API and store) while one fed all along stays and completes."""
    idle = start_upload(daemon, namespace)
    assert patch(daemon, idle, b"abandoned", first=0).status == 202
    fed = Feeder(daemon, namespace)
    idle_dir, fed_dir = session_dir(base, namespace, idle), session_dir(base, namespace, fed.location)
    assert idle_dir.is_dir() and fed_dir.is_dir()
    started = time.monotonic()
    deadline = started + AGE + 2 * INTERVAL + 10  # margin for a loaded machine
    while status(daemon, idle).status != 404:
        assert time.monotonic() < deadline, f"idle session still there after {time.monotonic() - started:.1f}s"
        fed.feed_for(CHUNK_EVERY * 3)
    assert time.monotonic() - started >= AGE - 1, "purged before it reached the age"
    assert_error(status(daemon, idle), 404, "BLOB_UPLOAD_UNKNOWN")
    assert not idle_dir.exists()
    fed.feed_for(2 * INTERVAL + 1)  # more passes, all seeing it old but growing
    response = status(daemon, fed.location)
    assert response.status == 204, (response.status, response.body[:300])
    assert response.headers["range"] == f"0-{len(fed.sent) - 1}"
    assert fed_dir.is_dir()
    digest = "sha256:" + hashlib.sha256(fed.sent).hexdigest()
    separator = "&" if "?" in fed.location else "?"
    done = daemon.request("PUT", f"{fed.location}{separator}digest={digest}")
    assert done.status == 201, (done.status, done.body[:300])


def test_the_single_daemon_purges_an_idle_session_and_keeps_a_fed_one(tmp_path: Path) -> None:
    daemon = start(tmp_path, write_config(tmp_path, AGE))
    try:
        check_idle_purged_and_fed_kept(daemon, tmp_path, "purge/single")
        assert "purged 1 abandoned upload sessions" in daemon.log()
    finally:
        daemon.stop()


def test_the_supervisor_of_two_workers_purges_an_idle_session_and_keeps_a_fed_one(tmp_path: Path) -> None:
    daemon = start(tmp_path, write_config(tmp_path, AGE), workers=2)
    try:
        check_idle_purged_and_fed_kept(daemon, tmp_path, "purge/workers")
    finally:
        daemon.stop()


def test_zero_keeps_sessions_until_the_age_is_set(tmp_path: Path) -> None:
    config = write_config(tmp_path, 0)
    daemon = start(tmp_path, config)
    try:
        location = start_upload(daemon, "purge/zero")
        assert patch(daemon, location, b"kept", first=0).status == 202
        directory = session_dir(tmp_path, "purge/zero", location)
        time.sleep(4 * interval_for(0))  # passes every second: four of them see it idle
        response = status(daemon, location)
        assert response.status == 204, (response.status, response.body[:300])
        assert directory.is_dir()
        # The passes were running: once the age is set (reloaded), the same session goes.
        config.write_text("[global]\nupload_max_age_secs = 2\n")
        wait_for(lambda: "configuration reloaded" in daemon.log(), timeout=15)
        wait_for(lambda: status(daemon, location).status == 404, timeout=15, interval=0.2)
        assert not directory.exists()
    finally:
        daemon.stop()
