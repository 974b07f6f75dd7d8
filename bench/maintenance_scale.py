#!/usr/bin/env python3
"""Maintenance as the store grows: scrub, prune, a garbage collection pass, and the daemon
while it collects, on stores written by ``bench/scale_store.py``, beside distribution's
``docker-registry garbage-collect`` on the same content.

    python3 bench/maintenance_scale.py --sizes 1000,10000 [--work DIR] [--keep]
    python3 bench/maintenance_scale.py --sizes 100000          # the 100k-tag row (long)

For each size (tags; repositories = tags / 20, at least 100) it measures, each on a fresh
hard-linked copy of the store when the command writes (``cp -al``: angosd and distribution
only ever replace or unlink files, never write into one, so the original stays intact):

- ``angosd scrub --dry-run`` and ``angosd prune --dry-run``: wall time, peak RSS (``wait4``);
- ``angosd prune`` for real with a keep rule that keeps ~30% of the tags (tags ending in
  0 or 2), so it deletes ~70% of them;
- garbage collection passes as the daemon runs them (`GarbageCollector` with the reactor
  cooperator and the cpu pool, in a process of its own: ``--gc-pass``): a dry one on the
  store as written (everything live: the same work as ``garbage-collect --dry-run``), then,
  after the real prune, one that marks what it released and one that sweeps it;
- ``docker-registry garbage-collect --dry-run`` and ``garbage-collect --delete-untagged``
  (on a copy) on the distribution layout of the same content;
- the daemon with ``--workers 1``, then with the default workers: RSS and PSS of all its
  processes (``/proc/PID/smaps_rollup``) idle after its first pass, and the peak while it
  collects back to back (``gc_grace_secs = 1``); with one worker, manifest GET latency
  (p50/p99/max, one keep-alive client) idle and during passes.

Prints one JSON object per size and a table; figures only (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import scale_store  # noqa: E402
from peak import measured  # noqa: E402

from tests.daemon import Daemon  # noqa: E402

#: The keep rule of the real prune: tags ending in 0 or 2, ~30% of them (v0..v4 in most
#: repositories of scale_store.py, v00000.. in the large one).
KEEP_RULE = 'image.tag != null && image.tag.matches("[02]$")'
DISTRIBUTION_CONFIG = """version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
"""


def repositories_for(tags: int) -> int:
    return max(100, tags // 20)


def angosd_config(path: str, root: str, grace: int, rules: str = "") -> str:
    with open(path, "w") as out:
        out.write(f'[server]\nport = 0\n[blob_store.fs]\nroot_dir = "{root}"\n[global]\ngc_grace_secs = {grace}\n'
                  f"update_pull_time = false\n[global.retention_policy]\nrules = [{rules}]\n")
    return path


def timed(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` to completion: wall seconds, peak RSS (MiB) of the process (`peak`),
    and the last line it printed; raises when it fails."""
    run = measured(command, env)
    if run.returncode != 0:
        raise RuntimeError(f"{command} exited with {run.returncode}: {run.errors}")
    return {"seconds": round(run.seconds, 2), "peak_rss_mib": round(run.peak_rss_mib, 1),
            "last_line": run.lines[-1][:300] if run.lines else ""}


def angosd_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def angosd(*args: str) -> list[str]:
    return [sys.executable, "-m", "angosd", *args]


def linked_copy(source: str, target: str) -> str:
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-al", source, target], check=True)
    return target


# --------------------------------------------------------------------------- one GC pass


