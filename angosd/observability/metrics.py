"""Prometheus metrics, served at ``GET /metrics`` (action ``metrics``, under the access policy,
by `angosd.http.metrics_endpoint`, which also feeds the HTTP series below from the site).

Everything lives on one `prometheus_client.CollectorRegistry` that `Metrics` creates (or
is given); nothing touches prometheus-client's global default registry.

HTTP (`HttpMetrics`, recorded by `angosd.http.metrics_endpoint.RequestMetrics`, a
`RequestObserver` of the site):

- ``angosd_http_requests_total{action,method,status}``: counter, one per finished request.
- ``angosd_http_request_duration_seconds{action,method}``: histogram, headers in to response
  sent (or connection lost); buckets `DURATION_BUCKETS`, 0.5 ms to 10 min.
- ``angosd_http_requests_in_flight``: gauge of *requests* (not connections) started and not
  finished; each request is added once and removed exactly once, disconnects included.
- ``angosd_http_request_bytes_total{action}``: request body bytes read from the connection
  (refused bodies included: they are read and discarded).
- ``angosd_http_response_bytes_total{action}``: response body bytes sent (headers excluded).

Label values are bounded: ``action`` is the router's action (a fixed set, ``unknown``
included), never the path or namespace; ``method`` is one of `HTTP_METHODS` or ``OTHER``;
``status`` is the numeric response code, ``499`` when the client went away before a
response was started (the observer reports it so).

Other:

- ``angosd_uploads_in_progress``: gauge of upload sessions whose bytes are being written
  right now (a PATCH/PUT chunk or monolithic POST admitted and not yet finished), read from
  the callable given to `Metrics.watch_uploads`. Idle open sessions are not counted.
- ``angosd_upload_digests_total{how}``: one per upload completion that computed a digest;
  ``how`` is ``resumed`` (the hash state carried with the session) or ``rehashed`` (the
  bytes read again: the state was lost); see `Metrics.upload_digest`.
- ``angosd_thread_pool_queued_jobs{pool}`` and ``angosd_thread_pool_active_threads{pool}``:
  gauges of the jobs waiting for a thread and the threads running one, per thread pool
  (``io``, ``cpu``; see `angosd.storage.pools`), given to `Metrics.watch_pools`.
- ``angosd_auth_attempts_total{method,result}``: one per authentication (once per request
  that is not a health probe); ``method`` is one of `AUTH_METHODS`, ``result`` one of
  `AUTH_RESULTS`. Record with `Metrics.auth_attempt` (the `Authenticator`'s ``record``).
- Pull-through cache, by configured repository name (bounded by the configuration, never a
  namespace): ``angosd_pull_through_hits_total``, ``angosd_pull_through_misses_total``,
  ``angosd_pull_through_stale_served_total``, ``angosd_pull_through_upstream_errors_total``.
- Webhooks (`WebhookMetrics`, as ``Metrics.webhooks``), ``kind`` is ``event`` or
  ``authorization``, ``webhook`` the configured name: ``angosd_webhook_deliveries_total{kind,webhook,result}``
  one per HTTP attempt (``result``: ``success`` for a 2xx, ``rejected`` for another answer,
  ``error`` for no answer); ``angosd_webhook_duration_seconds{kind,webhook}`` the latency of
  each attempt; ``angosd_webhook_queue_depth`` async event deliveries pending;
  ``angosd_webhook_dropped_total{webhook,reason}`` async events never delivered (``reason``:
  ``full`` queue, ``failed`` after the retries, ``shutdown`` drain timed out).
- ``angosd_storage_errors_total{kind}``: requests answered with a storage failure
  (``out_of_space``: 507, ``error``: 503).
- Garbage collection (`GcMetrics`, as ``Metrics.gc``, fed by the online collector):
  ``angosd_gc_runs_total{result}`` (``success``, ``failure``), ``angosd_gc_running``,
  ``angosd_gc_last_success_timestamp_seconds``, ``angosd_gc_reclaimed_blobs_total``,
  ``angosd_gc_reclaimed_bytes_total``. With worker processes the collector runs in the
  supervisor, which records no metrics: these series then stay at their initial values.
- ``angosd_reactor_lag_seconds``: histogram of how late a timer due every 0.1 s ran (a busy
  event loop delays every request).
- ``angosd_worker_starts_total``: serving processes started; it grows after the start only
  when a worker is replaced.
- ``angosd_storage_filesystem_size_bytes`` / ``angosd_storage_filesystem_avail_bytes``: the
  filesystem of a ``[blob_store.fs]`` root (``statvfs`` at each scrape).
- Certificates (`angosd.observability.file_metrics`, given to `Metrics.watch_certificates`):
  ``angosd_tls_certificate_expiry_timestamp_seconds{certificate}`` the ``notAfter`` (epoch
  seconds) of the first certificate of the ``server`` bundle and the earliest of the
  ``client_ca`` bundle, read from the files at each scrape.
- The standard ``process_*``, ``python_gc_*`` and ``python_info`` collectors.

With worker processes (`Metrics` given a ``multiprocess_dir``): every worker records into
prometheus-client's multiprocess files in that directory (``PROMETHEUS_MULTIPROC_DIR``,
created per run by the supervisor), and ``GET /metrics``, whichever worker answers it,
reports the sum over all workers, including those that ended (a replaced worker's
counters stay counted). The gauges count live workers only (``livesum``: the supervisor
removes a dead worker's gauge files). ``process_*`` describe the whole daemon
(`angosd.observability.processes`); ``python_gc_*`` are left out (they would describe one
worker only); ``angosd_uploads_in_progress`` and the thread pool gauges are refreshed every
second and at each scrape.

Pull-through recorder API (`PullThroughMetrics`, available as ``Metrics.pull_through``;
it satisfies `angosd.proxy.cache.CacheMetrics`). Each call adds one to a counter and
never raises for a valid name; ``repository`` is the repository's configured name:

- ``hit(repository)``: served from the local store without fetching content upstream;
- ``miss(repository)``: fetched from an upstream (and stored);
- ``stale(repository)``: served from the local store because every upstream failed;
- ``upstream_error(repository)``: one upstream request failed (a failover counts each);
- ``declare(repositories)``: create the four series at 0 for these names, so dashboards
  see them before the first event.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from angosd.observability.processes import ProcessGroupCollector

__all__ = [
    "AUTH_METHODS",
    "AUTH_RESULTS",
    "DURATION_BUCKETS",
    "HTTP_METHODS",
    "WEBHOOK_BUCKETS",
    "WEBHOOK_RESULTS",
    "HttpMetrics",
    "Metrics",
    "PullThroughMetrics",
    "WatchedPool",
    "WebhookMetrics",
    "method_label",
]

#: Histogram buckets (seconds) for request durations: sub-millisecond manifest hits to
#: multi-minute blob transfers.
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Methods reported as themselves; any other is reported as ``OTHER``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: ``method`` label values of ``angosd_auth_attempts_total``.
AUTH_METHODS = ("certificate", "bearer", "basic", "oidc-basic", "anonymous")
#: ``result`` label values of ``angosd_auth_attempts_total``.
AUTH_RESULTS = ("success", "failure", "limited")


class WatchedPool(Protocol):
    """What the thread pool gauges read (`angosd.storage.pools.BoundedPool` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def queued(self) -> int: ...
    @property
    def active(self) -> int: ...
#: ``how`` label values of ``angosd_upload_digests_total`` (`angosd.registry.uploads.DIGEST_SOURCES`).
UPLOAD_DIGEST_SOURCES = ("resumed", "rehashed")
#: ``kind`` label values of ``angosd_storage_errors_total``: a full store (507), any other failure (503).
STORAGE_ERROR_KINDS = ("out_of_space", "error")
#: Histogram buckets (seconds) of the reactor's lateness.
LAG_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
#: Histogram buckets (seconds) of webhook calls.
WEBHOOK_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
#: ``result`` label values of ``angosd_webhook_deliveries_total``.
WEBHOOK_RESULTS = ("success", "rejected", "error")
#: ``reason`` label values of ``angosd_webhook_dropped_total``.
WEBHOOK_DROP_REASONS = ("full", "failed", "shutdown")


def method_label(method: str) -> str:
    """``method`` if it is a standard registry method, else ``OTHER`` (keeps the label bounded)."""
    return method if method in HTTP_METHODS else "OTHER"


class HttpMetrics:
    """The HTTP series (see the module docstring). Knows nothing of requests: the site's
    observer reports each request's start (`began`) and end (`ended`), once each."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("angosd_http_requests", "HTTP requests finished, by route action, method and status.",
                                ("action", "method", "status"), registry=registry)
        self.duration = Histogram("angosd_http_request_duration_seconds",
                                  "Time from request headers received to response sent, by route action and method.",
                                  ("action", "method"), buckets=DURATION_BUCKETS, registry=registry)
        self.in_flight = Gauge("angosd_http_requests_in_flight", "HTTP requests started and not finished.",
                               registry=registry, multiprocess_mode="livesum")
        self.received = Counter("angosd_http_request_bytes", "Request body bytes received, by route action.",
                                ("action",), registry=registry)
        self.sent = Counter("angosd_http_response_bytes", "Response body bytes sent, by route action.",
                            ("action",), registry=registry)
        self.storage_errors = Counter("angosd_storage_errors", "Requests answered with a storage failure, by kind.",
                                      ("kind",), registry=registry)
        for kind in STORAGE_ERROR_KINDS:
            self.storage_errors.labels(kind)

    def storage_error(self, kind: str) -> None:
        """One request failed on the store (``kind``: one of `STORAGE_ERROR_KINDS`)."""
        self.storage_errors.labels(kind).inc()

    def began(self) -> None:
        """One more request in flight."""
        self.in_flight.inc()

    def ended(self, action: str, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        """One request in flight finished: count it. ``method`` is reported through `method_label`."""
        self.in_flight.dec()
        method = method_label(method)
        self.requests.labels(action, method, str(status)).inc()
        self.duration.labels(action, method).observe(max(seconds, 0.0))
        if received:
            self.received.labels(action).inc(received)
        if sent:
            self.sent.labels(action).inc(sent)


class PullThroughMetrics:
    """Counters of the pull-through cache by repository name (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter("angosd_pull_through_hits", "Pull-through requests served from the local store.",
                            ("repository",), registry=registry)
        self.misses = Counter("angosd_pull_through_misses", "Pull-through requests whose content came from upstream.",
                              ("repository",), registry=registry)
        self.stale_served = Counter("angosd_pull_through_stale_served",
                                    "Pull-through requests served from the local store because upstreams failed.",
                                    ("repository",), registry=registry)
        self.upstream_errors = Counter("angosd_pull_through_upstream_errors", "Failed upstream requests.",
                                       ("repository",), registry=registry)

    def hit(self, repository: str) -> None:
        """One answer served locally."""
        self.hits.labels(repository).inc()

    def miss(self, repository: str) -> None:
        """One answer fetched from an upstream."""
        self.misses.labels(repository).inc()

    def stale(self, repository: str) -> None:
        """One answer served locally because no upstream answered."""
        self.stale_served.labels(repository).inc()

    def upstream_error(self, repository: str) -> None:
        """One failed upstream request."""
        self.upstream_errors.labels(repository).inc()

    def declare(self, repositories: Iterable[str]) -> None:
        """Make the four series of each repository exist (at 0) before any event."""
        for repository in repositories:
            for counter in (self.hits, self.misses, self.stale_served, self.upstream_errors):
                counter.labels(repository)


class WebhookMetrics:
    """Webhook calls, the async event queue and its drops (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("angosd_webhook_deliveries", "Webhook HTTP attempts by kind, webhook and result.",
                                  ("kind", "webhook", "result"), registry=registry)
        self.duration = Histogram("angosd_webhook_duration_seconds", "Duration of webhook HTTP attempts.",
                                  ("kind", "webhook"), buckets=WEBHOOK_BUCKETS, registry=registry)
        self.queue = Gauge("angosd_webhook_queue_depth", "Async event deliveries waiting or in flight.",
                           registry=registry, multiprocess_mode="livesum")
        self.drops = Counter("angosd_webhook_dropped", "Async events never delivered, by webhook and reason.",
                             ("webhook", "reason"), registry=registry)

    def delivered(self, kind: str, webhook: str, result: str, seconds: float) -> None:
        """One attempt of ``webhook`` ended with ``result`` (one of `WEBHOOK_RESULTS`)."""
        self.deliveries.labels(kind, webhook, result).inc()
        self.duration.labels(kind, webhook).observe(max(seconds, 0.0))

    def queue_depth(self, pending: int) -> None:
        """``pending`` async deliveries are waiting or in flight."""
        self.queue.set(pending)

    def dropped(self, webhook: str, reason: str) -> None:
        """One async event of ``webhook`` will never be delivered (``reason``: `WEBHOOK_DROP_REASONS`)."""
        self.drops.labels(webhook, reason).inc()

    def declare(self, kinds_and_names: Iterable[tuple[str, str]]) -> None:
        """Make the series of the configured webhooks exist (at 0) before any call."""
        for kind, name in kinds_and_names:
            self.duration.labels(kind, name)
            for result in WEBHOOK_RESULTS:
                self.deliveries.labels(kind, name, result)
            if kind == "event":
                for reason in WEBHOOK_DROP_REASONS:
                    self.drops.labels(name, reason)


class GcMetrics:
    """The online garbage collector's passes (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter("angosd_gc_runs", "Online garbage collection passes, by result.", ("result",),
                              registry=registry)
        for result in ("success", "failure"):
            self.passes.labels(result)
        self.running = Gauge("angosd_gc_running", "1 while an online garbage collection pass runs.",
                             registry=registry, multiprocess_mode="livemax")
        self.last_success = Gauge("angosd_gc_last_success_timestamp_seconds",
                                  "When the last successful garbage collection pass ended (epoch seconds).",
                                  registry=registry, multiprocess_mode="max")
        self.reclaimed = Counter("angosd_gc_reclaimed_blobs", "Blobs deleted by garbage collection.",
                                 registry=registry)
        self.reclaimed_bytes = Counter("angosd_gc_reclaimed_bytes", "Bytes deleted by garbage collection.",
                                       registry=registry)

    def observe(self, report: Any, failure: Any, now: float) -> None:
        """A pass started (both None), ended with ``report``, or failed with ``failure``."""
        if report is None and failure is None:
            self.running.set(1)
            return
        self.running.set(0)
        if failure is not None:
            self.passes.labels("failure").inc()
            return
        self.passes.labels("success").inc()
        self.last_success.set(now)
        self.reclaimed.inc(report.reclaimed)
        self.reclaimed_bytes.inc(report.reclaimed_bytes)


class Metrics:
    """All of the daemon's metrics on one registry.

    ``clock`` returns monotonic seconds (request durations, kept as ``clock``). ``registry`` (what is served)
    defaults to a new `CollectorRegistry` with the process, GC and platform collectors added.

    With ``multiprocess_dir`` the values are recorded in prometheus-client's multiprocess
    files there and the registry serves the aggregate of every process recording into that
    directory (see the module docstring); ``processes_file`` lists the daemon's processes
    for ``process_*``. prometheus-client must then be in multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set to that directory before it was imported), else
    `RuntimeError`.
    """

    def __init__(self, clock: Callable[[], float], registry: CollectorRegistry | None = None,
                 multiprocess_dir: str | None = None, processes_file: str | None = None) -> None:
        self.multiprocess = multiprocess_dir is not None
        if multiprocess_dir is not None:
            _check_multiprocess_mode(multiprocess_dir)
            if registry is None:
                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=multiprocess_dir)
                if processes_file is not None:
                    registry.register(ProcessGroupCollector(processes_file))
                PlatformCollector(registry=registry)
            recording = CollectorRegistry()  # names only: the values live in the files
        else:
            if registry is None:
                registry = CollectorRegistry()
                ProcessCollector(registry=registry)
                PlatformCollector(registry=registry)
                GCCollector(registry=registry)
            recording = registry
        self.registry = registry
        self.clock = clock
        self.http = HttpMetrics(recording)
        self.pull_through = PullThroughMetrics(recording)
        self.webhooks = WebhookMetrics(recording)
        self.gc = GcMetrics(recording)
        self.reactor_lag = Histogram("angosd_reactor_lag_seconds",
                                     "How late the reactor ran a timer due every 0.1 s (event loop saturation).",
                                     buckets=LAG_BUCKETS, registry=recording)
        self.worker_starts = Counter("angosd_worker_starts", "Serving processes started (a replaced worker counts).",
                                     registry=recording)
        self.auth_attempts = Counter("angosd_auth_attempts", "Authentications by credential method and result.",
                                     ("method", "result"), registry=recording)
        for method in AUTH_METHODS:
            for result in AUTH_RESULTS:
                self.auth_attempts.labels(method, result)
        self.uploads_in_progress = Gauge("angosd_uploads_in_progress",
                                         "Upload sessions whose bytes are being written right now.",
                                         registry=recording, multiprocess_mode="livesum")
        self._writing: Callable[[], int] | None = None
        self.upload_digests = Counter("angosd_upload_digests",
                                      "Upload completions, by how the digest was had: resumed hash state or rehashed.",
                                      ("how",), registry=recording)
        for how in UPLOAD_DIGEST_SOURCES:
            self.upload_digests.labels(how)
        self.pool_queued = Gauge("angosd_thread_pool_queued_jobs", "Jobs waiting for a thread, per thread pool.",
                                 ("pool",), registry=recording, multiprocess_mode="livesum")
        self.pool_active = Gauge("angosd_thread_pool_active_threads", "Threads running a job, per thread pool.",
                                 ("pool",), registry=recording, multiprocess_mode="livesum")
        self._pools: tuple[WatchedPool, ...] = ()

    def auth_attempt(self, method: str, result: str) -> None:
        """Count one authentication; raises ValueError for a method or result not listed in
        `AUTH_METHODS` / `AUTH_RESULTS` (the label set stays bounded)."""
        if method not in AUTH_METHODS or result not in AUTH_RESULTS:
            raise ValueError(f"unknown authentication method or result: {method!r}, {result!r}")
        self.auth_attempts.labels(method, result).inc()

    def upload_digest(self, how: str) -> None:
        """Count one upload completion; ``how`` must be one of `UPLOAD_DIGEST_SOURCES`."""
        if how not in UPLOAD_DIGEST_SOURCES:
            raise ValueError(f"unknown upload digest source: {how!r}")
        self.upload_digests.labels(how).inc()

    def watch_certificates(self, bundles: Callable[[], Mapping[str, str | None]]) -> None:
        """Report the expiry of the certificate files ``bundles()`` names (``server``,
        ``client_ca``), read at each scrape (see the module docstring)."""
        from angosd.observability.file_metrics import CertificateExpiry

        self.registry.register(CertificateExpiry(bundles))

    def watch_filesystem(self, root: Callable[[], str]) -> None:
        """Report the size and free space of the filesystem holding ``root()`` (the store)."""
        from angosd.observability.file_metrics import FilesystemUsage

        self.registry.register(FilesystemUsage(root))

    def watch_uploads(self, writing: Callable[[], int]) -> None:
        """Report ``writing()`` (sessions being written right now) as ``angosd_uploads_in_progress``:
        read at each scrape, and with ``multiprocess_dir`` also at each `refresh`."""
        self._writing = writing
        if not self.multiprocess:
            self.uploads_in_progress.set_function(lambda: float(writing()))

    def watch_pools(self, pools: Iterable[WatchedPool]) -> None:
        """Report each pool's ``queued`` and ``active`` as the thread pool gauges (label ``pool``
        = its ``name``): read at each scrape, and with ``multiprocess_dir`` also at each `refresh`."""
        self._pools = tuple(pools)
        for pool in self._pools:
            queued, active = self.pool_queued.labels(pool.name), self.pool_active.labels(pool.name)
            if self.multiprocess:
                queued.set(float(pool.queued))
                active.set(float(pool.active))
            else:
                queued.set_function(functools.partial(_read, pool, "queued"))
                active.set_function(functools.partial(_read, pool, "active"))

    def refresh(self) -> None:
        """Record the current value of the watched gauges (multiprocess mode keeps values in
        files, so a value computed at scrape time would only be seen by the scraped process)."""
        if not self.multiprocess:
            return
        if self._writing is not None:
            self.uploads_in_progress.set(float(self._writing()))
        for pool in self._pools:
            self.pool_queued.labels(pool.name).set(float(pool.queued))
            self.pool_active.labels(pool.name).set(float(pool.active))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE_LATEST`)."""
        self.refresh()
        return bytes(generate_latest(self.registry))


def _read(pool: WatchedPool, attribute: str) -> float:
    return float(getattr(pool, attribute))


def _check_multiprocess_mode(directory: str) -> None:
    """Raise `RuntimeError` unless new metric values are recorded in files in ``directory``."""
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus-client is not in multiprocess mode: PROMETHEUS_MULTIPROC_DIR must be set "
                           "before it is imported")
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured is None or os.path.realpath(configured) != os.path.realpath(directory):
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR is {configured!r}, not {directory!r}")
