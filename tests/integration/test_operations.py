"""Operations through the real daemon: systemd notifications, SIGHUP reload, socket activation,
graceful shutdown, ``angosd check-config`` and the unit files."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import CA
from tests.daemon import REPO, Daemon

MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


class NotifySocket:
    """The service manager's side of sd_notify: an AF_UNIX datagram socket in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@angosd-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name[1:])
        self.received: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next message (``KEY=VALUE`` lines as a dict), None after ``timeout`` seconds."""
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), message))
        return message

    def wait_for(self, key: str, value: str = "1", timeout: float = 15.0) -> tuple[float, dict[str, str]]:
        """Receive until a message has ``key=value``; its arrival time and the message."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and message.get(key) == value:
                return self.received[-1]
        raise AssertionError(f"no {key}={value} within {timeout}s; got {[m for _, m in self.received]}")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    try:
        yield listener
    finally:
        listener.close()


def rewrite_unseen(path: Path, text: str) -> None:
    """Replace the file's content keeping its size and modification time, so that only an
    explicit reload (SIGHUP) can notice, not the daemon's polling of the file."""
    before = path.stat()
    padding = before.st_size - len(text.encode()) - 2
    assert padding >= 0, "the new text must be shorter than the file"
    path.write_text(text + "\n#" + "-" * padding)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def exit_status(daemon: Daemon, timeout: float) -> int:
    assert daemon.process is not None
    return daemon.process.wait(timeout)


def _tls_loads() -> str | None:
    """Why angosd.tls.server cannot serve a valid certificate and key here, None when it can."""
    import tempfile

    from angosd.config import TlsConfig
    from angosd.tls.server import build_context

    with tempfile.TemporaryDirectory() as directory:
        certificate, key = CA().server().write(directory, "probe")
        try:
            build_context(TlsConfig(certificate, key))
        except Exception as exc:
            return f"angosd.tls.server.build_context refuses a valid certificate and key: {type(exc).__name__}: {exc}"
    return None


TLS_BROKEN = _tls_loads()
needs_tls = pytest.mark.skipif(TLS_BROKEN is not None, reason=str(TLS_BROKEN))


# --------------------------------------------------------------------------- sd_notify, watchdog, SIGHUP

POLICY = """
[global.access_policy]
default = "deny"
rules = [{rules}]
"""
FILLER = "\n# " + "room for rewrites " * 20 + "\n"


def test_ready_watchdog_reload_and_stopping_notifications(tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = tmp_path / "angosd.toml"
    config.write_text(POLICY.format(rules="\"request.action == 'get-api-version'\"") + FILLER)
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),),
                    env={"NOTIFY_SOCKET": notify_socket.name, "WATCHDOG_USEC": "2000000"}).start()
    try:
        _, ready = notify_socket.wait_for("READY")
        assert daemon.request("GET", "/v2/").status == 200, "READY=1 only once the port answers"
        assert ready["STATUS"] == f"serving on 127.0.0.1:{daemon.port}"
        assert daemon.request("GET", "/v2/_catalog").status == 401

        pings = [notify_socket.wait_for("WATCHDOG")[0] for _ in range(4)][1:]  # the first may have queued
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert all(0.6 < gap < 1.5 for gap in gaps), gaps

        # A policy change the file poller cannot see: only SIGHUP applies it.
        rewrite_unseen(config, POLICY.format(rules="\"request.action in ['get-api-version', 'list-catalog']\""))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        reloading_at, reloading = notify_socket.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready_at, ready = notify_socket.wait_for("READY")
        assert ready_at >= reloading_at and "refused" not in ready["STATUS"]
        assert daemon.request("GET", "/v2/_catalog").status == 200
        assert "SIGHUP: reloading the configuration" in daemon.log()
        assert daemon.log().count("configuration reloaded") == 1

        # A broken file is refused with a log line; the running configuration stays.
        rewrite_unseen(config, POLICY.format(rules="\"request.action ==\""))
        daemon.process.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING")
        _, ready = notify_socket.wait_for("READY")
        assert "last reload refused" in ready["STATUS"]
        assert "reload refused" in daemon.log() and "does not compile" in daemon.log()
        assert daemon.request("GET", "/v2/_catalog").status == 200
        assert daemon.log().count("configuration reloaded") == 1

        daemon.process.send_signal(signal.SIGTERM)
        _, stopping = notify_socket.wait_for("STOPPING")
        assert "shutting down" in stopping["STATUS"]
        assert exit_status(daemon, 15) == 0
    finally:
        daemon.stop()


