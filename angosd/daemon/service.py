"""Build the running daemon from a configuration: storage, registry, HTTP, listeners.

One builder (`_daemon`) makes the single daemon (``[server] workers = 1``) and each worker
process of a supervisor (`build_worker_service`); `build_service` makes the one or the
supervisor (`angosd.daemon.workers.parent`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred

from angosd.auth.authenticator import Authenticator, AuthRecorder, TokenValidator
from angosd.auth.authorizer import PolicyAuthorizer, SecurityState
from angosd.auth.basic import PasswordUsers
from angosd.auth.oidc import OidcProviders, make_http_client
from angosd.config import Config
from angosd.coordination.files import FileCoordination
from angosd.coordination.interface import Coordination
from angosd.coordination.redis import RedisCoordination
from angosd.daemon import allocator, systemd
from angosd.daemon.live import LiveConfig, tag_immutable
from angosd.daemon.overrides import Overrides
from angosd.daemon.shutdown import DrainService
from angosd.daemon.workers.cpus import usable_cpus
from angosd.daemon.workers.rundir import RunDirectory
from angosd.daemon.workers.supervisor import HEARTBEAT
from angosd.http.accesslog import AccessLog
from angosd.http.api import RegistryAPI
from angosd.http.extensions import ExtensionAPI
from angosd.http.site import RegistrySite
from angosd.observability.metrics import Metrics
from angosd.outbound.client import make_client
from angosd.proxy import prefetch
from angosd.proxy.cache import PullThroughCache
from angosd.registry.gc import collector_service
from angosd.registry.paths import REPOSITORIES
from angosd.registry.pulls import PullTimeFlusher
from angosd.registry.registry import Limits, Registry
from angosd.storage.fs import FilesystemDriver
from angosd.storage.interface import IStorageDriver
from angosd.storage.pools import Pools
from angosd.tls.server import listening_factory
from angosd.ui import UserInterface
from angosd.webhooks.authorization import AuthorizationWebhooks
from angosd.webhooks.events import EventBus

#: Seconds between looks at the configuration files' modification times.
RELOAD_INTERVAL = 2.0
#: Seconds between two recordings of computed gauges by a worker (multiprocess metrics).
METRICS_REFRESH = 1.0


def worker_count(config: Config) -> int:
    """How many worker processes ``config`` asks for: ``[server] workers``, else one per usable core."""
    return config.server.workers if config.server.workers is not None else usable_cpus()


def endpoint_description(config: Config) -> str:
    """The Twisted server endpoint string for ``[server]`` (``listen``, else ``bind_address``/``port``)."""
    if config.server.listen:
        return config.server.listen
    interface = config.server.bind_address.replace(":", "\\:")
    return f"tcp:{config.server.port}:interface={interface}"


def build_pools(config: Config, reactor: Any) -> Pools:
    """This process's thread pools, sized by ``[server]`` (not started)."""
    server = config.server
    return Pools.create(reactor, server.io_threads, server.io_queue, server.cpu_threads, server.cpu_queue)


def build_security(config: Config, reactor: Any, pools: Pools,
                   record_auth: AuthRecorder | None = None) -> SecurityState:
    """Users, OIDC providers and compiled policies for ``config``; raises `PolicyError`.
    Passwords are checked on ``pools.cpu``; ``record_auth`` counts authentications (metrics)."""
    oidc: TokenValidator | None = None
    if config.auth.oidc:
        oidc = OidcProviders(config.auth.oidc, {p.name: make_http_client(reactor, p) for p in config.auth.oidc},
                             reactor)
    authenticator = Authenticator(PasswordUsers(config.auth.identities, pools.cpu, reactor), oidc, record_auth)
    return SecurityState.build(config, authenticator, AuthorizationWebhooks(config.auth.webhooks, reactor))


def build_registry(live: LiveConfig, reactor: Any, pools: Pools, coordination: Coordination | None = None) -> Registry:
    """The registry of ``live``'s store; ``coordination`` excludes other processes from the uploads
    this process writes (None: none needed)."""
    return _registry(live.config, reactor, pools, live.namespace_allowed, live.tag_immutable,
                     update_pull_time=lambda: live.config.global_.update_pull_time, coordination=coordination)