def gc_pass(config_path: str, dry_run: bool) -> None:
    """``--gc-pass``: one pass as the daemon runs it (``--dry``: writing nothing); prints its
    report and seconds as JSON."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    def main(reactor: Any) -> Any:
        from angosd.config import load_config
        from angosd.daemon.assembly import build_driver, build_pools
        from angosd.registry.blobs import BlobStore
        from angosd.registry.gc import GarbageCollector, reactor_cooperator

        config = load_config([config_path])
        pools = build_pools(config, reactor)
        pools.start_until_shutdown(reactor)
        driver = build_driver(config, reactor, pools)
        collector = GarbageCollector(driver, BlobStore(driver), reactor, lambda: config.global_.gc_grace_secs,
                                     reactor_cooperator(reactor), cpu=pools.cpu)

        async def run() -> None:
            started = time.monotonic()
            report = await collector.collect(dry_run)
            print(json.dumps({"seconds": time.monotonic() - started, "summary": report.summary(),
                              "yields": collector.yields}))

        return ensureDeferred(run())

    task.react(main)


# --------------------------------------------------------------------------- the daemon


def memory_mib(pids: list[int]) -> dict[str, float]:
    """Summed Rss and Pss (MiB) of ``pids`` from /proc/PID/smaps_rollup."""
    total = {"rss": 0.0, "pss": 0.0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    key, _, rest = line.partition(":")
                    if key in ("Rss", "Pss"):
                        total[key.lower()] += int(rest.split()[0]) / 1024
        except OSError:
            continue
    return {key: round(value, 1) for key, value in total.items()}


def daemon_pids(daemon: Daemon) -> list[int]:
    assert daemon.process is not None
    return [daemon.process.pid, *daemon.worker_pids()]


def metric(daemon: Daemon, name: str) -> float:
    text = daemon.request("GET", "/metrics").body.decode()
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def gets(port: int, paths: list[str], seconds: float) -> list[float]:
    """Manifest GETs on one keep-alive connection for ``seconds``: each latency in ms."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    latencies = []
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection.request("GET", paths[index % len(paths)], headers={"Accept": accept})
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"GET {paths[index % len(paths)]}: {response.status}")
        index += 1
    connection.close()
    return latencies


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"n": len(ordered), "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def sample_memory(daemon: Daemon, stop: threading.Event, peak: dict[str, float]) -> None:
    while not stop.is_set():
        now = memory_mib(daemon_pids(daemon))
        for key, value in now.items():
            peak[key] = max(peak.get(key, 0.0), value)
        stop.wait(0.1)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 900) -> None:
    """Wait until ``pid`` (the supervisor, which runs the collector) used under 0.05 s of CPU in
    a second: its first pass is over (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now


def daemon_figures(root: str, workdir: str, workers: int, paths: list[str], window: float) -> dict[str, Any]:
    """Idle (after the first pass), then passes back to back (``gc_grace_secs = 1``)."""
    figures: dict[str, Any] = {}
    for phase, grace in (("idle", 3600), ("gc", 1)):
        config = angosd_config(os.path.join(workdir, f"daemon-{phase}.toml"), root, grace)
        daemon = Daemon(workdir, root, configs=(config,), workers=workers)
        daemon.start(timeout=120)
        try:
            if workers == 1:  # the pass at start: wait for it (the supervisor's is not in /metrics)
                deadline = time.monotonic() + 600
                while metric(daemon, 'angosd_gc_runs_total') < 1 and time.monotonic() < deadline:
                    time.sleep(0.2)
            elif phase == "idle":  # the supervisor's first pass (passes run back to back in the other phase)
                settle(daemon.process.pid if daemon.process else 0)
            else:
                time.sleep(2)
            peak: dict[str, float] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=sample_memory, args=(daemon, stop, peak), daemon=True)
            passes_before = metric(daemon, 'angosd_gc_runs_total') if workers == 1 else 0
            sampler.start()
            latencies: list[float] = []
            if workers == 1:
                latencies = gets(daemon.port, paths, window)
            else:
                time.sleep(window)
            stop.set()
            sampler.join()
            entry: dict[str, Any] = {"memory_now": memory_mib(daemon_pids(daemon)), "memory_peak": peak,
                                     "processes": len(daemon_pids(daemon))}
            if workers == 1:
                entry["get"] = percentiles(latencies)
                entry["passes_in_window"] = metric(daemon, 'angosd_gc_runs_total') - passes_before
            figures[phase] = entry
        finally:
            daemon.stop()
    return figures


# --------------------------------------------------------------------------- one size


def measure(tags: int, work: str, window: float, with_daemon: bool) -> dict[str, Any]:
    repos = repositories_for(tags)
    store_dir = os.path.join(work, f"store-{tags}")
    summary = scale_store.ensure(store_dir, tags, repos)
    angosd_root = os.path.join(store_dir, "angosd")
    distribution_root = os.path.join(store_dir, "distribution")
    env = angosd_env()
    result: dict[str, Any] = {"tags": tags, "repositories": repos, "revisions": summary.revisions,
                              "blobs": summary.blobs, "load": os.getloadavg()[0]}

    plain = angosd_config(os.path.join(work, "plain.toml"), angosd_root, 0)
    result["scrub_dry"] = timed(angosd("scrub", "--dry-run", "-c", plain), env)
    rules = angosd_config(os.path.join(work, "rules.toml"), angosd_root, 0, json.dumps(KEEP_RULE))
    result["prune_dry"] = timed(angosd("prune", "--dry-run", "-c", rules), env)
    result["gc_pass_dry"] = _gc_pass([sys.executable, os.path.abspath(__file__), "--gc-pass", plain, "--dry"], env)

    copy = linked_copy(angosd_root, os.path.join(work, "angosd-copy"))
    rules_copy = angosd_config(os.path.join(work, "rules-copy.toml"), copy, 0, json.dumps(KEEP_RULE))
    before = sum(1 for _ in _tag_files(copy))
    result["prune"] = timed(angosd("prune", "-c", rules_copy), env)
    result["prune"]["tags_deleted"] = before - sum(1 for _ in _tag_files(copy))
    # The first pass marks what the prune released, the second one (grace 0) reclaims it.
    for name in ("gc_pass_mark", "gc_pass_sweep"):
        result[name] = _gc_pass([sys.executable, os.path.abspath(__file__), "--gc-pass", rules_copy], env)
    shutil.rmtree(copy, ignore_errors=True)

    dist_config = os.path.join(work, "distribution.yml")
    with open(dist_config, "w") as out:
        out.write(DISTRIBUTION_CONFIG.format(root=distribution_root))
    result["distribution_gc_dry"] = timed(["docker-registry", "garbage-collect", "--dry-run", dist_config])
    dist_copy = linked_copy(distribution_root, os.path.join(work, "distribution-copy"))
    with open(dist_config, "w") as out:
        out.write(DISTRIBUTION_CONFIG.format(root=dist_copy))
    result["distribution_gc_untagged"] = timed(["docker-registry", "garbage-collect", "--delete-untagged", dist_config])
    shutil.rmtree(dist_copy, ignore_errors=True)

    if with_daemon:
        paths = [f"/v2/{namespace}/manifests/{tag}" for namespace, tag, _manifest, _layer in summary.samples]
        daemon_work = tempfile.mkdtemp(dir=work, prefix="daemon-")
        result["daemon_workers_1"] = daemon_figures(angosd_root, daemon_work, 1, paths, window)
        result["daemon_default_workers"] = daemon_figures(angosd_root, daemon_work, 0, paths, window)
    return result


def _gc_pass(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    run = timed(command, env)
    report = json.loads(run.pop("last_line"))
    return {**run, "seconds": round(report["seconds"], 2), "process_seconds": run["seconds"],
            "summary": report["summary"], "yields": report["yields"]}


def _tag_files(root: str) -> Any:
    for directory, _subdirs, files in os.walk(os.path.join(root, "repositories")):
        if os.path.basename(directory) == "tags" and os.path.basename(os.path.dirname(directory)) == "_manifests":
            yield from files


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| tags | scrub --dry-run | prune --dry-run | prune (deleted) | GC pass dry / mark / sweep | "
            "distribution gc --dry-run / --delete-untagged |",
            "|---|---|---|---|---|---|"]
    for r in results:
        cell = {key: f"{r[key]['seconds']} s, {r[key]['peak_rss_mib']} MiB" for key in
                ("scrub_dry", "prune_dry", "prune", "gc_pass_dry", "gc_pass_mark", "gc_pass_sweep",
                 "distribution_gc_dry", "distribution_gc_untagged")}
        rows.append(f"| {r['tags']} | {cell['scrub_dry']} | {cell['prune_dry']} | {cell['prune']} "
                    f"({r['prune']['tags_deleted']}) | {cell['gc_pass_dry']} / {cell['gc_pass_mark']} / "
                    f"{cell['gc_pass_sweep']} "
                    f"| {cell['distribution_gc_dry']} / {cell['distribution_gc_untagged']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated tag counts")
    parser.add_argument("--work", default=None, help="where stores are written (kept and reused when given)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of GETs per daemon phase")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon figures")
    parser.add_argument("--gc-pass", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gc_pass:
        gc_pass(args.gc_pass, args.dry)
        return
    work = args.work or tempfile.mkdtemp(prefix="maintenance-scale-")
    os.makedirs(work, exist_ok=True)
    results = []
    try:
        for size in (int(text) for text in args.sizes.split(",")):
            result = measure(size, work, args.window, not args.no_daemon)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))


if __name__ == "__main__":
    main()
