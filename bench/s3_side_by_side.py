#!/usr/bin/env python3
"""angosd and distribution on the same S3 server (moto), side by side.

    python3 bench/s3_side_by_side.py [--size-mb 1024] [--part-mb 16] [--chunk-mb 64] [--rounds 3]

Starts one ``moto_server`` (the ``moto[server]`` package, as the tests do), then, for each
round, distribution (Debian's ``docker-registry`` 2.8.2, ``storage: s3`` with
``regionendpoint``, ``chunksize`` = ``--part-mb``) and angosd (``[blob_store.s3]``,
``multipart_part_size`` = ``--part-mb``, default workers), each on a fresh bucket of that
server, one after the other (interleaved), and times with curl:

* ``push, monolithic``: POST then PUT with the whole blob;
* ``push, chunked``: POST, one PATCH per ``--chunk-mb`` MiB, PUT (another blob);
* ``pull, redirect``: GET following the 307 to the presigned S3 URL (``curl -L``);
* ``pull, no redirect``: the server restarted with redirects off (angosd:
  ``enable_blob_redirect = false``; distribution: ``storage.redirect.disable``), so the
  bytes stream through it.

Prints a markdown table (median MiB/s, min-max, angosd / distribution, peak RSS and CPU
seconds per GiB of each server's process tree), and moto's CPU seconds per scenario. Distribution is started without
``AWS_CA_BUNDLE`` in its environment (its S3 driver panics at start when it is set).
Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blob_bench import make_blob
from registries import (
    MiB,
    Samples,
    Server,
    cpu_seconds,
    peak_rss_mb,
    pull,
    push_chunked,
    push_monolithic,
    reset_peaks,
    start_angosd,
    start_distribution,
)

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, s3_config

SCENARIOS = ["push, monolithic", "push, chunked", "pull, redirect", "pull, no redirect"]
TARGETS = ["distribution", "angosd"]


def distribution_storage(s3: S3Server, bucket: str, part_mb: int, redirect: bool) -> str:
    settings = {"regionendpoint": s3.endpoint, "bucket": bucket, "region": REGION, "accesskey": ACCESS_KEY,
                "secretkey": SECRET_KEY, "secure": "false", "v4auth": "true", "rootdirectory": "/registry",
                "chunksize": str(part_mb * MiB)}
    lines = ["  s3:", *(f"    {key}: {value}" for key, value in settings.items())]
    if not redirect:
        lines += ["  redirect:", "    disable: true"]
    return "\n".join(lines)


def angosd_config(s3: S3Server, bucket: str, part_mb: int, redirect: bool) -> str:
    config = "[server]\naccess_log = false\n\n" + s3_config(s3, bucket, multipart_part_size=f"{part_mb}MiB")
    return config + ("" if redirect else "\n[global]\nenable_blob_redirect = false\n")


def empty_bucket(s3: S3Server, bucket: str) -> None:
    """Delete every object and the bucket (moto keeps objects in memory)."""
    for key in s3.keys(bucket):
        s3._request("DELETE", f"/{bucket}/{key}")
    s3._request("DELETE", f"/{bucket}")


class Timer:
    """Times one scenario: the server's peak RSS and moto's CPU alongside."""

    def __init__(self, samples: Samples, moto_cpu: dict[tuple[str, str], list[float]], s3: S3Server,
                 settle: float) -> None:
        self.samples, self.moto_cpu, self.s3, self.settle = samples, moto_cpu, s3, settle

    def run(self, scenario: str, server: Server, size_mb: int, action: Callable[[], float]) -> None:
        subprocess.run(["sync"], check=True)
        time.sleep(self.settle)
        assert self.s3.process is not None
        reset_peaks(server.pid)
        moto_before, server_before = cpu_seconds(self.s3.process.pid), cpu_seconds(server.pid)
        seconds = action()
        rate = size_mb / seconds
        server_cpu = (cpu_seconds(server.pid) - server_before) * 1024 / size_mb
        self.samples.add(scenario, server.name, rate, peak_rss_mb(server.pid), server_cpu)
        self.moto_cpu.setdefault((scenario, server.name), []).append(cpu_seconds(self.s3.process.pid) - moto_before)
        print(f"{server.name}: {scenario}: {rate:.0f} MiB/s", file=sys.stderr)


def one_round(name: str, start: Callable[[bool], Server], blobs: list[tuple[str, str]], args: argparse.Namespace,
              timer: Timer, workdir: str) -> None:
    (mono_path, mono), (chunked_path, chunked) = blobs
    server = start(True)
    try:
        timer.run("push, monolithic", server, args.size_mb, lambda: push_monolithic(server, "bench", mono_path, mono))
        timer.run("push, chunked", server, args.size_mb,
                  lambda: push_chunked(server, "bench", chunked_path, chunked, args.chunk_mb, workdir))
        for _ in range(args.pull_repeat):
            timer.run("pull, redirect", server, args.size_mb, lambda: pull(server, "bench", mono))
    finally:
        server.stop()
    server = start(False)
    try:
        for _ in range(args.pull_repeat):
            timer.run("pull, no redirect", server, args.size_mb, lambda: pull(server, "bench", mono))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--part-mb", type=int, default=16, help="S3 part size of both stores")
    parser.add_argument("--chunk-mb", type=int, default=64, help="PATCH size of the chunked push")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pull-repeat", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="s3-side-by-side-")
    samples = Samples()
    moto_cpu: dict[tuple[str, str], list[float]] = {}
    s3 = S3Server(os.path.join(workdir, "moto")).start()
    try:
        blobs = []
        for n in range(2):
            path = os.path.join(workdir, f"blob-{n}")
            blobs.append((path, make_blob(path, args.size_mb, seed=n)))
        timer = Timer(samples, moto_cpu, s3, args.settle)
        for number in range(args.rounds):
            for name in TARGETS:
                bucket = s3.new_bucket(name[:5])
                base = os.path.join(workdir, f"round-{number}", name)

                def start(redirect: bool, name: str = name, bucket: str = bucket, base: str = base) -> Server:
                    where = os.path.join(base, "redirect" if redirect else "inline")
                    if name == "distribution":
                        storage = distribution_storage(s3, bucket, args.part_mb, redirect)
                        return start_distribution(name, where, storage)
                    return start_angosd(name, where, angosd_config(s3, bucket, args.part_mb, redirect))

                one_round(name, start, blobs, args, timer, workdir)
                empty_bucket(s3, bucket)
    finally:
        s3.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"S3 (moto), {args.size_mb} MiB blobs, {args.part_mb} MiB parts, {args.chunk_mb} MiB PATCHes, "
          f"{args.rounds} rounds, load: {os.getloadavg()[0]:.2f}\n")
    print(samples.table(SCENARIOS, TARGETS))
    print("\nmoto CPU seconds per scenario (median):")
    for scenario in SCENARIOS:
        values = {t: sorted(moto_cpu.get((scenario, t), [float("nan")])) for t in TARGETS}
        print(f"- {scenario}: " + ", ".join(f"{t} {v[len(v) // 2]:.2f}" for t, v in values.items()))


if __name__ == "__main__":
    main()
