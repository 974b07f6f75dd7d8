"""The catalogue of exported metrics, read from the code: ``docs/metrics.md`` is its output
(``python -m angosd.observability.catalog > docs/metrics.md``; a test fails when they differ).

Every series `angosd.observability.metrics.Metrics` defines is listed with its type, labels
and help text, then the series the scrape-time collectors add.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from angosd.observability.file_metrics import FAMILIES as FILE_FAMILIES
from angosd.observability.metrics import Metrics

__all__ = ["Family", "families", "markdown"]

_SUFFIX = {"counter": "_total", "histogram": "", "gauge": ""}
_HEADER = """# Metrics

`GET /metrics` (action `metrics`, under the access policy) serves these series in the
Prometheus text format. This file is generated from the code
(`python -m angosd.observability.catalog > docs/metrics.md`); a test fails when it drifts.
Histograms also have `_bucket`, `_sum` and `_count` series; counters are shown with their
`_total` suffix. Label values are bounded (actions, configured names, fixed result sets):
never a path, namespace or identity.

| Metric | Type | Labels | Meaning |
|---|---|---|---|
"""
_FOOTER = """
The standard `process_*` collectors are also served (with worker processes they describe
the whole daemon), and `python_gc_*` and `python_info` for a single process.
"""


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


def _metric_objects(metrics: Metrics) -> Iterator[MetricWrapperBase]:
    seen: set[int] = set()
    stack: list[object] = [metrics]
    while stack:
        holder = stack.pop()
        for value in vars(holder).values() if hasattr(holder, "__dict__") else ():
            if isinstance(value, MetricWrapperBase) and id(value) not in seen:
                seen.add(id(value))
                yield value
            elif type(value).__module__ == Metrics.__module__ and id(value) not in seen:
                seen.add(id(value))
                stack.append(value)


def families() -> list[Family]:
    """Every series family the daemon can export, sorted by name."""
    metrics = Metrics(lambda: 0.0, registry=CollectorRegistry())
    found = []
    for metric in _metric_objects(metrics):
        for described in metric.describe():
            kind = described.type
            found.append(Family(described.name + _SUFFIX.get(kind, ""), kind,
                                tuple(getattr(metric, "_labelnames", ())), described.documentation))
    found += [Family(name, "gauge", labels, text) for name, labels, text in FILE_FAMILIES]
    return sorted(found, key=lambda family: family.name)


def markdown() -> str:
    """The text of ``docs/metrics.md``."""
    rows = [f"| `{f.name}` | {f.kind} | {', '.join(f'`{label}`' for label in f.labels) or '-'} | {f.help} |"
            for f in families()]
    return _HEADER + "\n".join(rows) + "\n" + _FOOTER


if __name__ == "__main__":
    print(markdown(), end="")
