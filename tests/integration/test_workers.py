"""Several worker processes on one socket (``[server] workers``), through the real daemon.

Each test that depends on which worker serves what first finds, from ``/proc``, the worker
holding each of its connections (`serving_pid`), so "two workers" is a fact of the test,
not a hope.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from angosd.daemon.workers.cpus import usable_cpus
from tests.certs import CA
from tests.daemon import REPO, Daemon, Response, children, process_name
from tests.integration.ocihelpers import image_manifest, payload, push_blob, push_manifest, wait_for
from tests.integration.test_operations import NotifySocket, rewrite_unseen

MiB = 1024 * 1024
SKOPEO = os.path.exists("/usr/bin/skopeo")


# --------------------------------------------------------------------------- helpers


def start(base: Path, *configs: str, env: dict[str, str] | None = None) -> Daemon:
    """A daemon with two workers, once both are ready."""
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=configs, workers=2, env=env or {}).start()
    wait_for(lambda: "all 2 workers are ready" in daemon.log(), timeout=30)
    return daemon


def replaced(workers: list[int], killed: int) -> bool:
    """Two workers, ``killed`` not among them (from one listing: a forked worker is reaped by the
    fork server a moment before the supervisor hears of it and replaces it)."""
    return len(workers) == 2 and killed not in workers


def config(base: Path, text: str, name: str = "angosd.toml") -> str:
    path = base / name
    path.write_text(text)
    return str(path)


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the TCP socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def serving_pid(daemon: Daemon, sock: socket.socket) -> int:
    """The worker process that holds the server side of ``sock`` (which must have been answered once)."""
    inode = _socket_inode(daemon.port, sock.getsockname()[1])
    assert inode is not None, "no server side for this connection"
    for pid in daemon.worker_pids():
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds this connection")


class Keep:
    """A keep-alive HTTP connection, and the worker serving it."""

    def __init__(self, daemon: Daemon) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
        assert self.request("GET", "/v2/").status == 200
        assert self.connection.sock is not None
        self.sock: socket.socket = self.connection.sock
        self.pid = serving_pid(daemon, self.sock)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())

    def close(self) -> None:
        self.connection.close()


def one_per_worker(daemon: Daemon, attempts: int = 200) -> list[Keep]:
    """A keep-alive connection to each worker, in worker-pid order."""
    found: dict[int, Keep] = {}
    spare: list[Keep] = []
    workers = set(daemon.worker_pids())
    for _ in range(attempts):
        keep = Keep(daemon)
        if keep.pid in found:
            spare.append(keep)  # held open, so the next connection tends to go elsewhere
        else:
            found[keep.pid] = keep
        if set(found) == workers:
            break
    for keep in spare:
        keep.close()
    assert set(found) == workers, f"connections reached only {sorted(found)} of workers {sorted(workers)}"
    return [found[pid] for pid in sorted(found)]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): float(sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples}


def api_version_count(scrape: Response) -> float:
    assert scrape.status == 200, scrape
    key = ("angosd_http_requests_total", frozenset({("action", "get-api-version"), ("method", "GET"),
                                                     ("status", "200")}))
    return samples(scrape.body.decode()).get(key, 0.0)


def open_body(daemon: Daemon, sock: socket.socket, method: str, target: str, length: int, first: bytes,
              headers: str = "") -> None:
    """Send the head of a request with a ``length``-byte body, and its first bytes."""
    sock.sendall((f"{method} {target} HTTP/1.1\r\nHost: {daemon.host}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {length}\r\n{headers}\r\n").encode() + first)


def read_response(sock: socket.socket) -> Response:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def upload_size(daemon: Daemon, location: str) -> int:
    response = daemon.request("GET", location)
    assert response.status == 204, response
    return int(response.headers["range"].split("-")[1]) + 1 if response.headers["range"] != "0-0" else 0


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with two workers for the module (tests use distinct namespaces)."""
    daemon = start(tmp_path_factory.mktemp("two"))
    try:
        yield daemon
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- serving


def test_two_workers_accept_from_one_socket(two: Daemon) -> None:
    assert len(two.worker_pids()) == 2
    keeps = one_per_worker(two)
    try:
        for keep in keeps:
            assert keep.request("GET", "/v2/").status == 200
    finally:
        for keep in keeps:
            keep.close()
    assert two.log().count("RegistrySite starting on") == 2


