"""The fork server: workers forked from a process that has already imported everything.

A worker started as a new interpreter imports the whole daemon again (~40 MiB of private
memory per process). Instead, the supervisor imports what a worker runs and forks a *fork
server* once, while it builds its service tree (`ForkServer.start`): no reactor runs yet, no
thread exists, nothing listens. Every object is first moved to the garbage collector's
permanent generation (`gc.freeze`, so collections never write to the shared pages; with no
collection first, which would leave holes that new objects fill, writing to shared pages).
For each worker the supervisor sends the fork server the worker's options, environment and
five descriptors (standard input, output, error, the listening socket, the status pipe); it
forks, and the child puts them on descriptors 0 to 4, closes every other one, installs a new
reactor and runs the worker's entry point (`angosd.daemon.workers.main`). The supervisor, its fork server and all
workers share the pages of the imported code.

This module is the supervisor's side; the fork server's loop and what a forked child does to
become a worker are in `angosd.daemon.workers.forkserver`.

The supervisor sees a forked worker through `ForkedProcess`, a process transport like the
one ``reactor.spawnProcess`` returns: its protocol gets the worker's output and its end
(`ProcessDone`/`ProcessTerminated`, reported by the fork server, which reaps it), and
``signalProcess`` signals it through a pidfd (never another process that reused the pid).

Guarantees kept from `angosd.daemon.workers.supervisor`: the descriptor layout is the same;
standard input reaches end of file when the supervisor ends (only the supervisor holds its
writing end); a worker that dies is reported and replaced. The fork server ends when the
supervisor does (end of file on its socket). If it ends first, the workers it forked keep
running (their end is then seen on their pidfds, with no exit status) and replacements are
started as new interpreters (``reactor.spawnProcess``, as without a fork server).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from angosd.daemon.workers.forkserver import KEPT, exit_child, receive, send, serve

__all__ = ["ANSWER_TIMEOUT", "ForkServer", "ForkedProcess"]

_log = Logger()

#: Seconds the supervisor waits for the fork server to answer a request.
ANSWER_TIMEOUT = 10.0


class ForkServer:
    """The supervisor's end of its fork server (see the module docstring)."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)  # this process's child: not reaped yet, so no other process
        self._processes: dict[int, ForkedProcess] = {}
        self._reactor: Any = None
        self.alive = True

    @classmethod
    def start(cls, run: Callable[[list[str]], None]) -> ForkServer | None:
        """Fork the fork server; each worker it forks calls ``run(options)`` (its entry point,
        which may exit) on a new reactor. Import what ``run`` needs first: workers are forked
        from this process's state. None (start workers as new interpreters) when this process runs
        threads (a fork would copy locks they may hold) or the kernel has no pidfds."""
        if threading.active_count() > 1 or not hasattr(os, "pidfd_open"):
            return None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):  # or the children would write what is buffered again
            with contextlib.suppress(Exception):
                stream.flush()
        gc.freeze()  # the supervisor's own collections leave the shared pages alone too
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                parent.close()
                KEPT.append(parent)
                serve(child, run)
            except BaseException:  # the fork server must never return into the supervisor's code
                traceback.print_exc()
                code = 1
            finally:
                exit_child(code)
        child.close()
        parent.settimeout(ANSWER_TIMEOUT)
        try:
            return cls(parent, pid)
        except OSError:  # no pidfd_open in this kernel (before Linux 5.3): its end ends the fork server
            parent.close()
            os.waitpid(pid, 0)
            return None

    def attach(self, reactor: Any) -> None:
        """Start reading the fork server's reports on ``reactor`` (at the supervisor's start)."""
        if self._reactor is None:
            self._reactor = reactor
            reactor.addReader(_ServerReader(self))
            reactor.addReader(_Reader(self._pidfd, lambda data: None, self._ended))

    def spawn(self, reactor: Any, protocol: ProcessProtocol, options: list[str], env: dict[str, str],
              listen_fd: int) -> ForkedProcess:
        """Fork a worker running ``options`` in ``env`` on the listening socket ``listen_fd``.

        Raises `OSError` when the fork server cannot (it is gone, or the fork failed)."""
        if not self.alive:
            raise OSError("the fork server is gone")
        self.attach(reactor)
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        status_read, status_write = os.pipe2(os.O_CLOEXEC)
        theirs = [stdin_read, out_write, err_write, listen_fd, status_write]
        ours = {"stdin": stdin_write, 1: out_read, 2: err_read, 4: status_read}
        try:
            send(self._sock, {"options": options, "env": env, "uid": os.getuid(), "gid": os.getgid()}, theirs)
            answer = self._answer()
        except BaseException:
            for fd in ours.values():
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                if fd != listen_fd:
                    os.close(fd)
        pid, pidfd = answer
        process = ForkedProcess(reactor, protocol, pid, pidfd, ours)
        self._processes[pid] = process
        return process

    def _answer(self) -> tuple[int, int]:
        """The fork server's answer to a request; the end reports read meanwhile are kept for later."""
        while True:
            try:
                message, fds = receive(self._sock, 1)
            except TimeoutError:
                raise OSError("the fork server did not answer") from None
            if message is None:
                self._gone()
                raise OSError("the fork server is gone")
            if "ended" in message:
                self._reactor.callLater(0, self._report, message)
                continue
            if "error" in message:
                raise OSError(message["error"])
            return int(message["pid"]), fds[0]

    def read(self) -> bool:
        """Read one report from the socket (it is readable); False once the fork server is gone."""
        try:
            message, _fds = receive(self._sock, 1)
        except (BlockingIOError, TimeoutError):
            return True
        except OSError:
            message = None
        if message is None:
            self._gone()
            return False
        self._report(message)
        return True

    def _report(self, message: dict[str, Any]) -> None:
        process = self._processes.pop(int(message.get("ended", -1)), None)
        if process is not None:
            process.exited(int(message["status"]))

    def _ended(self) -> None:
        """The fork server's pidfd is readable (it has exited) or no longer watched (the reactor
        is stopping): reap it if it has exited (Twisted reaps only the processes it spawned)."""
        try:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        if pid != 0:
            self._gone()

    def _gone(self) -> None:
        if not self.alive:
            return
        self.alive = False
        _log.error("the fork server (pid {pid}) is gone; new workers start as new interpreters", pid=self.pid)
        processes, self._processes = self._processes, {}
        for process in processes.values():
            process.watch_pidfd()

    def fileno(self) -> int:
        return self._sock.fileno()


