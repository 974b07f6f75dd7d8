"""Copying an object between two drivers by streaming it through this process.

The fallback of `IStorageDriver.link_from` when the stores cannot share or copy the
bytes themselves (another filesystem, another service).
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from angosd.storage.interface import IAppendWriter, IStorageDriver

_TEMP_PREFIX = ".tmp-"


@implementer(IConsumer)
class _WriterConsumer:
    """An append writer seen as a consumer; backpressure is passed on when the writer has it."""

    def __init__(self, writer: IAppendWriter) -> None:
        self._writer = writer
        self._consumer = writer if IConsumer.providedBy(writer) else None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._consumer is not None:
            self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._consumer is not None:
            self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._writer.write(data)


def temporary_key(key: str) -> str:
    """A hidden key beside ``key`` (listings skip ``.tmp-`` names)."""
    parent = posixpath.dirname(key)
    name = f"{_TEMP_PREFIX}link-{uuid.uuid4().hex}"
    return f"{parent}/{name}" if parent else name


async def stream_copy(source: IStorageDriver, source_key: str, target: IStorageDriver, key: str) -> None:
    """Copy ``source_key`` of ``source`` to ``key`` of ``target`` through this process.

    The bytes go to a hidden temporary key first and are moved into place once complete,
    so ``key`` is replaced atomically and a crash leaves at most a hidden temporary
    object. Raises `PathNotFound` when the source is missing.
    """
    handle = await source.open_read(source_key)
    temporary = temporary_key(key)
    try:
        writer = await target.open_append(temporary)
    except BaseException:
        handle.close()
        raise
    finished = False
    try:
        if handle.size:
            done: Deferred[None] = handle.write_to(_WriterConsumer(writer), 0, handle.size - 1)
            await done
        else:
            handle.close()
        finished = True
        await writer.finish()
        if writer.offset != handle.size:
            raise OSError(f"{source_key}: copied {writer.offset} bytes, expected {handle.size}")
        await target.move(temporary, key)
    except BaseException:
        if not finished:
            await writer.abort()
        await target.delete(temporary)
        raise
