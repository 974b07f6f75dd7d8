"""What a feature needs is imported only when it is configured: a daemon without LDAP, S3 or
tracing never loads their libraries (each worker would carry them, unshared), one without TLS
never loads OpenSSL and cryptography."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.certs import CA
from tests.daemon import REPO, Daemon

#: Libraries of optional features, and the feature each belongs to.
OPTIONAL = {"ldaptor": "[auth.ldap]", "botocore": "[blob_store.s3]", "boto3": "[blob_store.s3]",
            "opentelemetry": "[observability.tracing]"}

_BUILD = """
import json, sys
from twisted.internet import reactor
from angosd.config import default_config
from angosd.daemon.overrides import Overrides
from angosd.daemon.service import build_service
build_service(Overrides(root=sys.argv[1], workers=1).apply(default_config()), reactor,
              listen="tcp:0:interface=127.0.0.1")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_default_daemon_loads_no_optional_feature_library(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "angosd" in loaded and "twisted" in loaded
    assert {name: feature for name, feature in OPTIONAL.items() if name in loaded} == {}


#: Builds the daemon as ``twistd angosd ARGS`` does, then reports which TLS libraries are loaded.
_TWISTD_BUILD = """
import json, sys
from angosd.daemon.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options)
from twisted.internet import endpoints, reactor, tcp
from twisted.internet.interfaces import IReactorSSL, ITLSTransport
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("OpenSSL", "cryptography", "jwt", "treq"))
from angosd.auth.ldap import LdapDirectory
from angosd.config import ConfigError
from angosd.config.model import LdapConfig
try:  # a reload adding [auth.ldap] with StartTLS
    LdapDirectory(LdapConfig("ldap://localhost", "dc=example", start_tls=True), reactor)
    ldap_start_tls = "accepted"
except ConfigError as exc:
    ldap_start_tls = str(exc)
from angosd.outbound.client import make_client
make_client(reactor)  # an outbound client made later (a webhook added by a reload) can still use HTTPS
endpoints.wrapClientTLS(object(), endpoints.TCP4ClientEndpoint(reactor, "localhost", 1))
print(json.dumps({"loaded": loaded, "reactor_tls": IReactorSSL.providedBy(reactor),
                  "start_tls": ITLSTransport.implementedBy(tcp.Client), "ldap_start_tls": ldap_start_tls}))
"""


def _twistd_build(*args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", _TWISTD_BUILD, *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[-1]))


def test_a_single_process_daemon_without_tls_loads_no_tls_library(tmp_path: Path) -> None:
    built = _twistd_build("--root", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1", "--workers=1")
    assert built["loaded"] == []  # no OpenSSL, cryptography, pyjwt or treq (~20 MiB)
    assert built["reactor_tls"] is False and built["start_tls"] is False
    assert "needs a restart" in built["ldap_start_tls"]


def test_a_daemon_with_a_tls_listener_has_the_reactor_s_tls(tmp_path: Path) -> None:
    ca = CA("lazy imports CA")
    ca.server().write(tmp_path, "server")
    config = tmp_path / "tls.toml"
    config.write_text(f'[server.tls]\nserver_certificate_bundle = "{tmp_path / "server.crt"}"\n'
                      f'server_private_key = "{tmp_path / "server.key"}"\n')
    built = _twistd_build("--config", str(config), "--root", str(tmp_path / "store"),
                          "--listen", "tcp:0:interface=127.0.0.1", "--workers=1")
    assert "OpenSSL.SSL" in built["loaded"]
    assert built["reactor_tls"] is True and built["start_tls"] is True
    assert built["ldap_start_tls"] == "accepted"


def _tls_libraries_mapped(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "/OpenSSL/" in line or "/cryptography/" in line})


def test_no_process_of_a_daemon_with_workers_loads_tls_libraries(tmp_path: Path) -> None:
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), workers=2).start()
    try:
        deadline = time.monotonic() + 30
        while len(daemon.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.request("GET", "/v2/").status == 200  # served by a worker, which has built everything
        assert daemon.process is not None
        processes = [pid for pid in (daemon.process.pid, daemon.fork_server_pid(), *daemon.worker_pids())
                     if pid is not None]
        assert len(processes) >= 3  # the supervisor and its workers (and the fork server, if any)
        mapped = {pid: _tls_libraries_mapped(pid) for pid in processes}
        assert {pid: libraries for pid, libraries in mapped.items() if libraries} == {}
    finally:
        daemon.stop()


#: In a process whose reactor was imported without TLS: an HTTPS request through the outbound client.
_HTTPS_CLIENT = """
import sys
from angosd.compat import import_reactor_without_tls
reactor = import_reactor_without_tls()
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from angosd.outbound.client import ClientTLS, content, make_client
assert "OpenSSL" not in sys.modules

async def get(reactor):
    client, _pool = make_client(reactor, ClientTLS(sys.argv[1]), connect_timeout=10)
    response = await client.get(sys.argv[2].encode())
    print(response.code, (await content(response)).decode())

react(lambda reactor: ensureDeferred(get(reactor)))
"""


def test_an_https_client_works_in_a_daemon_started_without_tls(tmp_path: Path) -> None:
    ca = CA("lazy imports CA")
    cert, key = ca.server().write(tmp_path, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run([sys.executable, "-c", _HTTPS_CLIENT, ca.write(tmp_path / "ca.crt"),
                                 f"https://localhost:{server.server_address[1]}/"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "hello"]
