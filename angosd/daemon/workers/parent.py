"""The supervisor's service tree, for ``[server] workers`` > 1 (see `angosd.daemon.workers`)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService

from angosd.config import Config
from angosd.daemon import systemd
from angosd.daemon.live import LiveConfig
from angosd.daemon.overrides import Overrides
from angosd.daemon.workers.forks import ForkServer
from angosd.daemon.workers.listening import SharedSocket
from angosd.daemon.workers.rundir import RunDirectory
from angosd.daemon.workers.supervisor import WorkerCommand, WorkerSupervisor
from angosd.registry.blobs import BlobStore
from angosd.registry.expiry import expiry_service
from angosd.registry.gc import collector_service
from angosd.registry.uploads import UploadSessions

__all__ = ["build_supervisor_service", "worker_command"]

#: Seconds a stopping worker gets beyond its two drains (requests, then events) before SIGKILL.
STOP_MARGIN = 10.0
#: Environment variables that concern the supervisor only (systemd's notification socket,
#: watchdog and socket activation are the supervisor's; workers report to it).
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                    "prometheus_multiproc_dir")
#: Carries the supervisor's ``sys.path`` to its workers (so they import the same code).
_PATH_VARIABLE = "ANGOSD_WORKER_SYS_PATH"
#: The worker's module: named, not imported here, since it imports `angosd.daemon.service`, which imports this one.
_WORKER_MODULE = "angosd.daemon.workers.main"
_BOOT = ("import json, os, sys; sys.path[:] = json.loads(os.environ.pop('ANGOSD_WORKER_SYS_PATH')); "
         "from angosd.daemon.workers.main import main; main()")


def worker_command(paths: Sequence[str], overrides: Overrides, run_dir: RunDirectory, index: int) -> WorkerCommand:
    """How to start worker ``index``: this Python with this process's import path, the same
    configuration files and overrides, the run directory; systemd's variables left out."""
    options = ["--run-dir", run_dir.path, "--index", str(index), *overrides.worker_arguments()]
    for path in paths:
        options += ["-c", path]
    env = {name: value for name, value in os.environ.items() if name not in _SUPERVISOR_ONLY}
    env["PROMETHEUS_MULTIPROC_DIR"] = run_dir.metrics
    env[_PATH_VARIABLE] = json.dumps(sys.path)
    return WorkerCommand(sys.executable, [sys.executable, "-c", _BOOT, *options], env, tuple(options))


def _worker_modules() -> None:
    """Import what a worker runs, for the fork server to inherit (`angosd.daemon.service`, which
    calls this module, is imported already)."""
    import angosd.daemon.systemd
    import angosd.daemon.workers.listening
    import angosd.daemon.workers.logrelay
    import angosd.daemon.workers.status  # noqa: F401

    importlib.import_module(_WORKER_MODULE)


def _forked_worker(options: list[str]) -> None:
    """A worker forked by the fork server (`angosd.daemon.workers.forks`)."""
    importlib.import_module(_WORKER_MODULE).main(options, forked=True)


