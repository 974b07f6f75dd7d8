"""A real ``redis-server`` (Debian package) for tests, on a free port with its files in a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

from tests.s3_server import free_port


def redis_executable() -> str:
    """The redis-server binary; fails loudly when it is not installed."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server (scripts/test does)")
    return found


@dataclass
class RedisServer:
    """One redis-server process without persistence; ``url`` is its address."""

    workdir: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> RedisServer:
        os.makedirs(self.workdir, exist_ok=True)
        self.port = self.port or free_port()
        log = open(os.path.join(self.workdir, "redis.log"), "wb")  # noqa: SIM115 - kept by the child
        self.process = subprocess.Popen(
            [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start in {timeout}s")

    def command(self, *args: str) -> bytes:
        """One command, its raw first reply line (for assertions)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
            sock.sendall(b"".join(parts))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply.split(b"\r\n")[0]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
