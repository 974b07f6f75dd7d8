"""Zero-copy blob responses on plain TCP connections with ``os.sendfile``.

The response headers go out through the transport as usual; once its buffer is empty,
the body is sent by the kernel straight from the blob file. When the socket is full
(``EAGAIN``) the producer asks the transport to wake it when writable again, which is
exactly how the transport resumes any paused producer, so backpressure is preserved.
Anything but a plain TCP transport (TLS, tests' fakes) uses the ordinary producer.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport

from angosd.compat import buffered_bytes
from angosd.storage.producers import StreamingProducer

#: Bytes handed to one sendfile call; the kernel sends what the socket buffer takes.
STEP = 4 * 1024 * 1024


def sendfile_transport(request: Any) -> Any | None:
    """The request's TCP transport if zero-copy sends are possible on it, else None."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is None or ISSLTransport.providedBy(transport):
        return None
    needed = ("socket", "producerPaused", "startWriting")
    if buffered_bytes(transport) is None or not all(hasattr(transport, name) for name in needed):
        return None
    return transport


class SendfileProducer(StreamingProducer):
    """Send ``length`` bytes of ``fd`` from ``offset`` to the request's socket.

    `deferred` fires when all bytes are sent or the client went away.
    """

    def __init__(self, request: Any, transport: Any, fd: int, offset: int, length: int) -> None:
        super().__init__(request)
        self._transport = transport
        self._fd = fd
        self._offset = offset
        self._remaining = length

    def start(self) -> Deferred[None]:
        self._consumer.write(b"")  # the status line and headers, through the transport's buffer
        return super().start()

    def _buffered(self) -> bool:
        return bool(buffered_bytes(self._transport))

    def _wait_writable(self) -> None:
        self._transport.producerPaused = True  # doWrite resumes paused producers once drained
        self._transport.startWriting()

    def _pump(self) -> None:
        socket_fd = self._transport.socket.fileno()
        while not self._paused and not self._done and self._remaining > 0:
            if self._buffered():
                self._wait_writable()
                return
            try:
                sent = os.sendfile(socket_fd, self._fd, self._offset, min(STEP, self._remaining))
            except BlockingIOError:
                self._wait_writable()
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._finish()  # the client went away; the transport reports the loss itself
                return
            if sent == 0:
                self._finish(OSError("blob shorter than its recorded size"))
                return
            self._offset += sent
            self._remaining -= sent
            self._consumer.sentLength += sent  # type: ignore[attr-defined]
        if self._remaining == 0:
            self._finish()
