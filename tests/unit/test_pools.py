"""angosd.storage.pools: named thread pools with a bounded queue, their metrics and their stop."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from angosd.observability.metrics import Metrics
from angosd.oci.errors import OciError, TooManyRequests
from angosd.storage.fs import FilesystemDriver
from angosd.storage.pools import BoundedPool, Pools, PoolStopped

REPO = str(Path(__file__).resolve().parents[2])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the reactor run until ``condition()`` holds (a `TimeoutError` after ``timeout`` seconds)."""
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise TimeoutError("condition not reached")
        await deferLater(reactor, 0.005)
        waited += 0.005


class Blocked:
    """Jobs that hold their thread until `release`."""

    def __init__(self) -> None:
        self._gate = threading.Event()

    def job(self, value: Any = None) -> Any:
        if not self._gate.wait(30):
            raise TimeoutError("never released")
        return value

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def pool() -> Iterator[BoundedPool]:
    started = BoundedPool("test", reactor, max_threads=1, max_queue=2)
    started.startService()
    yield started
    started.stopService()


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="bad thread pool bounds"):
        BoundedPool("x", reactor, max_threads=0, max_queue=1)
    with pytest.raises(ValueError, match="bad thread pool bounds"):
        BoundedPool("x", reactor, max_threads=2, max_queue=0)
    with pytest.raises(ValueError, match="bad thread pool bounds"):
        BoundedPool("x", reactor, max_threads=2, max_queue=1, min_threads=3)


@pytest_twisted.ensureDeferred
async def test_a_job_runs_on_a_thread_of_the_named_pool(pool: BoundedPool) -> None:
    name = await pool.run(lambda: threading.current_thread().name)
    assert name != threading.current_thread().name
    assert "angosd-test" in name
    assert await pool.run(hashlib.sha256(b"x").hexdigest) == hashlib.sha256(b"x").hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_failing_job_fails_its_deferred_and_frees_its_place(pool: BoundedPool) -> None:
    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await pool.run(boom)
    assert (pool.queued, pool.active) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_refuses_at_once_with_429_and_retry_after(pool: BoundedPool) -> None:
    blocked = Blocked()
    running = pool.run(blocked.job, "running")
    waiting = [pool.run(blocked.job, index) for index in range(2)]
    await until(lambda: pool.active == 1)
    assert (pool.queued, pool.active) == (2, 1)
    refused = pool.run(blocked.job, "refused")
    failures: list[Any] = []
    refused.addErrback(failures.append)
    assert failures, "a full pool refuses synchronously, without waiting for a thread"
    error = failures[0].value
    assert isinstance(error, TooManyRequests) and isinstance(error, OciError)
    assert (error.status, error.code, error.headers["Retry-After"]) == (429, "TOOMANYREQUESTS", "1")
    assert "test" in str(error) and "2" in str(error)
    assert (pool.queued, pool.active) == (2, 1), "a refused job takes no place"
    blocked.release()
    assert [await running, *[await job for job in waiting]] == ["running", 0, 1]
    assert (pool.queued, pool.active) == (0, 0)
    assert await pool.run(blocked.job, "again") == "again", "places free up again"


@pytest_twisted.ensureDeferred
async def test_the_gauges_show_queue_depth_and_busy_threads_per_pool(pool: BoundedPool) -> None:
    metrics = Metrics(lambda: 0.0, CollectorRegistry())
    idle = BoundedPool("idle", reactor, max_threads=1, max_queue=1)
    metrics.watch_pools([pool, idle])

    def sample(name: str, label: str) -> float | None:
        for family in text_string_to_metric_families(metrics.exposition().decode()):
            for found in family.samples:
                if found.name == name and found.labels == {"pool": label}:
                    return float(found.value)
        return None

    blocked = Blocked()
    jobs = [pool.run(blocked.job)]
    await until(lambda: pool.active == 1)
    jobs += [pool.run(blocked.job) for _ in range(2)]
    assert sample("angosd_thread_pool_queued_jobs", "test") == 2
    assert sample("angosd_thread_pool_active_threads", "test") == 1
    assert sample("angosd_thread_pool_queued_jobs", "idle") == 0
    assert sample("angosd_thread_pool_active_threads", "idle") == 0
    blocked.release()
    for job in jobs:
        await job
    assert sample("angosd_thread_pool_queued_jobs", "test") == 0
    assert sample("angosd_thread_pool_active_threads", "test") == 0


