"""The supervisor: starts the worker processes, keeps them running, stops them.

Each worker runs `angosd.daemon.workers.main` (see there), forked by the fork server
(`angosd.daemon.workers.forks`) when there is one, else started with ``reactor.spawnProcess``
as a new interpreter; either way its descriptors are:

====  ==========================================================================
0     a pipe the supervisor never writes to: end of file means the supervisor is gone
1     the worker's log events, relayed into the supervisor's log (`LogRelay`)
2     anything else the worker prints (logged as text, at warning level)
3     the shared listening socket (`LISTEN_FD`)
4     status messages: READY, RELOADING, STOPPING, WATCHDOG (`STATUS_FD`, `StatusReader`)
====  ==========================================================================

Guarantees:

- Every worker slot has a running worker except between a worker's end and its
  replacement: a worker that ends while the supervisor runs (crash, ``kill -9``, OOM) is
  replaced after a delay (`Backoff`: 0.1 s after a worker that ran for a while, doubling up
  to 30 s while replacements keep dying early). Nothing is lost with it that a client was
  told is stored: every store write is atomic and done before the response.
- A worker that stops sending heartbeats (``WATCHDOG=1`` every `HEARTBEAT` s) for
  `HEARTBEAT_TIMEOUT` s while serving is considered hung and killed (then replaced).
- `all_ready` fires once every worker has said READY=1 (it listens and its storage answers).
- `stopService` sends SIGTERM to every worker (each drains its requests in flight, as a
  single daemon does), fires once all have ended, and kills with SIGKILL those still
  running ``stop_timeout()`` seconds later. No worker is started or replaced after it began.
- `reload` sends SIGHUP to every running worker (each reloads its configuration).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from angosd.daemon.shutdown import exit_normally
from angosd.daemon.workers.forks import ForkServer
from angosd.daemon.workers.listening import SharedSocket
from angosd.daemon.workers.logrelay import LogRelay
from angosd.daemon.workers.rundir import RunDirectory
from angosd.daemon.workers.status import StatusReader

__all__ = ["HEARTBEAT", "HEARTBEAT_TIMEOUT", "LISTEN_FD", "STATUS_FD", "Backoff", "WorkerCommand",
           "WorkerSupervisor"]

_log = Logger()

#: The worker's descriptor for the shared listening socket.
LISTEN_FD = 3
#: The worker's descriptor for status messages to the supervisor.
STATUS_FD = 4
#: Seconds between two heartbeats of a worker.
HEARTBEAT = 5.0
#: Seconds without a heartbeat after which a serving worker is killed as hung.
HEARTBEAT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    """How to run one worker: executable, full argument list (``args[0]`` included), environment."""

    executable: str
    args: list[str]
    env: dict[str, str]
    #: The worker's own options (what `angosd.daemon.workers.main` parses), for a forked worker.
    options: tuple[str, ...] = ()


class Backoff:
    """Delays before replacing a worker that ended.

    The first replacement waits ``first`` seconds. Each replacement of a worker that ran for
    less than ``stable`` seconds waits twice as long as the previous one, up to ``maximum``;
    one that ran ``stable`` seconds or more resets the delay to ``first``.
    """

    def __init__(self, first: float = 0.1, maximum: float = 30.0, stable: float = 10.0) -> None:
        self.first = first
        self.maximum = maximum
        self.stable = stable
        self._next = first

    def delay(self, uptime: float) -> float:
        """The delay before replacing a worker that ran ``uptime`` seconds."""
        if uptime >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


@dataclass(eq=False)
class _Slot:
    """One worker position: the process filling it now, if any."""

    index: int
    backoff: Backoff = field(default_factory=Backoff)
    process: IProcessTransport | None = None
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    heartbeat: float | None = None
    replacement: IDelayedCall | None = None


def _ending(reason: Failure) -> str:
    """How a process ended, for the log."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited normally"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        if value.exitCode is None:
            return "ended (exit status unknown)"
        return f"exited with status {value.exitCode}"
    return f"ended ({reason.getErrorMessage()})"


class _WorkerProtocol(ProcessProtocol):
    """The supervisor's end of one worker's pipes."""

    def __init__(self, supervisor: WorkerSupervisor, slot: _Slot) -> None:
        self._supervisor = supervisor
        self._slot = slot
        self._logs = {1: LogRelay(slot.index, LogLevel.info), 2: LogRelay(slot.index, LogLevel.warn)}
        self._status = StatusReader(lambda fields: supervisor._status(slot, fields))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == STATUS_FD:
            self._status.feed(data)
        elif childFD in self._logs:
            self._logs[childFD].feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in self._logs:
            self._logs[childFD].flush()

    def processEnded(self, reason: Failure) -> None:
        for relay in self._logs.values():
            relay.flush()
        self._supervisor._ended(self._slot, reason)


