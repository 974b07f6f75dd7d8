"""Observability against real processes: a real angosd (TLS, tracing, audit log, an event
webhook, a pull-through repository) scraped by a real Prometheus from Debian that loads the
shipped rules; a pull-through miss traced to a real OTLP/HTTP receiver, its ``traceparent``
seen by the upstream; the dashboard's and rules' metrics found in a real scrape."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.certs import CA
from tests.daemon import Daemon
from tests.integration.ocihelpers import digest, image_manifest
from tests.integration.upstreams import FakeUpstream, free_port, require_tool, wait_for
from tests.local_server import LocalHttpServer
from tests.otlp_receiver import OtlpReceiver, children
from tests.promql import RULES, dashboard_expressions, metric_names, rule_expressions, series_names

PROMETHEUS = "/usr/bin/prometheus"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CALLER_TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
CALLER_SPAN = "10f067aa0ba902b8"
SERVER, CLIENT = 2, 3  # SpanKind values in the OTLP protobuf


class RecordingUpstream(FakeUpstream):
    """A `FakeUpstream` that keeps the ``traceparent`` header of each request."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()
        upstream = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def _serve(self, head: bool) -> None:
                upstream.traceparents.append(self.headers.get("traceparent"))
                super()._serve(head)

        return Handler


class Hook:
    """An event webhook receiver answering 204."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LocalHttpServer(Handler)

    @property
    def url(self) -> str:
        return f"{self._server.url}/events"

    def close(self) -> None:
        self._server.close()


@dataclass
class Setup:
    daemon: Daemon
    context: ssl.SSLContext
    ca_path: str
    receiver: OtlpReceiver
    upstream: RecordingUpstream
    manifest: bytes
    audit: Path

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.daemon.port, context=self.context, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("observability")
    ca, client_ca = CA("observability CA"), CA("observability client CA")
    server = ca.issue("127.0.0.1", ip_addresses=("127.0.0.1",), usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    cert_path, key_path = server.write(base, "server")
    ca_path, client_ca_path = ca.write(base / "ca.pem"), client_ca.write(base / "clients.pem")
    receiver, upstream, hook = OtlpReceiver(), RecordingUpstream(), Hook()
    config_blob, layer = b'{"architecture":"amd64","os":"linux"}', os.urandom(4096)
    for blob in (config_blob, layer):
        upstream.add_blob(blob)
    manifest = image_manifest(config_blob, [layer])
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, manifest)
    audit = base / "audit" / "audit.log"
    config = base / "angosd.toml"
    config.write_text(f"""
[server.tls]
server_certificate_bundle = "{cert_path}"
server_private_key = "{key_path}"
client_ca_bundle = "{client_ca_path}"

[observability.tracing]
endpoint = "{receiver.url}"
sampling_rate = 1.0

[observability.audit]
path = "{audit}"
hash_chain = true

[event_webhook.audit]
url = "{hook.url}"
policy = "async"

[global]
event_webhooks = ["audit"]

[repository."local"]