def test_no_notify_socket_means_no_notifications(tmp_path: Path) -> None:
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), env={"WATCHDOG_USEC": "2000000"}).start()
    try:
        wait_for(lambda: "ready: listening on" in daemon.log())
        assert daemon.request("GET", "/v2/").status == 200
        assert "cannot notify" not in daemon.log()
    finally:
        daemon.stop()
    assert daemon.process is not None and daemon.process.returncode == 0


# --------------------------------------------------------------------------- socket activation

_ACTIVATE = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd == 3 or os.close(fd); "
             "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


class ActivatedDaemon(Daemon):
    """The daemon started the way systemd starts it: the listening socket as fd 3, LISTEN_* set."""

    listener: socket.socket
    use_config_listen: bool = False

    def command(self) -> list[str]:
        command = super().command()
        if self.use_config_listen:  # no --listen: [server] listen decides
            at = command.index("--listen")
            del command[at:at + 2]
        return [sys.executable, "-c", _ACTIVATE, str(self.listener.fileno()), *command]


def listening_socket() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def activated(tmp_path: Path, listener: socket.socket, config: str, listen: str | None) -> ActivatedDaemon:
    """The variables are those systemd sets; Twisted needs LISTEN_FDNAMES as well."""
    path = tmp_path / "angosd.toml"
    path.write_text(config)
    daemon = ActivatedDaemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(path),),
                             listen=listen or "unused", env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "angosd.socket"},
                             pass_fds=(listener.fileno(),))
    daemon.listener = listener
    daemon.use_config_listen = listen is None
    return daemon


def test_socket_activation_with_listen_systemd(tmp_path: Path) -> None:
    listener = listening_socket()
    port = listener.getsockname()[1]
    daemon = activated(tmp_path, listener, '[server]\nlisten = "systemd"\n', None).start()
    listener.close()  # only the daemon holds it now
    try:
        assert daemon.port == port
        assert daemon.request("GET", "/v2/").status == 200
        digest = f"sha256:{hashlib.sha256(b'x').hexdigest()}"
        pushed = daemon.request("POST", f"/v2/activated/blobs/uploads/?digest={digest}", b"x",
                                {"Content-Type": "application/octet-stream"})
        assert pushed.status == 201
    finally:
        daemon.stop()


