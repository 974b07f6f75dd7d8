"""Tracing in memory: the spans of a push and of a denied request reach a real OTLP/HTTP
receiver (decoded with opentelemetry-proto), parented by the caller's ``traceparent``, and
the access log names the trace."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from angosd.auth.basic import hash_password
from angosd.config import TracingConfig
from angosd.observability.tracing import Tracing
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import image_manifest, payload, push_blob
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, children

CONFIG = """
[global.access_policy]
default = "deny"
rules = ["identity.username == 'ci'"]

[auth.identity.ci]
username = "ci"
password = "{hash}"
"""
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER = 2  # SpanKind SERVER in the OTLP protobuf


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver) -> Iterator[tuple[InMemoryDaemon, Tracing]]:
    tracing = Tracing(TracingConfig(endpoint=receiver.url, sampling_rate=1.0, service_name="angosd-test"), {})
    daemon = InMemoryDaemon(CONFIG.format(hash=hash_password("ci-pass")), tracing=tracing)
    yield daemon, tracing
    tracing.shutdown()


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(b"ci:ci-pass").decode()}


class _Client:
    """The daemon with credentials on every request (for the helpers)."""

    def __init__(self, daemon: InMemoryDaemon) -> None:
        self._daemon = daemon

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self._daemon.request(method, path, body, {**basic(), **(headers or {})})


def access_lines() -> tuple[list[dict[str, Any]], Any]:
    lines: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "angosd.access":
            lines.append(event["access"])

    globalLogPublisher.addObserver(observe)
    return lines, observe


def request_span(spans: list[ReceivedSpan], action: str) -> ReceivedSpan:
    found = [span for span in spans if span.kind == SERVER and span.attributes.get("angosd.action") == action]
    assert len(found) == 1, [(s.name, s.attributes) for s in spans]
    return found[0]


def test_push_is_one_span_tree_under_the_callers_trace(traced: tuple[InMemoryDaemon, Tracing],
                                                      receiver: OtlpReceiver) -> None:
    daemon, tracing = traced
    client = _Client(daemon)
    config, layer = b'{"architecture":"amd64","os":"linux"}', payload(3000, 1)
    push_blob(client, "traced/push", config)
    push_blob(client, "traced/push", layer)
    lines, observer = access_lines()
    try:
        response = client.request("PUT", "/v2/traced/push/manifests/v1", image_manifest(config, [layer]),
                                   {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                    "traceparent": TRACEPARENT})
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.status == 201, response.body
    assert tracing.flush()
    spans = receiver.wait_for(lambda spans: any(s.attributes.get("angosd.action") == "put-manifest" for s in spans))
    put = request_span(spans, "put-manifest")
    assert (put.trace_id, put.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    assert put.name == "PUT put-manifest" and put.service == "angosd-test" and not put.error
    assert put.attributes["angosd.repository"] == "traced/push"
    assert put.attributes["http.response.status_code"] == 201
    assert put.attributes["angosd.identity.kind"] == "basic"
    names = [span.name for span in children(spans, put)]
    assert names.count("authenticate") == 1 and names.count("authorize") == 1
    assert any(name.startswith("storage.") for name in names), names
    storage = [span for span in children(spans, put) if span.name.startswith("storage.")]
    assert all(span.attributes["angosd.storage.key"] for span in storage)
    for span in spans:  # never a credential in an attribute
        assert "ci-pass" not in json.dumps(span.attributes) and "Basic" not in json.dumps(span.attributes)
    assert [line["trace_id"] for line in lines] == [CALLER_TRACE]
    # the blob pushes before were traces of their own, one span tree each
    uploads = [s for s in spans if s.kind == SERVER and s.attributes.get("angosd.action") == "start-upload"]
    assert len(uploads) == 2 and all(s.parent_id == "" and s.trace_id != CALLER_TRACE for s in uploads)


def test_denied_request_has_its_span_without_storage(traced: tuple[InMemoryDaemon, Tracing],
                                                    receiver: OtlpReceiver) -> None:
    daemon, tracing = traced
    response = daemon.request("PUT", "/v2/traced/denied/manifests/v1", b"{}",
                              {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert response.status == 401
    assert tracing.flush()
    spans = receiver.wait_for(lambda spans: any(s.trace_id == "0af7651916cd43dd8448eb211c80319c" for s in spans))
    mine = [s for s in spans if s.trace_id == "0af7651916cd43dd8448eb211c80319c"]
    put = request_span(mine, "put-manifest")
    assert put.attributes["http.response.status_code"] == 401
    assert put.attributes["angosd.identity.kind"] == "anonymous"
    assert sorted(span.name for span in children(mine, put)) == ["authenticate", "authorize"]
    assert len(mine) == 3  # nothing was stored, nothing else ran


def test_unsampled_caller_is_followed(traced: tuple[InMemoryDaemon, Tracing], receiver: OtlpReceiver) -> None:
    daemon, tracing = traced
    trace_id = "11111111111111111111111111111111"
    lines, observer = access_lines()
    try:
        headers = {**basic(), "traceparent": f"00-{trace_id}-2222222222222222-00"}
        response = daemon.request("GET", "/v2/", headers=headers)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.status == 200
    assert tracing.flush()
    assert not [s for s in receiver.spans if s.trace_id == trace_id]
    assert [line["trace_id"] for line in lines] == [trace_id]  # still logged, to correlate with the caller


def test_sampling_ratio_zero_records_nothing_new(receiver: OtlpReceiver) -> None:
    tracing = Tracing(TracingConfig(endpoint=receiver.url, sampling_rate=0.0, service_name="unsampled"), {})
    daemon = InMemoryDaemon(tracing=tracing)
    for _ in range(20):
        assert daemon.request("GET", "/v2/").status == 200
    tracing.shutdown()
    assert not [s for s in receiver.spans if s.service == "unsampled"]


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = ("import sys\nfrom tests.inmemory import InMemoryDaemon\nd = InMemoryDaemon()\n"
            "assert d.request('GET', '/v2/').status == 200\n"
            "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\nassert not loaded, loaded\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)
