"""Metrics of the scheduled image-set sync (``[mirror]``), exposed at ``/metrics``:

- ``angosd_mirror_runs_total{result}``: finished runs, ``result`` ``success`` or ``failure``;
- ``angosd_mirror_last_success_timestamp_seconds``: wall time of the last successful run (0: none yet);
- ``angosd_mirror_last_run_timestamp_seconds``: wall time of the last run, whatever its outcome;
- ``angosd_mirror_images_synced_total``, ``angosd_mirror_images_changed_total``,
  ``angosd_mirror_blobs_fetched_total``, ``angosd_mirror_bytes_fetched_total``: sums over runs.

The sync runs in one process per store (the single daemon, or the supervisor of worker
processes), while ``/metrics`` may be answered by any worker. So `MirrorStatus` holds
the figures, `MirrorRecorder` updates it after each run and, with a ``path``, writes it
as a small JSON file (atomically); `MirrorCollector` reports a status read from memory
or from that file at each scrape (a file of fixed, small size).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Largest status file read (it holds eight numbers).
_MAX_STATUS = 4096


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    """The figures of every run so far."""

    runs_succeeded: int = 0
    runs_failed: int = 0
    last_success: float = 0.0
    last_run: float = 0.0
    images: int = 0
    changed: int = 0
    blobs: int = 0
    bytes_fetched: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MirrorStatus | None:
        """The status in ``data``, or None when it is not one (never raises)."""
        try:
            document = json.loads(data)
            values = {name: document[name] for name in cls.__dataclass_fields__}
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            return None
        return cls(**values)


class _Summary(Protocol):
    images: int
    changed: int
    blobs_fetched: int
    bytes_fetched: int


class MirrorRecorder:
    """Keeps the `MirrorStatus` up to date (a `angosd.proxy.sync.SyncRecorder`)."""

    def __init__(self, path: Callable[[], str] | None = None) -> None:
        """``path`` gives the status file (asked at each write: it may exist only once running)."""
        self.status = MirrorStatus()
        self._path = path

    def record(self, summary: _Summary | None, succeeded: bool, finished_at: float) -> None:
        status = self.status
        if summary is not None:
            status = replace(status, images=status.images + summary.images, changed=status.changed + summary.changed,
                             blobs=status.blobs + summary.blobs_fetched,
                             bytes_fetched=status.bytes_fetched + summary.bytes_fetched)
        if succeeded:
            status = replace(status, runs_succeeded=status.runs_succeeded + 1, last_success=finished_at)
        else:
            status = replace(status, runs_failed=status.runs_failed + 1)
        self.status = replace(status, last_run=finished_at)
        if self._path is not None:
            path = self._path()
            with contextlib.suppress(OSError):
                with open(f"{path}.tmp", "wb") as out:
                    out.write(self.status.to_json())
                os.replace(f"{path}.tmp", path)


def status_file_reader(path: str) -> Callable[[], MirrorStatus | None]:
    """Reads the status a recorder in another process writes to ``path`` (None until the first run)."""

    def read() -> MirrorStatus | None:
        try:
            with open(path, "rb") as source:
                return MirrorStatus.from_json(source.read(_MAX_STATUS))
        except OSError:
            return None

    return read


class MirrorCollector(Collector):
    """Reports ``source()`` at each scrape (see the module doc); nothing before the first run."""

    def __init__(self, source: Callable[[], MirrorStatus | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        status = self._source() or MirrorStatus()
        runs = CounterMetricFamily("angosd_mirror_runs", "Finished image-set sync runs, by result.",
                                   labels=("result",))
        runs.add_metric(("success",), status.runs_succeeded)
        runs.add_metric(("failure",), status.runs_failed)
        yield runs
        yield GaugeMetricFamily("angosd_mirror_last_success_timestamp_seconds",
                                "Wall time of the last successful image-set sync (0: none yet).",
                                value=status.last_success)
        yield GaugeMetricFamily("angosd_mirror_last_run_timestamp_seconds",
                                "Wall time of the last image-set sync, whatever its result.", value=status.last_run)
        for name, text, value in (
                ("images_synced", "Image tags synced by image-set runs.", status.images),
                ("images_changed", "Image tags whose manifest changed upstream, by image-set runs.", status.changed),
                ("blobs_fetched", "Blobs fetched from upstreams by image-set runs.", status.blobs),
                ("bytes_fetched", "Blob bytes fetched from upstreams by image-set runs.", status.bytes_fetched)):
            yield CounterMetricFamily(f"angosd_mirror_{name}", text, value=value)
