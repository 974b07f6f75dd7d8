"""Metrics and access-log observers with fake requests and a fake clock."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.logger import Logger, formatEvent

from angosd.auth import authenticator as authenticator_module
from angosd.auth.authenticator import Authenticator
from angosd.auth.identity import CertificateIdentity, Identity, OidcIdentity
from angosd.auth.oidc import InvalidToken
from angosd.http.accesslog import NAMESPACE, AccessLog, response_status
from angosd.http.metrics_endpoint import RequestMetrics, metrics_handlers
from angosd.http.router import parse_route
from angosd.observability.metrics import AUTH_METHODS, AUTH_RESULTS, DURATION_BUCKETS, Metrics, method_label
from angosd.oci.errors import Unauthorized
from tests.unit.helpers import run

# --------------------------------------------------------------------------- fakes


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class FakeRequest:
    """What the observers read of a `RegistryRequest`."""

    method: str = "GET"
    target: str = "/v2/"
    code: int = 200
    sentLength: int = 0
    received_bytes: int = 0
    startedWriting: int = 0
    identity: Identity | None = None
    headers: dict[str, str] = field(default_factory=dict)
    route: Any = None

    def __post_init__(self) -> None:
        self.route = parse_route(self.method, self.target)

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", 40000)

    def getHeader(self, name: str) -> str | None:
        return self.headers.get(name)

    def respond(self, code: int, sent: int = 0) -> None:
        self.code, self.sentLength, self.startedWriting = code, sent, 1


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, parsed as Prometheus would."""
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics(clock, CollectorRegistry())


@pytest.fixture
def requests(metrics: Metrics) -> RequestMetrics:
    """The site's request observer feeding ``metrics``."""
    return RequestMetrics(metrics.http, metrics.clock)


# --------------------------------------------------------------------------- HTTP metrics


def test_a_request_is_counted_with_its_action_method_status_and_duration(metrics: Metrics, requests: RequestMetrics,
                                                                         clock: FakeClock) -> None:
    request = FakeRequest("GET", "/v2/team/app/manifests/latest")
    requests.started(request)
    assert sample(metrics, "angosd_http_requests_in_flight") == 1
    clock.advance(0.003)
    request.respond(404, 93)
    requests.finished(request, False)
    assert sample(metrics, "angosd_http_requests_total", action="get-manifest", method="GET", status="404") == 1
    assert sample(metrics, "angosd_http_requests_in_flight") == 0
    histogram = {"action": "get-manifest", "method": "GET"}
    assert sample(metrics, "angosd_http_request_duration_seconds_count", **histogram) == 1
    assert sample(metrics, "angosd_http_request_duration_seconds_sum", **histogram) == pytest.approx(0.003)
    assert sample(metrics, "angosd_http_request_duration_seconds_bucket", le="0.0025", **histogram) == 0
    assert sample(metrics, "angosd_http_request_duration_seconds_bucket", le="0.005", **histogram) == 1
    assert sample(metrics, "angosd_http_response_bytes_total", action="get-manifest") == 93


def test_duration_buckets_span_sub_millisecond_to_minutes() -> None:
    assert DURATION_BUCKETS[0] < 0.001
    assert DURATION_BUCKETS[-1] >= 300
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_a_long_upload_lands_in_its_bucket_with_its_bytes(metrics: Metrics, requests: RequestMetrics,
                                                          clock: FakeClock) -> None:
    request = FakeRequest("PATCH", "/v2/team/app/blobs/uploads/2a3a0c5e-1111-4222-8333-944455556666")
    requests.started(request)
    request.received_bytes = 5_000_000
    clock.advance(75)
    request.respond(202)
    requests.finished(request, False)
    labels = {"action": "update-upload", "method": "PATCH"}
    assert sample(metrics, "angosd_http_request_duration_seconds_bucket", le="60.0", **labels) == 0
    assert sample(metrics, "angosd_http_request_duration_seconds_bucket", le="120.0", **labels) == 1
    assert sample(metrics, "angosd_http_request_bytes_total", action="update-upload") == 5_000_000
    assert sample(metrics, "angosd_http_response_bytes_total", action="update-upload") is None


def test_in_flight_goes_down_exactly_once_per_request(metrics: Metrics, requests: RequestMetrics) -> None:
    first, second = FakeRequest(), FakeRequest()
    requests.started(first)
    requests.started(first)  # a repeated start is not a second request
    requests.started(second)
    assert sample(metrics, "angosd_http_requests_in_flight") == 2
    requests.finished(first, True)
    requests.finished(first, True)
    requests.finished(FakeRequest(), False)  # never started: ignored
    assert sample(metrics, "angosd_http_requests_in_flight") == 1
    requests.finished(second, False)
    assert sample(metrics, "angosd_http_requests_in_flight") == 0
    assert sample(metrics, "angosd_http_requests_total", action="get-api-version", method="GET", status="499") == 1
    assert sample(metrics, "angosd_http_requests_total", action="get-api-version", method="GET", status="200") == 1


