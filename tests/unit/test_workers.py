"""The pieces of the worker process model, one at a time (no daemon)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, formatEventAsClassicLogText
from twisted.python import usage

from angosd.config import ConfigError, load_config
from angosd.coordination.files import FileCoordination
from angosd.daemon.overrides import AUTO, Overrides
from angosd.daemon.tap import Options
from angosd.daemon.workers.cpus import cgroup_cpu_limit, usable_cpus
from angosd.daemon.workers.logrelay import LogRelay, relay_observer
from angosd.daemon.workers.rundir import PREFIX, RunDirectory, sweep
from angosd.daemon.workers.status import PipeNotifier, StatusReader
from angosd.daemon.workers.supervisor import Backoff
from angosd.observability.processes import ProcessGroupCollector, read_processes, write_processes
from tests.daemon import REPO
from tests.unit.helpers import run

# --------------------------------------------------------------------------- configuration


def test_workers_is_auto_by_default_and_takes_a_count_or_auto(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("")
    assert load_config([path]).server.workers is None
    path.write_text("[server]\nworkers = 3\n")
    assert load_config([path]).server.workers == 3
    path.write_text('[server]\nworkers = "auto"\n')
    assert load_config([path]).server.workers is None


@pytest.mark.parametrize("value", ["0", "-1", "257", '"many"', "true", "1.5"])
def test_a_bad_worker_count_names_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(f"[server]\nworkers = {value}\n")
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_config([path])


def test_the_command_line_count_wins_and_survives_reloads(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[server]\nworkers = 4\n")
    config = load_config([path])
    assert Overrides(workers=1).apply(config).server.workers == 1
    assert Overrides(workers=AUTO).apply(config).server.workers is None
    assert Overrides().apply(config).server.workers == 4
    assert Overrides(root="/srv/r").worker_arguments() == ["--root", "/srv/r"]


def test_the_workers_option() -> None:
    options = Options()
    options.parseOptions(["--workers", "2"])
    assert options["workers"] == 2
    options = Options()
    options.parseOptions(["--workers", "auto"])
    assert options["workers"] == AUTO
    for bad in ("0", "x"):
        with pytest.raises(usage.UsageError, match="--workers"):
            Options().parseOptions(["--workers", bad])


# --------------------------------------------------------------------------- usable CPUs


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up() -> None:
    assert usable_cpus(lambda: 8, lambda: None) == 8
    assert usable_cpus(lambda: 8, lambda: 1.5) == 2
    assert usable_cpus(lambda: 2, lambda: 16.0) == 2
    assert usable_cpus(lambda: 4, lambda: 0.2) == 1
    assert usable_cpus() >= 1


def test_cgroup_v2_limits_are_read_up_the_tree(tmp_path: Path) -> None:
    (tmp_path / "proc").write_text("0::/system.slice/angosd.service\n")
    (tmp_path / "cg/system.slice/angosd.service").mkdir(parents=True)
    (tmp_path / "cg/system.slice/angosd.service/cpu.max").write_text("max 100000\n")
    (tmp_path / "cg/system.slice/cpu.max").write_text("300000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 3.0
    (tmp_path / "cg/system.slice/angosd.service/cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 1.5


def test_cgroup_v1_limits_and_no_limit(tmp_path: Path) -> None:
    (tmp_path / "proc").write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    (tmp_path / "cg/cpu,cpuacct/docker/abc").mkdir(parents=True)
    (tmp_path / "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cg/cpu,cpuacct/docker/abc/cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) == 2.0
    (tmp_path / "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(tmp_path / "proc"), str(tmp_path / "cg")) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


# --------------------------------------------------------------------------- restart backoff


def test_backoff_doubles_while_workers_die_young_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first=0.1, maximum=1.0, stable=10.0)
    assert [backoff.delay(0.5) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(60.0) == 0.1
    assert backoff.delay(1.0) == 0.2


# --------------------------------------------------------------------------- status pipe


def test_status_messages_cross_the_pipe_whole_and_in_order() -> None:
    read, write = os.pipe()
    try:
        notifier = PipeNotifier(write)
        assert notifier.enabled
        assert notifier.notify("READY=1", "STATUS=serving on 127.0.0.1:5000")
        assert notifier.notify("WATCHDOG=1")
        assert not notifier.notify()
        received: list[dict[str, str]] = []
        reader = StatusReader(received.append)
        data = os.read(read, 4096)
        for index in range(0, len(data), 7):  # arbitrary splits
            reader.feed(data[index:index + 7])
        assert received == [{"READY": "1", "STATUS": "serving on 127.0.0.1:5000"}, {"WATCHDOG": "1"}]
    finally:
        os.close(read)
        notifier.close()
    assert not notifier.enabled and not notifier.notify("READY=1")


def test_a_full_pipe_drops_the_message_instead_of_blocking() -> None:
    read, write = os.pipe()
    notifier = PipeNotifier(write)
    try:
        while notifier.notify("STATUS=" + "x" * 4000):
            pass
        while notifier.notify("X=1"):
            pass
        assert not notifier.notify("READY=1")
    finally:
        notifier.close()
        os.close(read)


def test_a_notifier_whose_supervisor_is_gone_does_not_raise() -> None:
    read, write = os.pipe()
    os.close(read)
    notifier = PipeNotifier(write)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        assert not notifier.notify("READY=1")
    finally:
        signal.signal(signal.SIGPIPE, previous)
        notifier.close()


# --------------------------------------------------------------------------- log relay


def _relayed(emit: list[tuple[str, LogLevel, str, dict[str, object]]]) -> list[LogEvent]:
    """Events logged in a "worker", written through its observer and read back by a relay."""
    out = io.StringIO()
    observer = relay_observer(out)
    for namespace, level, text, fields in emit:
        Logger(namespace=namespace, observer=observer).emit(level, text, **fields)
    published: list[LogEvent] = []
    relay = LogRelay(7, publish=published.append)
    data = out.getvalue().encode()
    relay.feed(data[:10])
    relay.feed(data[10:])
    return published


def test_relayed_events_keep_their_text_time_namespace_and_level() -> None:
    local: list[LogEvent] = []
    Logger(namespace="angosd.access", observer=local.append).info("{access_line}", access_line='{"status": 200}',
                                                                  access={"status": 200})
    published = _relayed([("angosd.access", LogLevel.info, "{access_line}",
                           {"access_line": '{"status": 200}', "access": {"status": 200}})])
    assert len(published) == 1
    event = published[0]
    assert event["log_namespace"] == "angosd.access" and event["log_level"] == LogLevel.info
    assert event["angosd_worker"] == 7 and event["access"] == {"status": 200}
    text = formatEventAsClassicLogText(event)
    assert text is not None and text.endswith('[angosd.access#info] {"status": 200}\n')
    expected = formatEventAsClassicLogText(local[0])
    assert expected is not None and text.split(" ", 1)[1] == expected.split(" ", 1)[1]


def test_a_relayed_failure_shows_the_workers_traceback() -> None:
    out = io.StringIO()
    log = Logger(namespace="angosd.test", observer=relay_observer(out))
    try:
        raise ValueError("the original problem")
    except ValueError:
        log.failure("something failed in {where}", where="a worker")
    published: list[LogEvent] = []
    LogRelay(1, publish=published.append).feed(out.getvalue().encode())
    text = formatEventAsClassicLogText(published[0])
    assert text is not None
    assert "something failed in a worker" in text
    assert "ValueError: the original problem" in text and "Traceback" in text


def test_other_output_is_logged_line_by_line_and_a_last_partial_line_on_flush() -> None:
    published: list[LogEvent] = []
    relay = LogRelay(2, LogLevel.warn, publish=published.append)
    relay.feed(b"Traceback (most recent call last):\n  File \"x\"\nImportErr")
    relay.feed(b"or: no module\n\x1e{not json\n\nlast")
    relay.flush()
    lines = [formatEventAsClassicLogText(event) for event in published]
    assert [line.split("] ", 1)[1] if line else None for line in lines] == [
        "worker 2: Traceback (most recent call last):\n", 'worker 2:   File "x"\n',
        "worker 2: ImportError: no module\n", "worker 2: {not json\n", "worker 2: last\n"]
    assert all(event["log_level"] == LogLevel.warn for event in published)


# --------------------------------------------------------------------------- file coordination


def test_a_file_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    one, two = FileCoordination(str(tmp_path), Clock()), FileCoordination(str(tmp_path), Clock())
    lease = run(one.acquire("upload:abc"))
    assert lease is not None and one.held == 1
    assert run(two.acquire("upload:abc")) is None
    assert run(one.acquire("upload:abc")) is None, "a second acquire in the same process is refused too"
    assert run(two.acquire("upload:other")) is not None
    run(one.release(lease))
    assert one.held == 0
    assert not (tmp_path / "locks" / "upload%3Aabc.lock").exists(), "a released lock leaves no file"
    again = run(two.acquire("upload:abc"))
    assert again is not None
    run(one.release(lease))  # releasing twice, or a lease of someone else, changes nothing
    assert run(one.acquire("upload:abc")) is None


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from twisted.internet.task import Clock
        from angosd.coordination.files import FileCoordination
        from tests.unit.helpers import run
        lease = run(FileCoordination({str(tmp_path)!r}, Clock()).acquire("upload:s"))
        print("held" if lease else "busy", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        coordination = FileCoordination(str(tmp_path), Clock())
        assert run(coordination.acquire("upload:s")) is None
        holder.kill()
        holder.wait()
        assert run(coordination.acquire("upload:s")) is not None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_lock_file_replaced_after_locking_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder removes its file before unlocking: whoever locked the removed file must not
    believe it holds the name (the new file at the path is what counts)."""
    coordination = FileCoordination(str(tmp_path), Clock())
    checks: list[bool] = []
    real = FileCoordination._still_at

    def first_check_fails(fd: int, path: str) -> bool:
        result = real(fd, path) and bool(checks)
        checks.append(result)
        return result

    monkeypatch.setattr(FileCoordination, "_still_at", staticmethod(first_check_fails))
    lease = run(coordination.acquire("upload:x"))
    assert lease is not None and checks == [False, True]


