#!/usr/bin/env python3
"""Push and pull big blobs through angosd; report MiB/s and the daemon's peak RSS.

    python3 bench/blob_bench.py --sizes-mb 1024 4096 [--chunk-mb 64] [--keep]

For each size: a random file is made, pushed monolithically with curl (POST, then PUT
with the body), pulled back with curl to /dev/null, and the digest checked. The daemon
runs as a child process (``twistd -n angosd``); its peak RSS is read from VmHWM, reset
before each size through /proc/PID/clear_refs. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.daemon import Daemon

MiB = 1024 * 1024


def make_blob(path: str, size_mb: int, seed: int = 0) -> str:
    """A file of ``size_mb`` MiB of incompressible bytes (distinct per ``seed``); its digest."""
    hasher = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for i in range(size_mb):
            chunk = hashlib.sha256(f"{seed}:{i}".encode()).digest() + block[32:]
            hasher.update(chunk)
            out.write(chunk)
    return f"sha256:{hasher.hexdigest()}"


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def curl(*args: str) -> tuple[str, float]:
    result = subprocess.run(["curl", "-sS", "-f", "-H", "Expect:", "-w", "\\n%{time_total}", *args],
                            capture_output=True, text=True, check=True)
    return result.stdout, float(result.stdout.strip().splitlines()[-1])


def push_chunked(daemon: Daemon, path: str, digest: str, chunk_mb: int, workdir: str) -> float:
    """PATCH the file in ``chunk_mb`` pieces, then PUT; the summed curl time."""
    location = daemon.request("POST", "/v2/chunked/blobs/uploads/").headers["location"]
    chunk_path = os.path.join(workdir, "chunk")
    seconds, offset = 0.0, 0
    with open(path, "rb") as blob:
        while data := blob.read(chunk_mb * MiB):
            with open(chunk_path, "wb") as out:
                out.write(data)
            headers, spent = curl("-i", "-X", "PATCH", "-H", f"Content-Range: {offset}-{offset + len(data) - 1}",
                                  "-H", "Content-Type: application/octet-stream",
                                  "--data-binary", f"@{chunk_path}", f"{daemon.url}{location}")
            seconds += spent
            offset += len(data)
            location = next(line.split(" ", 1)[1].strip() for line in headers.splitlines()
                            if line.lower().startswith("location:"))
    os.unlink(chunk_path)
    return seconds + curl("-X", "PUT", f"{daemon.url}{location}?digest={digest}")[1]


def run(size_mb: int, daemon: Daemon, workdir: str, chunk_mb: int) -> dict[str, float]:
    assert daemon.process is not None
    pid = daemon.process.pid
    path = os.path.join(workdir, f"blob-{size_mb}")
    digest = make_blob(path, size_mb)
    subprocess.run(["sync"], check=True)
    time.sleep(2)

    reset_peak(pid)
    location = daemon.request("POST", "/v2/bench/blobs/uploads/").headers["location"]
    push_s = curl("-X", "PUT", "-T", path, f"{daemon.url}{location}?digest={digest}")[1]
    push_rss = peak_rss_mb(pid)

    reset_peak(pid)
    chunked_s = push_chunked(daemon, path, digest, chunk_mb, workdir) if chunk_mb else float("nan")
    chunked_rss = peak_rss_mb(pid)

    reset_peak(pid)
    pull_s = curl("-o", "/dev/null", f"{daemon.url}/v2/bench/blobs/{digest}")[1]
    pull_rss = peak_rss_mb(pid)
    os.unlink(path)
    return {
        "size_mib": size_mb,
        "push_mib_s": size_mb / push_s,
        "push_peak_rss_mib": push_rss,
        "chunked_push_mib_s": size_mb / chunked_s,
        "chunked_push_peak_rss_mib": chunked_rss,
        "pull_mib_s": size_mb / pull_s,
        "pull_peak_rss_mib": pull_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--chunk-mb", type=int, default=64, help="also push in chunks of this size (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="angosd-bench-")
    daemon = Daemon(os.path.join(workdir, "work"), os.path.join(workdir, "store")).start()
    results = []
    try:
        for size in args.sizes_mb:
            results.append(run(size, daemon, workdir, args.chunk_mb))
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("| blob | push MiB/s | chunked push MiB/s | pull MiB/s | peak RSS MiB: push / chunked / pull |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['size_mib']} MiB | {r['push_mib_s']:.0f} | {r['chunked_push_mib_s']:.0f} | {r['pull_mib_s']:.0f} "
              f"| {r['push_peak_rss_mib']:.1f} / {r['chunked_push_peak_rss_mib']:.1f} / {r['pull_peak_rss_mib']:.1f} |")


if __name__ == "__main__":
    main()
