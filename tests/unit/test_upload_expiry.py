"""Abandoned upload sessions purged by age inside the daemon (`angosd.registry.expiry`)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from angosd.config import Config, load_config
from angosd.coordination.interface import MemoryCoordination
from angosd.registry import paths
from angosd.registry.blobs import BlobStore
from angosd.registry.expiry import UploadExpiry, interval_for
from angosd.registry.uploads import UploadSessions, new_session_id
from angosd.storage.memory import MemoryDriver
from tests.unit.helpers import fired, run

DAY = 86400


def sessions_on(driver: MemoryDriver, clock: Clock) -> UploadSessions:
    return UploadSessions(driver, BlobStore(driver), clock, 1 << 30)


def append(sessions: UploadSessions, namespace: str, session: str, data: bytes) -> None:
    sink = run(sessions.open_sink(namespace, session, None))
    sink.write(data)
    run(sink.finish())


def alive(sessions: UploadSessions, namespace: str) -> set[str]:
    return {info.session for info in run(sessions.list(namespace))}


def setup() -> tuple[MemoryDriver, Clock, UploadSessions]:
    driver, clock = MemoryDriver(), Clock()
    clock.advance(1_767_225_600)
    return driver, clock, sessions_on(driver, clock)


def test_an_old_idle_session_goes_on_the_second_pass_and_a_young_one_stays() -> None:
    driver, clock, sessions = setup()
    old = run(sessions.start("team/app"))
    append(sessions, "team/app", old, b"abandoned")
    clock.advance(DAY)
    young = run(sessions.start("team/app"))
    expiry = UploadExpiry(driver, sessions, clock, lambda: DAY)
    assert run(expiry.purge()) == 0  # seen idle once: not yet
    assert alive(sessions, "team/app") == {old, young}
    clock.advance(interval_for(DAY))
    assert run(expiry.purge()) == 1
    assert alive(sessions, "team/app") == {young}
    assert fired(driver.children(paths.uploads_dir("team/app"))) == [young]


def test_an_old_session_still_receiving_chunks_is_kept() -> None:
    driver, clock, sessions = setup()
    session = run(sessions.start("team/app"))
    clock.advance(2 * DAY)
    expiry = UploadExpiry(driver, sessions, clock, lambda: DAY)
    for chunk in (b"a", b"b", b"c"):
        run(expiry.purge())
        append(sessions, "team/app", session, chunk)
        clock.advance(interval_for(DAY))
    assert alive(sessions, "team/app") == {session}
    assert run(sessions.info("team/app", session)).size == 3


def test_a_session_being_written_in_another_process_is_kept() -> None:
    driver, clock, writer = setup()
    shared = MemoryCoordination(clock)
    writer.coordination = shared
    purger = sessions_on(driver, clock)
    purger.coordination = shared
    session = run(writer.start("team/app"))
    clock.advance(2 * DAY)
    expiry = UploadExpiry(driver, purger, clock, lambda: DAY)
    run(expiry.purge())
    sink = run(writer.open_sink("team/app", session, None))  # a chunk is being received right now
    assert run(expiry.purge()) == 0
    assert alive(writer, "team/app") == {session}
    sink.abort()
    assert run(expiry.purge()) == 1


def test_an_old_unreadable_session_goes_and_zero_disables_purging() -> None:
    driver, clock, sessions = setup()
    broken = new_session_id(clock.seconds())
    fired(driver.write(paths.upload_data("team/app", broken), b"x"))  # no info: unreadable
    kept = run(sessions.start("team/app"))
    clock.advance(2 * DAY)
    disabled = UploadExpiry(driver, sessions, clock, lambda: 0)
    for _ in range(3):
        assert run(disabled.purge()) == 0
        clock.advance(3600)
    expiry = UploadExpiry(driver, sessions, clock, lambda: DAY)
    run(expiry.purge())
    assert run(expiry.purge()) == 2
    assert fired(driver.children(paths.uploads_dir("team/app"))) == []
    assert kept not in alive(sessions, "team/app")


def test_the_age_is_configured_in_global(tmp_path: object) -> None:
    assert Config().global_.upload_max_age_secs == DAY
    path = f"{tmp_path}/c.toml"
    with open(path, "w", encoding="utf-8") as file:
        file.write("[global]\nupload_max_age_secs = 3600\n")
    assert load_config([path]).global_.upload_max_age_secs == 3600
    assert json.dumps(interval_for(3600)) == "900.0"
    assert [interval_for(age) for age in (0, 2, 8, DAY)] == [1.0, 1.0, 2.0, 3600.0]
