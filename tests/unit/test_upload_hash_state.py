"""The hash state carried with an upload session (`angosd.oci.hash_state`, used by
`angosd.registry.uploads`): any split of the bytes into chunks, each hashed by a "fresh
process" that only has the saved state, gives hashlib's digest; a damaged, foreign or
stale state is refused; a crash between the append and the save never gives a wrong
digest, only a rehash."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from angosd.oci.digest import Digest
from angosd.oci.errors import DigestInvalid
from angosd.oci.hash_state import ResumableHasher, new_resumable
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.uploads import UploadSessions
from angosd.storage.errors import StorageError
from angosd.storage.interface import IAppendWriter
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import fired, run

ALGORITHMS = ["sha256", "sha512"]
NAMESPACE = "team/app"


def hashed_in_pieces(data: bytes, cuts: list[int], algorithm: str) -> str:
    """Hash ``data`` cut at ``cuts``, every piece in a hasher restored from the bytes of
    the previous piece's state (as a new process would)."""
    first = new_resumable(algorithm)
    assert first is not None
    state = first.export()
    start = 0
    for end in [*sorted(cuts), len(data)]:
        hasher = ResumableHasher.restore(state, algorithm)
        assert hasher is not None and hasher.offset == start
        hasher.update(data[start:end])
        state = hasher.export()
        start = end
    final = ResumableHasher.restore(state, algorithm)
    assert final is not None and final.offset == len(data)
    return final.hexdigest()


@settings(max_examples=200)
@given(data=st.binary(max_size=2000), cut_points=st.lists(st.integers(0, 2000), max_size=12),
       algorithm=st.sampled_from(ALGORITHMS))
def test_any_split_restored_from_bytes_gives_hashlibs_digest(data: bytes, cut_points: list[int],
                                                             algorithm: str) -> None:
    cuts = [min(cut, len(data)) for cut in cut_points]
    assert hashed_in_pieces(data, cuts, algorithm) == hashlib.new(algorithm, data).hexdigest()


def test_large_updates_cross_block_and_buffer_boundaries() -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB
    for algorithm in ALGORITHMS:
        cuts = [1, 63, 64, 65, 127, 128, 129, 300_001, 1_000_000]
        assert hashed_in_pieces(data, cuts, algorithm) == hashlib.new(algorithm, data).hexdigest()


def test_hexdigest_leaves_the_hasher_as_it_was() -> None:
    hasher = new_resumable("sha256")
    assert hasher is not None
    hasher.update(b"abc")
    assert hasher.hexdigest() == hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    hasher.update(memoryview(b"def"))
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


def saved_state(algorithm: str, data: bytes) -> bytes:
    hasher = new_resumable(algorithm)
    assert hasher is not None
    hasher.update(data)
    return hasher.export()


@given(data=st.binary(max_size=300), algorithm=st.sampled_from(ALGORITHMS), where=st.integers(0, 10_000),
       flip=st.integers(1, 255))
def test_a_damaged_state_is_refused(data: bytes, algorithm: str, where: int, flip: int) -> None:
    state = bytearray(saved_state(algorithm, data))
    state[where % len(state)] ^= flip
    assert ResumableHasher.restore(bytes(state), algorithm) is None


@given(data=st.binary(max_size=300), algorithm=st.sampled_from(ALGORITHMS), keep=st.integers(0, 400))
def test_a_truncated_or_extended_state_is_refused(data: bytes, algorithm: str, keep: int) -> None:
    state = saved_state(algorithm, data)
    if keep < len(state):
        assert ResumableHasher.restore(state[:keep], algorithm) is None
    assert ResumableHasher.restore(state + b"\x00", algorithm) is None


@given(garbage=st.binary(max_size=400))
def test_garbage_is_refused(garbage: bytes) -> None:
    for algorithm in ALGORITHMS:
        assert ResumableHasher.restore(garbage, algorithm) is None


def test_a_state_of_another_algorithm_is_refused() -> None:
    assert ResumableHasher.restore(saved_state("sha256", b"x" * 70), "sha512") is None
    assert ResumableHasher.restore(saved_state("sha512", b"x" * 70), "sha256") is None
    assert ResumableHasher.restore(saved_state("sha256", b"x"), "md5") is None


# -- through upload sessions -------------------------------------------------------------


class Killed(Exception):
    """The process died here."""


class Driver(MemoryDriver):
    """Counts rehashes; with ``die_saving_state`` the process dies when it would save a
    hash state, that is after the chunk's bytes are stored and before the state is."""

    def __init__(self) -> None:
        super().__init__()
        self.rehashes = 0
        self.die_saving_state = False

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        self.rehashes += 1
        return super().hash_object(key, algorithm)

    def write(self, key: str, data: bytes) -> Deferred[None]:
        if self.die_saving_state and key.endswith("/hashstate"):
            raise Killed(key)
        return super().write(key, data)


def new_process(driver: Driver) -> UploadSessions:
    """A process over the shared store: no hash state in memory."""
    return UploadSessions(driver, BlobStore(driver), Clock(), 1 << 30)


def append(sessions: UploadSessions, session: str, chunk: bytes) -> None:
    sink = run(sessions.open_sink(NAMESPACE, session, None))
    sink.write(chunk)
    run(sink.finish())


def test_each_chunk_in_another_process_resumes_without_rehashing() -> None:
    driver = Driver()
    session = run(new_process(driver).start(NAMESPACE))
    chunks = [b"a" * 100, b"b" * 37, b"c" * 1000]
    for chunk in chunks:
        append(new_process(driver), session, chunk)
    data = b"".join(chunks)
    assert run(new_process(driver).complete(NAMESPACE, session, Digest.of(data))) == len(data)
    assert driver.rehashes == 0


