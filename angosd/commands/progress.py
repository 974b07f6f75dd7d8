"""Progress of long maintenance commands: a redrawn bar on a terminal, plain lines otherwise.

    progress = Progress()                       # stderr; a TTY gets bars
    bar = progress.bar("hub/library/alpine:3.20", total=0)
    bar.grow(size)                              # more work discovered
    bar.advance(size, status="sha256:1234…")    # work done
    progress.note("upstream slow, retrying")    # a line that does not break the bar
    bar.close("12.3 MiB fetched")               # the final line

On a terminal the bar is redrawn in place (at most ten times a second). Elsewhere (logs,
CI, pipes) nothing is redrawn: a bar prints a line at most every ``interval`` seconds
and one when it closes, so logs stay readable.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; always one short token."""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Where bars and notes go. ``tty`` defaults to whether ``stream`` is a terminal."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else _isatty(self.stream)
        self.interval = interval
        self.clock = clock
        self._drawn: Bar | None = None  # the bar whose line is on screen (TTY)

    def bar(self, label: str, total: int = 0, unit: str = "bytes") -> Bar:
        """A new bar; ``unit`` is ``"bytes"`` (sizes shown as KiB/MiB...) or a plural noun."""
        return Bar(self, label, total, unit)

    def note(self, message: str) -> None:
        """Print one line; on a terminal the current bar is redrawn below it."""
        if self.tty and self._drawn is not None:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        if self.tty and self._drawn is not None:
            self._drawn._draw(force=True)
        self.stream.flush()

    def _width(self) -> int:
        return shutil.get_terminal_size((80, 24)).columns


class Bar:
    """One task's progress: ``done`` out of ``total`` (the total may grow)."""

    def __init__(self, progress: Progress, label: str, total: int, unit: str) -> None:
        self._progress = progress
        self.label = label
        self.total = total
        self.done = 0
        self.unit = unit
        self.status = ""
        self._last = -1e18 if progress.tty else progress.clock()
        self._closed = False

    def grow(self, amount: int) -> None:
        """Add ``amount`` to the total (work found on the way)."""
        self.total += amount
        self._draw()

    def advance(self, amount: int = 0, status: str | None = None) -> None:
        """Count ``amount`` as done; ``status`` (e.g. the current item) replaces the last one."""
        self.done += amount
        if status is not None:
            self.status = status
        self._draw()

    def close(self, summary: str = "") -> None:
        """Print the final line (``label: summary``); the bar is not drawn again."""
        if self._closed:
            return
        self._closed = True
        progress = self._progress
        line = f"{self.label}: {summary}" if summary else f"{self.label}: {self._figures()}"
        if progress.tty:
            progress.stream.write("\r\x1b[K")
            if progress._drawn is self:
                progress._drawn = None
        progress.stream.write(line + "\n")
        progress.stream.flush()

    def _figures(self) -> str:
        if self.unit == "bytes":
            done, total = human_size(self.done), human_size(self.total)
        else:
            done, total = str(self.done), f"{self.total} {self.unit}"
        percent = f"{100 * self.done // self.total}%" if self.total else "--%"
        return f"{percent} {done}/{total}"

    def _draw(self, force: bool = False) -> None:
        if self._closed:
            return
        progress = self._progress
        now = progress.clock()
        if progress.tty:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            progress._drawn = self
            width = progress._width()
            fraction = min(self.done / self.total, 1.0) if self.total else 0.0
            cells = 20
            filled = int(fraction * cells)
            text = f"{self.label} [{'#' * filled}{'.' * (cells - filled)}] {self._figures()}"
            if self.status:
                text += f" {self.status}"
            progress.stream.write("\r\x1b[K" + text[: max(width - 1, 10)])
            progress.stream.flush()
        elif now - self._last >= progress.interval:
            self._last = now
            status = f" {self.status}" if self.status else ""
            progress.stream.write(f"{self.label}: {self._figures()}{status}\n")
            progress.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False



def phase_bars(progress: Progress, unit: Callable[[str], str]) -> Callable[[str, int, int], None]:
    """An ``advance(phase, done, total)`` callback drawing one bar per phase (its unit named by
    ``unit(phase)``), closed once ``done`` reaches ``total``."""
    bars: dict[str, Bar] = {}

    def advance(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = progress.bar(phase, total, unit=unit(phase))
        bar.total = total
        bar.advance(done - bar.done)
        if done >= total:
            bar.close()

    return advance

#: A copy pauses its producer for one reactor turn every this many bytes (`CountingConsumer`).
YIELD_EVERY = 8 * 1024 * 1024
#: Reports how many more bytes were done.
Advance = Callable[[int], None]


@implementer(IConsumer)
class CountingConsumer:
    """Forwards to a consumer (backpressure included), counting and (given a hasher) hashing each
    chunk; with a ``clock``, pauses its producer every `YIELD_EVERY` bytes until the next reactor
    turn (so a signal is handled during a large blob)."""

    def __init__(self, sink: Any, hasher: Any, advance: Advance, clock: Any = None) -> None:
        self._sink = sink
        self._hasher = hasher
        self._advance = advance
        self._clock = clock
        self._producer: Any = None
        self._since_yield = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._sink.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        self._sink.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._sink.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self._advance(len(data))
        self._since_yield += len(data)
        if self._clock is not None and self._producer is not None and self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            self._producer.pauseProducing()
            self._clock.callLater(0, self._producer.resumeProducing)
