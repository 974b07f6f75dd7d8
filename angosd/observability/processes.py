"""The standard ``process_*`` metrics for a daemon made of several processes.

With worker processes, prometheus-client's `ProcessCollector` would describe only the
worker that happens to answer the scrape. `ProcessGroupCollector` describes the whole
daemon instead, from ``/proc``, for the processes listed in a small file the supervisor
keeps up to date (`write_processes`: the supervisor first, then the running workers):

- ``process_cpu_seconds_total``: CPU time of every listed process, plus the CPU time of
  the supervisor's children that already ended (``cutime``/``cstime``), so the counter does
  not go back when a worker is replaced;
- ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``, ``process_open_fds``:
  summed over the listed processes;
- ``process_start_time_seconds``, ``process_max_fds``: the supervisor's.

A process that ended between the supervisor's last update and the scrape is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ProcessGroupCollector", "read_processes", "write_processes"]

try:
    import resource

    _PAGE_SIZE = resource.getpagesize()
except ImportError:  # pragma: no cover - not Unix
    _PAGE_SIZE = 4096


def write_processes(path: str, pids: Iterable[int]) -> None:
    """Record ``pids`` (the supervisor first) in ``path``, replacing it atomically."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        json.dump([int(pid) for pid in pids], file)
    os.replace(temporary, path)


def read_processes(path: str) -> list[int]:
    """The pids recorded in ``path``; [] when it is missing or unreadable."""
    try:
        with open(path) as file:
            pids = json.load(file)
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    return [pid for pid in pids if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0]


@dataclass(frozen=True, slots=True)
class _Stat:
    cpu: float  # seconds, this process
    children_cpu: float  # seconds, its children that were waited for
    start: float  # seconds since boot
    virtual: float
    resident: float


class ProcessGroupCollector(Collector):
    """``process_*`` metrics of the processes listed in ``processes_file`` (see the module
    docstring). ``proc`` is the procfs mount; without a readable one nothing is collected."""

    def __init__(self, processes_file: str, proc: str = "/proc") -> None:
        self._file = processes_file
        self._proc = proc
        try:
            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError, AttributeError):
            self._ticks = 100.0
        self._boot = self._boot_time()

    def _boot_time(self) -> float | None:
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def _stat(self, pid: int) -> _Stat | None:
        try:
            with open(os.path.join(self._proc, str(pid), "stat"), "rb") as file:
                fields = file.read().rsplit(b")", 1)[-1].split()
            return _Stat(cpu=(float(fields[11]) + float(fields[12])) / self._ticks,
                         children_cpu=(float(fields[13]) + float(fields[14])) / self._ticks,
                         start=float(fields[19]) / self._ticks, virtual=float(fields[20]),
                         resident=float(fields[21]) * _PAGE_SIZE)
        except (OSError, ValueError, IndexError):
            return None

    def _open_fds(self, pid: int) -> int | None:
        try:
            return len(os.listdir(os.path.join(self._proc, str(pid), "fd")))
        except OSError:
            return None

    def _max_fds(self, pid: int) -> float | None:
        try:
            with open(os.path.join(self._proc, str(pid), "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open files"):
                        return float(line.split()[3])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def collect(self) -> Iterator[Metric]:
        if self._boot is None:
            return
        pids = read_processes(self._file) or [os.getpid()]
        stats = {pid: stat for pid in pids if (stat := self._stat(pid)) is not None}
        if not stats:
            return
        first = pids[0]
        cpu = sum(stat.cpu for stat in stats.values())
        if first in stats:
            cpu += stats[first].children_cpu
        yield CounterMetricFamily("process_cpu_seconds_total", "Total user and system CPU time spent in seconds, "
                                  "all processes of the daemon.", value=cpu)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes, summed over the "
                                "daemon's processes.", value=sum(stat.resident for stat in stats.values()))
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes, summed over the "
                                "daemon's processes.", value=sum(stat.virtual for stat in stats.values()))
        start = stats[first].start if first in stats else min(stat.start for stat in stats.values())
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the daemon since unix epoch in seconds.",
                                value=start + self._boot)
        open_fds = [count for pid in stats if (count := self._open_fds(pid)) is not None]
        if open_fds:
            yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors, summed over the daemon's "
                                    "processes.", value=sum(open_fds))
        max_fds = self._max_fds(first)
        if max_fds is not None:
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors (per process).",
                                    value=max_fds)
