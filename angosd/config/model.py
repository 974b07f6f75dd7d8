"""The configuration model: frozen dataclasses, one per section, with their defaults.

Each field's metadata names the parser (`angosd.config.schema`) that reads its TOML
value; fields without one are read by their type (`angosd.config.reader.build`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from angosd.config.schema import (
    ACCESS_DEFAULT,
    MAX_POOL_QUEUE,
    MAX_POOL_THREADS,
    argon2_hash,
    basic_auth_table,
    claims_table,
    fraction,
    http_url,
    int_range,
    ip_address,
    jws_algorithms,
    ldap_url,
    networks,
    non_empty,
    one_of,
    parse_size,
    parse_workers,
    parsed_by,
    part_size,
    platform_list,
    positive_float,
    redis_url,
    regexes,
    webhook_events,
)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[server.tls]``: serve HTTPS; ``client_auth = "required"`` needs ``client_ca_bundle``."""

    server_certificate_bundle: str
    server_private_key: str
    client_ca_bundle: str | None = None
    client_auth: str = field(default="optional", metadata=parsed_by(one_of("optional", "required")))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where to listen; no ``tls`` means plain HTTP."""

    bind_address: str = field(default="127.0.0.1", metadata=parsed_by(ip_address))
    port: int = field(default=5000, metadata=parsed_by(int_range(0, 65535)))
    tls: TlsConfig | None = None
    #: ``"systemd"`` (the socket passed by systemd) or a Twisted server endpoint string;
    #: replaces ``bind_address``/``port`` when set (``--listen`` overrides it).
    listen: str | None = field(default=None, metadata=parsed_by(non_empty))
    #: One JSON line per request in the ``angosd.access`` log namespace; off for benchmarks.
    access_log: bool = True
    #: Worker processes sharing the listening socket; None (``"auto"``): one per usable core.
    #: 1 is a single process, as before workers existed (see `angosd.daemon.workers`).
    workers: int | None = field(default=None, metadata=parsed_by(parse_workers))
    #: Threads (per process) for storage work: appends, fsync, hashing (`angosd.storage.pools`).
    io_threads: int = field(default=10, metadata=parsed_by(int_range(1, MAX_POOL_THREADS)))
    #: Storage jobs that may wait for an ``io`` thread; past that requests get 429 Too Many Requests.
    io_queue: int = field(default=1024, metadata=parsed_by(int_range(1, MAX_POOL_QUEUE)))
    #: Threads (per process) verifying passwords (argon2, deliberately slow).
    cpu_threads: int = field(default=2, metadata=parsed_by(int_range(1, MAX_POOL_THREADS)))
    #: Password checks that may wait for a ``cpu`` thread; past that requests get 429.
    cpu_queue: int = field(default=64, metadata=parsed_by(int_range(1, MAX_POOL_QUEUE)))
    # -- connection lifetime (Angos names) --
    #: A connection's whole life, in seconds: then it finishes the request in progress and
    #: closes, or is cut ``query_timeout_grace_period`` later. None: no limit (Angos: 3600,
    #: which cuts uploads longer than an hour on one connection).
    query_timeout: float | None = field(default=None, metadata=parsed_by(positive_float))
    query_timeout_grace_period: float = field(default=60.0, metadata=parsed_by(positive_float))
    #: Seconds a TLS client has to complete its handshake.
    handshake_timeout: float = field(default=10.0, metadata=parsed_by(positive_float))


@dataclass(frozen=True, slots=True)
class FsStoreConfig:
    """``[blob_store.fs]``: the filesystem store; relative paths are kept as given."""

    root_dir: str = "./registry-data"
    sync_to_disk: bool = False


@dataclass(frozen=True, slots=True)
class S3StoreConfig:
    """``[blob_store.s3]``: an S3-compatible bucket (path-style requests to ``endpoint``).

    ``multipart_part_size`` is the size of the parts an upload is stored in (and the
    memory an upload may hold, about three parts); ``presign_ttl_secs`` is how long a
    blob redirect URL stays valid. The secret key is never printed.
    """

    endpoint: str = field(metadata=parsed_by(http_url))
    bucket: str = field(metadata=parsed_by(non_empty))
    access_key_id: str = field(metadata=parsed_by(non_empty))
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    key_prefix: str = ""
    multipart_part_size: int = field(default=16 * 1024**2, metadata=parsed_by(part_size))
    max_attempts: int = field(default=3, metadata=parsed_by(int_range(1, 20)))
    operation_timeout_secs: float = field(default=900.0, metadata=parsed_by(positive_float))
    operation_attempt_timeout_secs: float = field(default=300.0, metadata=parsed_by(positive_float))
    presign_ttl_secs: int = field(default=1800, metadata=parsed_by(int_range(1, 7 * 86400)))


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[cache.redis]``: state shared by several daemons (upload locks). Absent: in memory.

    A lock a daemon holds expires ``lock_ttl_secs`` after its last renewal, so a killed
    daemon blocks nobody for longer. The URL (it may hold a password) is never printed.
    """

    url: str = field(repr=False, metadata=parsed_by(redis_url))
    key_prefix: str = "angosd:"
    lock_ttl_secs: float = field(default=15.0, metadata=parsed_by(positive_float))


