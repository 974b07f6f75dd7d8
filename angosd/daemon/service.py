"""The running daemon as a service tree: the application (`angosd.daemon.assembly`), its
listener, timers and background services.

One builder (`_daemon`) makes the single daemon (``[server] workers = 1``) and each worker
process of a supervisor (`build_worker_service`); `build_service` makes the one or the
supervisor (`angosd.daemon.workers.parent`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from angosd.config import Config
from angosd.coordination.interface import Coordination
from angosd.daemon import allocator, systemd
from angosd.daemon.assembly import (
    METRICS_REFRESH,
    RELOAD_INTERVAL,
    StagedService,
    build_application,
    build_audit,
    build_coordination,
    build_pools,
    build_registry,
    build_security,
    build_tracing,
    coordination_directory,
    timer,
)
from angosd.daemon.live import LiveConfig
from angosd.daemon.mirroring import STATUS_FILE, mirror_service
from angosd.daemon.overrides import Overrides
from angosd.daemon.workers.cpus import usable_cpus
from angosd.daemon.workers.rundir import RunDirectory
from angosd.daemon.workers.supervisor import HEARTBEAT
from angosd.observability.audit import AuditLog
from angosd.observability.metrics import Metrics
from angosd.observability.mirror import MirrorCollector, MirrorRecorder, status_file_reader
from angosd.observability.reactor_lag import ReactorLag
from angosd.registry.expiry import expiry_service
from angosd.registry.gc import collector_service
from angosd.registry.paths import REPOSITORIES
from angosd.registry.pulls import PullTimeFlusher

if TYPE_CHECKING:
    from angosd.observability.tracing import Tracing

_log = Logger()


def worker_count(config: Config) -> int:
    """How many worker processes ``config`` asks for: ``[server] workers``, else one per usable core."""
    return config.server.workers if config.server.workers is not None else usable_cpus()


def endpoint_description(config: Config) -> str:
    """The Twisted server endpoint string for ``[server]`` (``listen``, else ``bind_address``/``port``)."""
    if config.server.listen:
        return config.server.listen
    interface = config.server.bind_address.replace(":", "\\:")
    return f"tcp:{config.server.port}:interface={interface}"


@dataclass(frozen=True, slots=True)
class _Role:
    """What distinguishes a single daemon from one of a supervisor's workers."""

    endpoint: systemd.ObservedEndpoint
    notifier: systemd.Notifier
    watchdog: float | None
    metrics: Metrics
    coordination: Coordination | None
    collect_garbage: bool  # the store's online collector runs here (once per store, not per worker)


def gc_observer(metrics: Metrics, audit: AuditLog | None,
                wall: Callable[[], float] = time.time) -> Callable[[Any, Any], None]:
    """What hears of each online garbage collection pass: the metrics, and the audit log for
    a pass that deleted blobs or failed (one line each)."""

    def observe(report: Any, failure: Any) -> None:
        metrics.gc.observe(report, failure, wall())
        if audit is None or (report is None and failure is None) or (report is not None and not report.reclaimed):
            return
        try:
            if failure is not None:
                audit.record("daemon", "gc", "failure", identity={"kind": "local"},
                             reason=type(getattr(failure, "value", failure)).__name__)
            else:
                audit.record("daemon", "gc", "success", identity={"kind": "local"},
                             reclaimed_blobs=report.reclaimed, reclaimed_bytes=report.reclaimed_bytes)
        except OSError as exc:
            _log.error("audit log {path}: {error}", path=audit.path, error=str(exc))

    return observe


def _reopening(audit: AuditLog | None, reload: Callable[[], bool]) -> Callable[[], bool]:
    """``reload``, after reopening the audit log (SIGHUP: after an external rotation)."""
    if audit is None:
        return reload

    def reopen_and_reload() -> bool:
        audit.reopen()
        return reload()

    return reopen_and_reload


class TracingExport(Service):
    """Exports the spans still buffered, in a thread, when the daemon stops."""

    def __init__(self, tracing: Tracing, reactor: Any) -> None:
        self._tracing = tracing
        self._reactor = reactor

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._tracing.shutdown)


def build_service(config: Config, reactor: Any, listen: str | None = None, paths: Sequence[str] = (),
                  overrides: Overrides | None = None) -> MultiService:
    """The daemon as a service tree; nothing listens until it is started.

    ``paths`` are the configuration files ``config`` came from: they are watched and
    reloaded when they change (``overrides`` are re-applied). With one worker
    (``[server] workers = 1``) this process serves; with more, it is their supervisor
    (`angosd.daemon.workers.parent`).
    """
    overrides = overrides if overrides is not None else Overrides()
    description = listen or endpoint_description(config)
    count = worker_count(config)
    if count > 1:
        from angosd.daemon.workers.parent import build_supervisor_service

        return build_supervisor_service(config, reactor, count, description, paths, overrides)
    endpoint = systemd.ObservedEndpoint(systemd.listen_endpoint(reactor, description))
    role = _Role(endpoint, systemd.Notifier.from_environment(), systemd.watchdog_interval(), Metrics(time.monotonic),
                 build_coordination(config, reactor), collect_garbage=True)
    return _daemon(config, reactor, paths, overrides, role)


