"""The metrics added for operators: webhooks (event bus and authorization webhooks, against a
real receiver), certificate expiry, store disk space, storage errors, garbage collection
and reactor lag."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from angosd.config import Config, EventWebhookConfig, GlobalConfig
from angosd.http.metrics_endpoint import RequestMetrics
from angosd.observability.metrics import Metrics
from angosd.observability.reactor_lag import INTERVAL, ReactorLag
from angosd.webhooks.events import EventBus
from tests.certs import CA
from tests.local_server import LocalHttpServer
from tests.unit.test_metrics import FakeRequest, sample


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(lambda: 0.0, CollectorRegistry())


class _Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's pool expects

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.statuses[min(receiver.calls, len(receiver.statuses) - 1)]
                receiver.calls += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LocalHttpServer(Handler)

    @property
    def url(self) -> str:
        return f"{self._server.url}/hook"

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    running = _Receiver([200, 500, 200])
    yield running
    running.close()


def _config(url: str, policy: str, retries: int = 0) -> Config:
    webhook = EventWebhookConfig(name="audit", url=url, policy=policy, max_retries=retries)
    return Config(global_=GlobalConfig(event_webhooks=("audit",)), event_webhooks=(webhook,))


@pytest_twisted.ensureDeferred
async def test_event_deliveries_are_counted_by_result_with_their_latency(metrics: Metrics,
                                                                         receiver: _Receiver) -> None:
    from twisted.internet import reactor

    config = _config(receiver.url, "optional")
    bus = EventBus(lambda: config, reactor, metrics=metrics.webhooks)
    metrics.webhooks.declare([("event", "audit")])
    for _ in range(3):
        await bus.publish("manifest.push", "team/app", digest="sha256:" + "a" * 64)
    assert sample(metrics, "angosd_webhook_deliveries_total", kind="event", webhook="audit", result="success") == 2
    assert sample(metrics, "angosd_webhook_deliveries_total", kind="event", webhook="audit", result="rejected") == 1
    assert sample(metrics, "angosd_webhook_deliveries_total", kind="event", webhook="audit", result="error") == 0
    assert sample(metrics, "angosd_webhook_duration_seconds_count", kind="event", webhook="audit") == 3


@pytest_twisted.ensureDeferred
async def test_async_queue_depth_and_drops(metrics: Metrics) -> None:
    from twisted.internet import reactor

    closed = _Receiver([200])
    url = closed.url
    closed.close()  # nothing answers: each delivery fails, without retries
    config = _config(url, "async")
    bus = EventBus(lambda: config, reactor, metrics=metrics.webhooks, max_pending=2)
    for _ in range(3):
        await bus.publish("blob.push", "team/app", digest="sha256:" + "b" * 64)
    assert sample(metrics, "angosd_webhook_queue_depth") == 2
    assert sample(metrics, "angosd_webhook_dropped_total", webhook="audit", reason="full") == 1
    await bus.stopService()
    assert sample(metrics, "angosd_webhook_queue_depth") == 0
    assert sample(metrics, "angosd_webhook_dropped_total", webhook="audit", reason="failed") == 2
    assert sample(metrics, "angosd_webhook_deliveries_total", kind="event", webhook="audit", result="error") == 2


def test_certificate_expiry_of_server_and_client_ca(metrics: Metrics, tmp_path: Path) -> None:
    server_ca, client_ca, other_ca = CA("server CA"), CA("client CA"), CA("another client CA")
    now = datetime.datetime.now(datetime.UTC)
    leaf = server_ca.issue("registry.example", dns_names=("registry.example",),
                           not_after=now + datetime.timedelta(days=9))
    server_bundle, _key = leaf.write(tmp_path, "server")  # the leaf first, then its chain
    client_bundle = tmp_path / "clients.pem"
    client_bundle.write_bytes(client_ca.pem() + other_ca.pem())
    bundles = {"server": server_bundle, "client_ca": str(client_bundle)}
    metrics.watch_certificates(lambda: bundles)
    assert sample(metrics, "angosd_tls_certificate_expiry_timestamp_seconds", certificate="server") == \
        leaf.cert.not_valid_after_utc.timestamp()
    earliest = min(client_ca.cert.not_valid_after_utc, other_ca.cert.not_valid_after_utc).timestamp()
    assert sample(metrics, "angosd_tls_certificate_expiry_timestamp_seconds", certificate="client_ca") == earliest
    bundles["client_ca"] = str(tmp_path / "missing.pem")  # read at each scrape: a broken file gives no sample
    assert sample(metrics, "angosd_tls_certificate_expiry_timestamp_seconds", certificate="client_ca") is None


def test_filesystem_of_the_store(metrics: Metrics, tmp_path: Path) -> None:
    metrics.watch_filesystem(lambda: str(tmp_path))
    status = os.statvfs(tmp_path)
    assert sample(metrics, "angosd_storage_filesystem_size_bytes") == status.f_blocks * status.f_frsize
    assert 0 < (sample(metrics, "angosd_storage_filesystem_avail_bytes") or 0) <= status.f_blocks * status.f_frsize


def test_storage_errors_are_counted_by_kind(metrics: Metrics) -> None:
    requests = RequestMetrics(metrics.http, metrics.clock)
    for kind in ("out_of_space", "error", "error"):
        request = FakeRequest("PUT", "/v2/team/app/manifests/v1")
        requests.started(request)
        request.respond(507 if kind == "out_of_space" else 503)
        request.storage_error = kind  # type: ignore[attr-defined]  # set by angosd.http.errors
        requests.finished(request, False)
    plain = FakeRequest()
    requests.started(plain)
    plain.respond(200)
    requests.finished(plain, False)
    assert sample(metrics, "angosd_storage_errors_total", kind="out_of_space") == 1
    assert sample(metrics, "angosd_storage_errors_total", kind="error") == 2


def test_garbage_collection_passes(metrics: Metrics) -> None:
    from angosd.registry.gc import GcReport

    metrics.gc.observe(None, None, 100.0)
    assert sample(metrics, "angosd_gc_running") == 1
    metrics.gc.observe(GcReport(reclaimed=3, reclaimed_bytes=3000), None, 160.0)
    metrics.gc.observe(None, None, 200.0)
    metrics.gc.observe(None, RuntimeError("disk"), 230.0)
    assert sample(metrics, "angosd_gc_running") == 0
    assert sample(metrics, "angosd_gc_runs_total", result="success") == 1
    assert sample(metrics, "angosd_gc_runs_total", result="failure") == 1
    assert sample(metrics, "angosd_gc_last_success_timestamp_seconds") == 160.0
    assert sample(metrics, "angosd_gc_reclaimed_bytes_total") == 3000


def test_reactor_lag_records_how_late_each_probe_ran(metrics: Metrics) -> None:
    clock = Clock()
    lag = ReactorLag(clock, metrics.reactor_lag.observe)
    lag.startService()
    clock.advance(INTERVAL)  # on time
    clock.advance(INTERVAL + 0.3)  # 0.3 s late
    lag.stopService()
    assert not clock.getDelayedCalls()
    assert sample(metrics, "angosd_reactor_lag_seconds_count") == 2
    assert sample(metrics, "angosd_reactor_lag_seconds_sum") == pytest.approx(0.3)
    assert sample(metrics, "angosd_reactor_lag_seconds_bucket", le="0.25") == 1
