"""How the supervisor sees a forked worker (`angosd.daemon.workers.forks.ForkedProcess`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from angosd.daemon.workers.forks import ForkedProcess


class Readers:
    """The part of a reactor `ForkedProcess` uses: it only registers readers."""

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def drain(self) -> None:
        """Read every registered descriptor to its end, as a reactor would."""
        for reader in list(self.readers):
            while (failure := reader.doRead()) is None:
                pass
            self.readers.remove(reader)
            reader.connectionLost(failure)


class Recorder(ProcessProtocol):
    def __init__(self) -> None:
        self.data: list[tuple[Any, bytes]] = []
        self.lost: list[Any] = []
        self.ended: list[Failure] = []

    def childDataReceived(self, childFD: Any, data: bytes) -> None:
        self.data.append((childFD, data))

    def childConnectionLost(self, childFD: Any) -> None:
        self.lost.append(childFD)

    def processEnded(self, reason: Failure) -> None:
        self.ended.append(reason)


def forked(protocol: Recorder, reactor: Readers) -> tuple[ForkedProcess, subprocess.Popen[bytes], dict[int, int]]:
    """A real child (sleeping) seen through a `ForkedProcess`, with the writing ends of its pipes."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours, theirs = {}, {}
    for name in (1, 2, 4):
        ours[name], theirs[name] = os.pipe()
    stdin_read, stdin_write = os.pipe()
    os.close(stdin_read)
    process = ForkedProcess(reactor, protocol, child.pid, os.pidfd_open(child.pid), {"stdin": stdin_write, **ours})
    return process, child, theirs


@pytest.mark.parametrize(("status", "kind", "code", "signal_number"), [
    (0, ProcessDone, 0, None), (3 << 8, ProcessTerminated, 3, None), (9, ProcessTerminated, None, 9),
    (None, ProcessTerminated, None, None)])
def test_the_end_comes_once_exited_and_every_pipe_is_closed(status: int | None, kind: type, code: int | None,
                                                            signal_number: int | None) -> None:
    reactor, protocol = Readers(), Recorder()
    process, child, theirs = forked(protocol, reactor)
    try:
        os.write(theirs[4], b"READY=1\n")
        process.exited(status)
        assert protocol.ended == [], "pipes still open"
        for fd in theirs.values():
            os.close(fd)
        reactor.drain()
        assert (4, b"READY=1\n") in protocol.data and sorted(protocol.lost) == [1, 2, 4]
        assert len(protocol.ended) == 1 and isinstance(protocol.ended[0].value, kind)
        assert protocol.ended[0].value.exitCode == code and protocol.ended[0].value.signal == signal_number
        assert process.pid is None
        with pytest.raises(ProcessExitedAlready):
            process.signalProcess("TERM")
    finally:
        child.kill()
        child.wait()


def test_signals_reach_the_process_through_its_pidfd() -> None:
    reactor, protocol = Readers(), Recorder()
    process, child, theirs = forked(protocol, reactor)
    try:
        process.signalProcess("TERM")
        assert child.wait(10) == -signal.SIGTERM
    finally:
        for fd in theirs.values():
            os.close(fd)
        child.kill()
        child.wait()
