#!/usr/bin/env python3
"""The daemon's memory, every process of it: PSS, RSS, private and shared, from /proc/PID/smaps_rollup.

    python3 bench/memory.py [--workers 1 2 0] [--size-mb 1024] [--quick]
    python3 bench/memory.py --pid PID [--url http://127.0.0.1:PORT]

Without ``--pid``, for each ``--workers`` value (0: the configuration's default) a daemon is
started (``twistd -n angosd`` on a fresh store), left idle, measured, then a blob of
``--size-mb`` MiB is pushed monolithically with curl (POST, then PUT with the body) and
pulled back with curl while the process tree is sampled every ``--interval`` seconds; the
figures during a transfer are those of the sample with the highest total PSS. With ``--pid``,
the running daemon ``PID`` and its descendants are measured idle (and, given ``--url``, during
a push and a pull).

PSS (proportional set size) charges each shared page to the processes sharing it in equal
parts, so the PSS of all processes adds up to the memory the daemon really holds; RSS counts a
shared page in every process. The file-backed part of PSS (libpython, libcrypto...) is shared
with every other process mapping the same files, so it is lower on a busy machine running
other Python processes than on a quiet one; "PSS anon" does not depend on them. Figures only:
nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.blob_bench import make_blob
from tests.daemon import Daemon, children

MiB = 1024 * 1024
#: The smaps_rollup fields reported, in kB as the kernel gives them.
FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty", "Pss_Anon", "Pss_File")


@dataclass(frozen=True)
class Usage:
    """One process's memory (kB per `FIELDS` name)."""

    pid: int
    name: str
    kb: dict[str, int]

    def mib(self, name: str) -> float:
        return self.kb.get(name, 0) / 1024


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop(0)
        found.append(current)
        pending.extend(children(current))
    return found


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            name = comm.read().strip()
        if name.startswith("angosd-"):
            return name.removeprefix("angosd-")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
    except OSError:
        return "?"
    text = b" ".join(args).decode(errors="replace")
    for marker, label in (("--index", "worker"), ("twistd", "daemon")):
        if marker in text:
            if label == "worker":
                index = args[args.index(b"--index") + 1].decode() if b"--index" in args else "?"
                return f"worker {index}"
            return label
    return text[:30]