@pytest_twisted.ensureDeferred
async def test_work_given_before_start_waits_for_it_and_a_stopped_pool_refuses() -> None:
    early = BoundedPool("early", reactor, max_threads=2, max_queue=4)
    result = early.run(lambda: "ran")
    try:
        await deferLater(reactor, 0.05)
        assert not result.called and early.queued == 1
        early.startService()
        assert await result == "ran"
        thread = await early.run(threading.current_thread)
        assert thread.daemon, "a pool nobody stopped cannot keep the process alive"
    finally:
        early.stopService()
    assert not thread.is_alive(), "stopping joins the threads"
    with pytest.raises(PoolStopped, match="early thread pool is stopped"):
        await early.run(lambda: None)


def test_pools_start_first_and_stop_with_their_service() -> None:
    pools = Pools.create(reactor, io_threads=3, io_queue=5, cpu_threads=1, cpu_queue=2)
    assert [(p.name, p.max_threads, p.max_queue) for p in pools] == [("io", 3, 5), ("cpu", 1, 2)]
    service = pools.service()
    service.startService()
    assert pools.io.running and pools.cpu.running
    service.stopService()
    assert not pools.io.running and not pools.cpu.running
    failures: list[Any] = []
    pools.cpu.run(lambda: None).addErrback(failures.append)
    assert failures and failures[0].check(PoolStopped)


@pytest_twisted.ensureDeferred
async def test_a_storage_job_refused_by_a_full_pool_is_a_429_not_a_storage_error(tmp_path: Path) -> None:
    pool = BoundedPool("io", reactor, max_threads=1, max_queue=1)
    pool.startService()
    try:
        driver = FilesystemDriver(str(tmp_path), pool)
        writer = await driver.open_append("uploads/u/data")
        blocked = Blocked()
        jobs = [pool.run(blocked.job) for _ in range(2)]
        await until(lambda: pool.active == 1 and pool.queued == 1)
        with pytest.raises(TooManyRequests):
            await driver.hash_object("uploads/u/data", "sha256")
        writer.write(b"refused")  # its write job cannot be queued
        with pytest.raises(TooManyRequests):
            await writer.finish()
        blocked.release()
        for job in jobs:
            await job
    finally:
        pool.stopService()


_RECORDER = """
import sys, time
sys.path.insert(0, {repo!r})
from angosd.observability.metrics import Metrics

class Pool:
    def __init__(self, name, queued, active):
        self.name, self.queued, self.active = name, queued, active

metrics = Metrics(time.monotonic, multiprocess_dir={directory!r})
metrics.watch_pools([Pool("io", {queued}, 1), Pool("cpu", 0, 0)])
metrics.refresh()
sys.stdout.write(metrics.exposition().decode())
sys.stdout.flush()
sys.stdin.read()
"""


def test_in_multiprocess_mode_the_gauges_add_up_over_live_workers(tmp_path: Path) -> None:
    directory = str(tmp_path / "metrics")
    os.mkdir(directory)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}

    def worker(queued: int) -> subprocess.Popen[str]:
        script = _RECORDER.format(repo=REPO, directory=directory, queued=queued)
        return subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    first = worker(3)
    try:
        assert first.stdout is not None
        first.stdout.readline()
        output, _ = worker(4).communicate("", timeout=60)
    finally:
        first.kill()
        first.wait()
    samples = {(sample.name, sample.labels.get("pool")): sample.value
               for family in text_string_to_metric_families(output) for sample in family.samples}
    assert samples[("angosd_thread_pool_queued_jobs", "io")] == 7
    assert samples[("angosd_thread_pool_active_threads", "io")] == 2
    assert samples[("angosd_thread_pool_queued_jobs", "cpu")] == 0
