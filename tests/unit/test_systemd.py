"""sd_notify, watchdog, SIGHUP reload, socket activation helpers, and the shutdown drain."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from angosd.daemon import shutdown, systemd
from angosd.daemon.systemd import ListenError, Notifier, ObservedEndpoint, SystemdService

# --------------------------------------------------------------------------- Notifier


@pytest.fixture
def datagram_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = f"/tmp/angosd-{uuid.uuid4().hex[:12]}.sock"  # short: AF_UNIX paths are limited to 107 bytes
    receiver.bind(path)
    receiver.settimeout(5)
    try:
        yield receiver, path
    finally:
        receiver.close()
        os.unlink(path)


def test_notifier_sends_one_datagram_per_message_to_a_path(datagram_socket: tuple[socket.socket, str]) -> None:
    receiver, path = datagram_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=serving on 127.0.0.1:5000")
    assert notifier.notify("WATCHDOG=1")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:5000"
    assert receiver.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_notifier_uses_the_abstract_namespace_for_at_names() -> None:
    name = f"angosd-unit-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(5)
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.notify("STOPPING=1")
        assert receiver.recv(4096) == b"STOPPING=1"
        notifier.close()
    finally:
        receiver.close()


@pytest.mark.parametrize("value", [None, "", "relative/path", "@"])
def test_notifier_without_a_usable_socket_does_nothing(value: str | None) -> None:
    notifier = Notifier.from_environment({} if value is None else {"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


def test_notifier_never_raises_when_nobody_listens(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody"))
    assert notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.notify("READY=1") is False


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(environ: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(environ, pid=42) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, []),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, [3]),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, [3, 4]),
    ({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, []),
    ({"LISTEN_FDS": "1"}, []),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, []),
])
def test_activated_fds_follow_sd_listen_fds(environ: dict[str, str], expected: list[int]) -> None:
    assert systemd.activated_fds(environ, pid=42) == expected


def test_activated_endpoint_without_sockets_is_a_listen_error() -> None:
    with pytest.raises(ListenError, match="systemd passed no socket"):
        systemd.activated_endpoint(Clock(), {}, pid=42)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_the_family_of_a_passed_socket_is_read_from_it(family: int) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        listener.listen()
        assert systemd._listening_family(listener.fileno()) == family
        listener.getsockname()  # still open: the probe did not close it


def test_a_passed_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unbound, pytest.raises(ListenError, match="listening"):
        systemd._listening_family(unbound.fileno())


def test_listen_endpoint_parses_twisted_descriptions_and_explains_mistakes() -> None:
    assert isinstance(systemd.listen_endpoint(Clock(), "tcp:0:interface=127.0.0.1", {}), endpoints.TCP4ServerEndpoint)
    with pytest.raises(ListenError, match="'nonsense:1'"):
        systemd.listen_endpoint(Clock(), "nonsense:1", {})
    with pytest.raises(ListenError, match="no such socket passed by systemd"):
        systemd.listen_endpoint(Clock(), "systemd:domain=INET:index=7", {})


# --------------------------------------------------------------------------- ObservedEndpoint


class FakeEndpoint:
    def __init__(self) -> None:
        self.result: Deferred[Any] = Deferred()

    def listen(self, factory: object) -> Deferred[Any]:
        return self.result


def test_observed_endpoint_tells_waiters_before_and_after_listening() -> None:
    inner = FakeEndpoint()
    observed = ObservedEndpoint(inner)  # type: ignore[arg-type]
    early = observed.listening()
    returned = observed.listen(object())  # type: ignore[arg-type]
    assert not early.called
    port = object()
    inner.result.callback(port)
    assert early.result is port
    assert observed.listening().result is port
    assert returned.result is port


def test_observed_endpoint_passes_a_listen_failure_on() -> None:
    inner = FakeEndpoint()
    observed = ObservedEndpoint(inner)  # type: ignore[arg-type]
    early = observed.listening()
    returned = observed.listen(object())  # type: ignore[arg-type]
    inner.result.errback(OSError("address in use"))
    failures: list[Failure] = []
    for deferred in (early, observed.listening(), returned):
        deferred.addErrback(failures.append)
    assert [f.check(OSError) for f in failures] == [OSError] * 3


# --------------------------------------------------------------------------- SystemdService


class FakeNotifier:
    def __init__(self) -> None:
        self.messages: list[tuple[str, ...]] = []

    def notify(self, *fields: str) -> bool:
        self.messages.append(fields)
        return True

    def fields(self) -> list[str]:
        return [field for message in self.messages for field in message if not field.startswith(("STATUS=",
                                                                                                  "MONOTONIC"))]


class FakeReactor(Clock):
    def callFromThread(self, function: Any, *args: Any) -> None:
        self.callLater(0, function, *args)


class FakePort:
    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 5000)


class Harness:
    """A SystemdService with fakes all around; ``listening`` and ``storage`` are controllable."""

    def __init__(self, watchdog: float | None = None) -> None:
        self.notifier = FakeNotifier()
        self.reactor = FakeReactor()
        self.listening: Deferred[Any] = Deferred()
        self.storage_results: list[Any] = []
        self.reloads: list[bool | Exception] = []
        self.signals: dict[int, Any] = {signal.SIGHUP: signal.SIG_DFL}
        self.service = SystemdService(self.notifier, self.reactor, lambda: self.listening, self.storage, self.reload,
                                      watchdog, self.install_signal)

    def storage(self) -> Deferred[Any]:
        result = self.storage_results.pop(0) if self.storage_results else []
        return fail(result) if isinstance(result, Exception) else succeed(result)

    def reload(self) -> bool:
        outcome = self.reloads.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def install_signal(self, number: int, handler: Any) -> Any:
        previous, self.signals[number] = self.signals.get(number), handler
        return previous

    def sighup(self) -> None:
        self.signals[signal.SIGHUP](signal.SIGHUP, None)
        self.reactor.advance(0)


def test_ready_only_once_listening_and_storage_answers() -> None:
    harness = Harness()
    harness.storage_results = [OSError("disk gone"), OSError("disk gone"), []]
    harness.service.startService()
    assert harness.notifier.messages == []
    harness.listening.callback(FakePort())
    assert "READY=1" not in harness.notifier.fields()
    assert harness.notifier.messages[-1][0].startswith("STATUS=waiting for storage: disk gone")
    harness.reactor.advance(systemd.STORAGE_RETRY)
    assert "READY=1" not in harness.notifier.fields()
    harness.reactor.advance(systemd.STORAGE_RETRY)
    assert harness.notifier.messages[-1] == ("READY=1", "STATUS=serving on 127.0.0.1:5000")
    assert harness.service.ready


def test_no_ready_when_listening_fails() -> None:
    harness = Harness()
    harness.service.startService()
    harness.listening.errback(OSError("Address already in use"))
    assert harness.notifier.messages == [("STATUS=cannot listen: Address already in use",)]
    assert not harness.service.ready


def test_watchdog_pings_every_interval_until_stopped() -> None:
    harness = Harness(watchdog=1.0)
    harness.service.startService()
    harness.reactor.pump([1.0] * 3)
    assert harness.notifier.fields() == ["WATCHDOG=1"] * 4
    harness.service.stopService()
    harness.reactor.pump([1.0] * 3)
    assert harness.notifier.fields() == ["WATCHDOG=1"] * 4 + ["STOPPING=1"]


def test_sighup_reloads_between_reloading_and_ready() -> None:
    harness = Harness()
    harness.service.startService()
    harness.listening.callback(FakePort())
    harness.notifier.messages.clear()
    harness.reloads = [True, False, RuntimeError("bug")]
    harness.sighup()
    assert harness.notifier.fields() == ["RELOADING=1", "READY=1"]
    reloading, ready = harness.notifier.messages
    assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
    assert ready[1] == "STATUS=serving on 127.0.0.1:5000"
    harness.sighup()
    assert harness.notifier.messages[-1] == ("READY=1", "STATUS=serving on 127.0.0.1:5000; last reload refused, "
                                                        "see the log")
    harness.sighup()  # a reload that raises keeps the daemon serving and says so
    assert harness.notifier.messages[-1][0] == "READY=1" and "refused" in harness.notifier.messages[-1][1]
    assert harness.reloads == []


def test_sighup_before_ready_reloads_without_notifications() -> None:
    harness = Harness()
    harness.service.startService()
    harness.reloads = [True]
    harness.sighup()
    assert harness.reloads == []
    assert harness.notifier.messages == []


def test_stopping_is_announced_and_sighup_no_longer_kills_or_reloads() -> None:
    harness = Harness()
    harness.service.startService()
    harness.listening.callback(FakePort())
    handler = harness.signals[signal.SIGHUP]
    harness.service.stopService()
    assert harness.notifier.messages[-1][0] == "STOPPING=1"
    assert harness.signals[signal.SIGHUP] == signal.SIG_IGN, "the default action would kill the draining daemon"
    handler(signal.SIGHUP, None)
    harness.reactor.advance(0)  # no reload scheduled (none is queued: it would raise IndexError)


def test_stopping_before_storage_answers_cancels_the_retry() -> None:
    harness = Harness()
    harness.storage_results = [OSError("slow")]
    harness.service.startService()
    harness.listening.callback(FakePort())
    harness.service.stopService()
    harness.reactor.advance(10 * systemd.STORAGE_RETRY)
    assert "READY=1" not in harness.notifier.fields()
    assert harness.reactor.getDelayedCalls() == []


# --------------------------------------------------------------------------- DrainService


class FakeTransport:
    def __init__(self) -> None:
        self.connected = True
        self.lost = False
        self.aborted = False

    def loseConnection(self) -> None:
        self.lost = True

    def abortConnection(self) -> None:
        self.aborted = True


class FakeHeaders:
    def __init__(self) -> None:
        self.values: dict[bytes, list[bytes]] = {}

    def setRawHeaders(self, name: bytes, values: list[bytes]) -> None:
        self.values[name.lower()] = values


class FakeChannel:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.persistent = True


class FakeRequest:
    def __init__(self, writing: bool = False) -> None:
        self.channel = FakeChannel()
        self.responseHeaders = FakeHeaders()
        self.startedWriting = writing


def drained(deferred: Deferred[None]) -> bool:
    return deferred.called


def test_stop_with_nothing_in_flight_is_immediate() -> None:
    clock = Clock()
    drain = shutdown.DrainService(lambda: 30, clock)
    finished = FakeRequest()
    drain.started(finished)
    drain.finished(finished, False)
    assert drained(drain.stopService())
    assert clock.getDelayedCalls() == []


def test_stop_waits_for_requests_in_flight_and_for_their_connections_to_flush() -> None:
    clock = Clock()
    drain = shutdown.DrainService(lambda: 30, clock)
    download, upload = FakeRequest(writing=True), FakeRequest(writing=False)
    drain.started(download)
    drain.started(upload)
    stopped = drain.stopService()
    assert not drained(stopped) and drain.draining and drain.in_flight == 2
    assert upload.responseHeaders.values[b"connection"] == [b"close"] and not upload.channel.persistent
    assert download.channel.persistent, "its response is already on its way: closed after it instead"

    late = FakeRequest()  # a new request on an open keep-alive connection
    drain.started(late)
    assert late.responseHeaders.values[b"connection"] == [b"close"] and not late.channel.persistent

    drain.finished(download, False)
    assert download.channel.transport.lost, "closed once the buffered response is sent"
    drain.finished(upload, False)
    drain.finished(late, False)
    clock.advance(shutdown.POLL_INTERVAL)
    assert not drained(stopped), "the download's connection is still flushing"
    download.channel.transport.connected = False
    upload.channel.transport.connected = False
    late.channel.transport.connected = False
    clock.advance(shutdown.POLL_INTERVAL)
    assert drained(stopped)
    assert not any(r.channel.transport.aborted for r in (download, upload, late))
    assert clock.getDelayedCalls() == []


def test_the_deadline_aborts_what_is_still_in_flight() -> None:
    clock = Clock()
    seconds = [30.0]
    drain = shutdown.DrainService(lambda: seconds[0], clock)
    stuck = FakeRequest()
    drain.started(stuck)
    seconds[0] = 1.0  # read when the drain starts: a reload before it counts
    stopped = drain.stopService()
    clock.advance(0.99)
    assert not drained(stopped) and not stuck.channel.transport.aborted
    clock.advance(0.01)
    assert stuck.channel.transport.aborted
    assert not drained(stopped), "waits (briefly) for the aborted connection to go down"
    stuck.channel.transport.connected = False
    clock.advance(shutdown.POLL_INTERVAL)
    assert drained(stopped)
    drain.finished(stuck, True)  # the late connectionLost changes nothing
    assert clock.getDelayedCalls() == []


def test_an_aborted_connection_that_lingers_does_not_block_the_exit() -> None:
    clock = Clock()
    drain = shutdown.DrainService(lambda: 0, clock)
    stuck = FakeRequest()
    drain.started(stuck)
    stopped = drain.stopService()
    clock.advance(0)
    assert stuck.channel.transport.aborted and not drained(stopped)
    clock.pump([shutdown.POLL_INTERVAL] * int(shutdown.ABORT_GRACE / shutdown.POLL_INTERVAL + 2))
    assert drained(stopped)
    assert clock.getDelayedCalls() == []


def test_a_finished_drain_makes_twistd_exit_with_status_zero() -> None:
    class SignalledReactor(Clock):
        _exitSignal: int | None = signal.SIGTERM

    reactor = SignalledReactor()
    assert drained(shutdown.DrainService(lambda: 30, reactor).stopService())
    assert reactor._exitSignal is None
