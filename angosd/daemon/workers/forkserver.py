"""The fork server's side of `angosd.daemon.workers.forks` (see there): its loop, run in the
process forked from the supervisor, and what a forked child does to become a worker; the
messages both sides exchange on their socket.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from os import _exit  # a forked child never returns into its parent's code
from typing import Any

__all__ = ["FORK_SERVER_NAME", "KEPT", "WORKER_NAME", "exit_child", "receive", "send", "serve", "set_name"]

#: The process names (``/proc/PID/comm``) of the fork server and of forked workers.
FORK_SERVER_NAME = "angosd-forks"
WORKER_NAME = "angosd-worker"
_MESSAGE = 1 << 20
#: How many descriptors a request carries (the worker's 0 to 4).
_FDS = 5
#: Objects of the supervisor the fork server keeps alive: their descriptors are closed there,
#: and freeing them would close whatever descriptor later reuses the number.
KEPT: list[Any] = []


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One message, with ``fds`` passed along (SCM_RIGHTS)."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([json.dumps(message).encode()], ancillary)


def receive(sock: socket.socket, max_fds: int) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors it carries; (None, []) at end of file."""
    data, ancillary, _flags, _address = sock.recvmsg(_MESSAGE, socket.CMSG_SPACE(max_fds * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def set_name(name: str) -> None:
    """This process's name in ``/proc/PID/comm`` (what ps and top show)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def serve(sock: socket.socket, run: Callable[[list[str]], None]) -> None:
    """The fork server's loop (in the forked child); returns when the supervisor is gone."""
    set_name(FORK_SERVER_NAME)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN if name != "SIGTERM" else signal.SIG_DFL)
    for fd in _open_fds():
        if fd > 2 and fd != sock.fileno():
            with contextlib.suppress(OSError):
                os.close(fd)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sock.setblocking(True)
    while True:
        try:
            readable, _, _ = select.select([sock.fileno(), wake_read], [], [])
        except InterruptedError:
            continue
        if wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
            _reap(sock)
        if sock.fileno() in readable:
            request, fds = receive(sock, _FDS)
            if request is None:
                return
            _fork_worker(sock, request, fds, (wake_read, wake_write), run)


def _open_fds() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 256))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            send(sock, {"ended": pid, "status": status})


def _fork_worker(sock: socket.socket, request: dict[str, Any], fds: list[int], own: tuple[int, int],
                 run: Callable[[list[str]], None]) -> None:
    if len(fds) != _FDS:
        for fd in fds:
            os.close(fd)
        send(sock, {"error": f"expected {_FDS} descriptors, got {len(fds)}"})
        return
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        send(sock, {"error": exc.strerror or str(exc)})
        return
    if pid == 0:
        code = 1
        try:
            code = _become_worker(request, fds, sock, own, run)
        except BaseException:  # whatever happens, the child must not return into the loop
            traceback.print_exc()
        finally:
            exit_child(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        send(sock, {"pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _become_worker(request: dict[str, Any], fds: list[int], sock: socket.socket, own: tuple[int, int],
                   run: Callable[[list[str]], None]) -> int:
    """In the forked child: take the worker's descriptors and environment, run it; its exit status."""
    signal.set_wakeup_fd(-1)
    for name in ("SIGCHLD", "SIGHUP", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    high = [_above(fd) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    keep = set(range(_FDS))
    for fd in _open_fds():
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    KEPT.append(sock)  # its descriptor is closed; never let the object close a reused number
    KEPT.append(own)
    os.environ.clear()
    os.environ.update(request["env"])
    if "uid" in request and (os.getuid(), os.getgid()) != (request["uid"], request["gid"]):
        from twisted.python.util import switchUID

        switchUID(request["uid"], request["gid"])
    set_name(WORKER_NAME)
    _new_reactor()
    _metrics_mode()
    gc.enable()
    try:
        run(list(request["options"]))
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return 0


def _above(fd: int) -> int:
    """A copy of ``fd`` numbered above the worker's descriptors (so moving them clobbers none)."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)


def _new_reactor() -> None:
    """Replace the supervisor's reactor (its descriptors are closed here) by a new one of the same kind."""
    import twisted.internet
    from twisted.internet.main import installReactor

    old = sys.modules.pop("twisted.internet.reactor", None)
    if old is None:
        return
    KEPT.append(old)
    with contextlib.suppress(AttributeError):
        del twisted.internet.reactor
    installReactor(type(old)())  # type: ignore[call-arg]


def _metrics_mode() -> None:
    """prometheus-client chose its value class when the supervisor imported it (no multiprocess
    directory then); choose again now that the worker's environment names one."""
    with contextlib.suppress(ImportError):
        from prometheus_client import values

        values.ValueClass = values.get_value_class()




def exit_child(code: int) -> None:
    """End a forked child now: nothing of its parent's (atexit handlers, buffers) runs again."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    _exit(code)
