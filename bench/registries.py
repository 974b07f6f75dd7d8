"""Registries and clients for the side-by-side benches: angosd and distribution as child
processes, curl transfers, and the peak RSS of a process tree.

Used by ``tls_concurrent.py`` and ``s3_side_by_side.py``. Distribution is Debian's
``docker-registry`` (2.8.2), configured like registry_bench.py's templates: access log off,
log level warn. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.daemon import Daemon, children, terminate

MiB = 1024 * 1024
DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed(directory: str) -> tuple[str, str]:
    """A self-signed RSA-2048 certificate for 127.0.0.1 (as registry_bench.py makes): (cert, key)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


# --------------------------------------------------------------------------- processes


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children(current))
    return found


def reset_peaks(pid: int) -> None:
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            pass


def peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM over the process tree (since the last `reset_peaks`)."""
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


@dataclass
class Server:
    """A running registry: its name, base URL and root process."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    daemon: Daemon | None = None

    @property
    def pid(self) -> int:
        if self.daemon is not None:
            assert self.daemon.process is not None
            return self.daemon.process.pid
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            return
        if self.process is not None:
            terminate(self.process)


def start_angosd(name: str, workdir: str, config: str, scheme: str = "http") -> Server:
    """angosd with ``config`` (TOML text) and the configuration's number of workers."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "angosd.toml")
    with open(path, "w") as out:
        out.write(config)
    daemon = Daemon(os.path.join(workdir, "run"), os.path.join(workdir, "store"), configs=(path,), workers=0)
    daemon.start(timeout=60)
    server = Server(name, f"{scheme}://127.0.0.1:{daemon.port}", daemon=daemon)
    wait_ready(server)
    return server


def start_distribution(name: str, workdir: str, storage: str, tls: tuple[str, str] | None = None) -> Server:
    """``docker-registry serve`` with ``storage`` (the YAML ``storage:`` section's body, indented
    two spaces); without ``AWS_CA_BUNDLE`` in its environment (its S3 driver panics on it)."""
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true", "storage:",
             storage.rstrip(), "  delete:", "    enabled: true", "  maintenance:", "    uploadpurging:",
             "      enabled: false",
             "http:", f"  addr: 127.0.0.1:{port}", "  secret: bench-not-a-secret"]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    path = os.path.join(workdir, "config.yml")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    log = open(os.path.join(workdir, "registry.log"), "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([DOCKER_REGISTRY, "serve", path], stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=workdir)
    server = Server(name, f"{'https' if tls else 'http'}://127.0.0.1:{port}", process=process)
    wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/v2/"],
                                capture_output=True, text=True)
        if result.stdout in ("200", "401"):
            return
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready in {timeout}s")


# --------------------------------------------------------------------------- transfers


def curl(*args: str) -> tuple[str, float]:
    """curl's output and its ``time_total``; fails on an HTTP error."""
    result = subprocess.run(["curl", "-sS", "-f", "-k", "--http1.1", "-H", "Expect:", "-w", "\\n%{time_total}", *args],
                            capture_output=True, text=True, check=True)
    return result.stdout, float(result.stdout.strip().splitlines()[-1])


def _location(server: Server, headers: str) -> str:
    location = next(line.split(" ", 1)[1].strip() for line in headers.splitlines()
                    if line.lower().startswith("location:"))
    return location if location.startswith("http") else server.url + location


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def push_monolithic(server: Server, repository: str, path: str, digest: str) -> float:
    """POST then PUT with the whole file; curl's seconds for both."""
    headers, first = curl("-i", "-X", "POST", f"{server.url}/v2/{repository}/blobs/uploads/")
    location = _location(server, headers)
    return first + curl("-o", "/dev/null", "-X", "PUT", "-T", path, "-H", "Content-Type: application/octet-stream",
                        _with_digest(location, digest))[1]


def push_chunked(server: Server, repository: str, path: str, digest: str, chunk_mb: int, workdir: str) -> float:
    """POST, one PATCH per ``chunk_mb`` MiB, PUT; curl's seconds for all."""
    headers, seconds = curl("-i", "-X", "POST", f"{server.url}/v2/{repository}/blobs/uploads/")
    location = _location(server, headers)
    chunk_path = os.path.join(workdir, "chunk")
    offset = 0
    with open(path, "rb") as blob:
        while data := blob.read(chunk_mb * MiB):
            with open(chunk_path, "wb") as out:
                out.write(data)
            headers, spent = curl("-i", "-X", "PATCH", "-H", f"Content-Range: {offset}-{offset + len(data) - 1}",
                                  "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{chunk_path}",
                                  location)
            seconds += spent
            offset += len(data)
            location = _location(server, headers)
    os.unlink(chunk_path)
    return seconds + curl("-o", "/dev/null", "-X", "PUT", _with_digest(location, digest))[1]


def pull(server: Server, repository: str, digest: str, *extra: str) -> float:
    """GET the blob to /dev/null following redirects; curl's seconds."""
    return curl("-L", "-o", "/dev/null", *extra, f"{server.url}/v2/{repository}/blobs/{digest}")[1]


def head_ok(server: Server, repository: str, digest: str) -> bool:
    request = urllib.request.Request(f"{server.url}/v2/{repository}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(request) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Samples:
    """Per (scenario, target): MiB/s samples, peak RSS, server CPU seconds per GiB moved."""

    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rss: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, scenario: str, target: str, rate: float, rss: float, cpu_s_per_gib: float = float("nan")) -> None:
        self.rates.setdefault((scenario, target), []).append(rate)
        self.rss.setdefault((scenario, target), []).append(rss)
        self.cpu.setdefault((scenario, target), []).append(cpu_s_per_gib)

    def table(self, scenarios: list[str], targets: list[str], unit: str = "MiB/s") -> str:
        """A markdown table: median (min-max) per target, each target's ratio to the first."""
        import statistics

        columns = " | ".join(f"{t} {unit}" for t in targets)
        names = " / ".join(targets)
        rows = [f"| scenario | {columns} | ratio | peak RSS MiB ({names}) | server CPU s/GiB ({names}) |",
                "|" + "---|" * (len(targets) + 4)]
        for scenario in scenarios:
            if (scenario, targets[0]) not in self.rates:
                continue
            medians = [statistics.median(self.rates.get((scenario, t), [float("nan")])) for t in targets]
            cells = []
            for t, median in zip(targets, medians, strict=True):
                values = self.rates.get((scenario, t), [])
                spread = f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
                cells.append(f"{median:.0f}{spread}")
            ratios = " / ".join(f"{m / medians[0]:.2f}x" for m in medians[1:])
            peaks = " / ".join(f"{max(self.rss.get((scenario, t), [float('nan')])):.0f}" for t in targets)
            cpu = " / ".join(f"{statistics.median(self.cpu.get((scenario, t), [float('nan')])):.2f}"
                             for t in targets)
            rows.append(f"| {scenario} | {' | '.join(cells)} | {ratios} | {peaks} | {cpu} |")
        return "\n".join(rows)