def test_what_one_worker_stores_the_other_serves(two: Daemon) -> None:
    first, second = one_per_worker(two)
    try:
        layer, config_blob = payload(300_000, seed=31), b'{"architecture":"amd64","os":"linux"}'
        digests = []
        for data in (layer, config_blob):
            location = first.request("POST", "/v2/workers/shared/blobs/uploads/").headers["location"]
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
            response = first.request("PUT", f"{location}?digest={digest}", data,
                                     {"Content-Type": "application/octet-stream"})
            assert response.status == 201, response
            digests.append(digest)
        manifest = image_manifest(config_blob, [layer])
        assert first.request("PUT", "/v2/workers/shared/manifests/v1", manifest,
                             {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).status == 201
        assert second.request("GET", "/v2/workers/shared/manifests/v1",
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).body == manifest
        assert second.request("GET", f"/v2/workers/shared/blobs/{digests[0]}").body == layer
        assert json.loads(second.request("GET", "/v2/workers/shared/tags/list").body)["tags"] == ["v1"]
    finally:
        first.close()
        second.close()


@pytest.mark.skipif(not SKOPEO, reason="skopeo is not installed")
def test_skopeo_copies_an_index_in_and_out(two: Daemon, tmp_path: Path) -> None:
    from tests.integration.images import build_index, inspect_raw, manifest_digest, skopeo

    index = build_index(str(tmp_path / "src"), "multi", seed=41)
    remote = f"docker://{two.host}/workers/skopeo:1.0"
    skopeo("copy", "--all", "--dest-tls-verify=false", index.ref, remote)
    assert inspect_raw(remote, "--tls-verify=false") == inspect_raw(index.ref)
    skopeo("copy", "--all", "--src-tls-verify=false", remote, f"oci:{tmp_path / 'back'}:1.0")
    assert manifest_digest(f"oci:{tmp_path / 'back'}:1.0") == index.digest
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "back" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_one_upload_written_through_two_workers_at_once_is_416_not_a_mix(two: Daemon) -> None:
    data, intruder = payload(4 * MiB, seed=51), payload(4 * MiB, seed=52)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    first, second = one_per_worker(two)
    try:
        location = first.request("POST", "/v2/workers/race/blobs/uploads/").headers["location"]
        # The first worker receives a chunk slowly ...
        open_body(two, first.sock, "PATCH", location, len(data), data[:MiB], f"Content-Range: 0-{len(data) - 1}\r\n")
        wait_for(lambda: upload_size(two, location) >= MiB // 2)
        # ... while the other worker is asked to write the same session, at the same offset or at its end.
        for range_header in (f"0-{len(intruder) - 1}", None):
            headers = {"Content-Type": "application/octet-stream"}
            if range_header:
                headers["Content-Range"] = range_header
            refused = second.request("PATCH", location, intruder, headers)
            assert refused.status == 416, refused
            assert refused.headers["location"] and refused.headers["range"]
        completing = second.request("PUT", f"{location}?digest={digest}")
        assert completing.status == 416, completing
        first.sock.sendall(data[MiB:])
        done = read_response(first.sock)
        assert done.status == 202, done
        assert done.headers["range"] == f"0-{len(data) - 1}"
        # A chunk at a stale offset after the fact is refused as well; completion sees only the first writer's bytes.
        stale = second.request("PATCH", location, intruder, {"Content-Range": f"0-{len(intruder) - 1}",
                                                             "Content-Type": "application/octet-stream"})
        assert stale.status == 416
        assert second.request("PUT", f"{location}?digest={digest}").status == 201
        assert two.request("GET", f"/v2/workers/race/blobs/{digest}").body == data
    finally:
        first.close()
        second.close()
    assert not os.listdir(os.path.join(two.root, "_coordination", "locks")), "every lock was released"


# --------------------------------------------------------------------------- metrics


def test_metrics_add_up_across_workers_and_survive_a_replaced_worker(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        first, second = one_per_worker(daemon)
        initially = api_version_count(first.request("GET", "/metrics"))
        for _ in range(3):
            assert first.request("GET", "/v2/").status == 200
        for _ in range(5):
            assert second.request("GET", "/v2/").status == 200
        scrapes = [keep.request("GET", "/metrics") for keep in (first, second)]
        totals = [api_version_count(scrape) for scrape in scrapes]
        assert totals == [initially + 8, initially + 8], "every worker reports the sum over all workers"
        before = totals[0]
        exposition = samples(scrapes[1].body.decode())
        assert exposition[("angosd_http_requests_in_flight", frozenset())] == 1.0, "the scrape itself, once"
        assert ("process_cpu_seconds_total", frozenset()) in exposition
        assert ("process_resident_memory_bytes", frozenset()) in exposition
        assert not any(name.startswith("python_gc") for name, _ in exposition)

        killed = first.pid
        first.close()
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: replaced(daemon.worker_pids(), killed), timeout=30)
        wait_for(lambda: daemon.log().count("RegistrySite starting on") >= 3, timeout=30)
        after = api_version_count(second.request("GET", "/metrics"))
        assert after >= before, "the killed worker's requests stay counted"
        exposition = samples(second.request("GET", "/metrics").body.decode())
        assert exposition[("angosd_http_requests_in_flight", frozenset())] == 1.0, "no gauge left by the dead worker"
        second.close()
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- failures


def test_a_killed_worker_is_replaced_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        first, second = one_per_worker(daemon)
        stored = {}
        for index, keep in enumerate((first, second, first, second)):
            namespace = f"workers/kill{index}"
            layer = payload(200_000, seed=60 + index)
            assert keep.request("POST", f"/v2/{namespace}/blobs/uploads/?digest=sha256:"
                                f"{hashlib.sha256(layer).hexdigest()}", layer,
                                {"Content-Type": "application/octet-stream"}).status == 201
            manifest = image_manifest(b"{}", [layer])
            push_blob(daemon, namespace, b"{}")
            assert keep.request("PUT", f"/v2/{namespace}/manifests/latest", manifest,
                                {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).status == 201
            stored[namespace] = manifest

        # An upload in progress on the worker about to die.
        data = payload(8 * MiB, seed=69)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        location = first.request("POST", "/v2/workers/cut/blobs/uploads/").headers["location"]
        open_body(daemon, first.sock, "PATCH", location, len(data), data[:3 * MiB])
        wait_for(lambda: upload_size(daemon, location) >= MiB)
        killed = first.pid
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: replaced(daemon.worker_pids(), killed), timeout=30)
        assert f"(pid {killed}) was killed by signal 9" in daemon.log()
        first.close()

        for namespace, manifest in stored.items():
            response = daemon.request("GET", f"/v2/{namespace}/manifests/latest",
                                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert response.status == 200 and response.body == manifest
        # The cut upload reports what it holds and resumes through the surviving worker at once
        # (the dead worker's lock went with it).
        size = upload_size(daemon, location)
        assert MiB <= size <= 3 * MiB
        resumed = second.request("PATCH", location, data[size:], {"Content-Range": f"{size}-{len(data) - 1}",
                                                                  "Content-Type": "application/octet-stream"})
        assert resumed.status == 202, resumed
        assert second.request("PUT", f"{location}?digest={digest}").status == 201
        assert hashlib.sha256(daemon.request("GET", f"/v2/workers/cut/blobs/{digest}").body).hexdigest() == \
            digest.split(":")[1]
        second.close()
        new = one_per_worker(daemon)
        for keep in new:
            assert keep.request("GET", "/v2/workers/kill0/tags/list").status == 200
            keep.close()
    finally:
        daemon.stop()


def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path) -> None:
    daemon = start(tmp_path, config(tmp_path, "[global]\nshutdown_drain_secs = 60\n"))
    assert daemon.process is not None
    run_dirs = [os.path.join(tempfile.gettempdir(), entry) for entry in os.listdir(tempfile.gettempdir())
                if entry.startswith(f"angosd-run-{daemon.process.pid}-")]
    assert len(run_dirs) == 1
    try:
        uploads = []
        for keep in one_per_worker(daemon):
            data = payload(2 * MiB, seed=keep.pid % 1000)
            location = keep.request("POST", "/v2/workers/drain/blobs/uploads/").headers["location"]
            open_body(daemon, keep.sock, "PATCH", location, len(data), data[:MiB])
            uploads.append((keep, location, data))
        for _, location, _ in uploads:
            wait_for(lambda location=location: upload_size(daemon, location) >= MiB // 2)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_for(lambda: _refused(daemon.port), timeout=5)
        assert time.monotonic() - stopped_at < 5, "new connections are refused at once"
        time.sleep(0.5)
        for keep, _, data in uploads:
            keep.sock.sendall(data[MiB:])
            finished = read_response(keep.sock)
            assert finished.status == 202, finished
            assert finished.headers["range"] == f"0-{len(data) - 1}"
            assert finished.headers.get("connection") == "close"
            keep.close()
        assert daemon.process.wait(30) == 0
        assert daemon.log().count("waiting up to 60s for 1 request(s) in flight") == 2
        assert "drain deadline passed" not in daemon.log()
        assert not os.path.exists(run_dirs[0]), "the run directory is removed"
    finally:
        daemon.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    workers = daemon.worker_pids()
    assert len(workers) == 2 and daemon.process is not None
    fork_server = daemon.fork_server_pid()
    assert fork_server is not None
    workers.append(fork_server)
    daemon.process.kill()
    daemon.process.wait()

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and b"angosd" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       for pid in workers)

    wait_for(gone, timeout=30)


def test_workers_are_forked_by_the_fork_server_and_so_are_their_replacements(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        fork_server = daemon.fork_server_pid()
        assert fork_server is not None
        workers = daemon.worker_pids()
        assert len(workers) == 2 and children(fork_server) == workers
        assert {process_name(pid) for pid in workers} == {"angosd-worker"}
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: replaced(children(fork_server), workers[0]), timeout=30)
        wait_for(lambda: f"(pid {workers[0]}) was killed by signal 9" in daemon.log(), timeout=30)
        for keep in one_per_worker(daemon):
            assert keep.request("GET", "/v2/").status == 200
            keep.close()
    finally:
        daemon.stop()


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's end may wait for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_without_its_fork_server_the_supervisor_still_replaces_and_stops_workers(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        assert daemon.process is not None
        fork_server = daemon.fork_server_pid()
        assert fork_server is not None
        forked = daemon.worker_pids()
        os.kill(fork_server, signal.SIGKILL)
        wait_for(lambda: f"the fork server (pid {fork_server}) is gone" in daemon.log(), timeout=30)
        # The forked workers outlive it; the end of one is still seen (on its pidfd), and its
        # replacement is a new interpreter, the supervisor's child.
        os.kill(forked[0], signal.SIGKILL)
        wait_for(lambda: f"(pid {forked[0]}) ended (exit status unknown)" in daemon.log(), timeout=30)
        wait_for(lambda: len(daemon.worker_pids()) == 1, timeout=30)
        replacement = daemon.worker_pids()[0]
        assert replacement not in forked and process_name(replacement) != "angosd-worker"
        for _ in range(20):
            assert daemon.request("GET", "/v2/").status == 200
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        assert not _running(forked[1]), "the orphaned forked worker was stopped too"
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- TLS, systemd, listening


def test_tls_with_client_certificates_and_rotation_on_every_worker(tmp_path: Path) -> None:
    ca = CA("workers CA")
    ca_path = ca.write(tmp_path / "ca.crt")
    cert, key = ca.server("first").write(tmp_path / "tls", "server")
    tls = config(tmp_path, f'[server.tls]\nserver_certificate_bundle = "{cert}"\nserver_private_key = "{key}"\n'
                           f'client_ca_bundle = "{ca_path}"\nclient_auth = "required"\n')
    daemon = start(tmp_path, tls)
    try:
        client_cert = ca.client("alice").write(tmp_path / "clients", "alice")
        with_cert = ssl.create_default_context(cafile=ca_path)
        with_cert.load_cert_chain(*client_cert)
        without = ssl.create_default_context(cafile=ca_path)

        def served_by_each(context: ssl.SSLContext) -> dict[int, str]:
            names: dict[int, str] = {}
            for _ in range(200):
                raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
                    tls_socket.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {daemon.host}\r\n\r\n".encode())
                    response = read_response(tls_socket)
                    assert response.status == 200
                    certificate = tls_socket.getpeercert()
                    assert certificate is not None
                    names[serving_pid(daemon, tls_socket)] = dict(x[0] for x in certificate["subject"])["commonName"]
                if len(names) == 2:
                    return names
            raise AssertionError(f"TLS connections reached only {names}")

        assert set(served_by_each(with_cert).values()) == {"first"}
        for _ in range(6):  # whichever worker accepts, a client without a certificate is refused
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, TimeoutError)):
                connection = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=without, timeout=10)
                connection.request("GET", "/v2/")
                connection.getresponse()

        rotated = ca.server("second")
        Path(key).write_bytes(rotated.key_pem())
        Path(cert).write_bytes(rotated.cert_pem())
        wait_for(lambda: set(served_by_each(with_cert).values()) == {"second"}, timeout=30)
    finally:
        daemon.stop()


