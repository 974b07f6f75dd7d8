"""Run the real daemon (``twistd -n angosd``) as a child process on a real port."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STARTED = re.compile(r"RegistrySite(?: \(TLS\))? starting on (\d+)")


def default_workers() -> int:
    """Worker processes of a test daemon: ``$ANGOSD_TEST_WORKERS`` (run the suite with several
    workers), else 1 (tests that look at one process's log or state rely on it)."""
    return int(os.environ.get("ANGOSD_TEST_WORKERS", "1"))


def terminate(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM to a running ``process``, SIGKILL when it has not ended ``timeout`` s later; returns once it ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def process_name(pid: int) -> str:
    """``/proc/PID/comm`` ("" once the process is gone)."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


@dataclass
class Daemon:
    """One angosd process. ``root`` is its storage; ``workdir`` holds its log."""

    workdir: str
    root: str
    configs: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    listen: str = "tcp:0:interface=127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    pass_fds: tuple[int, ...] = ()  # descriptors the daemon inherits
    workers: int = field(default_factory=default_workers)  # --workers; 0: not given (the configuration decides)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: str = field(init=False, default="")

    def command(self) -> list[str]:
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "angosd", "--listen", self.listen, "--root", self.root]
        for config in self.configs:
            args += ["-c", config]
        if self.workers:
            args += ["--workers", str(self.workers)]
        return args + list(self.extra)

    def start(self, timeout: float = 30) -> Daemon:
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(self.workdir, f"angosd-{time.monotonic_ns()}.log")
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, pass_fds=self.pass_fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"angosd exited with {self.process.returncode}:\n{self.log()}")
            match = _STARTED.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"angosd did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def kill(self) -> None:
        """SIGKILL to the daemon and its workers at once (a crash of the whole daemon): no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            workers = self.worker_pids()
            self.process.kill()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()

    def worker_pids(self) -> list[int]:
        """The daemon's worker processes (none with one worker: the daemon serves itself): its
        children, those of its fork server in place of the fork server."""
        if self.process is None or self.process.poll() is not None:
            return []
        found = []
        for pid in children(self.process.pid):
            found += children(pid) if process_name(pid) == "angosd-forks" else [pid]
        return sorted(found)

    def fork_server_pid(self) -> int | None:
        """The daemon's fork server (a supervisor's child that forks its workers), if any."""
        if self.process is None or self.process.poll() is not None:
            return None
        return next((pid for pid in children(self.process.pid) if process_name(pid) == "angosd-forks"), None)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """One request on a fresh connection; the whole response is read."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def connect(self) -> Connection:
        """A keep-alive connection to the daemon."""
        return Connection(self.port)

    def raw(self, data: bytes) -> Response:
        """Send exact bytes (a whole request) on a fresh socket and parse the response."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(data)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


class Connection:
    """A keep-alive connection; ``request`` mirrors `Daemon.request` but can stream bodies."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """An iterable body without a Content-Length header is sent chunked."""
        self._connection.request(method, path, body=body, headers=headers or {})
        response = self._connection.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class KeepAlive(Protocol):
    """A client connection that carries requests in turn (`Connection`, or an in-memory one)."""

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Response: ...
    def close(self) -> None: ...
    def __enter__(self) -> KeepAlive: ...
    def __exit__(self, *_: object) -> None: ...


class Client(Protocol):
    """What the HTTP API tests talk to: a `Daemon` over sockets, or `tests.inmemory.InMemoryDaemon`."""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response: ...
    def connect(self) -> KeepAlive: ...
    def raw(self, data: bytes) -> Response: ...


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    #: Every header line in order, names lower-cased (``headers`` keeps the last of each name);
    #: filled in by the in-memory harness.
    header_lines: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]
