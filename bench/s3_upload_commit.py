#!/usr/bin/env python3
"""Chunked pushes to angosd on S3 (a local ``moto_server``): time of the PATCHes and of the
completing PUT, with the default workers, so consecutive requests land on different workers.

    python3 bench/s3_upload_commit.py [--size-mb 256] [--chunk-mb 64] [--part-mb 16] [--rounds 3]

Each request goes on a new connection (as one curl per request does). The PUT's time is the
commit: the digest (from the hash state carried with the upload, or by reading the upload
back when it is lost) and the assembly of the parts into the blob (server-side part
copies). ``angosd_upload_digests_total`` from ``/metrics`` says which of the two digests it
was. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.daemon import Daemon
from tests.s3_server import S3Server, s3_config

MiB = 1024 * 1024


def push(daemon: Daemon, namespace: str, data: bytes, chunk: int) -> tuple[float, float]:
    """Push ``data`` in chunks of ``chunk`` bytes; seconds spent in PATCHes and in the PUT."""
    started = daemon.request("POST", f"/v2/{namespace}/blobs/uploads/")
    assert started.status == 202, started.body
    location = started.headers["location"]
    patching = 0.0
    for first in range(0, len(data), chunk):
        piece = data[first:first + chunk]
        headers = {"Content-Range": f"{first}-{first + len(piece) - 1}", "Content-Type": "application/octet-stream"}
        began = time.perf_counter()
        response = daemon.request("PATCH", location, piece, headers)
        patching += time.perf_counter() - began
        assert response.status == 202, response.body
        location = response.headers["location"]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    began = time.perf_counter()
    done = daemon.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")
    putting = time.perf_counter() - began
    assert done.status == 201, done.body
    return patching, putting


def digest_counts(daemon: Daemon) -> str:
    lines = daemon.request("GET", "/metrics").body.decode().splitlines()
    found = [line for line in lines if line.startswith("angosd_upload_digests_total")]
    return ", ".join(found) if found else "angosd_upload_digests_total: not reported by this version"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--chunk-mb", type=int, default=64)
    parser.add_argument("--part-mb", type=int, default=16, help="multipart_part_size of the daemon")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="--workers of the daemon (0: its configuration's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-commit-bench-") as workdir:
        server = S3Server(os.path.join(workdir, "moto")).start()
        daemon = None
        try:
            config = os.path.join(workdir, "angosd.toml")
            with open(config, "w", encoding="utf-8") as file:
                file.write("[server]\naccess_log = false\n"
                           + s3_config(server, server.new_bucket("bench"), multipart_part_size=f"{args.part_mb}MiB"))
            daemon = Daemon(os.path.join(workdir, "work"), os.path.join(workdir, "unused"), configs=(config,),
                            workers=args.workers).start()
            print(f"{args.size_mb} MiB in {args.chunk_mb} MiB chunks, {args.part_mb} MiB parts; "
                  f"load average {os.getloadavg()[0]:.2f} at start")
            print("| round | PATCHes s | PUT (commit) s | MiB/s overall |")
            print("|---|---:|---:|---:|")
            for round_ in range(args.rounds):
                data = os.urandom(args.size_mb * MiB)
                patching, putting = push(daemon, f"bench/r{round_}", data, args.chunk_mb * MiB)
                print(f"| {round_ + 1} | {patching:.2f} | {putting:.2f} | {args.size_mb / (patching + putting):.1f} |")
            print(digest_counts(daemon))
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
        finally:
            if daemon is not None:
                daemon.stop()
            server.stop()


if __name__ == "__main__":
    main()