def test_unusable_lock_directory_is_a_coordination_error(tmp_path: Path) -> None:
    from angosd.coordination.interface import CoordinationError

    (tmp_path / "file").write_text("")
    coordination = FileCoordination(str(tmp_path / "file"), Clock())
    with pytest.raises(CoordinationError, match="cannot create lock file"):
        run(coordination.acquire("upload:x"))


def test_file_cache_entries_expire(tmp_path: Path) -> None:
    clock = Clock()
    coordination = FileCoordination(str(tmp_path), clock)
    assert run(coordination.get("k")) is None
    run(coordination.set("k/1", b"value\nwith lines", 10))
    assert run(FileCoordination(str(tmp_path), clock).get("k/1")) == b"value\nwith lines"
    clock.advance(10)
    assert run(coordination.get("k/1")) is None


# --------------------------------------------------------------------------- run directory


def test_a_run_directory_is_fresh_and_removed_and_stale_ones_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{PREFIX}{dead.pid}-abc"
    (stale / "metrics").mkdir(parents=True)
    alive = tmp_path / f"{PREFIX}{os.getppid()}-def"
    alive.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    run_dir = RunDirectory(str(tmp_path))
    path = run_dir.create()
    assert not stale.exists() and alive.exists() and other.exists()
    assert os.listdir(path) == ["metrics"] and os.path.basename(path).startswith(f"{PREFIX}{os.getpid()}-")
    run_dir.record([os.getpid(), 123])
    assert read_processes(run_dir.processes) == [os.getpid(), 123]
    (Path(run_dir.metrics) / "gauge_livesum_123.db").write_bytes(b"")
    (Path(run_dir.metrics) / "counter_123.db").write_bytes(b"")
    run_dir.process_ended(123)
    assert sorted(os.listdir(run_dir.metrics)) == ["counter_123.db"], "counters of an ended worker stay counted"
    assert RunDirectory.existing(path).metrics == run_dir.metrics
    run_dir.remove()
    assert not os.path.exists(path)
    assert sweep(str(tmp_path)) == []


