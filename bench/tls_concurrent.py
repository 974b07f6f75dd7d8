#!/usr/bin/env python3
"""TLS pulls side by side with distribution: one stream, and N clients on N different blobs.

    python3 bench/tls_concurrent.py [--size-mb 512] [--clients 8] [--rounds 3] [--repeat 3]

Starts angosd (``[server.tls]``, the default number of workers) and Debian's docker-registry
(distribution 2.8.2, ``http.tls``) with the same self-signed certificate, one after the other
(interleaved rounds, fresh stores), pushes ``--clients`` distinct blobs of ``--size-mb`` MiB
to each, then times:

* ``single``: one ``curl -k --http1.1`` GET of the first blob to /dev/null, ``--repeat`` times
  (MiB/s from curl's ``time_total``, as registry_bench.py's ``tls_blob_pull``);
* ``concurrent``: ``--clients`` curls started together, each on its own blob (what a client
  does across the layers of an image); MiB/s = all bytes / wall time until the last one ends.

Prints a markdown table (median, min-max, ratio to distribution, peak RSS and CPU seconds
per GiB of each server's process tree) and the cipher each server negotiated with curl. Figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blob_bench import make_blob
from registries import (
    Samples,
    Server,
    cpu_seconds,
    peak_rss_mb,
    pull,
    push_monolithic,
    reset_peaks,
    self_signed,
    start_angosd,
    start_distribution,
)

ANGOSD_CONFIG = """[server]
access_log = false

[server.tls]
server_certificate_bundle = "{cert}"
server_private_key = "{key}"
"""


def negotiated(server: Server) -> str:
    """Protocol and cipher curl negotiates with ``server`` (from curl's verbose output)."""
    result = subprocess.run(["curl", "-skv", "--http1.1", "-o", "/dev/null", f"{server.url}/v2/"],
                            capture_output=True, text=True)
    for line in result.stderr.splitlines():
        if "SSL connection using" in line:
            return line.split("SSL connection using", 1)[1].strip()
    return "unknown"


def concurrent(server: Server, digests: list[str], size_mb: int) -> float:
    """All blobs pulled at once, one curl each; aggregate MiB/s over the wall time."""
    started = time.monotonic()
    processes = [subprocess.Popen(["curl", "-sS", "-f", "-k", "--http1.1", "-o", "/dev/null",
                                   f"{server.url}/v2/bench/blobs/{digest}"]) for digest in digests]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"a concurrent pull from {server.name} failed")
    return size_mb * len(digests) / (time.monotonic() - started)


def round_for(name: str, start: object, blobs: list[tuple[str, str]], args: argparse.Namespace,
              samples: Samples, ciphers: dict[str, str]) -> None:
    server = start()  # type: ignore[operator]
    try:
        for path, digest in blobs:
            push_monolithic(server, "bench", path, digest)
        ciphers[name] = negotiated(server)
        subprocess.run(["sync"], check=True)
        time.sleep(args.settle)
        for _ in range(args.repeat):
            reset_peaks(server.pid)
            before = cpu_seconds(server.pid)
            rate = args.size_mb / pull(server, "bench", blobs[0][1])
            cpu = (cpu_seconds(server.pid) - before) * 1024 / args.size_mb
            samples.add("single", name, rate, peak_rss_mb(server.pid), cpu)
        time.sleep(args.settle)
        reset_peaks(server.pid)
        before = cpu_seconds(server.pid)
        rate = concurrent(server, [digest for _, digest in blobs], args.size_mb)
        cpu = (cpu_seconds(server.pid) - before) * 1024 / (args.size_mb * len(blobs))
        samples.add(f"concurrent x{len(blobs)}", name, rate, peak_rss_mb(server.pid), cpu)
    finally:
        server.stop()
    print(f"{name}: {samples.rates[('single', name)][-1]:.0f} MiB/s single, {rate:.0f} MiB/s "
          f"x{len(blobs)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="single-stream pulls per round")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="tls-concurrent-")
    samples = Samples()
    ciphers: dict[str, str] = {}
    try:
        cert, key = self_signed(workdir)
        blobs = []
        for n in range(args.clients):
            path = os.path.join(workdir, f"blob-{n}")
            blobs.append((path, make_blob(path, args.size_mb, seed=n)))
        for number in range(args.rounds):
            base = os.path.join(workdir, f"round-{number}")

            def distribution(base: str = base) -> Server:
                storage = f"  filesystem:\n    rootdirectory: {base}/distribution/data"
                return start_distribution("distribution", f"{base}/distribution", storage, (cert, key))

            def angosd(base: str = base) -> Server:
                return start_angosd("angosd", f"{base}/angosd", ANGOSD_CONFIG.format(cert=cert, key=key), "https")

            round_for("distribution", distribution, blobs, args, samples, ciphers)
            round_for("angosd", angosd, blobs, args, samples, ciphers)
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"TLS pulls, {args.size_mb} MiB blobs, {args.rounds} rounds, load: {os.getloadavg()[0]:.2f}\n")
    print(samples.table(["single", f"concurrent x{args.clients}"], ["distribution", "angosd"]))
    print()
    for name, cipher in ciphers.items():
        print(f"- {name} negotiates with curl: {cipher}")


if __name__ == "__main__":
    main()