@implementer(IReadDescriptor)
class _ServerReader:
    def __init__(self, server: ForkServer) -> None:
        self._server = server

    def fileno(self) -> int:
        return self._server.fileno()

    def doRead(self) -> Failure | None:
        return None if self._server.read() else Failure(CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "fork-server"


@implementer(IReadDescriptor)
class _Reader:
    """Reads one descriptor until end of file, calling ``data`` then ``lost``."""

    def __init__(self, fd: int, data: Callable[[bytes], None], lost: Callable[[], None]) -> None:
        self._fd = fd
        self._data = data
        self._lost = lost
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return Failure(CONNECTION_DONE)
        self._data(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        os.close(self._fd)
        self._lost()

    def logPrefix(self) -> str:
        return "worker-pipe"


class ForkedProcess:
    """A forked worker as seen by the supervisor: the part of Twisted's process transport it
    uses (``pid``, ``signalProcess``). Its protocol's ``processEnded`` is called once the
    worker has exited and its output pipes are closed, as for a spawned process."""

    def __init__(self, reactor: Any, protocol: ProcessProtocol, pid: int, pidfd: int, fds: dict[Any, int]) -> None:
        self._reactor = reactor
        self._protocol = protocol
        self.pid: int | None = pid
        self._pidfd: int | None = pidfd
        self._stdin: int | None = fds["stdin"]
        self._status: int | None = None
        self._exited = False
        self._open = {fd for name, fd in fds.items() if name != "stdin"}
        self._pidfd_reader: _Reader | None = None
        protocol.makeConnection(self)
        for name, fd in fds.items():
            if name != "stdin":
                reactor.addReader(_Reader(fd, functools.partial(protocol.childDataReceived, name),
                                          functools.partial(self._pipe_lost, fd, name)))

    def signalProcess(self, signalID: str | int) -> None:
        """Send ``signalID`` (``"TERM"``, ``"KILL"``, ``"HUP"``... or a number) to the worker."""
        if self._exited or self._pidfd is None:
            raise ProcessExitedAlready()
        number = signalID if isinstance(signalID, int) else getattr(signal, f"SIG{signalID}")
        try:
            signal.pidfd_send_signal(self._pidfd, number)
        except ProcessLookupError:
            raise ProcessExitedAlready() from None

    def _pipe_lost(self, fd: int, child: Any) -> None:
        self._open.discard(fd)
        self._protocol.childConnectionLost(child)
        self._maybe_ended()

    def exited(self, status: int | None) -> None:
        """The worker has exited with wait status ``status`` (None: unknown)."""
        if self._exited:
            return
        self._exited = True
        self._status = status
        self._maybe_ended()

    def watch_pidfd(self) -> None:
        """The fork server is gone: learn the worker's end from its pidfd (no exit status)."""
        if self._exited or self._pidfd is None:
            return
        fd = os.dup(self._pidfd)
        self._pidfd_reader = _Reader(fd, lambda data: None, lambda: self.exited(None))
        self._reactor.addReader(self._pidfd_reader)

    def _maybe_ended(self) -> None:
        if not self._exited or self._open:
            return
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        status = self._status
        if status is None:
            reason = Failure(ProcessTerminated(None, None, None))
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            reason = Failure(ProcessDone(status))
        elif os.WIFSIGNALED(status):
            reason = Failure(ProcessTerminated(None, os.WTERMSIG(status), status))
        else:
            reason = Failure(ProcessTerminated(os.WEXITSTATUS(status), None, status))
        self.pid = None
        self._protocol.processEnded(reason)
