#!/usr/bin/env python3
"""Does anything stall the event loop? Blob HEAD latency from one client under hostile load.

    python3 bench/stall_bench.py [--workers 1] [--seconds 10] [--pushers 3] [--revisions 1000]
                                 [--flooders 20] [--quick]

The daemon runs as a child process (``twistd -n angosd``, real port) with a Basic user and
``default = "allow"`` (anonymous clients may push), ``[auth.login_limits]`` off so that every
wrong password costs an argon2 verification. One client sends blob HEADs on a keep-alive
connection, one every 10 ms, through four phases of ``--seconds`` each:

- ``idle``: nothing else;
- ``nested``: ``--pushers`` clients push 4 MiB manifests made of nested ``[]`` (each must be
  refused with 400 ``MANIFEST_INVALID``; their answer times are reported);
- ``revisions``: one client lists ``_revisions`` of a namespace with ``--revisions`` revisions
  again and again, as the web UI does (``n=1000``, following ``Link`` headers);
- ``flood``: ``--flooders`` clients send wrong passwords (a new username each time).

The load generators run in processes of their own, so the measuring client keeps its
interpreter to itself. Reported per phase: HEAD p50/p99/max and p99 relative to idle, the
load's answers, and ``angosd_reactor_lag_seconds`` over the phase (probes, and how many were
late by 10 ms or more) from ``/metrics``. Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from angosd.auth.basic import hash_password
from tests.daemon import Daemon

MiB = 1024 * 1024
CONFIG = """
[global.access_policy]
default = "allow"

[auth.identity.ci]
username = "ci"
password = "{hash}"

