"""One conformance suite for every `IStorageDriver`: the filesystem, memory and S3 drivers.

The S3 driver runs against a real S3 server (``moto_server``, `tests.s3_server`) over
HTTP, through the same code as in production; each test gets a fresh bucket.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, cast
from unittest import mock

import pytest
import pytest_twisted
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from angosd.storage.errors import InvalidPath, PathNotFound, StorageError
from angosd.storage.fs import HIGH_WATER, INLINE_ENTRIES, FilesystemDriver, _write_all
from angosd.storage.interface import (
    COPIED,
    LINKED,
    SERVER_COPIED,
    IAppendWriter,
    IHashingAppendWriter,
    IReadHandle,
    IStorageDriver,
)
from angosd.storage.listings import SortedListings
from angosd.storage.memory import MemoryDriver
from angosd.storage.producers import CHUNK_SIZE
from tests.pools import started_pools
from tests.s3_server import s3_driver

DRIVERS = ["memory", "fs", "fs-sync", "s3"]
#: Drivers with real directories: a key is an object or a prefix, never both (S3 has no
#: directories, so this one rule does not apply to it; see angosd/storage/s3.py).
HIERARCHICAL = ["memory", "fs", "fs-sync"]


def make_driver(kind: str, root: str) -> IStorageDriver:
    if kind == "memory":
        return MemoryDriver()
    if kind == "s3":
        return s3_driver(reactor, part_size=64 * 1024)  # small parts: appends span several
    return FilesystemDriver(root, started_pools(reactor).io, sync_to_disk=kind == "fs-sync")


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Any) -> IStorageDriver:
    return make_driver(request.param, str(tmp_path / "root"))


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset (catches reordered chunks)."""
    block = hashlib.sha512(seed.to_bytes(4, "big")).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


@pytest_twisted.ensureDeferred
async def test_drivers_provide_the_interface(driver: IStorageDriver) -> None:
    assert verifyObject(IStorageDriver, driver)
    await driver.write("k", b"abc")
    handle = await driver.open_read("k")
    assert verifyObject(IReadHandle, handle)
    handle.close()
    writer = await driver.open_append("k")
    assert verifyObject(IAppendWriter, writer)
    await writer.abort()


# Whole objects --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_write_read_overwrite(driver: IStorageDriver) -> None:
    await driver.write("a/b/c", b"first version")
    assert await driver.read("a/b/c") == b"first version"
    assert await driver.stat("a/b/c") == len(b"first version")
    old = await driver.open_read("a/b/c")

    await driver.write("a/b/c", b"v2")
    assert await driver.read("a/b/c") == b"v2"
    assert await driver.stat("a/b/c") == 2
    # A reader that opened the old object keeps seeing it whole: writes are replacements.
    assert old.size == len(b"first version")
    assert await old.read_all() == b"first version"
    # No temporary file is left behind by the atomic replacement.
    assert await driver.children("a/b") == ["c"]

    await driver.write("a/b/c", b"")
    assert await driver.read("a/b/c") == b""
    assert await driver.stat("a/b/c") == 0


@pytest_twisted.ensureDeferred
async def test_missing_objects(driver: IStorageDriver) -> None:
    await driver.write("present/x", b"1")
    for key in ("missing", "present/missing", "no/such/prefix/key"):
        assert await driver.stat(key) is None
        with pytest.raises(PathNotFound):
            await driver.read(key)
        with pytest.raises(PathNotFound):
            await driver.open_read(key)
        with pytest.raises(PathNotFound):
            await driver.hash_object(key, "sha256")
    # An object used as a prefix does not exist as one.
    assert await driver.stat("present/x/below") is None
    assert await driver.children("present/x") == []
    assert await driver.walk("present/x") == []