POLICY = """
[global.access_policy]
default = "deny"
rules = [{rules}]
"""
FILLER = "\n# " + "room for rewrites " * 20 + "\n"


def test_systemd_hears_the_supervisor_only_and_reloads_reach_every_worker(tmp_path: Path) -> None:
    notify = NotifySocket()
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(rules="\"request.action == 'get-api-version'\"") + FILLER)
    daemon = start(tmp_path, str(path), env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "2000000"})
    try:
        _, ready = notify.wait_for("READY")
        assert ready["STATUS"] == f"serving on 127.0.0.1:{daemon.port}"
        assert "all 2 workers are ready" in daemon.log()
        notify.wait_for("WATCHDOG")
        time.sleep(1.5)
        assert sum(1 for _, message in notify.received if message.get("READY") == "1") == 1, \
            "READY comes once, from the supervisor (workers report to it, not to systemd)"
        keeps = one_per_worker(daemon)
        for keep in keeps:
            assert keep.request("GET", "/v2/_catalog").status == 401

        rewrite_unseen(path, POLICY.format(rules="\"request.action in ['get-api-version', 'list-catalog']\""))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        reloading_at, _ = notify.wait_for("RELOADING")
        ready_at, ready = notify.wait_for("READY")
        assert ready_at >= reloading_at and "refused" not in ready["STATUS"]
        wait_for(lambda: daemon.log().count("configuration reloaded") == 3)  # the supervisor and each worker
        for keep in keeps:
            assert keep.request("GET", "/v2/_catalog").status == 200
            keep.close()

        rewrite_unseen(path, POLICY.format(rules="\"request.action ==\""))
        daemon.process.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        _, ready = notify.wait_for("READY")
        assert "last reload refused" in ready["STATUS"]
        wait_for(lambda: daemon.log().count("reload refused") == 3)

        daemon.process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        assert daemon.process.wait(30) == 0
    finally:
        daemon.stop()
        notify.close()