[auth.login_limits]
failures_per_address = 0
failures_per_username = 0
"""
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
#: Seconds between two HEADs of the measuring client.
HEAD_PAUSE = 0.01
_LAG_BUCKET = re.compile(r'^angosd_reactor_lag_seconds_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\} ([0-9.e+]+)$', re.M)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def request(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read(), response


def nested_manifest(size: int) -> bytes:
    """``size`` bytes of nested empty lists (groups 900 deep: under the JSON decoder's depth
    limit, so all of it would be decoded)."""
    group = b"[" * 900 + b"]" * 900
    return b"[" + b",".join([group] * (size // (len(group) + 1))) + b"]"


# -- the measuring client --------------------------------------------------------------------


def head_loop(port: int, path: str, stop: threading.Event, latencies: list[float], statuses: Counter[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _, _ = request(connection, "HEAD", path)
            latencies.append(time.monotonic() - started)
            statuses[status] += 1
        except (OSError, http.client.HTTPException):
            statuses[0] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        time.sleep(HEAD_PAUSE)
    connection.close()


# -- the load, in processes of their own ---------------------------------------------------


def load_process(kind: str, port: int, index: int, argument: Any, stop: Any, results: Any) -> None:
    """Run one load generator until ``stop`` is set; put (answers by status, answer times)."""
    statuses: Counter[int] = Counter()
    times: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    attempt = 0
    while not stop.is_set():
        attempt += 1
        started = time.monotonic()
        try:
            if kind == "nested":
                status, _, _ = request(connection, "PUT", f"/v2/bench/attack{index}/manifests/latest", argument,
                                       {"Content-Type": OCI_MANIFEST})
            elif kind == "revisions":
                status = walk_revisions(connection, argument)
            else:
                credentials = base64.b64encode(f"flood{index}-{attempt}:wrong".encode()).decode()
                status, _, _ = request(connection, "GET", "/v2/", headers={"Authorization": f"Basic {credentials}"})
            statuses[status] += 1
            times.append(time.monotonic() - started)
        except (OSError, http.client.HTTPException):
            statuses[0] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.close()
    results.put((dict(statuses), times))


def walk_revisions(connection: http.client.HTTPConnection, namespace: str) -> int:
    """Every page of ``_revisions`` of ``namespace``; the last status (200 when all went well)."""
    path: str | None = f"/v2/_ext/{namespace}/_revisions?n=1000"
    listed = 0
    status = 0
    while path is not None:
        status, body, response = request(connection, "GET", path)
        if status != 200:
            return status
        listed += len(json.loads(body)["revisions"])
        link = response.getheader("Link")
        path = link[1:link.index(">")] if link else None
    return status if listed else -1


# -- phases --------------------------------------------------------------------------------


def lag_buckets(port: int) -> dict[float, float]:
    """``angosd_reactor_lag_seconds`` cumulative bucket counts (summed over processes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        _, body, _ = request(connection, "GET", "/metrics")
    finally:
        connection.close()
    buckets: Counter[float] = Counter()
    for le, value in _LAG_BUCKET.findall(body.decode()):
        buckets[float(le)] += float(value)
    return dict(buckets)


def phase(name: str, daemon: Daemon, head_path: str, seconds: float,
          load: tuple[str, int, Any] | None, idle_p99: float | None) -> dict[str, Any]:
    before = lag_buckets(daemon.port)
    stop_load = multiprocessing.Event()
    results: Any = multiprocessing.Queue()
    processes = []
    if load is not None:
        kind, count, argument = load
        processes = [multiprocessing.Process(target=load_process, args=(kind, daemon.port, i, argument, stop_load,
                                                                        results)) for i in range(count)]
    for process in processes:
        process.start()
    time.sleep(1.0 if processes else 0)  # let the load build up
    stop = threading.Event()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    header = threading.Thread(target=head_loop, args=(daemon.port, head_path, stop, latencies, statuses))
    header.start()
    time.sleep(seconds)
    stop.set()
    header.join(120)
    stop_load.set()
    load_statuses: Counter[int] = Counter()
    load_times: list[float] = []
    for _ in processes:
        answered, times = results.get(timeout=300)
        load_statuses.update(answered)
        load_times += times
    for process in processes:
        process.join(60)
    after = lag_buckets(daemon.port)
    probes = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    late = probes - (after.get(0.01, 0) - before.get(0.01, 0))
    p99 = percentile(latencies, 0.99)
    return {
        "phase": name,
        "heads": len(latencies), "head_statuses": dict(statuses),
        "head_p50_ms": ms(percentile(latencies, 0.5)), "head_p99_ms": ms(p99), "head_max_ms": ms(max(latencies)),
        "p99_vs_idle": round(p99 / idle_p99, 2) if idle_p99 else 1.0,
        "load_answers": dict(load_statuses),
        "load_p50_ms": ms(percentile(load_times, 0.5)) if load_times else None,
        "load_max_ms": ms(max(load_times)) if load_times else None,
        "lag_probes": int(probes), "lag_probes_late_10ms": int(late),
    }


def push_revisions(port: int, namespace: str, count: int) -> None:
    """``count`` small manifests (distinct annotations) into ``namespace``, on 4 connections."""
    empty = b"{}"
    digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    status, _, _ = request(connection, "POST", f"/v2/{namespace}/blobs/uploads/?digest={digest}", empty,
                           {"Content-Type": "application/octet-stream"})
    assert status == 201, status
    connection.close()

    def push_some(numbers: range) -> None:
        pusher = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for number in numbers:
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.bench",
                               "config": {"mediaType": OCI_EMPTY, "digest": digest, "size": 2}, "layers": [],
                               "annotations": {"number": str(number)}}).encode()
            answer, _, _ = request(pusher, "PUT", f"/v2/{namespace}/manifests/r{number}", body,
                                   {"Content-Type": OCI_MANIFEST})
            assert answer == 201, answer
        pusher.close()

    threads = [threading.Thread(target=push_some, args=(range(i, count, 4),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(args: argparse.Namespace, workdir: str) -> list[dict[str, Any]]:
    config = os.path.join(workdir, "angosd.toml")
    with open(config, "w") as out:
        out.write(CONFIG.format(hash=hash_password("ci-password")))
    daemon = Daemon(os.path.join(workdir, "work"), os.path.join(workdir, "store"), configs=(config,),
                    workers=args.workers).start()
    try:
        blob = os.urandom(4096)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        status, _, _ = request(connection, "POST", f"/v2/bench/head/blobs/uploads/?digest={digest}", blob,
                               {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        connection.close()
        started = time.monotonic()
        push_revisions(daemon.port, "bench/revisions", args.revisions)
        print(json.dumps({"setup": f"{args.revisions} revisions pushed",
                          "seconds": round(time.monotonic() - started, 1)}), flush=True)
        head_path = f"/v2/bench/head/blobs/{digest}"
        phases: list[tuple[str, tuple[str, int, Any] | None]] = [
            ("idle", None),
            ("nested", ("nested", args.pushers, nested_manifest(4 * MiB))),
            ("revisions", ("revisions", 1, "bench/revisions")),
            ("flood", ("flood", args.flooders, None)),
        ]
        report: list[dict[str, Any]] = []
        idle_p99: float | None = None
        for name, load in phases:
            result = phase(name, daemon, head_path, args.seconds, load, idle_p99)
            if idle_p99 is None:
                idle_p99 = result["head_p99_ms"] / 1000
            print(json.dumps(result), flush=True)
            report.append(result)
        return report
    finally:
        daemon.stop()


def table(report: list[dict[str, Any]], say: Callable[[str], None] = print) -> None:
    say("| phase | HEAD p50 | p99 | max | p99 / idle | load answers (p50) | lag probes late >= 10 ms |")
    say("|---|---:|---:|---:|---:|---|---:|")
    for row in report:
        load = ", ".join(f"{status}: {count}" for status, count in sorted(row["load_answers"].items()))
        if row["load_p50_ms"] is not None:
            load += f" ({row['load_p50_ms']} ms)"
        say(f"| {row['phase']} | {row['head_p50_ms']} ms | {row['head_p99_ms']} ms | {row['head_max_ms']} ms "
            f"| {row['p99_vs_idle']}x | {load or '-'} | {row['lag_probes_late_10ms']} of {row['lag_probes']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="--workers of the daemon (0: its default)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--pushers", type=int, default=3)
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--flooders", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 s phases, 200 revisions, 8 flooders")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.revisions, args.flooders = 3.0, 200, 8
    workdir = tempfile.mkdtemp(prefix="angosd-stall-")
    try:
        table(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
