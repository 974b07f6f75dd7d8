#!/usr/bin/env python3
"""Does a wrong-password flood slow down legitimate traffic? Latency with and without one.

    python3 bench/auth_flood.py [--pushes 5] [--size-mb 100] [--flooders 50]

The daemon (one process, ``twistd -n angosd``) has a Basic user ``ci`` (argon2id at
argon2-cffi's defaults: 64 MiB, t=3, p=4) and lets anonymous callers read. Three runs:

- ``quiet``: no flood;
- ``flood``: ``--flooders`` threads send wrong passwords (a new username each time, so only
  the per-address limit applies) as fast as the daemon answers, from addresses of their own
  (127.0.0.2 and up: the attacker is not the CI runner), with the default ``[auth.login_limits]``;
- ``flood-unlimited``: the same with the limits off (``0``), so every wrong password costs an
  argon2 run and only the bounded ``cpu`` pool (429 when its queue is full) protects the rest.

In each run, ``ci`` pushes ``--pushes`` blobs of ``--size-mb`` MiB (monolithic POST + PUT,
Basic credentials on each request) while one thread sends anonymous blob HEADs in a loop.
Reported: p50/p99 of push and HEAD latency, the flood's answers by status, and the daemon's
peak RSS (VmHWM, reset before each run). Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from angosd.auth.basic import hash_password
from bench.blob_bench import peak_rss_mb, reset_peak
from tests.daemon import Daemon

MiB = 1024 * 1024
PASSWORD = "ci-password"
CONFIG = """
[global.access_policy]
default = "deny"
rules = ["request.action in ['get-api-version', 'get-manifest', 'get-blob', 'list-tags']",
         "identity.username == 'ci'"]

[auth.identity.ci]
username = "ci"
password = "{hash}"
{limits}
"""
#: Processes the flooding threads are spread over.
FLOOD_PROCESSES = 5
NO_LIMITS = "\n[auth.login_limits]\nfailures_per_address = 0\nfailures_per_username = 0\n"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def push(port: int, data: bytes, namespace: str) -> float:
    """One monolithic push of ``data`` as ``ci``; seconds taken (raises on failure)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    auth = {"Authorization": basic("ci", PASSWORD)}
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", f"/v2/{namespace}/blobs/uploads/", headers={**auth, "Content-Length": "0"})
        response = connection.getresponse()
        response.read()
        if response.status != 202:
            raise RuntimeError(f"POST answered {response.status}")
        location = response.getheader("Location") or ""
        separator = "&" if "?" in location else "?"
        connection.request("PUT", f"{location}{separator}digest={digest}", body=data,
                           headers={**auth, "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"PUT answered {response.status}")
    finally:
        connection.close()
    return time.monotonic() - started


def head_loop(port: int, path: str, stop: threading.Event, latencies: list[float], statuses: Counter[int]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("HEAD", path)
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
            latencies.append(time.monotonic() - started)
        except OSError:
            statuses[0] += 1
        finally:
            connection.close()
        time.sleep(0.02)


def flood_process(port: int, first: int, threads: int, source: str, stop: Any, results: Any) -> None:
    """``threads`` flooders in a process of their own (the measuring threads keep the GIL),
    connecting from ``source`` (an attacker's address, not the legitimate clients')."""
    statuses: Counter[int] = Counter()
    local_stop = threading.Event()
    workers = [threading.Thread(target=flood_loop, args=(port, first + i, source, local_stop, statuses), daemon=True)
               for i in range(threads)]
    for worker in workers:
        worker.start()
    stop.wait()
    local_stop.set()
    for worker in workers:
        worker.join(40)
    results.put(dict(statuses))


def flood_loop(port: int, index: int, source: str, stop: threading.Event, statuses: Counter[int]) -> None:
    attempt = 0
    while not stop.is_set():
        attempt += 1
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        try:
            connection.request("GET", "/v2/", headers={"Authorization": basic(f"flood{index}-{attempt}", "wrong")})
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
        except OSError:
            statuses[0] += 1
        finally:
            connection.close()


def run(name: str, limits: str, flooders: int, pushes: int, size_mb: int, workdir: str) -> dict[str, object]:
    config = os.path.join(workdir, f"{name}.toml")
    with open(config, "w") as out:
        out.write(CONFIG.format(hash=hash_password(PASSWORD), limits=limits))
    daemon = Daemon(os.path.join(workdir, name), os.path.join(workdir, f"{name}-store"), configs=(config,),
                    workers=1).start()
    try:
        assert daemon.process is not None
        small = os.urandom(4096)
        push(daemon.port, small, "bench/small")
        head_path = f"/v2/bench/small/blobs/sha256:{hashlib.sha256(small).hexdigest()}"
        data = os.urandom(size_mb * MiB)
        reset_peak(daemon.process.pid)
        stop = threading.Event()
        flood_stop = multiprocessing.Event()
        results: Any = multiprocessing.Queue()
        head_latencies: list[float] = []
        head_statuses: Counter[int] = Counter()
        per_process = -(-flooders // FLOOD_PROCESSES) if flooders else 0
        processes = [multiprocessing.Process(target=flood_process, args=(daemon.port, i * per_process,
                                                                         min(per_process, flooders - i * per_process),
                                                                         f"127.0.0.{2 + i}", flood_stop, results))
                     for i in range(FLOOD_PROCESSES) if flooders - i * per_process > 0]
        for process in processes:
            process.start()
        header = threading.Thread(target=head_loop, args=(daemon.port, head_path, stop, head_latencies,
                                                          head_statuses), daemon=True)
        header.start()
        time.sleep(2.0 if flooders else 0.5)  # let the flood build up
        push_times = [push(daemon.port, data, f"bench/big{i}") for i in range(pushes)]
        stop.set()
        flood_stop.set()
        flood_statuses: Counter[int] = Counter()
        for _ in processes:
            flood_statuses.update(results.get(timeout=90))
        for process in processes:
            process.join(30)
        header.join(60)
        return {
            "run": name,
            "push_p50_s": round(statistics.median(push_times), 3),
            "push_p99_s": round(percentile(push_times, 0.99), 3),
            "pushes": len(push_times),
            "head_p50_ms": round(1000 * percentile(head_latencies, 0.5), 1),
            "head_p99_ms": round(1000 * percentile(head_latencies, 0.99), 1),
            "heads": dict(head_statuses),
            "flood_answers": dict(flood_statuses),
            "peak_rss_mb": round(peak_rss_mb(daemon.process.pid), 1),
        }
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--flooders", type=int, default=50)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="angosd-auth-flood-")
    try:
        for name, limits, flooders in (("quiet", "", 0), ("flood", "", args.flooders),
                                       ("flood-unlimited", NO_LIMITS, args.flooders)):
            print(json.dumps(run(name, limits, flooders, args.pushes, args.size_mb, workdir)), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