# --------------------------------------------------------------------------- metrics of several processes


def test_process_metrics_add_up_over_the_listed_processes(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        listing = str(tmp_path / "processes")
        collector = ProcessGroupCollector(listing)
        single = {family.name: family.samples[0].value for family in collector.collect()}  # no list: this process
        write_processes(listing, [os.getpid(), child.pid, 999_999_999])  # the last one does not exist
        both = {family.name: family.samples[0].value for family in collector.collect()}
        assert both["process_resident_memory_bytes"] > single["process_resident_memory_bytes"]
        assert both["process_open_fds"] > single["process_open_fds"]
        assert both["process_start_time_seconds"] == pytest.approx(single["process_start_time_seconds"], abs=0.02)
        assert both["process_cpu_seconds"] >= single["process_cpu_seconds"]
    finally:
        child.kill()
        child.wait()


_RECORDER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from angosd.http.metrics_endpoint import RequestMetrics
from angosd.http.router import parse_route
from angosd.observability.metrics import Metrics

class Request:
    code, sentLength, startedWriting = 200, 0, 1
    route = parse_route("GET", "/v2/")

metrics = Metrics(time.monotonic, multiprocess_dir={directory!r}, processes_file={processes!r})
metrics.watch_uploads(lambda: {uploads})
observer = RequestMetrics(metrics.http, metrics.clock)
for _ in range({count}):
    request = Request()
    observer.started(request)
    observer.finished(request, failed=False)
observer.started(Request())  # still in flight
metrics.auth_attempt("anonymous", "success")
metrics.refresh()
sys.stdout.write(metrics.exposition().decode())
sys.stdout.flush()
sys.stdin.read()
"""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_multiprocess_metrics_add_up_over_workers_and_outlive_them(tmp_path: Path) -> None:
    directory, processes = str(tmp_path / "metrics"), str(tmp_path / "processes")
    os.mkdir(directory)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}

    def worker(count: int, uploads: int) -> subprocess.Popen[str]:
        script = _RECORDER.format(repo=REPO, directory=directory, processes=processes, count=count, uploads=uploads)
        return subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    first, second = worker(3, 1), worker(5, 2)
    try:
        assert first.stdout is not None and second.stdout is not None
        first.stdout.readline()
        second.stdout.readline()
        exposition = worker(0, 0)
        assert exposition.stdout is not None
        output, _ = exposition.communicate("", timeout=60)
        samples = _samples(output)
        requests = ("angosd_http_requests_total", frozenset({("action", "get-api-version"), ("method", "GET"),
                                                              ("status", "200")}))
        assert samples[requests] == 8
        assert samples[("angosd_http_requests_in_flight", frozenset())] == 3  # one per live recorder
        assert samples[("angosd_uploads_in_progress", frozenset())] == 3
        assert samples[("angosd_auth_attempts_total", frozenset({("method", "anonymous"),
                                                                  ("result", "success")}))] == 3
        assert not any(name.startswith("python_gc") for name, _ in samples)
        assert ("process_resident_memory_bytes", frozenset()) in samples
    finally:
        for process in (first, second):
            process.kill()
            process.wait()
    for ended in (first, second, exposition):
        RunDirectory.existing(str(tmp_path)).process_ended(ended.pid)
    after = worker(0, 0)
    output, _ = after.communicate("", timeout=60)
    samples = _samples(output)
    assert samples[requests] == 8, "a worker's counters stay counted after it ended"
    assert samples[("angosd_http_requests_in_flight", frozenset())] == 1, "only live workers' gauges count"


def test_multiprocess_metrics_need_the_multiprocess_mode(tmp_path: Path) -> None:
    from angosd.observability.metrics import Metrics

    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(lambda: 0.0, multiprocess_dir=str(tmp_path))


def test_process_listing_ignores_garbage(tmp_path: Path) -> None:
    path = tmp_path / "processes"
    assert read_processes(str(path)) == []
    path.write_text(json.dumps({"not": "a list"}))
    assert read_processes(str(path)) == []
    path.write_text(json.dumps([1, "x", True, -3, 42]))
    assert read_processes(str(path)) == [1, 42]


def test_check_config_flags_a_listen_endpoint_workers_cannot_share(tmp_path: Path) -> None:
    from angosd.commands.check_config import check
    from tests.certs import CA

    cert, key = CA().server().write(tmp_path, "server")
    ssl = f"ssl:5000:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    path = tmp_path / "a.toml"
    path.write_text(f'[server]\nlisten = "{ssl}"\n')
    problems = check([str(path)])
    assert len(problems) == 1 and "cannot be shared by worker processes" in problems[0]
    assert problems[0].startswith(f"{path}: server.listen")
    path.write_text(f'[server]\nlisten = "{ssl}"\nworkers = 1\n')
    assert check([str(path)]) == []
    for listen in ("tcp:5000:interface=127.0.0.1", "tcp6:5000:interface=\\\\:\\\\:1", "unix:/run/angosd.sock",
                   "systemd"):
        path.write_text(f'[server]\nlisten = "{listen}"\nworkers = 4\n')
        assert check([str(path)]) == [], listen
