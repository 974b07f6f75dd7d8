"""The real HTTP application, served in memory: no process, no socket, a fake clock.

`InMemoryDaemon` builds the same object graph as the daemon
(`angosd.daemon.assembly.build_application` over a registry on a `MemoryDriver`, or on a
filesystem store when given a root), from TOML text read by the real configuration loader.
Requests are raw HTTP/1.1 bytes fed to a `RegistrySite` channel on a `StringTransport`, so the
channel's parser, `RegistryRequest.gotLength` admission, transport pausing, body sinks, the
error mapping and the response writing all run as they do on a socket; the response bytes
are parsed back into a `tests.daemon.Response`.

Everything runs on the calling thread. The reactor is a `MemoryReactorClock` whose thread
pool (`getThreadPool`, `callInThread`) runs each job at once and whose `callFromThread`
queues the result for the next pump, so work "done in a thread" completes later, as in
production, but deterministically. Code that takes an explicit pool instead of the
reactor's gets an `InlineThreadPool` the same way (it has `ThreadPool`'s methods); a real
pool also works, since results arrive through the thread-safe `callFromThread` queue and a
stalled request waits `thread_grace` real seconds for one. Whatever the application waits
for must happen by pumping (and at most `patience` seconds of fake time); otherwise the
request fails with what was received so far instead of hanging.

Its client interface is the one `tests.daemon.Daemon` has (``request``, ``connect``,
``raw``), so the same test bodies run against either.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from angosd.auth.authorizer import SecurityState
from angosd.config import Config, load_config
from angosd.daemon.assembly import Application, build_application, build_registry, build_security
from angosd.daemon.live import LiveConfig
from angosd.observability.audit import AuditLog
from angosd.observability.metrics import Metrics
from angosd.storage.interface import IStorageDriver
from angosd.storage.memory import MemoryDriver
from angosd.storage.pools import BoundedPool, Pools
from tests.daemon import Response

if TYPE_CHECKING:
    from angosd.observability.tracing import Tracing

#: Body bytes handed to the channel per `dataReceived` (a socket read's worth).
READ_SIZE = 64 * 1024
#: Pump rounds without a complete response before a request is declared stuck.
MAX_ROUNDS = 100_000
#: Where the fake clock starts (2026-01-01T00:00:00Z), so stored timestamps look real.
EPOCH = 1_767_225_600
#: The address the application sees as its client's and its own.
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 5000)
_BODY_METHODS = ("PATCH", "POST", "PUT")


class StuckRequest(AssertionError):
    """The application stopped making progress before its response was complete."""


class InlineThreadPool:
    """A stand-in for `twisted.python.threadpool.ThreadPool` that runs each job at once, on the
    calling thread. Results reach the reactor through its ``callFromThread``, as from a real
    pool. A job that raises in `callInThread` (no one to report to) is kept in `errors`."""

    def __init__(self) -> None:
        self.errors: list[Failure] = []
        self.started = True

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], object] | None,
                                 func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            result = func(*args, **kwargs)
        except BaseException:
            failure = Failure()
            if onResult is None:
                self.errors.append(failure)
            else:
                onResult(False, failure)
            return
        if onResult is not None:
            onResult(True, result)

    def callInThread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callInThreadWithCallback(None, func, *args, **kwargs)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False


class InlineReactor(MemoryReactorClock):
    """A `MemoryReactorClock` with the thread methods the application uses: jobs run inline
    (`InlineThreadPool`), ``callFromThread`` calls wait in a queue that `run_queued` empties."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = InlineThreadPool()
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._arrived = threading.Condition()

    def getThreadPool(self) -> InlineThreadPool:
        return self.pool

    def callInThread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.pool.callInThread(func, *args, **kwargs)

    def callFromThread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self._arrived:
            self.queued.append((func, args, kwargs))
            self._arrived.notify_all()

    def run_queued(self) -> bool:
        """Run every queued ``callFromThread`` call (and those they queue); True if any ran."""
        ran = False
        while True:
            with self._arrived:
                if not self.queued:
                    return ran
                func, args, kwargs = self.queued.pop(0)
            func(*args, **kwargs)
            ran = True

    def wait_for_thread(self, timeout: float) -> bool:
        """Wait up to ``timeout`` real seconds for a ``callFromThread`` call; True if one is queued.
        Only a real thread (a pool that is not `InlineThreadPool`) can deliver one meanwhile."""
        with self._arrived:
            return self._arrived.wait_for(lambda: bool(self.queued), timeout)

    def run_due(self) -> bool:
        """Run the delayed calls due now; True if any ran."""
        now = self.seconds()
        if not any(call.getTime() <= now for call in self.getDelayedCalls()):
            return False
        self.advance(0)
        return True

    def next_call_within(self, seconds: float) -> float | None:
        """The delay to the next delayed call when it is due within ``seconds``, else None."""
        times = [call.getTime() for call in self.getDelayedCalls()]
        if not times:
            return None
        delay = max(0.0, min(times) - self.seconds())
        return delay if delay <= seconds else None


