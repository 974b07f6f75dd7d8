"""The daemon's object graph: configuration -> storage -> registry -> HTTP application.

Everything here builds objects and starts nothing. `angosd.daemon.service` (the single daemon
and each worker), `angosd.daemon.workers.parent` (the supervisor), the maintenance commands
and the in-memory HTTP tests all build through these functions, so they run the same graph.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred

from angosd.actions import Action
from angosd.auth.authenticator import Authenticator, AuthRecorder, TokenValidator
from angosd.auth.authorizer import PolicyAuthorizer, SecurityState
from angosd.auth.basic import PasswordUsers
from angosd.auth.limits import LoginLimiter
from angosd.auth.token_service import TokenService
from angosd.config import Config, ConfigError, FsStoreConfig, S3StoreConfig
from angosd.coordination.files import FileCoordination
from angosd.coordination.interface import Coordination
from angosd.coordination.redis import RedisCoordination
from angosd.daemon.live import LiveConfig, tag_immutable
from angosd.daemon.shutdown import DrainService
from angosd.http.accesslog import AccessLog
from angosd.http.api import RegistryAPI
from angosd.http.audit import AuditRecorder
from angosd.http.endpoints import Endpoint, Handler
from angosd.http.endpoints.token import TokenEndpoint
from angosd.http.extensions import ExtensionAPI
from angosd.http.metrics_endpoint import RequestMetrics, metrics_handlers
from angosd.http.site import RegistrySite
from angosd.http.tracing import RequestTracing
from angosd.observability.audit import AuditLog
from angosd.observability.metrics import Metrics
from angosd.observability.tls_refusals import TlsRefusals
from angosd.observability.traced_storage import TracedDriver
from angosd.observability.tracing_settings import tracing_enabled
from angosd.outbound.client import make_client
from angosd.proxy.cache import PullThroughCache
from angosd.proxy.prefetch import Prefetcher
from angosd.registry.registry import Limits, Registry
from angosd.storage.fs import FilesystemDriver
from angosd.storage.interface import IStorageDriver
from angosd.storage.pools import Pools
from angosd.storage.split import split
from angosd.ui import UserInterface
from angosd.webhooks.authorization import AuthorizationWebhooks
from angosd.webhooks.events import EventBus

if TYPE_CHECKING:
    from angosd.observability.tracing import Tracing

#: Seconds between looks at the configuration files' modification times.
RELOAD_INTERVAL = 2.0
#: Seconds between two recordings of computed gauges by a worker (multiprocess metrics).
METRICS_REFRESH = 1.0


def build_tracing(config: Config, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The tracer of ``config`` (and of the ``OTEL_*`` variables of ``environ``, default
    ``os.environ``), None when tracing is off: then OpenTelemetry is not even imported."""
    environ = os.environ if environ is None else environ
    if not tracing_enabled(config.observability.tracing, environ):
        return None
    try:
        from angosd.observability.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(f"[observability.tracing] needs the OpenTelemetry SDK (pip install 'angosd[tracing]'): "
                          f"{exc}") from None
    return Tracing(config.observability.tracing, environ)


def build_audit(config: Config, wall: Callable[[], float] = time.time) -> AuditLog | None:
    """The audit log of ``[observability.audit]``, None when it has no ``path``; raises
    `ConfigError` when the file cannot be opened."""
    if config.observability.audit.path is None:
        return None
    try:
        return AuditLog(config.observability.audit, wall)
    except OSError as exc:
        raise ConfigError(f"observability.audit.path: cannot open {config.observability.audit.path}: "
                          f"{exc.strerror or exc}") from None


def check_observability(config: Config) -> None:
    """Raise `ConfigError` when a process serving ``config`` could not start its tracing or
    its audit log (the supervisor checks before starting workers)."""
    tracing = build_tracing(config)
    if tracing is not None:
        tracing.shutdown()
    audit = build_audit(config)
    if audit is not None:
        audit.close()


def build_pools(config: Config, reactor: Any) -> Pools:
    """This process's thread pools, sized by ``[server]`` (not started)."""
    server = config.server
    return Pools.create(reactor, server.io_threads, server.io_queue, server.cpu_threads, server.cpu_queue)


