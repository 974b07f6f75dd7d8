"""Upload sessions against a model: chunks, offsets, aborts, restarts, completion."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, TooLarge
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.uploads import UploadOffsetMismatch, UploadSessions
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import fired, run

NAMESPACES = ["library/alpine", "team/app/sub"]
ALGORITHMS = ["sha256", "sha512"]
#: Small enough that appends regularly hit `TooLarge`.
MAX_BLOB_SIZE = 300


def filled(size: int, seed: int) -> bytes:
    return bytes((seed + 7 * i) % 256 for i in range(size))


#: Chunk bytes: hypothesis' own binaries are mostly tiny, so mix in chunks of any size.
CHUNKS = st.binary(max_size=16) | st.builds(filled, st.integers(0, 120), st.integers(0, 255))


class CountingDriver(MemoryDriver):
    """Counts rehashes, to tell the incremental (or resumed) hash from the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.rehashes = 0

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        self.rehashes += 1
        return super().hash_object(key, algorithm)


@dataclass
class Upload:
    namespace: str
    algorithm: str | None
    data: bytearray = field(default_factory=bytearray)
    #: Whether this daemon holds, in memory, the hash state of every byte.
    memory: bool = True
    #: How many bytes the hash state saved beside the session covers (None: none saved).
    saved: int | None = None

    @property
    def state_algorithm(self) -> str:
        return self.algorithm or "sha256"

    def resumable(self) -> bool:
        """Whether a hash state of every byte can be had without reading them again."""
        return self.memory or self.saved == len(self.data) or not self.data

    def opened(self) -> bool:
        """Opening a chunk loads the state into memory when there is one: True if so."""
        self.memory = self.resumable()
        return self.memory


class UploadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.driver = CountingDriver()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.blobs = BlobStore(self.driver)
        self.sessions = self.new_daemon()
        self.live: dict[str, Upload] = {}
        self.dead: dict[str, str] = {}
        self.completed: dict[tuple[str, Digest], bytes] = {}

    def new_daemon(self) -> UploadSessions:
        return UploadSessions(self.driver, self.blobs, self.clock, MAX_BLOB_SIZE)

    def pick(self, data: st.DataObject) -> tuple[str, Upload]:
        session = data.draw(st.sampled_from(sorted(self.live)), label="session")
        return session, self.live[session]

    # Rules ------------------------------------------------------------------------------

    @rule(namespace=st.sampled_from(NAMESPACES), algorithm=st.sampled_from([None, *ALGORITHMS]))
    def start(self, namespace: str, algorithm: str | None) -> None:
        self.clock.advance(3)
        session = run(self.sessions.start(namespace, algorithm))
        assert session not in self.live and session not in self.dead
        self.live[session] = Upload(namespace, algorithm)
        info = run(self.sessions.info(namespace, session))
        assert (info.size, info.algorithm, info.started_at) == (0, algorithm, int(self.clock.seconds()))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), chunk=CHUNKS, split=st.integers(0, 120),
          shift=st.none() | st.just(0) | st.integers(-4, 4))
    def append(self, data: st.DataObject, chunk: bytes, split: int, shift: int | None) -> None:
        """One chunk at ``size + shift`` (None: wherever the upload ends)."""
        session, upload = self.pick(data)
        size = len(upload.data)
        first = None if shift is None else size + shift
        if first is not None and first != size:
            with pytest.raises(UploadOffsetMismatch) as caught:
                run(self.sessions.open_sink(upload.namespace, session, first))
            assert caught.value.size == size
            assert caught.value.status == 416
            return
        sink = run(self.sessions.open_sink(upload.namespace, session, first))
        resumable = upload.opened()
        assert sink.offset == size
        if size + len(chunk) > MAX_BLOB_SIZE:
            with pytest.raises(TooLarge):
                sink.write(chunk)
            sink.abort()
            upload.memory = False  # an aborted chunk drops the state in memory
            return
        sink.write(chunk[:split])
        sink.write(chunk[split:])
        assert sink.offset == size + len(chunk)
        run(sink.finish())
        upload.data += chunk
        if resumable:
            upload.saved = len(upload.data)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), chunks=st.lists(CHUNKS, min_size=1, max_size=3))
    def write_then_abort(self, data: st.DataObject, chunks: list[bytes]) -> None:
        """A client that disconnects mid-chunk: what arrived stays in the upload."""
        session, upload = self.pick(data)
        sink = run(self.sessions.open_sink(upload.namespace, session, len(upload.data)))
        for chunk in chunks:
            if len(upload.data) + len(chunk) > MAX_BLOB_SIZE:
                break
            sink.write(chunk)
            upload.data += chunk
        sink.abort()
        sink.abort()  # idempotent
        upload.memory = False  # it may cover bytes not stored; the saved state covers less than all

    @precondition(lambda self: self.live)
    @rule(data=st.data(), chunk=CHUNKS)
    def concurrent_writer(self, data: st.DataObject, chunk: bytes) -> None:
        """A second request cannot write (or complete) while a chunk is in flight."""
        session, upload = self.pick(data)
        size = len(upload.data)
        sink = run(self.sessions.open_sink(upload.namespace, session, size))
        resumable = upload.opened()
        for first in (size, None):
            with pytest.raises(UploadOffsetMismatch) as caught:
                run(self.sessions.open_sink(upload.namespace, session, first))
            assert caught.value.size == size
        with pytest.raises(UploadOffsetMismatch):
            run(self.sessions.complete(upload.namespace, session, Digest.of(bytes(upload.data))))
        if size + len(chunk) <= MAX_BLOB_SIZE:
            sink.write(chunk)
            upload.data += chunk
        run(sink.finish())
        run(sink.finish())  # idempotent
        if resumable:
            upload.saved = len(upload.data)
        # Released: the next request may write.
        run(self.sessions.open_sink(upload.namespace, session, len(upload.data))).abort()
        upload.memory = False

    @rule()
    def restart(self) -> None:
        """A new daemon over the same storage: every in-memory hash state is lost (the
        saved ones are not)."""
        self.sessions = self.new_daemon()
        for upload in self.live.values():
            upload.memory = False

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        session, upload = self.pick(data)
        assert run(self.sessions.info(upload.namespace, session)).size == len(upload.data)
        other = next(n for n in NAMESPACES if n != upload.namespace)
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.info(other, session))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), algorithm=st.sampled_from(ALGORITHMS))
    def complete(self, data: st.DataObject, algorithm: str) -> None:
        session, upload = self.pick(data)
        body = bytes(upload.data)
        digest = Digest.of(body, upload.algorithm or algorithm)
        rehashes = self.driver.rehashes
        assert run(self.sessions.complete(upload.namespace, session, digest)) == len(body)
        incremental = not body or (upload.resumable() and upload.state_algorithm == digest.algorithm)
        assert self.driver.rehashes == rehashes + (0 if incremental else 1)
        del self.live[session]
        self.dead[session] = upload.namespace
        self.completed[upload.namespace, digest] = body

        assert run(self.blobs.owns(upload.namespace, digest))
        assert run(self.blobs.read_small(digest)) == body
        handle = run(self.blobs.open(upload.namespace, digest))
        assert handle.size == len(body)
        assert fired(handle.read_all()) == body
        assert upload.namespace in run(self.blobs.owners(digest))
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.info(upload.namespace, session))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), algorithm=st.sampled_from(ALGORITHMS), wrong_algorithm=st.booleans())
    def complete_with_wrong_digest(self, data: st.DataObject, algorithm: str, wrong_algorithm: bool) -> None:
        session, upload = self.pick(data)
        body = bytes(upload.data)
        if wrong_algorithm and upload.algorithm is not None:
            # The right bytes, but not the algorithm the upload was started for.
            digest = Digest.of(body, next(a for a in ALGORITHMS if a != upload.algorithm))
        else:
            digest = Digest.of(body + b"\x00tampered", upload.algorithm or algorithm)
        with pytest.raises(DigestInvalid):
            run(self.sessions.complete(upload.namespace, session, digest))
        if digest.algorithm == upload.state_algorithm:
            upload.opened()
        # The session is kept whole: the client may resume or retry it.
        assert run(self.sessions.info(upload.namespace, session)).size == len(body)
        if (upload.namespace, digest) not in self.completed:
            assert not run(self.blobs.owns(upload.namespace, digest))
            with pytest.raises(BlobUnknown):
                run(self.blobs.open(upload.namespace, digest))
        if all(known != digest for _, known in self.completed):
            assert not run(self.blobs.exists(digest))
            assert run(self.blobs.owners(digest)) == []

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        session, upload = self.pick(data)
        run(self.sessions.cancel(upload.namespace, session))
        del self.live[session]
        self.dead[session] = upload.namespace
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.info(upload.namespace, session))

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def use_finished_session(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(sorted(self.dead)), label="finished session")
        namespace = self.dead[session]
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.info(namespace, session))
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.open_sink(namespace, session, None))
        with pytest.raises(BlobUploadUnknown):
            run(self.sessions.complete(namespace, session, Digest.of(b"")))
        run(self.sessions.cancel(namespace, session))  # cancelling twice is harmless

    # Invariants -------------------------------------------------------------------------

    @invariant()
    def live_sessions_report_the_model_size(self) -> None:
        for session, upload in self.live.items():
            info = run(self.sessions.info(upload.namespace, session))
            assert info.size == len(upload.data)
            assert info.algorithm == upload.algorithm
        for namespace in NAMESPACES:
            listed = {info.session: info.size for info in run(self.sessions.list(namespace))}
            expected = {s: len(u.data) for s, u in self.live.items() if u.namespace == namespace}
            assert listed == expected

    @invariant()
    def completed_blobs_hold_the_model_bytes(self) -> None:
        for (namespace, digest), body in self.completed.items():
            assert run(self.blobs.read_small(digest)) == body
            assert run(self.blobs.size(namespace, digest)) == len(body)
            assert run(self.blobs.owns(namespace, digest))


TestUploadSessions = UploadMachine.TestCase
TestUploadSessions.settings = settings(stateful_step_count=40)


@pytest.mark.parametrize("state_kept", [True, False])
def test_completion_after_restart_resumes_or_rehashes_and_verifies(state_kept: bool) -> None:
    driver = CountingDriver()
    blobs = BlobStore(driver)
    clock = Clock()
    sessions = UploadSessions(driver, blobs, clock, MAX_BLOB_SIZE)
    session = run(sessions.start("ns", "sha512"))
    sink = run(sessions.open_sink("ns", session, 0))
    sink.write(b"before ")
    run(sink.finish())
    if not state_kept:
        fired(driver.delete(paths.upload_hash_state("ns", session)))

    restarted = UploadSessions(driver, blobs, clock, MAX_BLOB_SIZE)
    sink = run(restarted.open_sink("ns", session, 7))
    sink.write(b"after")
    run(sink.finish())
    digest = Digest.of(b"before after", "sha512")
    assert run(restarted.complete("ns", session, digest)) == 12
    assert driver.rehashes == (0 if state_kept else 1)
    assert run(blobs.read_small(digest)) == b"before after"


def test_unsupported_algorithm_hint() -> None:
    driver = MemoryDriver()
    sessions = UploadSessions(driver, BlobStore(driver), Clock(), MAX_BLOB_SIZE)
    with pytest.raises(DigestInvalid):
        run(sessions.start("ns", "md5"))
    assert fired(driver.walk("repositories")) == []
