"""Push producers that stream file bytes into a consumer with backpressure."""

from __future__ import annotations

from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

#: Bytes read per step. Large reads amortise the per-call cost; the consumer's buffer
#: (64 KiB for a TCP transport) still pauses us after one or two steps.
CHUNK_SIZE = 256 * 1024


@implementer(IPushProducer)
class FileRangeProducer:
    """Write ``length`` bytes of ``source`` (from its current position) into a consumer.

    Registered as a streaming producer: the consumer pauses it when its buffer is full
    and resumes it when drained, so at most about one chunk is held in memory.
    `deferred` fires when done or when the consumer stopped us; the file is closed then.
    """

    def __init__(self, source: BinaryIO, length: int, consumer: IConsumer) -> None:
        self._source = source
        self._remaining = length
        self._consumer = consumer
        self._paused = False
        self._pumping = False
        self._done = False
        self.deferred: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._consumer.registerProducer(self, True)
        self._pump()
        return self.deferred

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done and self._remaining > 0:
                data = self._source.read(min(CHUNK_SIZE, self._remaining))
                if not data:
                    self._finish(OSError("object shorter than its recorded size"))
                    return
                self._remaining -= len(data)
                self._consumer.write(data)
            if self._remaining == 0 and not self._done:
                self._finish(None)
        except Exception as exc:  # an I/O error mid-stream
            self._finish(exc)
        finally:
            self._pumping = False

    def _finish(self, error: Exception | None) -> None:
        if self._done:
            return
        self._done = True
        self._source.close()
        self._consumer.unregisterProducer()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The consumer is going away: unregister before the caller resumes and finishes."""
        self._finish(None)