def build_supervisor_service(config: Config, reactor: Any, count: int, listen: str, paths: Sequence[str],
                             overrides: Overrides) -> MultiService:
    """The supervisor of ``count`` workers serving ``config`` on ``listen``: it binds the
    socket, runs the workers, the store's online garbage collector (once per store, not per
    worker), and talks to systemd (READY=1 once every worker is ready; SIGHUP reloads its own
    configuration and every worker's; STOPPING=1, then every worker drains).

    Everything a worker would refuse at start is checked here first, so a bad configuration
    stops the start once with the single daemon's message: `PolicyError`, `TlsError`,
    `ListenError`.
    """
    from angosd.daemon.assembly import (
        RELOAD_INTERVAL,
        StagedService,
        build_coordination,
        build_driver,
        build_pools,
        build_security,
        check_observability,
        coordination_directory,
    )

    # First, while no thread runs and nothing is open: the workers are forked from this state.
    _worker_modules()  # before the fork: shared by this process, the fork server and every worker
    forks = ForkServer.start(_forked_worker)
    pools = build_pools(config, reactor)  # the garbage collector's storage work, policy checks
    security = build_security(config, reactor, pools)
    check_observability(config)  # ConfigError: tracing without its SDK, an audit log that cannot be opened
    if config.server.tls is not None:
        from angosd.tls.server import ReloadingServerTLS  # loads OpenSSL: only for a TLS listener

        ReloadingServerTLS(config.server.tls)  # raises TlsError for unusable files
    endpoint = systemd.listen_endpoint(reactor, listen)
    live = LiveConfig(paths, security, lambda new: build_security(new, reactor, pools), overrides.apply)
    # Workers load the same files from anywhere (twistd may change directory) onto the same store.
    worker_overrides = Overrides(root=os.path.abspath(config.blob_store.root_dir))
    worker_paths = [os.path.abspath(path) for path in paths]
    run_dir = RunDirectory()
    shared = SharedSocket(endpoint, listen)
    supervisor = WorkerSupervisor(
        reactor, count, shared, lambda index: worker_command(worker_paths, worker_overrides, run_dir, index),
        run_dir, stop_timeout=lambda: 2 * live.config.global_.shutdown_drain_secs + STOP_MARGIN, forks=forks)

    def reload() -> bool:
        reloaded = live.reload()
        supervisor.reload()
        return reloaded

    top = StagedService()
    pools.service().setServiceParent(top)  # starts first, stops last
    back = MultiService()  # stops once every worker has ended
    back.setServiceParent(top)
    driver = build_driver(config, reactor, pools)
    blobs = BlobStore(driver)
    gc = collector_service(driver, blobs, reactor, lambda: live.config.global_.gc_grace_secs, cpu=pools.cpu)
    gc.setServiceParent(back)
    _mirror(config, reactor, live, run_dir).setServiceParent(back)
    # Abandoned uploads, purged under the upload locks the workers take (same coordination).
    sessions = UploadSessions(driver, blobs, reactor, config.global_.max_blob_size)

    def coordinate() -> None:  # the run directory exists once the supervisor has started
        try:
            directory = run_dir.path
        except RuntimeError:
            reactor.callLater(1, coordinate)
            return
        sessions.coordination = build_coordination(config, reactor, coordination_directory(config, directory))

    # A pass only removes what the previous pass already saw idle: the first one (at start,
    # before coordination is set) removes nothing.
    reactor.callWhenRunning(coordinate)
    expiry_service(driver, sessions, reactor, lambda: live.config.global_.upload_max_age_secs).setServiceParent(back)
    front = MultiService()
    front.setServiceParent(top)
    if paths:
        poll = TimerService(RELOAD_INTERVAL, live.poll)
        poll.clock = reactor
        poll.setServiceParent(front)
    shared.setServiceParent(front)
    supervisor.setServiceParent(front)
    systemd.SystemdService(systemd.Notifier.from_environment(), reactor, supervisor.all_ready, lambda: None, reload,
                           systemd.watchdog_interval()).setServiceParent(front)
    return top


def _mirror(config: Config, reactor: Any, live: LiveConfig, run_dir: RunDirectory) -> MultiService:
    """The ``[mirror]`` schedule, once per store (here, not in the workers); its figures go to the
    run directory for the workers' ``/metrics``. An empty service when no set file is configured."""
    from angosd.daemon.assembly import open_store
    from angosd.daemon.mirroring import STATUS_FILE, mirror_service
    from angosd.observability.mirror import MirrorRecorder

    holder = MultiService()
    if config.mirror.set_file is None:
        return holder
    registry, cache = open_store(config, reactor)
    schedule = mirror_service(lambda: live.config, reactor, registry, cache,
                              MirrorRecorder(lambda: os.path.join(run_dir.path, STATUS_FILE)))
    if schedule is not None:
        schedule.setServiceParent(holder)
    return holder
