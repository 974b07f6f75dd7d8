#!/usr/bin/env python3
"""Costs as the store grows: listings, manifest GETs, blob HEADs and memory of angosd and of
distribution (Debian's ``docker-registry``, 2.8) on the same content, at several store sizes.

    python3 bench/scale_bench.py [--sizes 1k,10k,100k] [--workdir DIR] [--maintenance] [--keep]

For each size (``1k``: 1,000 tags in 100 repositories, ``10k``: 10,000 in 1,000, ``100k``:
100,000 in 5,000; ``N:R`` for others), `scale_store` writes the store in both layouts (kept
in ``--workdir`` and reused by later runs of the same size), then angosd (default
configuration: a supervisor and its workers) and docker-registry are started on it, one
after the other, and each is measured alone:

- ``_catalog?n=100``: the first page and the last page (median of several requests);
- walking every catalog page with ``n=100`` (total time, pages);
- ``_catalog`` with no ``n`` (time, names answered, whether a ``Link`` follows);
- ``tags/list?n=100`` of the repository holding the most tags: first page and a page from
  its middle;
- angosd only: ``_ext/_repositories``, ``_ext/<repo>/_namespaces`` of the largest first
  component, ``_ext/<ns>/_revisions?n=100`` of the large repository, the referrers of the
  revision with 1,000 referrers (distribution 2.8 has no referrers API);
- manifest GET and blob HEAD: p50 and p99 over a spread of images, on one keep-alive connection;
- memory: RSS and PSS of every process of the daemon (``/proc/PID/smaps_rollup``), idle
  after the requests above.

``--maintenance`` adds the rows of `MAINTENANCE` (each a function of a `Target` and the store
that returns rows): today ``angosd scrub --dry-run`` and distribution's ``garbage-collect
--dry-run``, timed with their peak RSS. Add more there (GC passes, prune). Figures only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale_store
from peak import measured

from tests.daemon import REPO, Daemon, children
from tests.integration.upstreams import DockerRegistry

SIZES = {"1k": (1_000, 100), "10k": (10_000, 1_000), "100k": (100_000, 5_000)}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: Requests per listing figure (the median is reported), and per latency sample.
REPEAT = 9
LATENCY_REQUESTS = 400


@dataclass
class Target:
    """One running registry on a store: its name, address and the pids of its processes."""

    name: str
    host: str
    port: int
    pids: Callable[[], list[int]]
    store: str
    config: str = ""
    connection: http.client.HTTPConnection | None = None

    def get(self, path: str, method: str = "GET",
            accept: str | None = None) -> tuple[int, dict[str, str], bytes, float]:
        """One request on the kept connection: status, headers, body, and milliseconds taken."""
        for attempt in (0, 1):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            started = time.perf_counter()
            try:
                self.connection.request(method, path, headers={"Accept": accept} if accept else {})
                response = self.connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = None
                if attempt:
                    raise
                continue
            elapsed = (time.perf_counter() - started) * 1000
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body, elapsed
        raise AssertionError("unreachable")

    def timed(self, path: str, repeat: int = REPEAT) -> tuple[float, int, dict[str, str], bytes]:
        """Median milliseconds of ``repeat`` GETs of ``path``, and the last answer."""
        times = []
        status, headers, body = 0, dict[str, str](), b""
        for _ in range(repeat):
            status, headers, body, elapsed = self.get(path)
            times.append(elapsed)
        return statistics.median(times), status, headers, body


@dataclass
class Row:
    """One line of the results: a figure for angosd and one for distribution (or a note)."""

    what: str
    figures: dict[str, str] = field(default_factory=dict)


def next_link(headers: dict[str, str]) -> str | None:
    link = headers.get("link")
    if not link:
        return None
    target = link[link.index("<") + 1:link.index(">")]
    return target if target.startswith("/") else "/" + target.split("/", 3)[3]


def walk_catalog(target: Target, n: int = 100) -> tuple[float, int, str | None, int]:
    """Every catalog page: total ms, pages, the ``last`` marker of the last page, names."""
    started = time.perf_counter()
    path: str | None = f"/v2/_catalog?n={n}"
    pages, names, last_path = 0, 0, None
    while path is not None:
        status, headers, body, _ = target.get(path)
        assert status == 200, (target.name, path, status, body[:200])
        pages += 1
        names += len(json.loads(body)["repositories"])
        last_path = path
        path = next_link(headers)
    return (time.perf_counter() - started) * 1000, pages, last_path, names


def smaps(pids: list[int]) -> tuple[float, float]:
    """Total RSS and PSS (MiB) of ``pids`` from ``/proc/PID/smaps_rollup``."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    key, _, rest = line.partition(":")
                    if key == "Rss":
                        rss += int(rest.split()[0])
                    elif key == "Pss":
                        pss += int(rest.split()[0])
        except FileNotFoundError:
            continue
    return rss / 1024, pss / 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latency(target: Target, requests: list[tuple[str, str]], method: str, accept: str | None) -> tuple[float, float]:
    times = []
    for _ in range(2):  # warm up the connection and caches
        target.get(requests[0][0], method, accept)
    for index in range(LATENCY_REQUESTS):
        path, _what = requests[index % len(requests)]
        status, _headers, _body, elapsed = target.get(path, method, accept)
        assert status == 200, (target.name, path, status)
        times.append(elapsed)
    return percentile(times, 0.5), percentile(times, 0.99)