@needs_tls
def test_socket_activation_endpoint_with_tls(tmp_path: Path) -> None:
    ca = CA()
    certificate, key = ca.server().write(tmp_path / "tls", "server")
    config = (f'[server.tls]\nserver_certificate_bundle = "{certificate}"\nserver_private_key = "{key}"\n')
    listener = listening_socket()
    port = listener.getsockname()[1]
    daemon = activated(tmp_path, listener, config, "systemd:domain=INET:index=0").start()
    listener.close()
    try:
        assert daemon.port == port
        context = ssl.create_default_context(cafile=ca.write(tmp_path / "ca.crt"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")
    finally:
        daemon.stop()


def test_listen_systemd_without_a_socket_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "angosd.toml"
    path.write_text('[server]\nlisten = "systemd"\n')
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "angosd",
               "-c", str(path), "--root", str(tmp_path / "store")]
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("LISTEN_FDS", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "systemd passed no socket" in result.stdout + result.stderr


# --------------------------------------------------------------------------- graceful shutdown


def drain_config(tmp_path: Path, seconds: int) -> str:
    path = tmp_path / "angosd.toml"
    path.write_text(f"[global]\nshutdown_drain_secs = {seconds}\n")
    return str(path)


def open_patch(daemon: Daemon, location: str, length: int) -> socket.socket:
    """A PATCH whose headers are sent; the body follows through ``sendall``."""
    connection = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    connection.sendall((f"PATCH {location} HTTP/1.1\r\nHost: {daemon.host}\r\n"
                        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode())
    return connection


def read_head(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body bytes already read, of a response on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def upload_size(daemon: Daemon, location: str) -> int:
    response = daemon.request("GET", location)
    assert response.status == 204, response
    return int(response.headers["range"].split("-")[1]) + 1 if response.headers["range"] != "0-0" else 0


def test_sigterm_lets_a_large_push_and_a_large_pull_finish(tmp_path: Path) -> None:
    data = os.urandom(100 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    store = str(tmp_path / "store")
    daemon = Daemon(str(tmp_path / "work"), store, configs=(drain_config(tmp_path, 60),)).start()
    try:
        assert daemon.request("POST", f"/v2/drain/pulled/blobs/uploads/?digest={digest}", data,
                              {"Content-Type": "application/octet-stream"}).status == 201
        pull = socket.socket()
        pull.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        pull.settimeout(30)
        pull.connect(("127.0.0.1", daemon.port))
        pull.sendall(f"GET /v2/drain/pulled/blobs/{digest} HTTP/1.1\r\nHost: {daemon.host}\r\n\r\n".encode())
        status, headers, pulled_start = read_head(pull)
        assert status == 200 and int(headers["content-length"]) == len(data)
        pulled = hashlib.sha256(pulled_start)
        pulled_bytes = len(pulled_start)

        location = daemon.request("POST", "/v2/drain/pushed/blobs/uploads/").headers["location"]
        push = open_patch(daemon, location, len(data))
        pushed = 0

        def step(pause: float) -> None:
            nonlocal pushed, pulled_bytes
            if pushed < len(data):
                push.sendall(data[pushed:pushed + MiB])
                pushed = min(pushed + MiB, len(data))
            if pulled_bytes < len(data):
                chunk = pull.recv(min(MiB, len(data) - pulled_bytes))
                assert chunk, "the download was cut"
                pulled.update(chunk)
                pulled_bytes += len(chunk)
            time.sleep(pause)

        for _ in range(10):
            step(0.01)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_for(lambda: refused(daemon.port), timeout=2)
        assert time.monotonic() - stopped_at < 2, "new connections are refused at once"
        assert pushed < len(data) and pulled_bytes < len(data), "both transfers are still in flight"
        while pushed < len(data) or pulled_bytes < len(data):
            step(0.02 if pushed < 60 * MiB else 0)
        assert time.monotonic() - stopped_at > 1, "the transfers went on for a while after SIGTERM"

        assert pulled.hexdigest() == digest.split(":")[1]
        status, headers, _ = read_head(push)
        assert status == 202, headers
        assert headers["range"] == f"0-{len(data) - 1}"
        assert headers.get("connection") == "close"
        push.close()
        pull.close()
        assert exit_status(daemon, 20) == 0
        assert re.search(r"waiting up to 60s for 2 request\(s\) in flight", daemon.log())
        assert "drain deadline passed" not in daemon.log()

        daemon.start()
        assert daemon.request("PUT", f"{location}?digest={digest}").status == 201
        assert daemon.request("HEAD", f"/v2/drain/pushed/blobs/{digest}").headers["content-length"] == str(len(data))
    finally:
        daemon.stop()


def test_short_drain_cuts_a_push_that_resumes_after_restart(tmp_path: Path) -> None:
    data = os.urandom(100 * MiB)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(drain_config(tmp_path, 1),)).start()
    try:
        location = daemon.request("POST", "/v2/drain/cut/blobs/uploads/").headers["location"]
        push = open_patch(daemon, location, len(data))
        push.sendall(data[:16 * MiB])
        sent = 16 * MiB
        wait_for(lambda: upload_size(daemon, location) >= 8 * MiB)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        with pytest.raises(OSError):  # reset (or closed) by the daemon at the deadline
            while sent < len(data):
                push.sendall(data[sent:sent + MiB])
                sent += MiB
                time.sleep(0.05)
            read_head(push)
            raise AssertionError("the push was not cut")
        push.close()
        assert exit_status(daemon, 15) == 0
        assert time.monotonic() - stopped_at < 10
        assert "drain deadline passed, closing 1 connection(s)" in daemon.log()

        daemon.start()
        stored = upload_size(daemon, location)
        assert 8 * MiB <= stored <= sent < len(data)
        resumed = daemon.request("PATCH", location, data[stored:],
                                 {"Content-Range": f"{stored}-{len(data) - 1}",
                                  "Content-Type": "application/octet-stream"})
        assert resumed.status == 202, resumed
        assert daemon.request("PUT", f"{location}?digest={digest}").status == 201
        blob = daemon.request("GET", f"/v2/drain/cut/blobs/{digest}").body
        assert hashlib.sha256(blob).hexdigest() == digest.split(":")[1]
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- angosd check-config


def check_config(*paths: Path | str) -> subprocess.CompletedProcess[str]:
    arguments = [argument for path in paths for argument in ("-c", str(path))]
    return subprocess.run([sys.executable, "-m", "angosd", "check-config", *arguments], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


@needs_tls
def test_check_config_accepts_a_good_configuration(tmp_path: Path) -> None:
    ca = CA()
    certificate, key = ca.server().write(tmp_path, "server")
    good = tmp_path / "good.toml"
    good.write_text(f"""
[server]
bind_address = "0.0.0.0"
port = 5443
[server.tls]
server_certificate_bundle = "{certificate}"
server_private_key = "{key}"
[global]
authorization_webhook = "corp"
[global.access_policy]
default = "deny"
rules = ["identity.username != null", "request.action in ['get-manifest', 'get-blob']"]
[auth.webhook.corp]
url = "https://authz.example.internal/check"
timeout_ms = 2000
[repository."apps"]
[repository."apps".access_policy]
rules = ["request.namespace.startsWith('apps/')"]
""")
    result = check_config(good)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    example = check_config(Path(REPO) / "etc" / "angosd.toml")
    assert (example.returncode, example.stdout) == (0, "ok\n"), example.stderr


def test_check_config_reports_each_kind_of_mistake(tmp_path: Path) -> None:
    ca = CA()
    certificate, _ = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    cases = {
        "bad-type.toml": ('[server]\nport = "5000"\n', "server.port: expected an integer, got string"),
        "webhook.toml": ('[repository."apps"]\nauthorization_webhook = "nowhere"\n',
                         'repository.apps.authorization_webhook: '),
        "rule.toml": ('[global.access_policy]\nrules = ["request.action =="]\n',
                      "global.access_policy.rules[0]: rule 'request.action ==' does not compile"),
        "mismatch.toml": (f'[repository."hub"]\n[[repository."hub".upstream]]\nurl = "https://upstream.example"\n'
                          f'client_certificate = "{certificate}"\nclient_private_key = "{other_key}"\n',
                          f"repository.hub.upstream[0].client_private_key: {other_key}: private key does not match"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = check_config(path)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{path}: ") and expected in lines[0], (name, lines)

    for unreadable in (tmp_path / "missing.toml", tmp_path):  # absent, a directory
        result = check_config(unreadable)
        assert result.returncode == 1
        assert result.stdout.startswith(f"{unreadable}: cannot read file"), result.stdout


@needs_tls
def test_check_config_reports_a_server_certificate_key_mismatch(tmp_path: Path) -> None:
    ca = CA()
    certificate, _ = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    path = tmp_path / "tls.toml"
    path.write_text(f'[server.tls]\nserver_certificate_bundle = "{certificate}"\nserver_private_key = "{other_key}"\n')
    result = check_config(path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}: server.tls.server_private_key: {other_key}: private key does not match")


def test_check_config_names_the_file_that_set_the_key_and_lists_every_problem(tmp_path: Path) -> None:
    base, override = tmp_path / "base.toml", tmp_path / "override.toml"
    base.write_text('[global]\nauthorization_webhook = "corp"\n[auth.webhook.corp]\nurl = "https://x.example"\n'
                    'timeout_ms = 100\n[global.access_policy]\nrules = ["true"]\n[server]\nunknown = 1\n')
    override.write_text('[global.access_policy]\nrules = ["(("]\n[repository."a".access_policy]\nrules = ["!"]\n')
    result = check_config(base, override)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{override}: global.access_policy.rules[0]: ")
    assert lines[1].startswith(f"{override}: repository.a.access_policy.rules[0]: ")
    assert f"{base}: server.unknown: unknown key" in result.stderr
    assert check_config(base).stdout == "ok\n"


# --------------------------------------------------------------------------- unit files


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` also checks that ExecStart's program exists: the units name
    /opt/angosd/bin/twistd (the documented install), absent here, so a copy points at this Python."""
    units = Path(REPO) / "systemd"
    service = (units / "angosd.service").read_text()
    assert "ExecStart=/opt/angosd/bin/twistd " in service
    for setting in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "ExecReload=/bin/kill -HUP $MAINPID",
                    "User=angosd", "ProtectSystem=strict", "ReadWritePaths=/var/lib/angosd", "StateDirectory=angosd",
                    "NoNewPrivileges=true", "PrivateTmp=true", "CapabilityBoundingSet="):
        assert re.search(rf"^{re.escape(setting)}$", service, re.MULTILINE), setting
    assert re.search(r"^ListenStream=5000$", (units / "angosd.socket").read_text(), re.MULTILINE)
    (tmp_path / "angosd.service").write_text(service.replace("/opt/angosd/bin/twistd", sys.executable))
    shutil.copy(units / "angosd.socket", tmp_path / "angosd.socket")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "angosd.service"),
                             str(tmp_path / "angosd.socket")], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "angosd" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
