"""Run a private ``containerd`` (own root, state and socket) and ``ctr`` against it for end-to-end tests.

Nothing is shared with a system-wide containerd: the socket and state live in a short private
directory under /tmp (unix socket paths are limited to 107 bytes), the content store under the
caller's directory, and the daemon runs in its own session so a hard stop takes all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


class Containerd:
    """A private containerd (own root, state and socket) and ``ctr`` against it."""

    def __init__(self, base: Path) -> None:
        for executable in ("containerd", "ctr"):
            if shutil.which(executable) is None:
                pytest.fail(f"{executable} is not installed (Debian package containerd)")
        self.run_dir = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))  # short: unix socket path limit
        self.socket = str(self.run_dir / "containerd.sock")
        config = self.run_dir / "config.toml"
        config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        self.log_path = base / "containerd.log"
        base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config), "--root", str(base / "root"), "--state",
                 str(self.run_dir / "state"), "--address", self.socket], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "--address", self.socket, "--namespace", "e2e", *args], capture_output=True,
                              text=True, timeout=600, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(proc.args)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)