@pytest_twisted.ensureDeferred
async def test_children_sorted_and_without_temp_files(driver: IStorageDriver) -> None:
    for key in ("d/zeta", "d/alpha", "d/Beta", "d/sub/x", "d/sub/y", "d/other/deep/z", "d/.tmp-leftover",
                "d/.hidden", "e/unrelated"):
        await driver.write(key, key.encode())
    assert await driver.children("d") == [".hidden", "Beta", "alpha", "other", "sub", "zeta"]
    assert await driver.children("d/sub") == ["x", "y"]
    assert await driver.children("d/other") == ["deep"]
    assert await driver.children("nothing") == []
    assert await driver.children("d/zeta") == []
    # Temporary names are hidden from listings but still readable by key.
    assert await driver.read("d/.tmp-leftover") == b"d/.tmp-leftover"


@pytest_twisted.ensureDeferred
async def test_children_after_pages_children(driver: IStorageDriver) -> None:
    for key in ("d/zeta", "d/alpha", "d/Beta", "d/sub/x", "d/other/deep/z", "d/other-x", "d/.tmp-leftover", "d/a"):
        await driver.write(key, b".")
    every = await driver.children("d")
    for after in (None, "", "a", "alpha", "b", "other", "other-", "sub", "zeta", "zz"):
        expected = [name for name in every if after is None or name > after]
        for limit in (0, 1, 2, 3, 100):
            assert await driver.children_after("d", after, limit) == expected[:limit], (after, limit)
    assert await driver.children_after("nothing", None, 10) == []
    assert await driver.children_after("d/zeta", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_children_after_in_a_large_directory(driver: IStorageDriver) -> None:
    names = [f"t{number:04d}" for number in range(INLINE_ENTRIES * 2 + 7)]
    for name in reversed(names):
        await driver.write(f"big/{name}", b".")
    await driver.write("big/.tmp-x", b".")
    walked: list[str] = []
    after = None
    while page := await driver.children_after("big", after, 100):
        walked += page
        after = page[-1]
    assert walked == names
    assert await driver.children_after("big", "t0100", 2) == ["t0101", "t0102"]
    await driver.write("big/t0100a", b".")
    await driver.delete("big/t0101")
    assert await driver.children_after("big", "t0100", 2) == ["t0100a", "t0102"]


def test_sorted_listings_follow_changes_and_stay_bounded(tmp_path: Any) -> None:
    listings = SortedListings(lambda name: not name.startswith("."), max_names=1000, min_names=10)
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        for number in range(600):
            (directory / f"n{number:03d}").write_bytes(b"")
        os.utime(directory, ns=(1, 1))  # unchanged for long: the listing is kept
    assert listings.page(str(first), "n100", 3) == ["n101", "n102", "n103"]
    assert listings.held == 600
    (first / "n100a").write_bytes(b"")  # the directory's time changes: listed again
    assert listings.page(str(first), "n100", 2) == ["n100a", "n101"]
    assert listings.held == 0  # changed just now: not kept
    assert listings.page(str(second), None, 2) == ["n000", "n001"]
    os.utime(first, ns=(2, 2))
    assert listings.page(str(first), "n599", 2) == []
    assert listings.held == 601  # at most 1000 names: the other directory's listing was dropped
    assert listings.page(str(tmp_path / "missing"), None, 5) == []


@pytest_twisted.ensureDeferred
async def test_walk(driver: IStorageDriver) -> None:
    for key in ("w/b", "w/a/2", "w/a/1", "w/a/deep/er/x", "w/.tmp-skip", "w/a/.tmp-skip", "wx/not-below"):
        await driver.write(key, b".")
    assert await driver.walk("w") == ["a/1", "a/2", "a/deep/er/x", "b"]
    assert await driver.walk("w/a") == ["1", "2", "deep/er/x"]
    assert await driver.walk("w/a/deep/er") == ["x"]
    assert await driver.walk("missing") == []


@pytest_twisted.ensureDeferred
async def test_delete(driver: IStorageDriver) -> None:
    await driver.write("p/q/r", b"data")
    await driver.write("p/q/s", b"data")
    await driver.delete("p/q/r")
    assert await driver.stat("p/q/r") is None
    assert await driver.children("p/q") == ["s"]
    await driver.delete("p/q/r")  # missing: fine
    await driver.delete("never/was/here")  # missing prefixes: fine
    assert await driver.read("p/q/s") == b"data"


@pytest_twisted.ensureDeferred
async def test_delete_tree(driver: IStorageDriver) -> None:
    for key in ("t/a/1", "t/a/b/2", "t/a/b/c/3", "t/ab/keep", "t/keep"):
        await driver.write(key, b"x")
    await driver.delete_tree("t/a")
    assert await driver.walk("t") == ["ab/keep", "keep"]
    assert await driver.children("t") == ["ab", "keep"]
    assert await driver.stat("t/a/b/c/3") is None
    await driver.delete_tree("t/a")  # missing: fine
    await driver.delete_tree("no/such/tree")
    # The prefix can be reused afterwards.
    await driver.write("t/a/new", b"y")
    assert await driver.walk("t/a") == ["new"]


@pytest_twisted.ensureDeferred
async def test_move_replaces_destination(driver: IStorageDriver) -> None:
    await driver.write("up/load", b"new bytes")
    await driver.write("blobs/x/data", b"old bytes")
    await driver.move("up/load", "blobs/x/data")
    assert await driver.read("blobs/x/data") == b"new bytes"
    assert await driver.stat("up/load") is None
    assert await driver.children("up") == []
    assert await driver.children("blobs/x") == ["data"]

    # Destination prefixes are created as needed.
    await driver.write("src", b"moved")
    await driver.move("src", "fresh/prefix/dst")
    assert await driver.read("fresh/prefix/dst") == b"moved"
    assert await driver.stat("src") is None

    # Moving onto itself keeps the object.
    await driver.move("fresh/prefix/dst", "fresh/prefix/dst")
    assert await driver.read("fresh/prefix/dst") == b"moved"

    with pytest.raises(PathNotFound):
        await driver.move("no/such/source", "somewhere/else")
    assert await driver.stat("somewhere/else") is None


@pytest_twisted.ensureDeferred
async def test_move_keeps_a_reader_of_the_replaced_object(driver: IStorageDriver) -> None:
    await driver.write("dst", b"old")
    handle = await driver.open_read("dst")
    await driver.write("src", b"new!")
    await driver.move("src", "dst")
    assert await handle.read_all() == b"old"
    assert await driver.read("dst") == b"new!"


# Streaming reads ----------------------------------------------------------------------


@implementer(IConsumer)
class PausingConsumer:
    """Pauses its producer after every write; the test resumes it later."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.producer: IPushProducer | None = None
        self.streaming: bool | None = None
        self.paused = False
        self.chunks: list[bytes] = []
        self.writes_while_paused = 0
        self.registrations = 0
        self.unregistrations = 0
        self._stop_after = stop_after

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert self.producer is None, "a producer is already registered"
        self.producer = cast(IPushProducer, producer)
        self.streaming = streaming
        self.registrations += 1

    def unregisterProducer(self) -> None:
        assert self.producer is not None, "no producer registered"
        self.producer = None
        self.unregistrations += 1

    def write(self, data: bytes) -> None:
        if self.paused:
            self.writes_while_paused += 1
        self.chunks.append(bytes(data))
        assert self.producer is not None
        if self._stop_after is not None and len(self.chunks) >= self._stop_after:
            self.producer.stopProducing()
            return
        self.paused = True
        self.producer.pauseProducing()

    def resume(self) -> None:
        assert self.producer is not None
        self.paused = False
        self.producer.resumeProducing()

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)


async def drain(deferred: Deferred[None], consumer: PausingConsumer, patience: float = 10.0) -> int:
    """Resume the producer until the transfer is done; returns how many resumes it took.

    A network driver may take a while to produce its next write; a producer that neither
    writes nor finishes within ``patience`` seconds has stalled.
    """
    fired: list[object] = []
    deferred.addBoth(fired.append)
    resumes = 0
    while not fired:
        waited = 0.0
        while not consumer.paused and not fired:
            assert waited < patience, "the producer stalled without being paused"
            await deferLater(reactor, 0.002)
            waited += 0.002
        if fired:
            break
        resumes += 1
        assert resumes < 10_000
        consumer.resume()
    if isinstance(fired[0], Failure):
        fired[0].raiseException()
    return resumes


SIZE = 2 * CHUNK_SIZE + 12_345
RANGES = [
    (0, SIZE - 1),
    (0, 0),
    (SIZE - 1, SIZE - 1),
    (CHUNK_SIZE - 1, CHUNK_SIZE),
    (1_000, 2 * CHUNK_SIZE + 5),
    (CHUNK_SIZE, 2 * CHUNK_SIZE - 1),
    (17, 4_000),
]


@pytest.mark.parametrize(("first", "last"), RANGES)
@pytest_twisted.ensureDeferred
async def test_write_to_streams_ranges_with_backpressure(driver: IStorageDriver, first: int, last: int) -> None:
    data = payload(SIZE)
    await driver.write("big/object", data)
    handle = await driver.open_read("big/object")
    assert handle.size == SIZE
    consumer = PausingConsumer()
    done = handle.write_to(consumer, first, last)
    assert consumer.streaming is True
    await drain(done, consumer)
    assert consumer.received == data[first:last + 1]
    assert consumer.writes_while_paused == 0
    assert all(len(chunk) <= CHUNK_SIZE for chunk in consumer.chunks)
    assert len(consumer.chunks) == -(-(last - first + 1) // CHUNK_SIZE)
    assert (consumer.registrations, consumer.unregistrations) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_write_to_stops_when_the_consumer_stops(driver: IStorageDriver) -> None:
    data = payload(SIZE, seed=1)
    await driver.write("obj", data)
    handle = await driver.open_read("obj")
    consumer = PausingConsumer(stop_after=1)
    done = handle.write_to(consumer, 0, SIZE - 1)
    await done
    assert consumer.received == data[:CHUNK_SIZE]


@pytest_twisted.ensureDeferred
async def test_write_to_beyond_the_end_fails(driver: IStorageDriver) -> None:
    await driver.write("short", b"0123456789")
    handle = await driver.open_read("short")
    consumer = PausingConsumer()
    done = handle.write_to(consumer, 5, 20)
    with pytest.raises(OSError):
        await drain(done, consumer)
    assert consumer.received == b"56789"
    assert consumer.unregistrations == 1


@pytest_twisted.ensureDeferred
async def test_read_all_and_close(driver: IStorageDriver) -> None:
    await driver.write("small", b"hello")
    handle = await driver.open_read("small")
    assert handle.size == 5
    assert await handle.read_all() == b"hello"
    other = await driver.open_read("small")
    other.close()


# Appending ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_append_writer_offsets(driver: IStorageDriver) -> None:
    writer = await driver.open_append("uploads/u1/data")
    assert writer.offset == 0
    writer.write(b"abc")
    assert writer.offset == 3
    writer.write(b"")
    writer.write(b"defg")
    assert writer.offset == 7
    await writer.finish()
    assert await driver.read("uploads/u1/data") == b"abcdefg"
    assert await driver.stat("uploads/u1/data") == 7

    again = await driver.open_append("uploads/u1/data")
    assert again.offset == 7
    again.write(b"hi")
    assert again.offset == 9
    await again.abort()  # aborted writers keep what they appended
    assert await driver.read("uploads/u1/data") == b"abcdefghi"

    big = payload(3 * CHUNK_SIZE + 1)
    third = await driver.open_append("uploads/u1/data")
    third.write(big)
    assert third.offset == 9 + len(big)
    await third.finish()
    assert await driver.read("uploads/u1/data") == b"abcdefghi" + big


@pytest_twisted.ensureDeferred
async def test_a_hashing_writer_hashes_exactly_what_it_stores(tmp_path: Any) -> None:
    driver = FilesystemDriver(str(tmp_path), started_pools(reactor).io)
    writer = await driver.open_append("uploads/u2/data")
    assert IHashingAppendWriter.providedBy(writer)
    hasher = hashlib.sha256()
    cast(Any, writer).hash_with(hasher)
    pieces = [payload(size, seed) for seed, size in enumerate([1, 0, 70_000, HIGH_WATER + 5, 3])]
    for piece in pieces:
        writer.write(piece)
    await writer.finish()
    stored = await driver.read("uploads/u2/data")
    assert stored == b"".join(pieces)
    assert hasher.hexdigest() == hashlib.sha256(stored).hexdigest()


@given(st.lists(st.binary(max_size=64), max_size=40), st.integers(1, 50))
def test_write_all_survives_short_writes(chunks: list[bytes], limit: int) -> None:
    read, write = os.pipe()
    real_writev = os.writev

    def short_writev(fd: int, buffers: Any) -> int:
        return real_writev(fd, [bytes(b"".join(bytes(b) for b in buffers)[:limit])])

    with os.fdopen(read, "rb") as source, os.fdopen(write, "wb") as sink:
        with mock.patch("os.writev", short_writev):
            _write_all(sink.fileno(), chunks)
        sink.close()
        assert source.read() == b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_append_to_existing_object(driver: IStorageDriver) -> None:
    await driver.write("k", b"12345")
    writer = await driver.open_append("k")
    assert writer.offset == 5
    writer.write(b"6")
    await writer.finish()
    assert await driver.read("k") == b"123456"
    assert await driver.children("k") == []


# Hashing ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 1024 * 1024 + 7])
@pytest_twisted.ensureDeferred
async def test_hash_object_matches_hashlib(driver: IStorageDriver, algorithm: str, size: int) -> None:
    data = payload(size, seed=size)
    await driver.write("h", data)
    assert await driver.hash_object("h", algorithm) == hashlib.new(algorithm, data).hexdigest()


# Linking objects from another store ------------------------------------------------------

#: How `link_from` must carry bytes between two stores of these kinds (same kind: two roots
#: on one filesystem, two buckets of one service, two memory stores).
EXPECTED_LINK = {"memory": LINKED, "fs": LINKED, "fs-sync": LINKED, "s3": SERVER_COPIED}


@pytest.mark.parametrize("size", [0, 1, 300 * 1024])
@pytest_twisted.ensureDeferred
async def test_link_from_another_store_of_the_same_kind(driver: IStorageDriver, tmp_path: Any, size: int) -> None:
    kind = _kind(driver)
    source = make_driver(kind, str(tmp_path / "source"))
    data = payload(size, seed=size)
    await source.write("dist/blobs/data", data)
    await driver.write("blobs/x/data", b"stale, replaced")

    assert await driver.link_from(source, "dist/blobs/data", "blobs/x/data") == EXPECTED_LINK[kind]
    assert await driver.read("blobs/x/data") == data
    assert await driver.children("blobs/x") == ["data"]  # no temporary object left
    assert await source.read("dist/blobs/data") == data  # the source is unchanged
    # Again: idempotent, same result.
    assert await driver.link_from(source, "dist/blobs/data", "blobs/x/data") == EXPECTED_LINK[kind]
    assert await driver.read("blobs/x/data") == data
    # Within one store.
    assert await driver.link_from(driver, "blobs/x/data", "blobs/y/data") in (LINKED, SERVER_COPIED)
    assert await driver.read("blobs/y/data") == data
    with pytest.raises(PathNotFound):
        await driver.link_from(source, "dist/missing", "blobs/z/data")
    assert await driver.stat("blobs/z/data") is None


def _kind(driver: IStorageDriver) -> str:
    if isinstance(driver, MemoryDriver):
        return "memory"
    if isinstance(driver, FilesystemDriver):
        return "fs-sync" if driver._sync else "fs"
    return "s3"


@pytest.mark.parametrize("source_kind", ["memory", "fs", "s3"])
@pytest_twisted.ensureDeferred
async def test_link_from_another_kind_of_store_copies(driver: IStorageDriver, tmp_path: Any,
                                                      source_kind: str) -> None:
    if _kind(driver).startswith(source_kind):
        pytest.skip("the same kind links (test above)")
    source = make_driver(source_kind, str(tmp_path / "source"))
    data = payload(200 * 1024 + 7, seed=3)
    await source.write("a/data", data)
    assert await driver.link_from(source, "a/data", "b/data") == COPIED
    assert await driver.read("b/data") == data
    assert await driver.hash_object("b/data", "sha256") == hashlib.sha256(data).hexdigest()
    assert await driver.children("b") == ["data"]


@pytest_twisted.ensureDeferred
async def test_fs_link_from_is_a_hard_link(tmp_path: Any) -> None:
    source = FilesystemDriver(str(tmp_path / "source"), started_pools(reactor).io)
    target = FilesystemDriver(str(tmp_path / "target"), started_pools(reactor).io)
    await source.write("blob", b"shared bytes")
    assert await target.link_from(source, "blob", "x/data") == LINKED
    assert os.path.samefile(source.local_path("blob"), target.local_path("x/data"))
    assert os.stat(target.local_path("x/data")).st_nlink == 2


@pytest_twisted.ensureDeferred
async def test_fs_link_from_copies_when_the_filesystem_refuses_links(tmp_path: Any) -> None:
    import errno

    source = FilesystemDriver(str(tmp_path / "source"), started_pools(reactor).io)
    target = FilesystemDriver(str(tmp_path / "target"), started_pools(reactor).io, sync_to_disk=True)
    await source.write("blob", b"other filesystem")
    with mock.patch("os.link", side_effect=OSError(errno.EXDEV, "Invalid cross-device link")):
        assert await target.link_from(source, "blob", "x/data") == COPIED
    assert await target.read("x/data") == b"other filesystem"
    assert not os.path.samefile(source.local_path("blob"), target.local_path("x/data"))
    assert os.listdir(os.path.dirname(target.local_path("x/data"))) == ["data"]


@pytest_twisted.ensureDeferred
async def test_memory_links_count_once_against_capacity() -> None:
    source = MemoryDriver()
    await source.write("blob", b"x" * 600)
    target = MemoryDriver(capacity=1000)
    assert await target.link_from(source, "blob", "a") == LINKED
    assert await target.link_from(target, "a", "b") == LINKED  # the same object: no more space
    assert await target.read("b") == b"x" * 600


# Hostile keys -------------------------------------------------------------------------

HOSTILE_KEYS = ["", "/", "/etc/passwd", "a//b", "a/", "/a", ".", "..", "./a", "a/.", "a/./b", "../x",
                "a/../../x", "a/..", "a\x00b", "\x00", "a/\x00/b"]


def every_operation(driver: IStorageDriver, key: str) -> Iterator[Callable[[], Deferred[Any]]]:
    yield lambda: driver.read(key)
    yield lambda: driver.write(key, b"x")
    yield lambda: driver.stat(key)
    yield lambda: driver.children(key)
    yield lambda: driver.walk(key)
    yield lambda: driver.delete(key)
    yield lambda: driver.delete_tree(key)
    yield lambda: driver.move(key, "safe")
    yield lambda: driver.move("safe", key)
    yield lambda: driver.open_read(key)
    yield lambda: driver.open_append(key)
    yield lambda: driver.hash_object(key, "sha256")
    yield lambda: driver.link_from(driver, key, "safe-link")
    yield lambda: driver.link_from(driver, "safe", key)


@pytest.mark.parametrize("key", HOSTILE_KEYS)
@pytest_twisted.ensureDeferred
async def test_hostile_keys_are_invalid(driver: IStorageDriver, key: str) -> None:
    await driver.write("safe", b"kept")
    for operation in every_operation(driver, key):
        with pytest.raises(InvalidPath):
            await operation()
    assert await driver.read("safe") == b"kept"


COMPONENTS = st.sampled_from(["", ".", "..", "a", "b", ".tmp-x", "\x00", "/", "..."]) | st.text(max_size=8)
KEYS = st.text(max_size=40) | st.lists(COMPONENTS, min_size=1, max_size=5).map("/".join)


def files_below(root: str) -> list[str]:
    found = []
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


@given(key=KEYS, data=st.binary(max_size=64))
@example(key="../escape", data=b"x")
@example(key="a/../../escape", data=b"x")
@example(key="/tmp/escape", data=b"x")
@example(key="~", data=b"x")
@example(key=".tmp-x", data=b"x")
@example(key="a/\\..\\b", data=b"x")
@pytest_twisted.ensureDeferred
async def test_arbitrary_keys_work_or_are_invalid(key: str, data: bytes) -> None:
    """Both drivers agree on every key, and the filesystem driver never leaves its root."""
    with tempfile.TemporaryDirectory() as sandbox:
        root = os.path.join(sandbox, "root")
        drivers = [make_driver("memory", root), make_driver("fs", root)]
        outcomes = []
        for driver in drivers:
            try:
                await driver.write(key, data)
            except InvalidPath:
                outcomes.append("invalid")
                continue
            outcomes.append("ok")
            assert await driver.read(key) == data
            assert await driver.stat(key) == len(data)
            assert await driver.hash_object(key, "sha256") == hashlib.sha256(data).hexdigest()
            parent, _, name = key.rpartition("/")
            if parent:
                listed = await driver.children(parent)
                assert listed == ([] if name.startswith(".tmp-") else [name])
        assert outcomes[0] == outcomes[1], f"drivers disagree on {key!r}"

        # Nothing ever appears beside the root, and a valid key is exactly one file inside it.
        assert os.listdir(sandbox) == ["root"]
        if outcomes[0] == "ok":
            assert files_below(root) == [os.path.join(*key.split("/"))]
            for driver in drivers:
                await driver.delete(key)
                assert await driver.stat(key) is None
        assert files_below(root) == []


@pytest_twisted.ensureDeferred
async def test_memory_capacity_simulates_a_full_disk() -> None:
    from angosd.storage.errors import OutOfSpace

    driver = MemoryDriver(capacity=10)
    await driver.write("a", b"12345")
    await driver.write("a", b"1234567890")  # replacing frees the old bytes
    with pytest.raises(OutOfSpace):
        await driver.write("b", b"x")
    await driver.write("a", b"")
    writer = await driver.open_append("b")
    writer.write(b"0123456789")
    with pytest.raises(OutOfSpace):
        writer.write(b"!")
    assert writer.offset == 10
    await writer.abort()
    assert await driver.read("b") == b"0123456789"


@pytest.mark.parametrize("kind", HIERARCHICAL)
@pytest_twisted.ensureDeferred
async def test_object_and_prefix_conflicts_fail_alike(kind: str, tmp_path: Any) -> None:
    driver = make_driver(kind, str(tmp_path / "root"))
    await driver.write("f", b"file")
    await driver.write("d/x", b"in d")
    for operation in (lambda: driver.write("f/below", b""), lambda: driver.write("d", b""),
                      lambda: driver.read("d"), lambda: driver.delete("d"), lambda: driver.open_append("d"),
                      lambda: driver.open_append("f/below"), lambda: driver.move("f", "d")):
        with pytest.raises(StorageError) as caught:
            await operation()
        assert not isinstance(caught.value, (InvalidPath, PathNotFound))
    assert await driver.read("f") == b"file"
    assert await driver.read("d/x") == b"in d"


class _Producer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_fs_append_writer_pauses_its_producer_until_the_queue_drains(tmp_path: pathlib.Path) -> None:
    driver = FilesystemDriver(str(tmp_path / "root"), started_pools(reactor).io)
    writer = await driver.open_append("uploads/u/data")
    producer = _Producer()
    writer.registerProducer(producer, True)
    chunk = payload(1024 * 1024)
    written = b""
    while not producer.paused:
        writer.write(chunk)
        written += chunk
        assert len(written) <= HIGH_WATER + 2 * len(chunk), "the writer must push back before it holds much more"
    await writer.finish()
    assert not producer.paused, "draining resumes the producer"
    assert producer.pauses >= 1
    assert await driver.read("uploads/u/data") == written