def cpu_ticks(pids: list[int]) -> int:
    """User and system clock ticks used so far by ``pids``."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def wait_idle(target: Target, timeout: float = 120.0) -> float:
    """Wait until the registry's processes use less than 5% of a core over a second (start-up
    work such as a first collection pass is over); the seconds waited."""
    started = time.monotonic()
    ticks = cpu_ticks(target.pids())
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = cpu_ticks(target.pids())
        if now - ticks <= os.sysconf("SC_CLK_TCK") * 0.05:
            break
        ticks = now
    return time.monotonic() - started


def measure(target: Target, summary: scale_store.Summary, angosd: bool) -> dict[str, str]:
    """The figures of one registry on one store, by row name, once it is idle."""
    out: dict[str, str] = {}
    waited = wait_idle(target)
    print(f"  {target.name}: idle after {waited:.0f}s", flush=True)
    first, status, headers, _ = target.timed("/v2/_catalog?n=100")
    assert status == 200
    walked, pages, last_path, names = walk_catalog(target)
    assert names == summary.repositories, (target.name, names, summary.repositories)
    last, _, _, _ = target.timed(last_path or "/v2/_catalog?n=100")
    out["catalog n=100 first / last page"] = f"{first:.1f} / {last:.1f} ms"
    out["walk all catalog pages (n=100)"] = f"{walked:.0f} ms ({pages} pages)"
    whole, _, headers, body = target.timed("/v2/_catalog", repeat=3)
    answered = len(json.loads(body)["repositories"])
    out["catalog with no n"] = f"{whole:.1f} ms, {answered} names{' + Link' if 'link' in headers else ''}"
    big = f"/v2/{summary.big}/tags/list"
    tags_first, status, _, body = target.timed(f"{big}?n=100")
    listed = len(json.loads(body)["tags"])
    middle = f"v{summary.big_tags // 2:05d}"
    tags_middle, _, _, _ = target.timed(f"{big}?n=100&last={middle}")
    out[f"tags/list?n=100 ({summary.big_tags} tags) first / middle page"] = \
        f"{tags_first:.1f} / {tags_middle:.1f} ms ({listed} tags answered)"
    if angosd:
        repositories, status, _, body = target.timed("/v2/_ext/_repositories")
        assert status == 200, body[:200]
        out["_ext/_repositories"] = f"{repositories:.1f} ms ({len(json.loads(body)['repositories'])} listed)"
        group = "org000"
        namespaces, status, _, body = target.timed(f"/v2/_ext/{group}/_namespaces")
        assert status == 200, body[:200]
        out[f"_ext/{group}/_namespaces"] = f"{namespaces:.1f} ms ({len(json.loads(body)['namespaces'])} listed)"
        revisions, status, _, body = target.timed(f"/v2/_ext/{summary.big}/_revisions?n=100", repeat=3)
        listed_revisions = len(json.loads(body).get("revisions", [])) if status == 200 else 0
        out["_ext/<big>/_revisions?n=100"] = f"{revisions:.1f} ms ({listed_revisions} listed, {len(body)} bytes)"
        referrers, status, _, body = target.timed(f"/v2/{summary.signed}/referrers/{summary.subject}", repeat=3)
        assert status == 200, body[:200]
        out[f"referrers of one revision ({summary.referrers})"] = \
            f"{referrers:.1f} ms ({len(json.loads(body)['manifests'])} listed)"
    manifests = [(f"/v2/{ns}/manifests/{tag}", ns) for ns, tag, _digest, _layer in summary.samples]
    blobs = [(f"/v2/{ns}/blobs/sha256:{layer}", ns) for ns, _tag, _digest, layer in summary.samples]
    p50, p99 = latency(target, manifests, "GET", OCI_MANIFEST)
    out["manifest GET p50 / p99"] = f"{p50:.2f} / {p99:.2f} ms"
    p50, p99 = latency(target, blobs, "HEAD", None)
    out["blob HEAD p50 / p99"] = f"{p50:.2f} / {p99:.2f} ms"
    if target.connection is not None:
        target.connection.close()
        target.connection = None
    time.sleep(1.0)
    pids = target.pids()
    rss, pss = smaps(pids)
    out["memory idle: RSS / PSS (all processes)"] = f"{rss:.0f} / {pss:.0f} MiB ({len(pids)} processes)"
    return out


def timed_command(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command to completion: seconds, its peak RSS (MiB), and its output's last line."""
    run = measured(args, env)
    if run.returncode != 0:
        raise SystemExit(f"{args[:4]} failed ({run.returncode}): {run.lines[-5:]} {run.errors}")
    return run.seconds, run.peak_rss_mib, run.lines[-1] if run.lines else ""