def test_a_unix_socket_is_shared_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "angosd.sock"
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), listen=f"unix:{path}:mode=660", workers=2)
    os.makedirs(daemon.workdir)
    daemon.log_path = str(tmp_path / "work" / "angosd.log")
    with open(daemon.log_path, "wb") as log:  # not Daemon.start: it waits for a TCP port number
        daemon.process = subprocess.Popen(daemon.command(), cwd=daemon.workdir, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONPATH": REPO})
    try:
        wait_for(lambda: "all 2 workers are ready" in daemon.log(), timeout=30)
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)

        def get() -> int:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(path))
            with sock:
                sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return read_response(sock).status

        assert all(get() == 200 for _ in range(10))
        killed = daemon.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: replaced(daemon.worker_pids(), killed), timeout=30)
        wait_for(lambda: daemon.log().count("ready: listening on") >= 4, timeout=30)
        assert path.exists() and oct(path.stat().st_mode & 0o777) == oct(0o660), "a stopping worker leaves the file"
        assert all(get() == 200 for _ in range(10))
    finally:
        daemon.stop()
    assert daemon.process.returncode == 0 and not path.exists()


def test_the_default_is_one_worker_per_usable_core(tmp_path: Path) -> None:
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), workers=0).start()
    try:
        expected = usable_cpus()
        wait_for(lambda: len(daemon.worker_pids()) == (expected if expected > 1 else 0), timeout=30)
        assert daemon.request("GET", "/v2/").status == 200
    finally:
        daemon.stop()


def twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "angosd",
               "--root", str(cwd / "store"), "--workers", "2", *args]
    return subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                          timeout=60)


def test_a_port_in_use_or_a_tls_endpoint_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = twistd(tmp_path, "--listen", f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "angosd: cannot listen on tcp:" in output and "Address already in use" in output
    cert, key = CA().server().write(tmp_path, "server")
    result = twistd(tmp_path, "--listen", f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}")
    assert result.returncode != 0
    assert "use a plain tcp, tcp6, unix or systemd endpoint" in result.stdout + result.stderr


def test_a_bad_configuration_is_refused_by_the_supervisor_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[global.access_policy]\ndefault = "deny"\nrules = ["request.action =="]\n')
    result = twistd(tmp_path, "-c", str(bad))
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("angosd: configuration error") == 1
    assert "worker 1 started" not in result.stdout


def test_pushes_through_two_workers_by_many_clients_at_once(two: Daemon) -> None:
    """Many small pushes in parallel over fresh connections: every one is stored whole."""
    import concurrent.futures

    def push(index: int) -> bytes:
        return push_image_via(two, f"workers/many{index % 4}", f"t{index}", seed=100 + index)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        manifests = list(pool.map(push, range(24)))
    for index, manifest in enumerate(manifests):
        response = two.request("GET", f"/v2/workers/many{index % 4}/manifests/t{index}",
                               headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert response.status == 200 and response.body == manifest


def push_image_via(daemon: Daemon, namespace: str, tag: str, seed: int) -> bytes:
    layer = payload(50_000, seed=seed)
    push_blob(daemon, namespace, layer)
    push_blob(daemon, namespace, b"{}")
    body = image_manifest(b"{}", [layer])
    push_manifest(daemon, namespace, tag, body)
    return body
