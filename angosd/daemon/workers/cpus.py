"""How many CPUs this process may really use: the default number of workers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

_CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _quota_v2(directory: str) -> float | None:
    """``cpu.max`` of one cgroup v2 directory as CPUs ("max" or unreadable: None)."""
    text = _read(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(directory: str) -> float | None:
    """``cpu.cfs_quota_us / cpu.cfs_period_us`` of one cgroup v1 directory (-1 or unreadable: None)."""
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _ancestors(root: str, relative: str) -> list[str]:
    """``root/relative`` and each of its parent directories up to ``root``."""
    parts = [part for part in relative.split("/") if part and part not in (".", "..")]
    return [os.path.join(root, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = _CGROUP_ROOT) -> float | None:
    """The tightest CPU bandwidth limit (in CPUs) of this process's cgroup and its ancestors,
    cgroup v2 or v1 (``cpu`` controller); None when there is none or it cannot be read."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2 unified hierarchy
            limits += [q for d in _ancestors(root, path) if (q := _quota_v2(d)) is not None]
        elif "cpu" in controllers.split(","):
            for mount in (os.path.join(root, controllers), os.path.join(root, "cpu")):
                if os.path.isdir(mount):
                    limits += [q for d in _ancestors(mount, path) if (q := _quota_v1(d)) is not None]
                    break
    return min(limits) if limits else None


def usable_cpus(affinity: Callable[[], int] | None = None, limit: Callable[[], float | None] = cgroup_cpu_limit) -> int:
    """CPUs this process may run on (its affinity mask), capped by a cgroup CPU quota rounded
    up (a container given 1.5 CPUs gets 2); always at least 1."""
    if affinity is None:
        def affinity() -> int:
            if hasattr(os, "sched_getaffinity"):
                return len(os.sched_getaffinity(0))
            return os.cpu_count() or 1
    count = affinity()
    quota = limit()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