def build_security(config: Config, reactor: Any, pools: Pools, record_auth: AuthRecorder | None = None,
                   tracing: Tracing | None = None, metrics: Metrics | None = None) -> SecurityState:
    """Users, OIDC providers and compiled policies for ``config``; raises `PolicyError`.
    Passwords are checked on ``pools.cpu``; ``record_auth`` counts authentications,
    ``metrics`` authorization webhook calls; ``tracing`` traces the authorization webhook calls."""
    # OIDC and LDAP are imported only when configured: they load OpenSSL (and pyjwt, ldaptor).
    oidc: TokenValidator | None = None
    if config.auth.oidc:
        from angosd.auth.oidc import OidcProviders, make_http_client

        oidc = OidcProviders(config.auth.oidc, {p.name: make_http_client(reactor, p) for p in config.auth.oidc},
                             reactor)
    tokens = TokenService.build(config.auth.token_service) if config.auth.token_service is not None else None
    directory = None
    if config.auth.ldap is not None:
        from angosd.auth.ldap import LdapDirectory

        directory = LdapDirectory(config.auth.ldap, reactor)
    authenticator = Authenticator(PasswordUsers(config.auth.identities, pools.cpu, reactor), oidc, record_auth,
                                  tokens=tokens.signer if tokens is not None else None, clock=reactor,
                                  limiter=LoginLimiter(config.auth.login_limits, reactor),
                                  directory=directory)
    webhooks = AuthorizationWebhooks(config.auth.webhooks, reactor, metrics.webhooks if metrics else None,
                                     tracing.outbound("webhook") if tracing else None)
    return SecurityState.build(config, authenticator, webhooks, tokens)


def build_registry(live: LiveConfig, reactor: Any, pools: Pools, coordination: Coordination | None = None,
                   driver: IStorageDriver | None = None, tracing: Tracing | None = None) -> Registry:
    """The registry of ``live``'s store (or of ``driver``, when given); ``coordination`` excludes
    other processes from the uploads this process writes (None: none needed); with ``tracing``
    each storage operation (and S3 request) is a span."""
    return _registry(live.config, reactor, pools, live.namespace_allowed, live.tag_immutable,
                     update_pull_time=lambda: live.config.global_.update_pull_time, coordination=coordination,
                     driver=driver, require_references=live.references_required, tracing=tracing)


def build_driver(config: Config, reactor: Any, pools: Pools, tracing: Tracing | None = None) -> IStorageDriver:
    """The store of ``config``: the ``[blob_store.s3]`` bucket when set, else the filesystem;
    with its metadata in the ``[metadata_store]`` when that is another place. Its blocking
    work runs on ``pools.io``; ``tracing`` traces the S3 requests (and sends them a ``traceparent``)."""
    blobs = _store(config.blob_store, config.blob_store_s3, reactor, pools, tracing)
    fs, s3 = config.metadata_store, config.metadata_store_s3
    same_directory = (fs is not None and config.blob_store_s3 is None
                      and os.path.abspath(fs.root_dir) == os.path.abspath(config.blob_store.root_dir))
    if (fs is None and s3 is None) or same_directory:
        return blobs
    assert fs is not None or s3 is not None
    return split(blobs, _store(fs or FsStoreConfig(), s3, reactor, pools, tracing))


def _store(fs: FsStoreConfig, s3: S3StoreConfig | None, reactor: Any, pools: Pools,
           tracing: Tracing | None = None) -> IStorageDriver:
    """The filesystem store ``fs``, or the bucket ``s3`` when given."""
    if s3 is None:
        return FilesystemDriver(os.path.abspath(fs.root_dir), pools.io, fs.sync_to_disk)
    from angosd.storage.s3_support import require_s3_support

    require_s3_support()  # botocore is the optional [s3] extra: one line naming it, not a traceback
    from angosd.storage.s3 import S3Driver  # botocore only where S3 is configured
    from angosd.storage.s3_client import S3Options

    http, pool = make_client(reactor, connect_timeout=min(30.0, s3.operation_attempt_timeout_secs),
                             hook=tracing.outbound("s3") if tracing else None)
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
              coordination: Coordination | None, driver: IStorageDriver | None = None,
              require_references: Callable[[str], bool] | None = None, tracing: Tracing | None = None) -> Registry:
    limits = Limits(config.global_.max_manifest_size, config.global_.max_blob_size)
    store = driver if driver is not None else build_driver(config, reactor, pools, tracing)
    if tracing is not None:
        store = TracedDriver(store, tracing.around, parent=config.blob_store_s3 is not None and driver is None)
    registry = Registry(store, reactor, limits, namespace_allowed, immutable,
                        update_pull_time=update_pull_time,
                        require_references=require_references or config.references_required,
                        parse_pool=pools.io)
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
class Application:
    """What serves requests in one process: the registry, its pull-through cache, the event bus,
    the Klein application and the site that carries it, and the drain that stops it in order."""

    registry: Registry
    cache: PullThroughCache
    events: EventBus
    api: RegistryAPI
    drain: DrainService
    site: RegistrySite
    tracing: Tracing | None = None
    audit: AuditLog | None = None


