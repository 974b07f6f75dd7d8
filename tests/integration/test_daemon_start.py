"""Starting the daemon: the embedded default, configuration files, and refusals."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from angosd import __version__
from tests.daemon import REPO, Daemon

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def twistd(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([*TWISTD, "angosd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start_default(cwd: Path, *args: str, timeout: float = 30) -> tuple[subprocess.Popen[bytes], Path]:
    """``twistd -n angosd *args`` with no configuration file, its log in ``cwd/angosd.log``, once it
    is ready (its log says ``ready: listening on ...``); fails with the log if it exits first."""
    log = cwd / "angosd.log"
    env = dict(os.environ, PYTHONPATH=REPO)
    with log.open("wb") as out:
        process = subprocess.Popen([*TWISTD, "angosd", "--workers", "1", *args], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while "ready: listening on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the default daemon did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def upload_status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", "/v2/hello/blobs/uploads/")
        return connection.getresponse().status
    finally:
        connection.close()


def test_embedded_default_stores_in_registry_data_with_anonymous_access(tmp_path: Path) -> None:
    process, log = start_default(tmp_path, "--listen", "tcp:0:interface=127.0.0.1")
    try:
        match = re.search(r"ready: listening on 127\.0\.0\.1:(\d+)", log.read_text())
        assert match, log.read_text()
        assert upload_status(int(match.group(1))) == 202
        assert (tmp_path / "registry-data" / "repositories" / "hello" / "_uploads").is_dir()
    finally:
        stop(process)


def test_embedded_default_listens_on_127_0_0_1_port_5000(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", 5000))
        except OSError as exc:
            pytest.skip(f"port 5000 is taken by another program ({exc}); the default port cannot be tried")
    process, log = start_default(tmp_path)
    try:
        # This daemon's own log names the address, so the answer below is not another program's.
        assert "ready: listening on 127.0.0.1:5000," in log.read_text()
        assert upload_status(5000) == 202
        assert (tmp_path / "registry-data" / "repositories" / "hello" / "_uploads").is_dir()
    finally:
        stop(process)


def test_config_file_sets_repositories_and_merges(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text('[repository."apps"]\n[global]\nmax_manifest_size = "1KiB"\n')
    override = tmp_path / "override.toml"
    override.write_text('[global]\nmax_manifest_size = "2KiB"\n')
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(base), str(override))).start()
    try:
        assert daemon.request("POST", "/v2/apps/team/blobs/uploads/").status == 202
        outside = daemon.request("POST", "/v2/other/blobs/uploads/")
        assert outside.status == 404
        assert outside.error_codes == ["NAME_UNKNOWN"]
        big = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [], "x": "'
        body = big + b"a" * (1500 - len(big)) + b'"}'
        response = daemon.request("PUT", "/v2/apps/team/manifests/v1", body,
                                  {"Content-Type": "application/vnd.oci.image.index.v1+json"})
        assert response.status == 201, "the later file's 2 KiB limit must win over the earlier 1 KiB"
    finally:
        daemon.stop()


def test_bad_config_stops_the_start_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = \"http\"\n")
    result = twistd(tmp_path, "-c", str(bad))
    assert result.returncode != 0
    assert f"{bad}: server.port:" in result.stderr + result.stdout


def test_unreadable_config_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = twistd(tmp_path, "-c", str(missing))
    assert result.returncode != 0
    assert str(missing) in result.stderr + result.stdout


def test_unknown_key_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    config = tmp_path / "extra.toml"
    config.write_text("[global]\nfrobnicate = true\n")
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),)).start()
    try:
        assert daemon.request("GET", "/v2/").status == 200
        assert "global.frobnicate" in daemon.log()
    finally:
        daemon.stop()


def test_twistd_angosd_version_is_angosds_version(tmp_path: Path) -> None:
    result = twistd(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"angosd {__version__}"
