"""Live configuration reload, through the real daemon: the reload timer of its service, and
what it logs. (Immutable tags are tested in memory: `tests.http.test_immutable_tags`.)"""

from __future__ import annotations

import base64
import http.client
import time
from pathlib import Path

from tests.daemon import Daemon


def start(tmp_path: Path, config: str) -> tuple[Daemon, Path]:
    path = tmp_path / "angosd.toml"
    path.write_text(config)
    return Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(path),)).start(), path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def wait_until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the reload"
        time.sleep(0.1)


POLICY = """
[global.access_policy]
default = "deny"
rules = [{rules}]
"""


def test_policy_change_applies_to_the_next_request_on_an_open_connection(tmp_path: Path) -> None:
    daemon, path = start(tmp_path, POLICY.format(rules="\"request.action == 'get-api-version'\""))
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        def status(method: str, target: str) -> int:
            connection.request(method, target)
            response = connection.getresponse()
            response.read()
            return response.status

        assert status("GET", "/v2/") == 200
        assert status("GET", "/v2/_catalog") == 401
        path.write_text(POLICY.format(rules="\"request.action in ['get-api-version', 'list-catalog']\""))
        wait_until(lambda: status("GET", "/v2/_catalog") == 200)
        assert "configuration reloaded" in daemon.log()
    finally:
        connection.close()
        daemon.stop()


def test_broken_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    daemon, path = start(tmp_path, POLICY.format(rules="\"request.action == 'get-api-version'\""))
    try:
        path.write_text(POLICY.format(rules="\"request.action == \"") + "\n[server]\nport = 'x'\n")
        wait_until(lambda: "reload refused" in daemon.log())
        assert str(path) in daemon.log().split("reload refused", 1)[1]
        assert daemon.request("GET", "/v2/").status == 200
        assert daemon.request("GET", "/v2/_catalog").status == 401
        path.write_text(POLICY.format(rules="\"request.action ==\""))
        wait_until(lambda: daemon.log().count("reload refused") >= 2)
        assert "does not compile" in daemon.log()
        assert daemon.request("GET", "/v2/").status == 200
    finally:
        daemon.stop()


def test_users_are_reloaded(tmp_path: Path) -> None:
    from angosd.auth.basic import hash_password

    config = POLICY.format(rules="\"identity.username == 'alice'\"") + \
        '[auth.identity.alice]\nusername = "alice"\npassword = "{hash}"\n'
    daemon, path = start(tmp_path, config.replace("{hash}", hash_password("one")))
    try:
        assert daemon.request("GET", "/v2/_catalog", headers=basic("alice", "one")).status == 200
        path.write_text(config.replace("{hash}", hash_password("two")))
        wait_until(lambda: daemon.request("GET", "/v2/_catalog", headers=basic("alice", "two")).status == 200)
        assert daemon.request("GET", "/v2/_catalog", headers=basic("alice", "one")).status == 401
    finally:
        daemon.stop()