class _Transport(StringTransport):
    """A `StringTransport` as forgiving as a TCP transport: pausing or resuming a closed or
    stopped connection is a no-op."""

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "producing"


def _request_bytes(method: str, path: str, body: bytes | Iterable[bytes] | None,
                   headers: dict[str, str] | None) -> bytes:
    """The bytes `http.client` sends for this request (same implicit headers and framing)."""
    given = dict(headers or {})
    lower = {name.lower() for name in given}
    implicit: dict[str, str] = {}
    if "host" not in lower:
        implicit["Host"] = f"{SERVER.host}:{SERVER.port}"
    if "accept-encoding" not in lower:
        implicit["Accept-Encoding"] = "identity"
    data = b""
    if "content-length" not in lower and "transfer-encoding" not in lower:
        if body is None:
            if method.upper() in _BODY_METHODS:
                implicit["Content-Length"] = "0"
        elif isinstance(body, bytes | bytearray):
            implicit["Content-Length"] = str(len(body))
        else:
            implicit["Transfer-Encoding"] = "chunked"
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    elif "chunked" in {**implicit, **given}.get("Transfer-Encoding", ""):
        data = b"".join(b"%X\r\n%s\r\n" % (len(chunk), chunk) for chunk in body if chunk) + b"0\r\n\r\n"
    else:
        data = b"".join(body)
    lines = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in {**implicit, **given}.items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + data


