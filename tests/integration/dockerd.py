"""Run a private ``dockerd`` (and the ``docker`` CLI against it) for end-to-end tests.

Everything lives under private directories: configuration, ``--data-root``
(vfs image store), ``--exec-root`` (containerd state), pidfile and the API
socket, so several test runs never share state with each other or with a
system-wide Docker.  The daemon runs without networking of its own
(``iptables: false``, ``bridge: none``), which is all pushing and pulling
need.  The client gets a private ``DOCKER_CONFIG`` so no user credential
helpers get involved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Prefer Debian's CLI (same release as Debian's dockerd) over any other on PATH.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "/usr/bin/docker")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"


@dataclass
class Dockerd:
    """One private dockerd. ``data_root`` holds its images (``data_root``.log its log), ``run_dir`` the rest."""

    data_root: str
    insecure_registries: Sequence[str] = ()
    run_dir: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: str = field(init=False, default="")

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, "docker.sock")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 180) -> Dockerd:
        for executable in (DOCKERD, DOCKER):
            if not os.path.exists(executable):
                raise RuntimeError(f"{executable} is not installed: run scripts/install-e2e-clients")
        # A short directory under /tmp: unix socket paths (ours, containerd's) max out at 107 bytes.
        self.run_dir = self.run_dir or tempfile.mkdtemp(prefix="dockerd-", dir="/tmp")
        os.makedirs(self.data_root, exist_ok=True)
        os.makedirs(os.path.join(self.run_dir, "client"), exist_ok=True)
        config = os.path.join(self.run_dir, "daemon.json")
        with open(config, "w") as f:
            json.dump({"iptables": False, "bridge": "none", "storage-driver": "vfs",
                       "insecure-registries": list(self.insecure_registries)}, f)
        self.log_path = self.data_root.rstrip("/") + ".log"  # kept after stop(), for post-mortems
        command = [DOCKERD, "--config-file", config, "--data-root", self.data_root,
                   "--exec-root", os.path.join(self.run_dir, "exec"),
                   "--pidfile", os.path.join(self.run_dir, "dockerd.pid"), "-H", self.host]
        with open(self.log_path, "wb") as log:
            # Own session: on a hard stop the whole group (dockerd + its containerd) goes.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.docker("info", check=False, timeout=30).returncode == 0:
                    return self
            except subprocess.TimeoutExpired:
                pass  # still starting up: the deadline decides
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{' '.join(command)} did not answer `docker info` in {timeout}s:\n{self.log()}")

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``docker -H unix://SOCKET ARGS...``; with ``check``, fail with its stderr."""
        env = dict(os.environ, DOCKER_CONFIG=os.path.join(self.run_dir, "client"))
        proc = subprocess.run([DOCKER, "-H", self.host, *args], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(proc.args)} exited with {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}\n--- dockerd log (tail) ---\n{self.log()[-4000:]}")
        return proc

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (dockerd then stops its containerd), SIGKILL the group if that hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


@contextmanager
def running_dockerd(data_root: str, insecure_registries: Sequence[str] = ()) -> Iterator[Dockerd]:
    """A started private dockerd, stopped (and its run directory removed) on exit."""
    daemon = Dockerd(data_root, tuple(insecure_registries))
    try:
        yield daemon.start()
    finally:
        daemon.stop()