[repository."hub"]
[[repository."hub".upstream]]
url = "{upstream.url}"
""")
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),), workers=1,
                    env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    daemon.start()
    try:
        yield Setup(daemon, ssl.create_default_context(cafile=ca_path), ca_path, receiver, upstream, manifest, audit)
    finally:
        daemon.stop()
        receiver.close()
        upstream.close()
        hook.close()


def test_pull_through_miss_is_one_trace_continued_by_the_upstream(setup: Setup) -> None:
    status, _, body = setup.request("GET", "/v2/hub/library/app/manifests/v1", headers={
        "Accept": OCI_MANIFEST, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert status == 200 and body == setup.manifest
    spans = setup.receiver.wait_for(lambda spans: any(
        s.kind == SERVER and s.trace_id == CALLER_TRACE for s in spans) and any(
        s.kind == CLIENT and s.trace_id == CALLER_TRACE for s in spans))
    mine = [span for span in spans if span.trace_id == CALLER_TRACE]
    request = [span for span in mine if span.kind == SERVER]
    assert len(request) == 1
    get = request[0]
    assert (get.name, get.parent_id) == ("GET get-manifest", CALLER_SPAN)
    assert get.attributes["angosd.repository"] == "hub/library/app"
    assert get.attributes["http.response.status_code"] == 200
    assert get.attributes["angosd.identity.kind"] == "anonymous"
    below = children(mine, get)
    names = {span.name for span in below}
    assert {"authenticate", "authorize"} <= names
    upstream_calls = [span for span in mine if span.kind == CLIENT and span.name.startswith("upstream ")]
    assert upstream_calls and all(span.attributes["angosd.outbound"] == "upstream" for span in upstream_calls)
    assert any(span.name.startswith("storage.") for span in below), names
    # the upstream saw the trace: each traceparent names one of the upstream client spans
    sent = [parent for parent in setup.upstream.traceparents if parent is not None]
    assert sent and all(parent.split("-")[1] == CALLER_TRACE for parent in sent)
    assert {parent.split("-")[2] for parent in sent} <= {span.span_id for span in upstream_calls}
    # the async event webhook call (manifest.pull) is a client span of the same trace
    setup.receiver.wait_for(lambda spans: any(
        s.trace_id == CALLER_TRACE and s.kind == CLIENT and s.name == "webhook POST" for s in spans))
    wait_for(lambda: f'"trace_id": "{CALLER_TRACE}"' in setup.daemon.log(), what="the access log line")


def test_the_daemon_writes_a_verifiable_audit_log(setup: Setup) -> None:
    status, _, _ = setup.request("PUT", "/v2/hub/library/app/manifests/v2", setup.manifest,
                                 {"Content-Type": OCI_MANIFEST})
    assert status == 415  # pull-through namespaces refuse pushes: not a state change, not a denial
    config_blob = b'{"os":"linux"}'
    status, _, _ = setup.request("POST", f"/v2/local/app/blobs/uploads/?digest={digest(config_blob)}", config_blob,
                                 {"Content-Type": "application/octet-stream"})
    assert status == 201
    body = image_manifest(config_blob, [])
    assert setup.request("PUT", "/v2/local/app/manifests/v1", body, {"Content-Type": OCI_MANIFEST})[0] == 201
    assert setup.request("DELETE", "/v2/local/app/manifests/v1")[0] == 202
    records = [json.loads(line) for line in setup.audit.read_bytes().splitlines()]
    assert [(r["action"], r["result"]) for r in records] == [
        ("start-upload", "success"), ("put-manifest", "success"), ("delete-manifest", "success")]
    verified = subprocess.run([sys.executable, "-m", "angosd", "audit", "verify", str(setup.audit)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert verified.returncode == 0, verified.stdout + verified.stderr


def scrape(setup: Setup) -> str:
    status, _, body = setup.request("GET", "/metrics")
    assert status == 200
    return body.decode()


def test_dashboard_and_rules_read_metrics_of_a_real_scrape(setup: Setup) -> None:
    setup.request("GET", "/v2/")
    exported = series_names(scrape(setup))
    for expression in dashboard_expressions() + rule_expressions():
        missing = metric_names(expression) - exported
        assert not missing, (expression, missing)
    exposition = scrape(setup)
    assert 'angosd_tls_certificate_expiry_timestamp_seconds{certificate="server"}' in exposition
    assert 'angosd_tls_certificate_expiry_timestamp_seconds{certificate="client_ca"}' in exposition


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_real_prometheus_scrapes_angosd_and_loads_the_rules(setup: Setup, tmp_path: Path) -> None:
    require_tool(PROMETHEUS, "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: angosd
    scheme: https
    tls_config: {{ca_file: "{setup.ca_path}"}}
    static_configs: [{{targets: ["127.0.0.1:{setup.daemon.port}"]}}]
""")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def targets_up() -> bool:
            try:
                active = _get_json(f"{api}/targets")["data"]["activeTargets"]
            except OSError:
                return False
            return len(active) == 1 and active[0]["health"] == "up"

        wait_for(targets_up, timeout=60, what="prometheus to scrape angosd")

        def rules_evaluated() -> list[dict[str, Any]] | None:
            groups = _get_json(f"{api}/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

        wait_for(rules_evaluated, timeout=60, what="every rule to be evaluated without error")
        groups = _get_json(f"{api}/rules")["data"]["groups"]
        assert sorted(group["name"] for group in groups) == ["angosd-alerts", "angosd-recording"]
        loaded = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"AngosdDown", "AngosdCertificateExpiresSoon", "angosd:http_error_ratio:rate5m"} <= loaded

        def expiry_series() -> int:
            query = "angosd_tls_certificate_expiry_timestamp_seconds"
            return len(_get_json(f"{api}/query?query={query}")["data"]["result"])

        wait_for(lambda: expiry_series() == 2, timeout=30, what="both certificate expiry series")
        # the test CA's certificates expire within 30 days, the server certificate sooner: the alert's
        # expression is evaluated on real data (it fires only after 14 days left, so not here)
        alerts = _get_json(f"{api}/alerts")["data"]["alerts"]
        assert not [alert for alert in alerts if alert["labels"]["alertname"] == "AngosdDown"]
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_s3_requests_are_spans_below_the_storage_operations(tmp_path: Path) -> None:
    """Tracing turned on by the standard OTEL_* variables alone, on an S3 store."""
    from tests.s3_server import s3_config, shared_s3

    server = shared_s3()
    receiver = OtlpReceiver()
    config = tmp_path / "s3.toml"
    config.write_text(s3_config(server, server.new_bucket("traced")))
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "unused"), configs=(str(config),), workers=1,
                    env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_TRACES_SAMPLER_ARG": "1",
                         "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "angosd-s3"})
    daemon.start()
    try:
        data = os.urandom(2048)
        trace_id = "6bf92f3577b34da6a3ce929d0e0e4738"
        response = daemon.request("POST", f"/v2/s3/app/blobs/uploads/?digest={digest(data)}", data,
                                  {"Content-Type": "application/octet-stream",
                                   "traceparent": f"00-{trace_id}-20f067aa0ba902b9-01"})
        assert response.status == 201, response.body
        spans = receiver.wait_for(lambda spans: any(s.trace_id == trace_id and s.kind == SERVER for s in spans)
                                  and any(s.trace_id == trace_id and s.kind == CLIENT for s in spans))
    finally:
        daemon.stop()
        receiver.close()
    mine = [span for span in spans if span.trace_id == trace_id]
    request = [span for span in mine if span.kind == SERVER]
    assert len(request) == 1 and request[0].service == "angosd-s3"
    storage = {span.span_id: span for span in mine if span.name.startswith("storage.")}
    assert storage and all(span.parent_id == request[0].span_id for span in storage.values())
    s3_calls = [span for span in mine if span.kind == CLIENT and span.attributes.get("angosd.outbound") == "s3"]
    assert s3_calls and all(span.parent_id in storage for span in s3_calls)
    assert any(span.name == "s3 PUT" for span in s3_calls), [span.name for span in s3_calls]