class WorkerSupervisor(Service):
    """Runs ``count`` workers on ``socket`` (see the module docstring).

    ``command(index)`` says how to start worker ``index`` (1..count); ``run_dir`` is created
    when the service starts and removed once every worker has ended.
    """

    def __init__(self, reactor: Any, count: int, socket: SharedSocket, command: Callable[[int], WorkerCommand],
                 run_dir: RunDirectory, stop_timeout: Callable[[], float],
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT, forks: ForkServer | None = None) -> None:
        self._reactor = reactor
        self._forks = forks
        self._socket = socket
        self._command = command
        self._run_dir = run_dir
        self._stop_timeout = stop_timeout
        self._heartbeat_timeout = heartbeat_timeout
        self._slots = [_Slot(index) for index in range(1, count + 1)]
        self._stopping = False
        self._ready_waiters: list[Deferred[IListeningPort]] = []
        self._all_ready = False
        self._stop_waiters: list[Deferred[None]] = []
        self._kill_call: IDelayedCall | None = None
        self._watch: LoopingCall | None = None

    @property
    def pids(self) -> list[int]:
        """The running workers' pids, by worker number."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    # ------------------------------------------------------------------ starting and replacing

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._run_dir.create()
        self._record()
        for slot in self._slots:
            self._spawn(slot)
        self._watch = LoopingCall(self._check_heartbeats)
        self._watch.clock = self._reactor
        self._watch.start(HEARTBEAT, now=False)

    def _spawn(self, slot: _Slot) -> None:
        slot.replacement = None
        if self._stopping:
            return
        command = self._command(slot.index)
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", LISTEN_FD: self._socket.fileno, STATUS_FD: "r"}
        process: Any
        try:
            if self._forks is not None and self._forks.alive:
                process = self._forks.spawn(self._reactor, _WorkerProtocol(self, slot), list(command.options),
                                            command.env, self._socket.fileno)
            else:
                process = self._reactor.spawnProcess(_WorkerProtocol(self, slot), command.executable, command.args,
                                                     env=command.env, childFDs=child_fds)
        except OSError as exc:
            delay = slot.backoff.delay(0.0)
            _log.error("cannot start worker {index}: {error}; trying again in {delay:.1f}s", index=slot.index,
                       error=exc.strerror or str(exc), delay=delay)
            slot.replacement = self._reactor.callLater(delay, self._spawn, slot)
            return
        slot.process, slot.pid = process, process.pid
        slot.started, slot.ready, slot.heartbeat = self._reactor.seconds(), False, None
        self._record()
        _log.info("worker {index} started (pid {pid})", index=slot.index, pid=slot.pid)

    def _record(self) -> None:
        forks = [self._forks.pid] if self._forks is not None and self._forks.alive else []
        self._run_dir.record([os.getpid(), *forks, *self.pids])

    def _status(self, slot: _Slot, fields: dict[str, str]) -> None:
        """A status message from ``slot``'s worker."""
        slot.heartbeat = self._reactor.seconds()
        if fields.get("STOPPING") == "1":
            slot.ready = False
        elif fields.get("READY") == "1":
            slot.ready = True
            self._check_ready()

    def _ended(self, slot: _Slot, reason: Failure) -> None:
        """``slot``'s worker ended: forget it, and replace it unless stopping."""
        pid, slot.process, slot.pid, slot.ready = slot.pid, None, None, False
        if pid is not None:
            self._run_dir.process_ended(pid)
        self._record()
        uptime = self._reactor.seconds() - slot.started
        if self._stopping:
            _log.info("worker {index} (pid {pid}) {ending}", index=slot.index, pid=pid, ending=_ending(reason))
            self._check_stopped()
            return
        delay = slot.backoff.delay(uptime)
        _log.warn("worker {index} (pid {pid}) {ending} after {uptime:.1f}s; starting a new one in {delay:.1f}s",
                  index=slot.index, pid=pid, ending=_ending(reason), uptime=uptime, delay=delay)
        slot.replacement = self._reactor.callLater(delay, self._spawn, slot)

    def _check_heartbeats(self) -> None:
        now = self._reactor.seconds()
        for slot in self._slots:
            if slot.process is None or not slot.ready or slot.heartbeat is None:
                continue
            if now - slot.heartbeat > self._heartbeat_timeout:
                _log.error("worker {index} (pid {pid}) sent no heartbeat for {seconds:.0f}s; killing it as hung",
                           index=slot.index, pid=slot.pid, seconds=now - slot.heartbeat)
                slot.heartbeat = None
                self._signal(slot, "KILL")

    # ------------------------------------------------------------------ readiness and signals

    def all_ready(self) -> Deferred[IListeningPort]:
        """Fires with the shared listening port once every worker has said READY=1 (once)."""
        waiter: Deferred[IListeningPort] = Deferred()
        self._ready_waiters.append(waiter)
        self._check_ready()
        return waiter

    def _check_ready(self) -> None:
        if not self._all_ready and all(slot.ready for slot in self._slots):
            self._all_ready = True
            _log.info("all {count} workers are ready", count=len(self._slots))
        if self._all_ready and self._ready_waiters and self._socket.port is not None:
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(self._socket.port)

    @staticmethod
    def _signal(slot: _Slot, name: str) -> None:
        if slot.process is not None:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                slot.process.signalProcess(name)

    def reload(self) -> None:
        """Ask every running worker to reload its configuration (SIGHUP)."""
        for slot in self._slots:
            self._signal(slot, "HUP")

    # ------------------------------------------------------------------ stopping

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        for slot in self._slots:
            if slot.replacement is not None and slot.replacement.active():
                slot.replacement.cancel()
            slot.replacement = None
            self._signal(slot, "TERM")
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        if any(slot.process is not None for slot in self._slots) and self._kill_call is None:
            self._kill_call = self._reactor.callLater(max(self._stop_timeout(), 0.0), self._kill_remaining)
        self._check_stopped()
        return waiter

    def _kill_remaining(self) -> None:
        self._kill_call = None
        for slot in self._slots:
            if slot.process is not None:
                _log.warn("worker {index} (pid {pid}) did not stop in time; killing it", index=slot.index,
                          pid=slot.pid)
                self._signal(slot, "KILL")

    def _check_stopped(self) -> None:
        if not self._stopping or any(slot.process is not None for slot in self._slots):
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        self._run_dir.remove()
        exit_normally(self._reactor)  # an orderly stop, even when a signal started it
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