def test_a_disconnect_is_499_before_the_response_and_keeps_the_code_after() -> None:
    request = FakeRequest()
    assert response_status(request, True) == 499
    request.respond(200, 10)
    assert response_status(request, True) == 200
    assert response_status(request, False) == 200


def test_labels_stay_bounded_for_strange_methods_and_paths(metrics: Metrics, requests: RequestMetrics) -> None:
    assert method_label("BREW") == "OTHER"
    assert method_label("PATCH") == "PATCH"
    for index in range(3):
        request = FakeRequest(f"X{index}", f"/nothing/here/{index}")
        requests.started(request)
        request.respond(404)
        requests.finished(request, False)
    assert sample(metrics, "angosd_http_requests_total", action="unknown", method="OTHER", status="404") == 3
    assert "/nothing" not in metrics.exposition().decode()


def test_a_request_that_was_never_routed_is_unknown(metrics: Metrics, requests: RequestMetrics) -> None:
    request = FakeRequest()
    request.route = None
    requests.started(request)
    request.respond(400)
    requests.finished(request, False)
    assert sample(metrics, "angosd_http_requests_total", action="unknown", method="OTHER", status="400") == 1


# --------------------------------------------------------------------------- other metrics


def test_auth_attempts_start_at_zero_and_refuse_unknown_labels(metrics: Metrics) -> None:
    for method in AUTH_METHODS:
        for result in AUTH_RESULTS:
            assert sample(metrics, "angosd_auth_attempts_total", method=method, result=result) == 0
    metrics.auth_attempt("basic", "failure")
    assert sample(metrics, "angosd_auth_attempts_total", method="basic", result="failure") == 1
    with pytest.raises(ValueError):
        metrics.auth_attempt("kerberos", "success")
    with pytest.raises(ValueError):
        metrics.auth_attempt("basic", "maybe")


def test_uploads_in_progress_reads_the_callable(metrics: Metrics) -> None:
    assert sample(metrics, "angosd_uploads_in_progress") == 0
    writing = [3]
    metrics.watch_uploads(lambda: writing[0])
    assert sample(metrics, "angosd_uploads_in_progress") == 3
    writing[0] = 0
    assert sample(metrics, "angosd_uploads_in_progress") == 0


def test_pull_through_recorder(metrics: Metrics) -> None:
    recorder = metrics.pull_through
    recorder.declare(["hub"])
    assert sample(metrics, "angosd_pull_through_hits_total", repository="hub") == 0
    recorder.hit("hub")
    recorder.hit("hub")
    recorder.miss("hub")
    recorder.stale("hub")
    recorder.upstream_error("hub")
    recorder.upstream_error("quay")
    assert sample(metrics, "angosd_pull_through_hits_total", repository="hub") == 2
    assert sample(metrics, "angosd_pull_through_misses_total", repository="hub") == 1
    assert sample(metrics, "angosd_pull_through_stale_served_total", repository="hub") == 1
    assert sample(metrics, "angosd_pull_through_upstream_errors_total", repository="hub") == 1
    assert sample(metrics, "angosd_pull_through_upstream_errors_total", repository="quay") == 1


def test_each_metrics_object_has_its_own_registry(clock: FakeClock) -> None:
    one, two = Metrics(clock), Metrics(clock)
    one.auth_attempt("anonymous", "success")
    assert sample(two, "angosd_auth_attempts_total", method="anonymous", result="success") == 0
    families = {family.name for family in text_string_to_metric_families(one.exposition().decode())}
    assert {"python_gc_objects_collected", "python_info"} <= families


def test_the_handler_serves_the_text_exposition(metrics: Metrics) -> None:
    class Response:
        code = 0
        headers: dict[str, str] = {}

        def setResponseCode(self, code: int) -> None:
            self.code = code

        def setHeader(self, name: str, value: str) -> None:
            self.headers[name] = value

    response = Response()
    route = parse_route("GET", "/metrics")
    body = run(metrics_handlers(metrics)["metrics"](response, route))  # type: ignore[arg-type]
    assert response.code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b"angosd_http_requests_in_flight" in body


# --------------------------------------------------------------------------- authentication


class FakeUsers:
    def cached(self, username: str, password: str) -> str | None:
        return None

    async def check(self, username: str, password: str) -> str | None:
        return "ci" if (username, password) == ("ci", "right") else None


class FakeProvider:
    async def validate(self, token: str) -> OidcIdentity:
        if token != "good-jwt":
            raise InvalidToken("bad signature")
        return OidcIdentity("github", {"sub": "repo:x"})