def build_driver(config: Config, reactor: Any, pools: Pools) -> IStorageDriver:
    """The store of ``config``: the ``[blob_store.s3]`` bucket when set, else the filesystem;
    its blocking work runs on ``pools.io``."""
    s3 = config.blob_store_s3
    if s3 is None:
        return FilesystemDriver(os.path.abspath(config.blob_store.root_dir), pools.io, config.blob_store.sync_to_disk)
    from angosd.storage.s3_support import require_s3_support

    require_s3_support()  # botocore is the optional [s3] extra: one line naming it, not a traceback
    from angosd.storage.s3 import S3Driver  # botocore only where S3 is configured
    from angosd.storage.s3_client import S3Options

    http, pool = make_client(reactor, connect_timeout=min(30.0, s3.operation_attempt_timeout_secs))
    pool.maxPersistentPerHost = 32
    options = S3Options(endpoint=s3.endpoint, bucket=s3.bucket, access_key_id=s3.access_key_id,
                        secret_key=s3.secret_key, region=s3.region, key_prefix=s3.key_prefix,
                        part_size=s3.multipart_part_size, max_attempts=s3.max_attempts,
                        operation_timeout=s3.operation_timeout_secs, attempt_timeout=s3.operation_attempt_timeout_secs)
    return S3Driver(reactor, http, options, pools.io)


def build_coordination(config: Config, reactor: Any, files: str | None = None) -> Coordination | None:
    """Shared state for several processes on one store: Redis (``[cache.redis]``) when
    configured, else file locks in ``files`` when given (the workers of one daemon), else
    None (this process only)."""
    if config.redis is not None:
        return RedisCoordination(reactor, config.redis.url, config.redis.key_prefix, config.redis.lock_ttl_secs)
    if files is not None:
        return FileCoordination(files, reactor)
    return None


def coordination_directory(config: Config, run_dir: str) -> str:
    """Where the workers of one daemon keep their file locks: ``_coordination`` under a
    filesystem store's root (any process on this host serving that store takes part), else
    the daemon's run directory."""
    if config.blob_store_s3 is None:
        return os.path.join(os.path.abspath(config.blob_store.root_dir), "_coordination")
    return os.path.join(run_dir, "coordination")


def blob_redirect_ttl(config: Config) -> int | None:
    """Lifetime of blob redirect URLs under ``config``; None when blob GETs are served inline."""
    if config.blob_store_s3 is None or not config.global_.enable_blob_redirect:
        return None
    return config.blob_store_s3.presign_ttl_secs


def _registry(config: Config, reactor: Any, pools: Pools, namespace_allowed: Callable[[str], bool],
              immutable: Callable[[str, str], bool], update_pull_time: Callable[[], bool],
              coordination: Coordination | None) -> Registry:
    limits = Limits(config.global_.max_manifest_size, config.global_.max_blob_size)
    registry = Registry(build_driver(config, reactor, pools), reactor, limits, namespace_allowed, immutable,
                        update_pull_time=update_pull_time)
    registry.uploads.coordination = coordination
    return registry


def open_store(config: Config, reactor: Any) -> tuple[Registry, PullThroughCache]:
    """The registry and pull-through cache of ``config``'s store, for maintenance commands
    (``angosd mirror/export/import``): no listener, no reload, no background prefetch.

    Every write they make is atomic, so they may run beside a daemon on the same store. The
    thread pools start now and stop when the reactor shuts down.
    """
    immutable = functools.partial(tag_immutable, config)
    pools = build_pools(config, reactor)
    pools.start_until_shutdown(reactor)
    registry = _registry(config, reactor, pools, config.namespace_allowed, immutable, update_pull_time=lambda: False,
                         coordination=build_coordination(config, reactor))
    return registry, PullThroughCache(registry, config.repository_for, immutable, reactor)