def build_application(config: Config, reactor: Any, live: LiveConfig, registry: Registry,
                      metrics: Metrics, tracing: Tracing | None = None, audit: AuditLog | None = None) -> Application:
    """The HTTP application over ``registry``, reading policies, repositories and the UI settings
    from ``live`` on every request; ``metrics`` observes requests, uploads, webhooks and
    certificates; ``tracing`` (None: off) gives each request a span; ``audit`` (None: off)
    records state changes and denials. Starts nothing:
    the caller puts ``events`` and ``drain`` in its service tree and ``site`` behind a listener
    (or an in-memory transport)."""
    metrics.watch_uploads(lambda: registry.uploads.writing)
    registry.uploads.on_digest = metrics.upload_digest
    if config.blob_store_s3 is None:
        metrics.watch_filesystem(lambda: os.path.abspath(config.blob_store.root_dir))
    tls = config.server.tls
    if tls is not None:
        metrics.watch_certificates(lambda: {"server": tls.server_certificate_bundle,
                                            "client_ca": tls.client_ca_bundle})
    metrics.pull_through.declare(r.name for r in config.repositories if r.is_pull_through)
    metrics.webhooks.declare([("event", webhook.name) for webhook in config.event_webhooks]
                             + [("authorization", webhook.name) for webhook in config.auth.webhooks])
    prefetcher = Prefetcher(registry, reactor)  # [repository] prefetch_platforms
    cache = PullThroughCache(registry, lambda namespace: live.config.repository_for(namespace), live.tag_immutable,
                             reactor, metrics=metrics.pull_through, on_manifest_fetched=prefetcher.after_fill,
                             outbound=tracing.outbound("upstream") if tracing else None)
    events = EventBus(lambda: live.config, reactor, drain_seconds=config.global_.shutdown_drain_secs,
                      metrics=metrics.webhooks, outbound=tracing.outbound("webhook") if tracing else None)
    authorizer = PolicyAuthorizer(lambda: live.security, spans=tracing.span if tracing else None)
    extensions: dict[Action, Handler | Endpoint] = {
        **ExtensionAPI(registry, lambda: live.config, authorizer.may_list).handlers(),
        **UserInterface(lambda: live.config.ui).handlers(), **metrics_handlers(metrics),
        Action.TOKEN: TokenEndpoint(lambda: live.security, reactor)}
    api = RegistryAPI(registry, authorizer, cache=cache, events=events,
                      extensions=extensions, blob_redirect=lambda: blob_redirect_ttl(live.config))
    drain = DrainService(lambda: live.config.global_.shutdown_drain_secs, reactor)
    access_log = [AccessLog(time.monotonic, reactor.seconds)] if config.server.access_log else []
    traced = [RequestTracing(tracing)] if tracing is not None else []
    audited = [AuditRecorder(lambda: audit)] if audit is not None else []
    site = RegistrySite(api, observers=[drain, RequestMetrics(metrics.http, metrics.clock), *traced, *access_log,
                                        *audited], config=lambda: live.config)
    site.tls_refused = TlsRefusals(reactor, lambda: metrics.auth_attempt("certificate", "failure")).refused
    return Application(registry, cache, events, api, drain, site, tracing, audit)


def timer(interval: float, call: Callable[[], object], reactor: Any) -> TimerService:
    """A service calling ``call`` every ``interval`` seconds on ``reactor``'s clock."""
    service = TimerService(interval, call)
    service.clock = reactor
    return service