def parse_response(data: bytes, head: bool, closed: bool) -> tuple[Response, int] | None:
    """The first whole response in ``data`` and the bytes it took; None while incomplete.

    ``head``: the request was HEAD (no body follows). ``closed``: the server closed the
    connection, which ends a body with neither a length nor chunked framing.
    """
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        lines = data[start:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        header_lines: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()  # the last one wins, as in `Daemon.request`
            header_lines.append((name.strip().lower(), value.strip()))
        body_start = end + 4
        if 100 <= status < 200:
            start = body_start
            continue
        break
    if head or status in (204, 304):
        return Response(status, headers, b"", tuple(header_lines)), body_start
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(data, body_start, status, headers, tuple(header_lines))
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(data) < body_start + length:
            return None
        return Response(status, headers, data[body_start:body_start + length], tuple(header_lines)), \
            body_start + length
    if not closed:
        return None
    return Response(status, headers, data[body_start:], tuple(header_lines)), len(data)


def _dechunk(data: bytes, at: int, status: int, headers: dict[str, str],
             header_lines: tuple[tuple[str, str], ...]) -> tuple[Response, int] | None:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(data[at:line_end].split(b";", 1)[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            return Response(status, headers, bytes(body), header_lines), trailer_end + 4
        if len(data) < at + size + 2:
            return None
        body += data[at:at + size]
        at += size + 2


class InMemoryConnection:
    """One client connection to the site; like `tests.integration.ocihelpers.Connection`
    (keep-alive, requests in turn), but in memory."""

    def __init__(self, daemon: InMemoryDaemon) -> None:
        self._daemon = daemon
        self.transport = _Transport(hostAddress=SERVER, peerAddress=CLIENT)
        self.protocol = daemon.app.site.buildProtocol(CLIENT)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)
        self._outgoing = bytearray()
        self._incoming = bytearray()
        self.lost = False

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send one request and read its whole response; an iterable body without a
        Content-Length header is sent chunked (as `http.client` does)."""
        return self.send(_request_bytes(method, path, body, headers), head=method.upper() == "HEAD",
                         what=f"{method} {path}")

    def send(self, data: bytes, head: bool = False, what: str = "request") -> Response:
        """Send exact bytes (one whole request) and read one whole response."""
        self._outgoing += data
        return self._read(head, what)

    def _pump(self) -> bool:
        """Deliver input while the server reads, run queued and due work, collect output;
        True if anything happened."""
        progressed = False
        while self._outgoing and not self.lost and self.transport.producerState == "producing":
            chunk = bytes(self._outgoing[:READ_SIZE])
            del self._outgoing[:READ_SIZE]
            self.protocol.dataReceived(chunk)
            progressed = True
        reactor = self._daemon.reactor
        progressed = reactor.run_queued() or progressed
        progressed = reactor.run_due() or progressed
        output = self.transport.value()
        if output:
            self._incoming += output
            self.transport.clear()
            progressed = True
        if self.transport.disconnecting and not self.lost:
            self._lose()
            progressed = True
        return progressed

    def _read(self, head: bool, what: str) -> Response:
        reactor = self._daemon.reactor
        for _ in range(MAX_ROUNDS):
            progressed = self._pump()
            self._daemon.check_pool()
            parsed = parse_response(bytes(self._incoming), head, self.lost)
            if parsed is not None:
                response, used = parsed
                del self._incoming[:used]
                return response
            if self.lost and not progressed:
                break
            if not progressed:
                delay = reactor.next_call_within(self._daemon.patience)
                if delay is not None:
                    reactor.advance(delay)
                elif not reactor.wait_for_thread(self._daemon.thread_grace):
                    break
        raise StuckRequest(
            f"{what}: no complete response after pumping (connection {'closed' if self.lost else 'open'}, "
            f"{len(self._outgoing)} request bytes not read by the server, transport "
            f"{self.transport.producerState}); received {bytes(self._incoming[:2000])!r}; "
            f"pending delayed calls: {reactor.getDelayedCalls()!r}")

    def _lose(self) -> None:
        self.lost = True
        self.transport.disconnecting = True
        self.protocol.connectionLost(Failure(ConnectionDone("closed")))

    def close(self) -> None:
        """The client closes its end; the server sees the connection lost, then runs what that
        triggers."""
        if not self.lost:
            self._lose()
        reactor = self._daemon.reactor
        while reactor.run_queued() or reactor.run_due():
            pass

    def __enter__(self) -> InMemoryConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class InMemoryDaemon:
    """The daemon's HTTP application in memory, on ``config`` (TOML text; empty: the built-in
    defaults). The store is a `MemoryDriver` (`driver`), or the filesystem store at ``root``
    when given. ``patience``: seconds of fake time a request may wait on a timer;
    ``thread_grace``: real seconds a stalled request waits for a result from a real thread
    (none comes from `InlineThreadPool`: this only delays reporting a stuck request).
    ``tracing``: the application's tracer, ``audit`` its audit log (None: off)."""

    def __init__(self, config: str = "", root: str | None = None, patience: float = 1.0,
                 thread_grace: float = 2.0, tracing: Tracing | None = None, audit: AuditLog | None = None) -> None:
        self.reactor = InlineReactor()
        self.reactor.advance(EPOCH)
        self.root = root
        self.patience = patience
        self.thread_grace = thread_grace
        self.config = _load(config, root)
        self.metrics = Metrics(time.monotonic)  # as the daemon: request durations in real seconds
        self.driver: IStorageDriver | None = None if root is not None else MemoryDriver()
        self.pools = Pools(*(BoundedPool(name, self.reactor, 4, 64, threadpool=InlineThreadPool())
                             for name in ("io", "cpu")))
        self.pools.start_until_shutdown(self.reactor)

        def security(config: Config) -> SecurityState:
            return build_security(config, self.reactor, self.pools, self.metrics.auth_attempt, tracing, self.metrics)

        live = LiveConfig([], security(self.config), security, lambda c: c)
        registry = build_registry(live, self.reactor, self.pools, driver=self.driver, tracing=tracing)
        self.app: Application = build_application(self.config, self.reactor, live, registry, self.metrics, tracing,
                                                  audit)
        self.app.site.reactor = self.reactor  # the channels' timeouts run on the fake clock

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """One request on a fresh connection; the whole response is read."""
        with self.connect() as connection:
            return connection.request(method, path, body, headers)

    def raw(self, data: bytes) -> Response:
        """Send exact bytes (a whole request) on a fresh connection and parse the response."""
        with self.connect() as connection:
            return connection.send(data, head=data.upper().startswith(b"HEAD "), what=repr(data[:80]))

    def connect(self) -> InMemoryConnection:
        """A keep-alive connection."""
        return InMemoryConnection(self)

    @contextmanager
    def capture_log(self) -> Iterator[list[str]]:
        """The log lines emitted in the block, in twistd's log-file format
        (``<time> [<namespace>#<level>] <text>``)."""
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            text = formatEventAsClassicLogText(event)
            if text is not None:
                lines.append(text.rstrip("\n"))

        observer = provider(ILogObserver)(observe)
        globalLogPublisher.addObserver(observer)
        try:
            yield lines
        finally:
            globalLogPublisher.removeObserver(observer)

    def check_pool(self) -> None:
        """Fail with the first error of a thread job nobody was waiting for."""
        errors: list[Failure] = getattr(self.reactor.pool, "errors", [])
        if errors:
            failure = errors.pop(0)
            raise AssertionError(f"a job run in the thread pool failed: {failure.getTraceback()}")


def _load(text: str, root: str | None) -> Config:
    """``text`` (and a ``[blob_store.fs]`` root when given) through the real configuration loader."""
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for index, source in enumerate([text, _root_table(root) if root is not None else ""]):
            if source:
                path = os.path.join(directory, f"{index}.toml")
                with open(path, "w", encoding="utf-8") as file:
                    file.write(source)
                paths.append(path)
        return load_config(paths)


def _root_table(root: str) -> str:
    escaped = root.replace("\\", "\\\\").replace('"', '\\"')
    return f'[blob_store.fs]\nroot_dir = "{escaped}"\n'