class StagedService(MultiService):
    """Starts children in order and stops them in reverse order, one stage after the other.

    `MultiService` stops all its children at once; here each child (a stage) is stopped
    only when the one added after it has finished stopping.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        stages = list(self)[::-1]

        async def stop_in_turn() -> None:
            for stage in stages:
                await maybeDeferred(stage.stopService)

        return Deferred.fromCoroutine(stop_in_turn())


@dataclass(frozen=True, slots=True)
class _Role:
    """What distinguishes a single daemon from one of a supervisor's workers."""

    endpoint: systemd.ObservedEndpoint
    notifier: systemd.Notifier
    watchdog: float | None
    metrics: Metrics
    coordination: Coordination | None
    collect_garbage: bool  # the store's online collector runs here (once per store, not per worker)


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
    role = _Role(endpoint, notifier, HEARTBEAT, metrics, coordination, collect_garbage=False)
    return _daemon(config, reactor, paths, overrides if overrides is not None else Overrides(), role)


def _daemon(config: Config, reactor: Any, paths: Sequence[str], overrides: Overrides, role: _Role) -> MultiService:
    allocator.tune()  # this process serves: large buffers come and go all the time
    metrics = role.metrics
    pools = build_pools(config, reactor)  # sized at start: a reload does not resize them
    live = LiveConfig(paths, build_security(config, reactor, pools, metrics.auth_attempt),
                      lambda new: build_security(new, reactor, pools, metrics.auth_attempt), overrides.apply)
    registry = build_registry(live, reactor, pools, role.coordination)
    metrics.watch_uploads(lambda: registry.uploads.writing)
    metrics.watch_pools(pools)
    cache = PullThroughCache(registry, lambda namespace: live.config.repository_for(namespace), live.tag_immutable,
                             reactor, metrics=metrics.pull_through)
    prefetch.attach(cache, registry, reactor)  # [repository] prefetch_platforms
    events = EventBus(lambda: live.config, reactor, drain_seconds=config.global_.shutdown_drain_secs)
    extensions = {**ExtensionAPI(registry, lambda: live.config).handlers(),
                  **UserInterface(lambda: live.config.ui).handlers(), **metrics.handlers()}
    api = RegistryAPI(registry, PolicyAuthorizer(lambda: live.security), cache=cache, events=events,
                      extensions=extensions, blob_redirect=lambda: blob_redirect_ttl(live.config))
    drain = DrainService(lambda: live.config.global_.shutdown_drain_secs, reactor)
    access_log = [AccessLog(time.monotonic, reactor.seconds)] if config.server.access_log else []
    site = RegistrySite(api, observers=[drain, metrics.requests, *access_log])
    top = StagedService()
    pools.service().setServiceParent(top)  # starts first, stops last
    back = MultiService()  # stops second: still delivers events and flushes pull times from drained requests
    back.setServiceParent(top)
    events.setServiceParent(back)
    PullTimeFlusher(registry.pulls, reactor).setServiceParent(back)  # flushes every few seconds and at stop
    if role.collect_garbage:
        collector_service(registry.driver, registry.blobs, reactor,  # online garbage collection
                          lambda: live.config.global_.gc_grace_secs).setServiceParent(back)
    front = MultiService()  # stops first: stop accepting, drain requests in flight
    front.setServiceParent(top)
    if paths:
        _timer(RELOAD_INTERVAL, live.poll, reactor).setServiceParent(front)
    if metrics.multiprocess:
        _timer(METRICS_REFRESH, metrics.refresh, reactor).setServiceParent(front)
    factory, listener_services = listening_factory(config, site, reactor)
    StreamServerEndpointService(role.endpoint, factory).setServiceParent(front)
    for service in listener_services:
        service.setServiceParent(front)
    drain.setServiceParent(front)
    systemd.SystemdService(role.notifier, reactor, role.endpoint.listening,
                           lambda: registry.driver.children(REPOSITORIES), live.reload,
                           role.watchdog).setServiceParent(front)
    return top


def _timer(interval: float, call: Callable[[], object], reactor: Any) -> TimerService:
    timer = TimerService(interval, call)
    timer.clock = reactor
    return timer