def angosd_scrub(angosd: Target, distribution: Target, out: str) -> list[Row]:
    """``angosd scrub --dry-run`` on the store, beside distribution's ``garbage-collect --dry-run``."""
    env = {**os.environ, "PYTHONPATH": REPO}
    seconds, peak, _ = timed_command([sys.executable, "-m", "angosd", "scrub", "--dry-run", "--root",
                                      os.path.join(out, "angosd")], env)
    row = Row("scrub --dry-run / garbage-collect --dry-run")
    row.figures["angosd"] = f"{seconds:.1f} s, peak RSS {peak:.0f} MiB"
    if distribution.config:
        seconds, peak, _ = timed_command([shutil.which("docker-registry") or "docker-registry", "garbage-collect",
                                          "--dry-run", distribution.config])
        row.figures["distribution"] = f"{seconds:.1f} s, peak RSS {peak:.0f} MiB"
    return [row]


#: Rows measured with ``--maintenance`` once both registries were measured (and stopped):
#: each is called with the angosd and distribution targets and the store's directory.
MAINTENANCE: list[Callable[[Target, Target, str], list[Row]]] = [angosd_scrub]


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children(pid)
    return found


def run_size(label: str, tags: int, repos: int, workdir: str, maintenance: bool) -> list[Row]:
    out = os.path.join(workdir, f"store-{tags}-{repos}")
    started = time.monotonic()
    summary = scale_store.ensure(out, tags, repos)
    print(f"[{label}] store: {summary.tags} tags, {summary.repositories} repositories, {summary.revisions} "
          f"revisions, {summary.blobs} blobs (ready in {time.monotonic() - started:.0f}s)", flush=True)
    figures: dict[str, dict[str, str]] = {}

    daemon = Daemon(os.path.join(workdir, f"daemon-{label}"), os.path.join(out, "angosd"), workers=0).start(60)
    angosd = Target("angosd", "127.0.0.1", daemon.port, lambda: process_tree(daemon.process.pid) if daemon.process
                    else [], out)
    try:
        figures["angosd"] = measure(angosd, summary, angosd=True)
    finally:
        daemon.stop()
    registry = DockerRegistry(Path(workdir) / f"distribution-{label}")
    data = registry.directory / "data"
    if data.is_symlink() or data.exists():
        data.unlink() if data.is_symlink() else shutil.rmtree(data)
    os.symlink(os.path.join(out, "distribution"), data)
    registry.start()
    distribution = Target("distribution", "127.0.0.1", registry.port,
                          lambda: process_tree(registry.process.pid) if registry.process else [], out,
                          str(registry.directory / "config.yml"))
    try:
        figures["distribution"] = measure(distribution, summary, angosd=False)
    finally:
        registry.stop()
    rows = [Row(what, {name: figures[name].get(what, "-") for name in figures}) for what in figures["angosd"]]
    if maintenance:
        for hook in MAINTENANCE:
            rows += hook(angosd, distribution, out)
    return rows


def table(label: str, rows: list[Row]) -> str:
    lines = [f"| {label} | angosd | distribution |", "|---|---|---|"]
    lines += [f"| {row.what} | {row.figures.get('angosd', '-')} | {row.figures.get('distribution', '-')} |"
              for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1k,10k,100k", help="comma-separated: 1k, 10k, 100k or TAGS:REPOS")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "angosd-scale-bench"),
                        help="where stores are generated and kept between runs")
    parser.add_argument("--maintenance", action="store_true", help="also time scrub and garbage collection")
    parser.add_argument("--keep", action="store_true", help="keep the generated stores (default: remove them)")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    try:
        for label in args.sizes.split(","):
            tags, repos = SIZES[label] if label in SIZES else (int(x) for x in label.split(":"))
            rows = run_size(label, tags, repos, args.workdir, args.maintenance)
            print(table(f"{label} ({tags} tags, {repos} repositories)", rows), flush=True)
    finally:
        if not args.keep:
            for entry in os.listdir(args.workdir):
                shutil.rmtree(os.path.join(args.workdir, entry), ignore_errors=True)


if __name__ == "__main__":
    main()