def build_worker_service(config: Config, reactor: Any, endpoint: systemd.ObservedEndpoint,
                         notifier: systemd.Notifier, run_dir: str, paths: Sequence[str] = (),
                         overrides: Overrides | None = None) -> MultiService:
    """One worker of a supervisor (`angosd.daemon.workers.main`): the single daemon's service tree on
    ``endpoint`` (the shared socket), reporting to ``notifier`` (the status pipe), with its
    metrics in the run directory's multiprocess files, file locks on uploads when there is no
    Redis, and without the online garbage collector (the supervisor runs it, once per store)."""
    run = RunDirectory.existing(run_dir)
    metrics = Metrics(time.monotonic, multiprocess_dir=run.metrics, processes_file=run.processes)
    coordination = build_coordination(config, reactor, coordination_directory(config, run_dir))
    if config.mirror.set_file is not None:  # the supervisor syncs; every worker reports its figures
        metrics.registry.register(MirrorCollector(status_file_reader(os.path.join(run.path, STATUS_FILE))))
    role = _Role(endpoint, notifier, HEARTBEAT, metrics, coordination, collect_garbage=False)
    return _daemon(config, reactor, paths, overrides if overrides is not None else Overrides(), role)


def _daemon(config: Config, reactor: Any, paths: Sequence[str], overrides: Overrides, role: _Role) -> MultiService:
    allocator.tune()  # this process serves: large buffers come and go all the time
    metrics = role.metrics
    pools = build_pools(config, reactor)  # sized at start: a reload does not resize them
    tracing = build_tracing(config)  # None unless [observability.tracing] or OTEL_* variables ask for it
    audit = build_audit(config)  # [observability.audit] path
    live = LiveConfig(paths, build_security(config, reactor, pools, metrics.auth_attempt, tracing, metrics),
                      lambda new: build_security(new, reactor, pools, metrics.auth_attempt, tracing, metrics),
                      overrides.apply, audit)
    registry = build_registry(live, reactor, pools, role.coordination, tracing=tracing)
    app = build_application(config, reactor, live, registry, metrics, tracing, audit)
    metrics.watch_pools(pools)
    registry, events, drain = app.registry, app.events, app.drain
    top = StagedService()
    pools.service().setServiceParent(top)  # starts first, stops last
    back = MultiService()  # stops second: still delivers events and flushes pull times from drained requests
    back.setServiceParent(top)
    events.setServiceParent(back)
    if tracing is not None:
        TracingExport(tracing, reactor).setServiceParent(back)  # sends the last spans at stop
    PullTimeFlusher(registry.pulls, reactor).setServiceParent(back)  # flushes every few seconds and at stop
    if role.collect_garbage:
        collector_service(registry.driver, registry.blobs, reactor,  # online garbage collection
                          lambda: live.config.global_.gc_grace_secs, gc_observer(metrics, audit), cpu=pools.cpu
                          ).setServiceParent(back)
        recorder = MirrorRecorder()
        schedule = mirror_service(lambda: live.config, reactor, registry, app.cache, recorder)  # [mirror]
        if schedule is not None:
            metrics.registry.register(MirrorCollector(lambda: recorder.status))
            schedule.setServiceParent(back)
        expiry_service(registry.driver, registry.uploads, reactor,  # abandoned upload sessions
                       lambda: live.config.global_.upload_max_age_secs).setServiceParent(back)
    front = MultiService()  # stops first: stop accepting, drain requests in flight
    front.setServiceParent(top)
    metrics.worker_starts.inc()
    ReactorLag(reactor, metrics.reactor_lag.observe).setServiceParent(front)
    if paths:
        timer(RELOAD_INTERVAL, live.poll, reactor).setServiceParent(front)
    if metrics.multiprocess:
        timer(METRICS_REFRESH, metrics.refresh, reactor).setServiceParent(front)
    factory: IProtocolFactory = app.site
    listener_services: list[IService] = []
    if config.server.tls is not None:  # OpenSSL is loaded only for a TLS listener
        from angosd.tls.server import listening_factory

        factory, listener_services = listening_factory(config, app.site, reactor)
    StreamServerEndpointService(role.endpoint, factory).setServiceParent(front)
    for service in listener_services:
        service.setServiceParent(front)
    drain.setServiceParent(front)
    systemd.SystemdService(role.notifier, reactor, role.endpoint.listening,
                           lambda: registry.driver.children(REPOSITORIES), _reopening(audit, live.reload),
                           role.watchdog).setServiceParent(front)
    return top
