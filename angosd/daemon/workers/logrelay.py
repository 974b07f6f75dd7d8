"""Workers log through their supervisor.

A worker writes every log event as one JSON record (Twisted's ``eventAsJSON``, after a
record separator, ending in a newline; the text formatted by the worker, as ``log_text``)
on its standard output, a pipe to the supervisor;
the supervisor decodes it and publishes it into its own logging, so worker lines go
wherever twistd sends the supervisor's (stdout, ``--logfile``, syslog) with their original
time, namespace and level, and the text of a line is the same as from a single process
(``[angosd.access#info] {...}`` stays parseable). Each relayed event also carries
``angosd_worker`` (the worker's number) for structured observers.

A failure's traceback crosses as text (``angosd_traceback``) and is restored as a
`RelayedFailure`, so the supervisor's log shows it in full. Anything else the worker
writes (a crash before logging began, output of C libraries) is logged line by line as
text, ``worker N: ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import provider

__all__ = ["LogRelay", "RelayedFailure", "relay_observer"]

#: Starts each JSON record (Twisted's default record separator).
RECORD_SEPARATOR = "\x1e"
#: A line longer than this is cut into pieces (a worker must not make the supervisor buffer without bound).
MAX_LINE = 1024 * 1024
_TRACEBACK = "angosd_traceback"
_WORKER = "angosd_worker"


def relay_observer(out: IO[str]) -> ILogObserver:
    """The worker's log observer: each event as one JSON record on ``out``, flushed at once.

    It never raises: when the supervisor is gone the event is lost (the worker is stopping
    by then, see `angosd.daemon.workers.main`).
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        failure = event.get("log_failure")
        event = {key: value for key, value in event.items() if key != "log_failure"}
        # The text as formatted here: Twisted's JSON flattening loses format specs ("{n:g}").
        event["log_text"] = formatEvent(event)
        event["log_format"] = "{log_text}"
        if failure is not None:
            try:
                event[_TRACEBACK] = failure.getTraceback()
            except Exception as exc:  # a failure that cannot even format itself
                event[_TRACEBACK] = f"(traceback unavailable: {exc!r})"
        try:
            out.write(RECORD_SEPARATOR + eventAsJSON(event) + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    return observe


class RelayedError(Exception):
    """Stands for an exception raised in a worker (only its text crossed the pipe)."""


class RelayedFailure(Failure):
    """A worker's failure: `getTraceback` is the worker's formatted traceback."""

    def __init__(self, traceback: str) -> None:
        lines = traceback.strip().splitlines()
        super().__init__(RelayedError(lines[-1] if lines else "error in a worker"))
        self.relayed_traceback = traceback

    def getTraceback(self, elideFrameworkCode: int = 0, detail: str = "default") -> str:
        return self.relayed_traceback


class LogRelay:
    """Publishes what worker ``worker`` writes on one of its pipes (``feed`` it the bytes).

    JSON records become events of this process, given to ``publish`` (the global log
    publisher by default); other lines are logged as text at ``level``. `flush` logs an
    unfinished last line (the pipe closed).
    """

    def __init__(self, worker: int, level: LogLevel = LogLevel.info,
                 publish: Callable[[LogEvent], None] | None = None) -> None:
        self._worker = worker
        self._level = level
        self._publish = publish if publish is not None else globalLogPublisher
        self._log = Logger(namespace="angosd.worker", observer=self._publish)  # type: ignore[arg-type]
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Take bytes from the pipe; publish every line they complete."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_LINE:
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            self._line(line.decode("utf-8", "replace"))

    def flush(self) -> None:
        """Publish what is left of an unfinished line."""
        if self._pending:
            pending, self._pending = self._pending, b""
            self._line(pending.decode("utf-8", "replace"))

    def _line(self, text: str) -> None:
        if text.startswith(RECORD_SEPARATOR):
            event = _decode(text[len(RECORD_SEPARATOR):])
            if event is not None:
                event[_WORKER] = self._worker
                self._publish(event)
                return
        text = text.replace(RECORD_SEPARATOR, "").rstrip("\r")
        if text.strip():
            self._log.emit(self._level, "worker {worker}: {line}", worker=self._worker, line=text)


def _decode(record: str) -> dict[str, Any] | None:
    """The event of one JSON record, None when it is not one."""
    try:
        event = eventFromJSON(record)
    except ValueError:
        return None
    if not isinstance(event, dict) or "log_time" not in event:
        return None
    traceback = event.pop(_TRACEBACK, None)
    if isinstance(traceback, str):
        event["log_failure"] = RelayedFailure(traceback)
    return event
