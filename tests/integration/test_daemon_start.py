"""Starting the daemon: the embedded default, configuration files, and refusals."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon import REPO, Daemon

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def twistd(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([*TWISTD, "angosd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_embedded_default_serves_on_port_5000_with_local_storage(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen([*TWISTD, "angosd"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", 5000, timeout=5)
                connection.request("POST", "/v2/hello/blobs/uploads/")
                status = connection.getresponse().status
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the default daemon did not listen on 127.0.0.1:5000"
                time.sleep(0.1)
        assert status == 202
        assert (tmp_path / "registry-data" / "repositories" / "hello" / "_uploads").is_dir()
    finally:
        process.terminate()
        process.wait(15)


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
