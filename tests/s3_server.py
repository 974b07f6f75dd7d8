"""A real S3-compatible server for tests: ``moto_server`` (PyPI ``moto[server]``) on a free port.

`shared_s3()` starts one server for the whole test session (stopped at exit); tests
isolate themselves with a fresh bucket each (`S3Server.new_bucket`). `S3Server` can also
be started alone, e.g. to freeze it (SIGSTOP) in a fault test.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

ACCESS_KEY = "AKIDANGOSDTEST"
SECRET_KEY = "angosd-test-secret"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_command() -> list[str]:
    """How to run moto's server; fails loudly when it is not installed."""
    executable = shutil.which("moto_server")
    if executable is not None:
        return [executable]
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (the test extra)") from None
    return [sys.executable, "-m", "moto.server"]


@dataclass
class S3Server:
    """One moto_server process; ``endpoint`` is its URL."""

    workdir: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: str = field(default="")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        os.makedirs(self.workdir, exist_ok=True)
        self.port = self.port or free_port()
        self.log_path = os.path.join(self.workdir, f"moto-{self.port}.log")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*moto_command(), "-H", "127.0.0.1", "-p", str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}: {self.log()}")
            try:
                if self._request("GET", "/")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not start in {timeout}s: {self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode(errors="replace")[-4000:]

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def new_bucket(self, hint: str = "t") -> str:
        """A fresh, empty bucket (moto accepts unsigned bucket creation)."""
        name = f"{hint}-{uuid.uuid4().hex[:12]}".lower()
        status, body = self._request("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(f"cannot create bucket {name}: {status} {body[:200]!r}")
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key of ``bucket`` below ``prefix`` (for assertions; moto lists unsigned)."""
        import xml.etree.ElementTree as ElementTree
        from urllib.parse import quote

        found: list[str] = []
        token = ""
        while True:
            query = f"list-type=2&prefix={quote(prefix, safe='')}"
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            status, body = self._request("GET", f"/{bucket}?{query}")
            assert status == 200, body
            root = ElementTree.fromstring(body)
            for element in root.iter():
                if element.tag.endswith("}Key"):
                    found.append(element.text or "")
            token = next((e.text or "" for e in root.iter() if e.tag.endswith("}NextContinuationToken")), "")
            if not token:
                return found

    def freeze(self) -> None:
        """Stop answering (SIGSTOP): connections hang until `thaw`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_SHARED: S3Server | None = None


def shared_s3(workdir: str | None = None) -> S3Server:
    """The test session's S3 server, started on first use and stopped at exit."""
    global _SHARED
    if _SHARED is None or _SHARED.process is None or _SHARED.process.poll() is not None:
        directory = workdir or os.path.join("/tmp", f"angosd-moto-{os.getpid()}")
        _SHARED = S3Server(directory).start()
        atexit.register(_SHARED.stop)
    return _SHARED


def s3_config(server: S3Server, bucket: str, **extra: object) -> str:
    """A ``[blob_store.s3]`` TOML section for ``bucket`` on ``server`` (``extra`` keys appended)."""
    lines = ["[blob_store.s3]", f'endpoint = "{server.endpoint}"', f'bucket = "{bucket}"',
             f'access_key_id = "{ACCESS_KEY}"', f'secret_key = "{SECRET_KEY}"', f'region = "{REGION}"']
    for key, value in extra.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
    return "\n".join(lines) + "\n"


_HTTP: dict[int, object] = {}


def s3_options(server: S3Server, bucket: str, **overrides: object) -> object:
    """`S3Options` for ``bucket`` on ``server``."""
    from angosd.storage.s3_client import S3Options

    settings: dict[str, object] = {"endpoint": server.endpoint, "bucket": bucket, "access_key_id": ACCESS_KEY,
                                   "secret_key": SECRET_KEY, "region": REGION, "max_attempts": 3,
                                   "attempt_timeout": 30.0}
    settings.update(overrides)
    return S3Options(**settings)  # type: ignore[arg-type]


def s3_driver(reactor: object, server: S3Server | None = None, bucket: str | None = None,
              **overrides: object) -> object:
    """An `S3Driver` on a fresh bucket of the shared server (or of ``server``).

    The drivers of one reactor share one treq client (one connection pool).
    """
    from angosd.outbound.client import make_client
    from angosd.storage.s3 import S3Driver
    from tests.pools import started_pools

    server = server or shared_s3()
    if id(reactor) not in _HTTP:
        _HTTP[id(reactor)] = make_client(reactor)[0]
    options = s3_options(server, bucket or server.new_bucket("drv"), **overrides)
    return S3Driver(reactor, _HTTP[id(reactor)], options, started_pools(reactor).io)  # type: ignore[arg-type]