@pytest.mark.parametrize("right_digest", [True, False])
def test_a_crash_between_append_and_state_save_rehashes_and_never_gives_a_wrong_digest(right_digest: bool) -> None:
    driver = Driver()
    session = run(new_process(driver).start(NAMESPACE))
    append(new_process(driver), session, b"first ")
    dying = new_process(driver)
    driver.die_saving_state = True
    sink = run(dying.open_sink(NAMESPACE, session, None))
    sink.write(b"second")
    with pytest.raises(Killed):
        run(sink.finish())
    driver.die_saving_state = False
    # The bytes are stored, the saved state still covers only the first chunk.
    assert run(new_process(driver).info(NAMESPACE, session)).size == 12
    data = b"first second"
    survivor = new_process(driver)
    if right_digest:
        assert run(survivor.complete(NAMESPACE, session, Digest.of(data))) == len(data)
        assert fired(driver.read(paths.blob_data(Digest.of(data)))) == data
    else:
        with pytest.raises(DigestInvalid):
            run(survivor.complete(NAMESPACE, session, Digest.of(b"first ")))  # what the stale state covers
    assert driver.rehashes == 1


def test_a_crash_then_more_chunks_still_rehashes() -> None:
    """After a lost state, later chunks cannot bring it back: completion rehashes."""
    driver = Driver()
    session = run(new_process(driver).start(NAMESPACE))
    append(new_process(driver), session, b"one ")
    fired(driver.write(paths.upload_data(NAMESPACE, session), b"one two "))  # appended, state not saved
    append(new_process(driver), session, b"three")
    data = b"one two three"
    assert run(new_process(driver).complete(NAMESPACE, session, Digest.of(data))) == len(data)
    assert driver.rehashes == 1


@pytest.mark.parametrize("state", [b"", b"garbage", b"AGHS1" + b"\xff" * 200, saved_state("sha256", b"0123"),
                                   saved_state("sha512", b"0123456789")])
def test_a_hostile_or_stale_state_file_costs_a_rehash_never_an_error(state: bytes) -> None:
    driver = Driver()
    session = run(new_process(driver).start(NAMESPACE))
    append(new_process(driver), session, b"0123456789")
    fired(driver.write(paths.upload_hash_state(NAMESPACE, session), state))
    append(new_process(driver), session, b"abc")
    data = b"0123456789abc"
    assert run(new_process(driver).complete(NAMESPACE, session, Digest.of(data))) == len(data)
    assert driver.rehashes == 1


def test_a_single_request_upload_saves_no_state_and_completes_from_memory() -> None:
    driver = Driver()
    sessions = new_process(driver)
    session = run(sessions.start(NAMESPACE, "sha256"))
    sink = run(sessions.open_sink(NAMESPACE, session, 0, save_state=False))
    sink.write(b"monolithic")
    run(sink.finish())
    assert fired(driver.stat(paths.upload_hash_state(NAMESPACE, session))) is None
    assert run(sessions.complete(NAMESPACE, session, Digest.of(b"monolithic"))) == 10
    assert driver.rehashes == 0


def test_every_chunk_saves_the_state_of_the_bytes_stored() -> None:
    driver = Driver()
    session = run(new_process(driver).start(NAMESPACE))
    append(new_process(driver), session, b"x" * 1000)
    saved = ResumableHasher.restore(fired(driver.read(paths.upload_hash_state(NAMESPACE, session))), "sha256")
    assert saved is not None and saved.offset == 1000
    assert saved.hexdigest() == hashlib.sha256(b"x" * 1000).hexdigest()


class _LosingWriter:
    """An append writer that stores only the first half of what it is given and fails at
    `finish`, as a disk that filled up mid-chunk (the bytes were hashed all the same)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.offset = inner.offset

    def write(self, data: bytes) -> None:
        self._inner.write(data[:len(data) // 2])
        self.offset += len(data)

    def finish(self) -> Deferred[None]:
        self._inner.finish()
        return fail(StorageError("no space left"))

    def abort(self) -> Deferred[None]:
        return self._inner.abort()  # type: ignore[no-any-return]


class LosingDriver(Driver):
    losing = False

    def open_append(self, key: str) -> Deferred[IAppendWriter]:
        opened = super().open_append(key)
        return opened.addCallback(_LosingWriter) if self.losing else opened


def test_a_failed_chunk_never_lends_its_hash_to_other_bytes_of_the_same_size() -> None:
    """The state of a chunk that was hashed but not (all) stored is dropped: when other bytes
    later bring the upload to the same size, completion hashes what is stored."""
    driver = LosingDriver()
    holder = new_process(driver)
    session = run(holder.start(NAMESPACE))
    driver.losing = True
    sink = run(holder.open_sink(NAMESPACE, session, 0))
    sink.write(b"ABCDEFGH")
    with pytest.raises(StorageError):
        run(sink.finish())
    driver.losing = False
    assert run(holder.info(NAMESPACE, session)).size == 4  # "ABCD" stored
    append(new_process(driver), session, b"wxyz")  # another process: now 8 bytes again
    with pytest.raises(DigestInvalid):
        run(holder.complete(NAMESPACE, session, Digest.of(b"ABCDEFGH")))
    assert run(holder.complete(NAMESPACE, session, Digest.of(b"ABCDwxyz"))) == 8
    assert fired(driver.read(paths.blob_data(Digest.of(b"ABCDwxyz")))) == b"ABCDwxyz"
