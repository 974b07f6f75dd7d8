"""``GET /metrics`` and the access log, through the real daemon.

A known sequence of requests is run, then the exposition is parsed as Prometheus would
and every counter compared with what the sequence must have produced, exactly; the
daemon's log must hold one access line per request, and no secret anywhere.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from angosd.auth.basic import hash_password
from tests.daemon import Daemon, Response
from tests.integration.ocihelpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digest, payload

PASSWORD = "ci-pass-Xq7"
WRONG_PASSWORD = "wrong-pass-Zk9"
BEARER_SECRET = "bearer-secret-Jw3"
QUERY_SECRET = "query-secret-Pm5"
SECRETS = (PASSWORD, WRONG_PASSWORD, BEARER_SECRET, QUERY_SECRET)
CONFIG = """
[server]
access_log = {access_log}

[auth.identity.ci]
username = "ci"
password = "{hash}"
"""
LAYER = payload(300_000, seed=7)
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux"}'
NAMESPACE = "team/app"
ACCESS_MARK = "[angosd.access#info] "


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Sent:
    """One request of the sequence and what the daemon must have recorded for it."""

    action: str
    method: str
    path: str
    status: int
    received: int
    sent: int
    identity: str
    auth: str  # the authentication method it is counted under


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def access_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line.split(ACCESS_MARK, 1)[1]) for line in log.splitlines() if ACCESS_MARK in line]


def start(base: Path, access_log: bool = True) -> Daemon:
    config = base / "angosd.toml"
    config.write_text(CONFIG.format(access_log=str(access_log).lower(), hash=hash_password(PASSWORD)))
    return Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()


@dataclass
class Run:
    sent: list[Sent]
    first_scrape: Response
    second_scrape: Response
    log: str


def run_sequence(daemon: Daemon) -> list[Sent]:
    """The known sequence; each request checked as it goes."""
    done: list[Sent] = []

    def call(action: str, method: str, path: str, status: int, body: bytes | None = None,
             headers: dict[str, str] | None = None, identity: str = "anonymous", auth: str = "anonymous") -> Response:
        response = daemon.request(method, path, body, headers)
        assert response.status == status, (method, path, response.status, response.body[:300])
        done.append(Sent(action, method, path.partition("?")[0], status, len(body or b""), len(response.body),
                         identity, auth))
        return response

    for _ in range(3):
        call("get-api-version", "GET", "/v2/", 200)
    call("get-api-version", "GET", "/v2/", 200, headers={"Authorization": basic("ci", PASSWORD)},
         identity="user:ci", auth="basic")
    call("get-api-version", "GET", "/v2/", 401, headers={"Authorization": basic("ci", WRONG_PASSWORD)},
         identity="-", auth="basic")
    call("get-api-version", "GET", f"/v2/?access_token={QUERY_SECRET}", 401,
         headers={"Authorization": f"Bearer {BEARER_SECRET}"}, identity="-", auth="bearer")
    # blob 1: chunked (POST, PATCH, PUT)
    layer = digest(LAYER)
    location = call("start-upload", "POST", f"/v2/{NAMESPACE}/blobs/uploads/", 202).headers["location"]
    call("update-upload", "PATCH", location, 202, LAYER,
         {"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(LAYER) - 1}"})
    call("complete-upload", "PUT", f"{location}?digest={layer}", 201)
    # blob 2: monolithic POST
    config = digest(CONFIG_BLOB)
    call("start-upload", "POST", f"/v2/{NAMESPACE}/blobs/uploads/?digest={config}", 201, CONFIG_BLOB,
         {"Content-Type": "application/octet-stream"})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": len(CONFIG_BLOB)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": len(LAYER)}],
    }).encode()
    call("put-manifest", "PUT", f"/v2/{NAMESPACE}/manifests/v1", 201, manifest, {"Content-Type": OCI_MANIFEST})
    call("get-manifest", "GET", f"/v2/{NAMESPACE}/manifests/missing", 404)
    # a chunk at the wrong offset: refused with 416, its 10 bytes read and discarded
    location = call("start-upload", "POST", f"/v2/{NAMESPACE}/blobs/uploads/", 202).headers["location"]
    call("update-upload", "PATCH", location, 416, b"0123456789",
         {"Content-Type": "application/octet-stream", "Content-Range": "10-19"})
    pulled = call("get-blob", "GET", f"/v2/{NAMESPACE}/blobs/{layer}", 200)
    assert pulled.body == LAYER
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    daemon = start(tmp_path_factory.mktemp("metrics"))
    try:
        sent = run_sequence(daemon)
        first = daemon.request("GET", "/metrics")
        second = daemon.request("GET", "/metrics")
    finally:
        daemon.stop()  # flushes the log
    yield Run(sent, first, second, daemon.log())


def test_metrics_are_served_in_the_prometheus_text_format(run: Run) -> None:
    assert run.first_scrape.status == 200
    assert run.first_scrape.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(run.first_scrape.body.decode())}
    assert {"angosd_http_requests", "angosd_http_request_duration_seconds", "angosd_http_requests_in_flight",
            "angosd_http_request_bytes", "angosd_http_response_bytes", "angosd_uploads_in_progress",
            "angosd_auth_attempts"} <= names


def test_each_thread_pool_reports_its_queue_and_busy_threads(run: Run) -> None:
    samples = metric_samples(run.first_scrape.body.decode())
    for pool in ("io", "cpu"):
        for name in ("angosd_thread_pool_queued_jobs", "angosd_thread_pool_active_threads"):
            assert (name, frozenset({("pool", pool)})) in samples, (name, pool)
    assert value(samples, "angosd_thread_pool_queued_jobs", pool="io") == 0  # nothing waits at rest
    assert value(samples, "angosd_thread_pool_queued_jobs", pool="cpu") == 0


def test_request_counters_match_the_sequence_exactly(run: Run) -> None:
    samples = metric_samples(run.first_scrape.body.decode())
    expected = Counter((s.action, s.method, str(s.status)) for s in run.sent)
    counted = {(dict(labels)["action"], dict(labels)["method"], dict(labels)["status"]): got
               for (name, labels), got in samples.items() if name == "angosd_http_requests_total"}
    assert counted == {key: float(count) for key, count in expected.items()}
    # the scrape itself is in flight, not yet counted
    assert value(samples, "angosd_http_requests_in_flight") == 1
    assert value(samples, "angosd_uploads_in_progress") == 0


def test_duration_histogram_counts_every_request(run: Run) -> None:
    samples = metric_samples(run.first_scrape.body.decode())
    expected = Counter((s.action, s.method) for s in run.sent)
    for (action, method), count in expected.items():
        labels = {"action": action, "method": method}
        assert value(samples, "angosd_http_request_duration_seconds_count", **labels) == count
        assert value(samples, "angosd_http_request_duration_seconds_bucket", le="+Inf", **labels) == count
        assert value(samples, "angosd_http_request_duration_seconds_bucket", le="600.0", **labels) == count
        assert 0 < value(samples, "angosd_http_request_duration_seconds_sum", **labels) < 60


def test_bytes_received_and_sent_by_action(run: Run) -> None:
    samples = metric_samples(run.first_scrape.body.decode())
    received: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    for s in run.sent:
        received[s.action] += s.received
        sent[s.action] += s.sent
    assert received["update-upload"] == len(LAYER) + 10
    assert sent["get-blob"] == len(LAYER)
    for action in {s.action for s in run.sent}:
        assert value(samples, "angosd_http_request_bytes_total", action=action) == received[action], action
        assert value(samples, "angosd_http_response_bytes_total", action=action) == sent[action], action


def test_auth_attempts_by_method_and_result(run: Run) -> None:
    samples = metric_samples(run.first_scrape.body.decode())
    anonymous = sum(1 for s in run.sent if s.auth == "anonymous") + 1  # + the scrape
    assert value(samples, "angosd_auth_attempts_total", method="anonymous", result="success") == anonymous
    assert value(samples, "angosd_auth_attempts_total", method="basic", result="success") == 1
    assert value(samples, "angosd_auth_attempts_total", method="basic", result="failure") == 1
    assert value(samples, "angosd_auth_attempts_total", method="bearer", result="failure") == 1
    for method in ("certificate", "oidc-basic"):
        for result in ("success", "failure"):
            assert value(samples, "angosd_auth_attempts_total", method=method, result=result) == 0
    assert value(samples, "angosd_auth_attempts_total", method="bearer", result="success") == 0
    assert value(samples, "angosd_auth_attempts_total", method="anonymous", result="failure") == 0


def test_the_second_scrape_counts_the_first(run: Run) -> None:
    samples = metric_samples(run.second_scrape.body.decode())
    assert value(samples, "angosd_http_requests_total", action="metrics", method="GET", status="200") == 1
    assert value(samples, "angosd_http_response_bytes_total", action="metrics") == len(run.first_scrape.body)
    assert value(samples, "angosd_http_requests_in_flight") == 1


def test_labels_carry_no_path_or_namespace(run: Run) -> None:
    text = run.second_scrape.body.decode()
    assert NAMESPACE not in text
    assert "/v2/" not in text


def test_one_access_line_per_request(run: Run) -> None:
    lines = access_lines(run.log)
    assert len(lines) == len(run.sent) + 2
    for entry, sent in zip(lines, run.sent, strict=False):
        assert (entry["action"], entry["method"], entry["path"], entry["status"], entry["identity"],
                entry["bytes_received"], entry["bytes_sent"], entry["client"], entry["aborted"]) == \
            (sent.action, sent.method, sent.path, sent.status, sent.identity, sent.received, sent.sent,
             "127.0.0.1", False)
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert str(entry["time"]).endswith("Z")
    assert [entry["action"] for entry in lines[-2:]] == ["metrics", "metrics"]
    assert lines[-2]["bytes_sent"] == len(run.first_scrape.body)
    with_query = [entry for entry in lines if entry["query"]]
    assert [entry["query"] for entry in with_query] == [["access_token"], ["digest"], ["digest"]]


def test_no_secret_reaches_the_log(run: Run) -> None:
    encoded = [base64.b64encode(f"ci:{password}".encode()).decode() for password in (PASSWORD, WRONG_PASSWORD)]
    for secret in (*SECRETS, *encoded, "Authorization", "Bearer "):
        assert secret not in run.log


# --------------------------------------------------------------------------- separate daemons


def test_a_client_that_disconnects_mid_upload_leaves_nothing_in_flight(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        location = daemon.request("POST", f"/v2/{NAMESPACE}/blobs/uploads/").headers["location"]
        part = LAYER[:100_000]
        with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
            raw.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {len(LAYER)}\r\n\r\n").encode() + part)
            deadline = time.monotonic() + 10
            while daemon.request("GET", location).headers.get("range") != f"0-{len(part) - 1}":
                assert time.monotonic() < deadline, "the part never reached the session"
                time.sleep(0.02)
        deadline = time.monotonic() + 10
        while True:
            samples = metric_samples(daemon.request("GET", "/metrics").body.decode())
            if value(samples, "angosd_http_requests_in_flight") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert value(samples, "angosd_http_requests_in_flight") == 1  # the scrape itself
        assert value(samples, "angosd_uploads_in_progress") == 0
        assert value(samples, "angosd_http_requests_total", action="update-upload", method="PATCH", status="499") == 1
        assert value(samples, "angosd_http_request_bytes_total", action="update-upload") == len(part)
        resumed = daemon.request("PATCH", location, LAYER[len(part):],
                                 {"Content-Type": "application/octet-stream",
                                  "Content-Range": f"{len(part)}-{len(LAYER) - 1}"})
        assert resumed.status == 202
    finally:
        daemon.stop()
    aborted = [entry for entry in access_lines(daemon.log()) if entry["status"] == 499]
    assert len(aborted) == 1
    assert (aborted[0]["action"], aborted[0]["aborted"], aborted[0]["bytes_received"]) == \
        ("update-upload", True, len(part))


def test_the_access_log_can_be_turned_off(tmp_path: Path) -> None:
    daemon = start(tmp_path, access_log=False)
    try:
        assert daemon.request("GET", "/v2/").status == 200
        scrape = metric_samples(daemon.request("GET", "/metrics").body.decode())
    finally:
        daemon.stop()
    assert value(scrape, "angosd_http_requests_total", action="get-api-version", method="GET", status="200") == 1
    assert access_lines(daemon.log()) == []
