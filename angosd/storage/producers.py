"""Push producers that stream file bytes into a consumer with backpressure."""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

#: Bytes read per step. Large reads amortise the per-call cost; the consumer's buffer
#: (64 KiB for a TCP transport) still pauses us after one or two steps.
CHUNK_SIZE = 256 * 1024


class PausingConsumer:
    """For consumers that pause their producer while they catch up (append writers):
    `registerProducer`, `unregisterProducer` (which resumes it first), and `_pause` /
    `_resume`, each acting once however often it is called."""

    _producer: Any = None
    _paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._resume()
        self._producer = None

    def _pause(self) -> None:
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def _resume(self) -> None:
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()


@implementer(IPushProducer)
class StreamingProducer:
    """The shape shared by angosd's push producers: registered on ``consumer``, paused and
    resumed by it, stopped when its connection goes away. Subclasses implement `_pump`
    (send while not paused, call `_finish` at the end) and may extend `_close`.

    `deferred` fires when the transfer ended: with None when done or stopped by the
    consumer, with the error when it failed. The producer is unregistered before it fires,
    so whoever waits on it may finish the request at once.
    """

    def __init__(self, consumer: IConsumer) -> None:
        self._consumer = consumer
        self._paused = False
        self._done = False
        self.deferred: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._consumer.registerProducer(self, True)
        self._pump()
        return self.deferred

    def _pump(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Release what the transfer holds (called once, before `deferred` fires)."""

    def _finish(self, error: Exception | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        self._consumer.unregisterProducer()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if not self._done:
            self._pump()

    def stopProducing(self) -> None:
        """The consumer is going away: unregister before the caller resumes and finishes."""
        self._finish(None)


class FileRangeProducer(StreamingProducer):
    """Write ``length`` bytes of ``source`` (from its current position) into a consumer.

    At most about one chunk is held in memory: the consumer pauses us when its buffer is
    full. The file is closed when the transfer ends.
    """

    def __init__(self, source: BinaryIO, length: int, consumer: IConsumer) -> None:
        super().__init__(consumer)
        self._source = source
        self._remaining = length
        self._pumping = False

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
            if self._remaining == 0:
                self._finish(None)
        except Exception as exc:  # an I/O error mid-stream
            self._finish(exc)
        finally:
            self._pumping = False

    def _close(self) -> None:
        self._source.close()