def usage(pid: int) -> Usage | None:
    """``pid``'s memory, or None once it has ended."""
    kb: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[0][:-1] in FIELDS:
                    kb[parts[0][:-1]] = int(parts[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Usage(pid, _name(pid), kb)


def snapshot(pid: int) -> list[Usage]:
    """Every process of the tree rooted at ``pid``."""
    return [found for found in (usage(member) for member in tree(pid)) if found is not None]


def total(rows: list[Usage], name: str) -> float:
    return sum(row.mib(name) for row in rows)


def table(title: str, rows: list[Usage]) -> str:
    """A Markdown table: one line per process, then the total."""
    head = "| process | pid | PSS | RSS | private | shared | PSS anon | PSS file |"
    lines = [f"**{title}** (MiB)", "", head, "|---|---|---|---|---|---|---|---|"]

    def line(name: str, pid: str, values: list[float]) -> str:
        return f"| {name} | {pid} | " + " | ".join(f"{value:.1f}" for value in values) + " |"

    for row in rows:
        lines.append(line(row.name, str(row.pid), [
            row.mib("Pss"), row.mib("Rss"), row.mib("Private_Clean") + row.mib("Private_Dirty"),
            row.mib("Shared_Clean") + row.mib("Shared_Dirty"), row.mib("Pss_Anon"), row.mib("Pss_File")]))
    lines.append(line("**total**", "", [
        total(rows, "Pss"), total(rows, "Rss"), total(rows, "Private_Clean") + total(rows, "Private_Dirty"),
        total(rows, "Shared_Clean") + total(rows, "Shared_Dirty"), total(rows, "Pss_Anon"), total(rows, "Pss_File")]))
    return "\n".join(lines)


@contextmanager
def sampling(pid: int, interval: float) -> Iterator[Callable[[], list[Usage]]]:
    """Samples the tree every ``interval`` s while the block runs; yields a function giving
    the sample with the highest total PSS."""
    best: list[list[Usage]] = [snapshot(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            rows = snapshot(pid)
            if total(rows, "Pss") > total(best[0], "Pss"):
                best[0] = rows

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: best[0]
    finally:
        done.set()
        thread.join()


def _curl(*args: str) -> str:
    result = subprocess.run(["curl", "-sS", "-f", "-H", "Expect:", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def push(url: str, path: str, digest: str) -> None:
    """A monolithic push: POST, then PUT with the whole body (streamed from the file)."""
    headers = _curl("-D", "-", "-o", "/dev/null", "-X", "POST", f"{url}/v2/bench/memory/blobs/uploads/")
    location = next(line.split(":", 1)[1].strip() for line in headers.splitlines()
                    if line.lower().startswith("location:"))
    if location.startswith("/"):
        location = url + location
    separator = "&" if "?" in location else "?"
    _curl("-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "-T", path,
          f"{location}{separator}digest={digest}")


def pull(url: str, digest: str) -> None:
    _curl("-o", "/dev/null", f"{url}/v2/bench/memory/blobs/{digest}")


def measure(pid: int, url: str | None, blob: tuple[str, str] | None, settle: float, interval: float,
            label: str) -> dict[str, list[Usage]]:
    """Idle, then (given ``url`` and ``blob``) during a push and during a pull; prints each table."""
    time.sleep(settle)
    results = {"idle": snapshot(pid)}
    if url is not None and blob is not None:
        path, digest = blob
        with sampling(pid, interval) as peak:
            push(url, path, digest)
        results["push"] = peak()
        with sampling(pid, interval) as peak:
            pull(url, digest)
        results["pull"] = peak()
    for mode, rows in results.items():
        print(table(f"{label}, {mode}", rows))
        print()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, help="measure this running daemon instead of starting one")
    parser.add_argument("--url", help="with --pid: the daemon's URL, to measure a push and a pull too")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="daemons to start and compare: --workers values (0: the configuration's default)")
    parser.add_argument("--size-mb", type=int, default=1024, help="the blob pushed and pulled (MiB)")
    parser.add_argument("--quick", action="store_true", help="a 64 MiB blob")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before the idle figure")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples during a transfer")
    parser.add_argument("--idle-only", action="store_true", help="no push or pull")
    options = parser.parse_args()
    size = 64 if options.quick else options.size_mb
    workdir = tempfile.mkdtemp(prefix="angosd-memory-")
    try:
        blob = None
        if not options.idle_only and (options.pid is None or options.url):
            path = os.path.join(workdir, "blob")
            blob = (path, make_blob(path, size))
        print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
              f"blob: {size} MiB\n")
        if options.pid is not None:
            measure(options.pid, options.url, blob, 0.0, options.interval, f"pid {options.pid}")
            return
        summary = []
        for workers in options.workers:
            run = os.path.join(workdir, f"run-{workers}")
            daemon = Daemon(workdir=run, root=os.path.join(run, "store"), workers=workers).start(timeout=60)
            try:
                assert daemon.process is not None
                label = f"workers = {workers or 'default'}"
                results = measure(daemon.process.pid, daemon.url, blob, options.settle, options.interval, label)
            finally:
                daemon.stop()
            summary.append((label, len(results["idle"]), results))
        print("| daemon | processes | idle PSS / RSS | push PSS / RSS | pull PSS / RSS | idle PSS anon / file |")
        print("|---|---|---|---|---|---|")
        for label, count, results in summary:
            cells = [f"{total(results[mode], 'Pss'):.1f} / {total(results[mode], 'Rss'):.1f}"
                     if mode in results else "-" for mode in ("idle", "push", "pull")]
            cells.append(f"{total(results['idle'], 'Pss_Anon'):.1f} / {total(results['idle'], 'Pss_File'):.1f}")
            print(f"| {label} | {count} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