class FakeOidc:
    def by_name(self, name: str) -> Any:
        return FakeProvider() if name == "github" else None

    async def validate_any(self, token: str) -> OidcIdentity:
        return await FakeProvider().validate(token)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("header", "method", "result"), [
    (None, "anonymous", "success"),
    (basic("ci", "right"), "basic", "success"),
    (basic("ci", "wrong"), "basic", "failure"),
    ("Basic !!!", "basic", "failure"),
    ("Bearer good-jwt", "bearer", "success"),
    ("Bearer forged", "bearer", "failure"),
    (basic("github", "good-jwt"), "oidc-basic", "success"),
    (basic("github", "forged"), "oidc-basic", "failure"),
    ("Negotiate abc", "anonymous", "failure"),
])
def test_authenticator_records_each_attempt_once(header: str | None, method: str, result: str) -> None:
    recorded: list[tuple[str, str]] = []
    authenticator = Authenticator(FakeUsers(), FakeOidc(), lambda m, r: recorded.append((m, r)))  # type: ignore[arg-type]
    request = FakeRequest(headers={"Authorization": header} if header is not None else {})
    try:
        run(authenticator.authenticate(request))  # type: ignore[arg-type]
    except Unauthorized:
        assert result == "failure"
    assert recorded == [(method, result)]


def test_a_verified_certificate_without_header_is_a_certificate_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authenticator_module, "peer_certificate", lambda request: CertificateIdentity(("ci",)))
    recorded: list[tuple[str, str]] = []
    authenticator = Authenticator(FakeUsers(), None, lambda m, r: recorded.append((m, r)))  # type: ignore[arg-type]
    identity = run(authenticator.authenticate(FakeRequest()))  # type: ignore[arg-type]
    assert identity.describe() == "cert:ci"
    assert recorded == [("certificate", "success")]


def test_the_authenticator_records_nothing_by_default() -> None:
    authenticator = Authenticator(FakeUsers(), None)  # type: ignore[arg-type]
    assert run(authenticator.authenticate(FakeRequest())).describe() == "anonymous"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- access log


class Captured:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


@pytest.fixture
def captured() -> Captured:
    return Captured()


def access_log(captured: Captured, clock: FakeClock) -> AccessLog:
    return AccessLog(clock, lambda: 1_700_000_000.25, Logger(namespace=NAMESPACE, observer=captured))


def test_one_json_line_per_request_with_the_documented_fields(captured: Captured, clock: FakeClock) -> None:
    log = access_log(captured, clock)
    secret = "s3cr3t-token"
    request = FakeRequest("PUT", f"/v2/team/app/blobs/uploads/2a3a0c5e-1111-4222-8333-944455556666"
                                 f"?digest=sha256:{'a' * 64}&_state={secret}",
                          headers={"Authorization": basic("ci", secret)}, identity=Identity(id="ci", username="ci"))
    log.started(request)
    clock.advance(0.0125)
    request.received_bytes = 1024
    request.respond(201, 0)
    log.finished(request, False)
    log.finished(request, False)  # logged once
    assert len(captured.events) == 1
    (line,) = captured.lines()
    assert "\n" not in line
    assert secret not in line and "sha256:" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250Z", "client": "192.0.2.7", "identity": "user:ci", "method": "PUT",
        "path": "/v2/team/app/blobs/uploads/2a3a0c5e-1111-4222-8333-944455556666", "query": ["_state", "digest"],
        "action": "complete-upload", "status": 201, "bytes_sent": 0, "bytes_received": 1024, "duration_ms": 12.5,
        "aborted": False,
    }
    assert captured.events[0]["log_namespace"] == NAMESPACE
    assert captured.events[0]["access"]["status"] == 201


def test_unauthenticated_and_aborted_requests(captured: Captured, clock: FakeClock) -> None:
    log = access_log(captured, clock)
    refused, anonymous = FakeRequest("GET", "/v2/"), FakeRequest("GET", "/v2/", identity=Identity())
    for request in (refused, anonymous):
        log.started(request)
    anonymous.respond(200, 2)
    log.finished(refused, True)
    log.finished(anonymous, False)
    first, second = (json.loads(line) for line in captured.lines())
    assert (first["identity"], first["status"], first["aborted"]) == ("-", 499, True)
    assert (second["identity"], second["status"], second["bytes_sent"]) == ("anonymous", 200, 2)


def test_a_hostile_path_stays_on_one_line(captured: Captured, clock: FakeClock) -> None:
    log = access_log(captured, clock)
    request = FakeRequest("GET", "/v2/a%0a%7b%22status%22:200%7d/" + "x" * 5000)
    log.started(request)
    request.respond(404)
    log.finished(request, False)
    (line,) = captured.lines()
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["status"] == 404
    assert entry["path"].startswith("/v2/a\n{")
    assert len(entry["path"]) < 2100
