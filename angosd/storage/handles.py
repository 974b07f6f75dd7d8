"""Read handles over seekable file objects: an open file, or bytes already in memory."""

from __future__ import annotations

import io
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from angosd.storage.interface import IReadHandle
from angosd.storage.producers import FileRangeProducer


@implementer(IReadHandle)
class FileObjectHandle:
    """``source`` (``size`` bytes, seekable) as an `IReadHandle`; owns and closes it.

    `fileno` is the descriptor of a real file (what sendfile needs), None for one in memory.
    """

    def __init__(self, source: BinaryIO, size: int) -> None:
        self._source = source
        self.size = size

    def write_to(self, consumer: IConsumer, first: int, last: int) -> Deferred[None]:
        """Stream bytes ``first..last`` (inclusive) into ``consumer`` with backpressure."""
        self._source.seek(first)
        return FileRangeProducer(self._source, last - first + 1, consumer).start()

    def fileno(self) -> int | None:
        try:
            return int(self._source.fileno())
        except OSError:  # io.UnsupportedOperation: not backed by a descriptor
            return None

    def read_all(self) -> Deferred[bytes]:
        """The rest of the object; closes the handle."""
        try:
            return succeed(self._source.read())
        finally:
            self._source.close()

    def close(self) -> None:
        """Release the handle."""
        self._source.close()


def bytes_handle(data: bytes) -> FileObjectHandle:
    """A handle on ``data`` (a snapshot: later changes to the object do not show)."""
    return FileObjectHandle(io.BytesIO(data), len(data))