@dataclass(frozen=True, slots=True)
class AccessPolicyConfig:
    """``access_policy``: CEL ``rules`` and the decision when none matches."""

    default: str = field(default="allow", metadata=parsed_by(ACCESS_DEFAULT))
    rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionPolicyConfig:
    """``retention_policy``: CEL rules deciding which manifests to keep."""

    rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One ``[[repository."NAME".upstream]]`` of a pull-through repository."""

    url: str = field(metadata=parsed_by(http_url))
    username: str | None = None
    password: str | None = None
    server_ca_bundle: str | None = None
    client_certificate: str | None = None
    client_private_key: str | None = None
    max_redirect: int = field(default=5, metadata=parsed_by(int_range(0, 255)))
    connect_timeout_secs: float = field(default=30.0, metadata=parsed_by(positive_float))
    read_timeout_secs: float = field(default=300.0, metadata=parsed_by(positive_float))


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """``[repository."NAME"]``: a served namespace prefix and its overrides.

    As loaded by `load_config`, ``immutable_tags``, ``immutable_tags_exclusions`` and
    ``authorization_webhook`` hold the ``[global]`` value when the repository does not
    set them; ``access_policy``/``retention_policy`` are None when not set here.
    """

    name: str
    immutable_tags: bool = False
    immutable_tags_exclusions: tuple[str, ...] = field(default=(), metadata=parsed_by(regexes))
    access_policy: AccessPolicyConfig | None = None
    retention_policy: RetentionPolicyConfig | None = None
    upstreams: tuple[UpstreamConfig, ...] = ()
    authorization_webhook: str | None = None
    event_webhooks: tuple[str, ...] = ()
    #: Pull-through only: when an index is cached, fetch these platforms' manifests and
    #: blobs in the background (``("all",)`` for every platform; empty: no prefetch).
    prefetch_platforms: tuple[str, ...] = field(default=(), metadata=parsed_by(platform_list))
    # -- manifest references and proxying keys (Angos names) --
    #: Accept manifests whose config, layers or children the namespace does not have.
    allow_missing_manifest_references: bool = False
    #: The ``?ns=`` value (the upstream registry's host, e.g. ``docker.io``) whose pulls this
    #: (pull-through) repository serves, whatever their path.
    namespace: str | None = field(default=None, metadata=parsed_by(non_empty))

    @property
    def is_pull_through(self) -> bool:
        """True when the repository mirrors at least one upstream registry."""
        return bool(self.upstreams)


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """``[global]``: limits and the defaults every repository inherits."""

    max_manifest_size: int = field(default=4 * 1024 * 1024, metadata=parsed_by(parse_size))
    max_blob_size: int = field(default=100 * 1024**3, metadata=parsed_by(parse_size))
    update_pull_time: bool = False
    #: Answer blob GETs with a 307 to a presigned URL when the store can make one (S3).
    enable_blob_redirect: bool = True
    immutable_tags: bool = False
    immutable_tags_exclusions: tuple[str, ...] = field(default=(), metadata=parsed_by(regexes))
    access_policy: AccessPolicyConfig = AccessPolicyConfig()
    retention_policy: RetentionPolicyConfig = RetentionPolicyConfig()
    gc_grace_secs: int = field(default=300, metadata=parsed_by(int_range(0)))
    shutdown_drain_secs: int = field(default=30, metadata=parsed_by(int_range(0)))
    authorization_webhook: str | None = None
    event_webhooks: tuple[str, ...] = ()
    # -- request limits and proxies (Angos names) --
    #: Requests served at once by one process; more are refused (429 with Retry-After) rather
    #: than queued. None: no limit. (In Angos the number of worker threads.)
    max_concurrent_requests: int | None = field(default=None, metadata=parsed_by(int_range(1)))
    #: Peers (addresses or networks) whose ``X-Forwarded-For``/``X-Real-IP`` names the client.
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=parsed_by(networks))
    # -- upload expiry --
    #: Upload sessions started this long ago (seconds) and idle since the previous check are
    #: removed by the daemon; 0 keeps them until ``angosd prune --uploads``.
    upload_max_age_secs: int = field(default=86400, metadata=parsed_by(int_range(0)))
    # -- manifest references and proxying keys (Angos names) --
    #: Accept manifests that reference content their namespace does not have (Angos's
    #: default is true; angosd checks references unless told otherwise).
    allow_missing_manifest_references: bool = False


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """``[auth.identity.ID]``: a Basic-auth user; ``password`` is an argon2 PHC hash."""

    id: str
    username: str
    password: str = field(metadata=parsed_by(argon2_hash))


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """``[auth.oidc.NAME]``: an OIDC issuer whose JWTs authenticate callers.

    ``required_claims`` maps claim names to the value each must have. Without
    ``jwks_uri`` the keys are found through ``<issuer>/.well-known/openid-configuration``.
    """

    name: str
    issuer: str = field(metadata=parsed_by(http_url))
    jwks_uri: str | None = field(default=None, metadata=parsed_by(http_url))
    required_audience: str | None = None
    required_claims: Mapping[str, Any] = field(default_factory=dict, metadata=parsed_by(claims_table))
    allowed_algorithms: tuple[str, ...] = field(default=("RS256",), metadata=parsed_by(jws_algorithms))
    clock_skew_tolerance: int = field(default=60, metadata=parsed_by(int_range(0, 86400)))
    jwks_refresh_interval: int = field(default=3600, metadata=parsed_by(int_range(1)))
    server_ca_bundle: str | None = None
    http_request_timeout_secs: float = field(default=10.0, metadata=parsed_by(positive_float))


@dataclass(frozen=True, slots=True)
class WebhookTlsConfig:
    """Client-side TLS of a webhook: a private CA and an optional client certificate."""

    server_ca_bundle: str | None = None
    client_certificate_bundle: str | None = None
    client_private_key: str | None = None


@dataclass(frozen=True, slots=True)
class AuthWebhookConfig:
    """``[auth.webhook.NAME]``: an external service asked after the policies allowed."""

    name: str
    url: str = field(metadata=parsed_by(http_url))
    timeout_ms: int = field(metadata=parsed_by(int_range(1, 600_000)))
    bearer_token: str | None = None
    basic_auth: Mapping[str, str] | None = field(default=None, metadata=parsed_by(basic_auth_table))
    forward_headers: tuple[str, ...] = ()
    cache_ttl: int = field(default=60, metadata=parsed_by(int_range(0, 86400)))
    tls: WebhookTlsConfig = WebhookTlsConfig()


@dataclass(frozen=True, slots=True)
class EventWebhookConfig:
    """``[event_webhook.NAME]``: where registry events are POSTed, and how firmly."""

    name: str
    url: str = field(metadata=parsed_by(http_url))
    policy: str = field(default="optional", metadata=parsed_by(one_of("required", "optional", "async")))
    events: tuple[str, ...] = field(default=(), metadata=parsed_by(webhook_events))
    token: str | None = None
    timeout_ms: int = field(default=5000, metadata=parsed_by(int_range(1, 600_000)))
    max_retries: int | None = field(default=None, metadata=parsed_by(int_range(0, 16)))
    repository_filter: tuple[str, ...] = field(default=(), metadata=parsed_by(regexes))
    tls: WebhookTlsConfig = WebhookTlsConfig()

    @property
    def retries(self) -> int:
        """Retries after the first attempt: 3 for required receivers, 0 otherwise, unless set."""
        if self.max_retries is not None:
            return self.max_retries
        return 3 if self.policy == "required" else 0


# --- [auth.token_service] and credential-check limits (authentication) -------------------


@dataclass(frozen=True, slots=True)
class TokenServiceConfig:
    """``[auth.token_service]``: a Docker-style registry token service at ``/token``.

    Tokens are signed with ``signing_key`` (a PEM EC P-256 or Ed25519 private key: ES256 or
    EdDSA) when set, else with ``secret_key`` (HMAC-SHA256, Angos's form). ``verification_keys``
    are PEM files of earlier keys still accepted (rotation). ``realm`` is the URL clients are
    sent to (default: this registry's ``/token``, from the request's Host).
    """

    realm: str | None = field(default=None, metadata=parsed_by(http_url))
    service: str = field(default="angosd", metadata=parsed_by(non_empty))
    issuer: str = field(default="angosd", metadata=parsed_by(non_empty))
    ttl_secs: int = field(default=300, metadata=parsed_by(int_range(10, 86400)))
    refresh_ttl_secs: int = field(default=86400, metadata=parsed_by(int_range(0, 30 * 86400)))
    secret_key: str | None = None
    signing_key: str | None = None
    verification_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoginLimitsConfig:
    """``[auth.login_limits]``: failed password checks allowed per source address and per
    username within ``window_secs`` before further attempts get 429 (0: no limit)."""

    failures_per_address: int = field(default=20, metadata=parsed_by(int_range(0)))
    failures_per_username: int = field(default=10, metadata=parsed_by(int_range(0)))
    window_secs: int = field(default=60, metadata=parsed_by(int_range(1, 86400)))


@dataclass(frozen=True, slots=True)
class LdapConfig:
    """``[auth.ldap]``: Basic users checked against an LDAP / Active Directory directory.

    The user is found under ``user_base_dn`` with ``user_filter`` (``{username}`` is replaced,
    escaped), searching as ``bind_dn``; the password is checked by binding as the user. Groups
    are the ``group_name_attribute`` of the entries ``group_filter`` finds under
    ``group_base_dn`` (``{dn}``: the user's DN). ``ldaps://`` or ``start_tls`` with ``ca_file``.
    """

    url: str = field(metadata=parsed_by(ldap_url))
    user_base_dn: str = field(metadata=parsed_by(non_empty))
    user_filter: str = "(uid={username})"
    bind_dn: str | None = None
    bind_password: str | None = None
    group_base_dn: str | None = None
    group_filter: str = "(member={dn})"
    group_name_attribute: str = "cn"
    start_tls: bool = False
    ca_file: str | None = None
    timeout_secs: float = field(default=5.0, metadata=parsed_by(positive_float))
    cache_ttl_secs: int = field(default=60, metadata=parsed_by(int_range(0, 86400)))

# --- end of [auth.token_service] ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: the users, OIDC providers and authorization webhooks."""

    identities: tuple[IdentityConfig, ...] = ()
    oidc: tuple[OidcConfig, ...] = ()
    webhooks: tuple[AuthWebhookConfig, ...] = ()
    # [auth.token_service] / [auth.login_limits]
    token_service: TokenServiceConfig | None = None
    login_limits: LoginLimitsConfig = LoginLimitsConfig()
    ldap: LdapConfig | None = None


@dataclass(frozen=True, slots=True)
class UiConfig:
    """``[ui]``: the optional web interface."""

    enabled: bool = False
    name: str = "angosd"


# ---- [mirror] and [bundle]: scheduled image-set sync and signed bundles (air-gapped sites) ----


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """``[mirror]``: sync an image-set file on a schedule (off while ``set_file`` is unset)."""

    set_file: str | None = None
    interval_secs: int = field(default=6 * 3600, metadata=parsed_by(int_range(10)))
    jitter_secs: int = field(default=300, metadata=parsed_by(int_range(0)))
    first_run_delay_secs: int = field(default=60, metadata=parsed_by(int_range(0)))
    backoff_initial_secs: int = field(default=60, metadata=parsed_by(int_range(1)))
    backoff_max_secs: int = field(default=3600, metadata=parsed_by(int_range(1)))


@dataclass(frozen=True, slots=True)
class BundleConfig:
    """``[bundle]``: public keys (PEM files) whose signatures `angosd import` accepts."""

    trusted_keys: tuple[str, ...] = ()


# ---- end of [mirror] and [bundle] ----
# --- [observability]: tracing and audit log ----------------------------------------------
@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``[observability.tracing]``: OpenTelemetry traces exported over OTLP/HTTP (protobuf).

    Tracing is on when ``endpoint`` is set, or when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``
    / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` environment variables name a collector (and
    ``OTEL_SDK_DISABLED`` is not ``true``). An ``endpoint`` without a path gets ``/v1/traces``.
    ``sampling_rate`` is the ratio of new traces recorded (a sampled caller's ``traceparent``
    is always followed); unset: ``OTEL_TRACES_SAMPLER_ARG``, else 1.
    """

    endpoint: str | None = field(default=None, metadata=parsed_by(http_url))
    sampling_rate: float | None = field(default=None, metadata=parsed_by(fraction))
    service_name: str = field(default="angosd", metadata=parsed_by(non_empty))


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``[observability.audit]``: one JSON line per state change and per denial, in ``path``.

    ``fsync = "always"`` makes each line durable before the operation is answered;
    ``"never"`` leaves flushing to the OS. ``hash_chain`` makes each line carry the hash of
    the previous one (checked by ``angosd audit verify``). The file is renamed to
    ``PATH.1`` (``PATH.2`` ... up to ``keep``) once larger than ``max_size`` (0: never), and
    reopened on SIGHUP (for an external rotation).
    """

    path: str | None = field(default=None, metadata=parsed_by(non_empty))
    fsync: str = field(default="always", metadata=parsed_by(one_of("always", "never")))
    hash_chain: bool = False
    max_size: int = field(default=0, metadata=parsed_by(parse_size))
    keep: int = field(default=5, metadata=parsed_by(int_range(1, 1000)))


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """``[observability]``: traces and the audit log (metrics are always served)."""

    tracing: TracingConfig = TracingConfig()
    audit: AuditConfig = AuditConfig()
# --- end of [observability] -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration (``Config()`` is the built-in default)."""

    server: ServerConfig = ServerConfig()
    blob_store: FsStoreConfig = FsStoreConfig()
    #: ``[blob_store.s3]``: when set, the store is this bucket and ``blob_store`` is unused.
    blob_store_s3: S3StoreConfig | None = None
    #: ``[cache.redis]``: shared state for several daemons; None keeps it in memory.
    redis: RedisConfig | None = None
    global_: GlobalConfig = GlobalConfig()
    repositories: tuple[RepositoryConfig, ...] = ()
    ui: UiConfig = UiConfig()
    auth: AuthConfig = AuthConfig()
    event_webhooks: tuple[EventWebhookConfig, ...] = ()
    sources: tuple[str, ...] = ()
    mirror: MirrorConfig = MirrorConfig()  # [mirror]
    bundle: BundleConfig = BundleConfig()  # [bundle]
    #: ``[metadata_store.fs]`` / ``[metadata_store.s3]``: where tags, revisions, referrers
    #: and ownership records live when not beside the blobs (None: beside them).
    metadata_store: FsStoreConfig | None = None
    metadata_store_s3: S3StoreConfig | None = None
    #: Whether any access policy was written down (``[global.access_policy]`` or a
    #: repository's): without one, a daemon on a non-loopback address refuses to start.
    access_policy_configured: bool = False

    def repository_for_ns(self, ns: str) -> RepositoryConfig | None:
        """The repository whose ``namespace`` is ``ns`` (the ``?ns=`` parameter), if any."""
        return next((r for r in self.repositories if r.namespace is not None and r.namespace == ns), None)
    observability: ObservabilityConfig = ObservabilityConfig()  # [observability]

    def repository_for(self, namespace: str) -> RepositoryConfig | None:
        """The repository named ``namespace`` or its longest ``"name/"`` prefix, if any."""
        best: RepositoryConfig | None = None
        for repository in self.repositories:
            inside = namespace == repository.name or namespace.startswith(repository.name + "/")
            if inside and (best is None or len(repository.name) > len(best.name)):
                best = repository
        return best

    def references_required(self, namespace: str) -> bool:
        """Whether a manifest pushed into ``namespace`` must only reference content it has."""
        repository = self.repository_for(namespace)
        allowed = (repository.allow_missing_manifest_references if repository is not None
                   else self.global_.allow_missing_manifest_references)
        return not allowed

    def namespace_allowed(self, namespace: str) -> bool:
        """Whether ``namespace`` is served: always without repositories, else inside one."""
        return not self.repositories or self.repository_for(namespace) is not None

