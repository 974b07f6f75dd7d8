"""Worker status messages: what a worker's `SystemdService` says, sent to its supervisor.

A worker runs the same `angosd.daemon.systemd.SystemdService` as a single daemon, with a
`PipeNotifier` instead of the sd_notify socket: ``READY=1`` once it listens and its
storage answers, ``RELOADING=1``/``READY=1`` around a SIGHUP reload, ``STOPPING=1``,
and ``WATCHDOG=1`` every few seconds (its heartbeat). Messages are the sd_notify fields
joined by newlines, each message ended by an empty line, on a pipe to the supervisor,
which reads them with `StatusReader`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from angosd.daemon.systemd import Notifier

__all__ = ["PipeNotifier", "StatusReader"]

#: Ends one message on the pipe.
_END = b"\n\n"
#: Bytes of unfinished message kept at most (a message is a few short fields).
_MAX_PENDING = 64 * 1024
#: Longest message sent (longer ones are cut): below Linux's PIPE_BUF (4096 bytes), so a
#: message enters the pipe whole or not at all.
_MAX_MESSAGE = 4000


class PipeNotifier(Notifier):
    """Sends status messages down the pipe ``fd`` to the supervisor.

    `notify` never raises and never blocks (the descriptor is made non-blocking): a message
    that does not fit in the pipe, or a supervisor that went away, drops the message.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(None)
        self._fd: int | None = fd
        os.set_blocking(fd, False)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def notify(self, *fields: str) -> bool:
        if self._fd is None or not fields:
            return False
        message = "\n".join(field.replace("\n", " ") for field in fields).encode()[:_MAX_MESSAGE] + _END
        try:
            return os.write(self._fd, message) == len(message)
        except OSError:
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StatusReader:
    """Splits the bytes of a worker's status pipe into messages: ``{field: value}`` dicts
    given to ``deliver`` in order. Lines without ``=`` are ignored."""

    def __init__(self, deliver: Callable[[dict[str, str]], None]) -> None:
        self._deliver = deliver
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Take more bytes from the pipe; deliver every message they complete."""
        self._pending += data
        *messages, self._pending = self._pending.split(_END)
        if len(self._pending) > _MAX_PENDING:  # not our protocol; resynchronise on the next message
            self._pending = b""
        for message in messages:
            fields = dict(line.split("=", 1) for line in message.decode("utf-8", "replace").splitlines()
                          if "=" in line)
            if fields:
                self._deliver(fields)
