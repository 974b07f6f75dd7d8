"""The section readers: each turns a table of the merged document into its `angosd.config.model` value.

`read_config` reads the whole document; cross-section checks (webhook references,
inherited repository defaults) live here too.
"""

from __future__ import annotations

import re
from typing import Any

from angosd.config.model import (
    AccessPolicyConfig,
    AuditConfig,
    AuthConfig,
    AuthWebhookConfig,
    BundleConfig,
    Config,
    EventWebhookConfig,
    FsStoreConfig,
    GlobalConfig,
    IdentityConfig,
    LdapConfig,
    LoginLimitsConfig,
    MirrorConfig,
    ObservabilityConfig,
    OidcConfig,
    RedisConfig,
    RepositoryConfig,
    RetentionPolicyConfig,
    S3StoreConfig,
    ServerConfig,
    TlsConfig,
    TokenServiceConfig,
    TracingConfig,
    UiConfig,
    UpstreamConfig,
    WebhookTlsConfig,
)
from angosd.config.reader import Table, build, dotted
from angosd.config.schema import ACCESS_DEFAULT, ConfigError, as_bool, as_str

_REPOSITORY_NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")

_SERVER_EXTRAS: tuple[str, ...] = ()
_GLOBAL_EXTRAS = ("enable_redirect",)  # read as the alias of enable_blob_redirect
_ACCEPTED_SECTIONS = ("cache",)
# -- Angos keys accepted with no effect: each is warned about by name (`Table.no_effect`) --
#: Manifests are always served inline; cache fills, replication and walks are not threads here.
_GLOBAL_NO_EFFECT = ("enable_manifest_redirect", "max_concurrent_cache_jobs", "max_concurrent_replication_jobs",
                     "namespace_walk_concurrency", "atime_audit_window_secs", "job_queue")
_REPOSITORY_NO_EFFECT = ("downstream",)  # replication is not implemented
_ROOT_NO_EFFECT: tuple[str, ...] = ()
#: SR's lock strategy of a metadata store: angosd coordinates through [cache.redis].
_METADATA_NO_EFFECT = ("lock_strategy", "redis")
_TLS_KEYS = ("server_ca_bundle", "client_certificate_bundle", "client_private_key")
_OIDC_NO_EFFECT = ("provider", "client_certificate_bundle", "client_private_key", "bearer_token_file",
                   "jwks_refresh_timeout_secs")
_INHERITED = ("immutable_tags", "immutable_tags_exclusions", "authorization_webhook",
              "allow_missing_manifest_references")


def _tls(table: Table) -> TlsConfig:
    tls = build(TlsConfig, table)
    if tls.client_auth == "required" and tls.client_ca_bundle is None:
        raise table.error("client_auth", "'required' needs client_ca_bundle to be set")
    return tls


def _server(table: Table) -> ServerConfig:
    tls = table.table("tls")
    return build(ServerConfig, table, _SERVER_EXTRAS, tls=None if tls is None else _tls(tls))


_S3_NO_EFFECT = ("multipart_copy_threshold", "multipart_copy_chunk_size", "multipart_copy_jobs",
                 "multipart_uniform_parts")


def _blob_store(table: Table) -> tuple[FsStoreConfig, S3StoreConfig | None]:
    """``[blob_store]``: the filesystem store, or an S3 bucket (not both)."""
    fs = table.table("fs")
    s3 = table.table("s3")
    if fs is not None and s3 is not None:
        raise table.error("s3", "set either [blob_store.fs] or [blob_store.s3], not both")
    table.finish()
    if s3 is not None:
        s3.no_effect(_S3_NO_EFFECT)
        return FsStoreConfig(), build(S3StoreConfig, s3)
    return (FsStoreConfig() if fs is None else build(FsStoreConfig, fs)), None


def _redis(root: Table) -> RedisConfig | None:
    """``[cache.redis]`` (or its alias ``[cache_store.redis]``); other ``[cache]`` keys are accepted."""
    for name in ("cache", "cache_store"):
        cache = root.table(name)
        redis = cache.table("redis") if cache is not None else None
        if redis is not None:
            return build(RedisConfig, redis)
    return None


def _access_policy(table: Table) -> AccessPolicyConfig:
    """Reads ``default``, or the legacy ``default_allow``; if both, the later file wins."""
    if "default_allow" not in table:
        return build(AccessPolicyConfig, table)
    default = "allow" if table.get("default_allow", as_bool) else "deny"
    if "default" in table:
        chosen = table.get("default", ACCESS_DEFAULT)
        legacy_file, new_file = table.origin("default_allow"), table.origin("default")
        if legacy_file == new_file:
            raise table.error("default_allow", "conflicts with 'default'; set only one of them")
        order = table.context.sources
        if order.index(new_file) > order.index(legacy_file):
            default = chosen
    return build(AccessPolicyConfig, table, default=default)


def _policies(table: Table) -> dict[str, Any]:
    """The ``access_policy``/``retention_policy`` sub-tables present in ``table``, built."""
    policies: dict[str, Any] = {}
    access, retention = table.table("access_policy"), table.table("retention_policy")
    if access is not None:
        policies["access_policy"] = _access_policy(access)
    if retention is not None:
        policies["retention_policy"] = build(RetentionPolicyConfig, retention)
    return policies


def _upstream(table: Table) -> UpstreamConfig:
    upstream = build(UpstreamConfig, table)
    if (upstream.client_certificate is None) != (upstream.client_private_key is None):
        present, missing = ("client_certificate", "client_private_key")
        if upstream.client_certificate is None:
            present, missing = missing, present
        raise table.error(present, f"{missing} must be set as well")
    return upstream


def _repositories(section: Table, global_: GlobalConfig) -> tuple[RepositoryConfig, ...]:
    repositories: list[RepositoryConfig] = []
    for name in sorted(section.keys()):
        table = section.table(name)
        assert table is not None
        if not _REPOSITORY_NAME.fullmatch(name):
            problem = f"invalid repository name {name!r} (lowercase OCI name components separated by '/')"
            raise section.error(name, problem)
        inherited = {key: getattr(global_, key) for key in _INHERITED if key not in table}
        upstreams = tuple(_upstream(upstream) for upstream in table.tables("upstream"))
        table.no_effect(_REPOSITORY_NO_EFFECT)
        repositories.append(build(RepositoryConfig, table, name=name, upstreams=upstreams,
                                   **_policies(table), **inherited))
    section.finish()
    return tuple(repositories)


def _auth(table: Table) -> AuthConfig:
    identities = []
    for key in sorted(table.section("identity").keys()):
        entry = table.section("identity").table(key)
        assert entry is not None
        identities.append(build(IdentityConfig, entry, id=key))
    providers = []
    oidc_section = table.section("oidc")
    for name in sorted(oidc_section.keys()):
        entry = oidc_section.table(name)
        assert entry is not None
        entry.no_effect(_OIDC_NO_EFFECT)
        providers.append(build(OidcConfig, entry, name=name))
    seen: dict[str, str] = {}
    for identity in identities:
        if identity.username in seen:
            raise table.error("identity", f"username {identity.username!r} is used by both "
                                          f"{seen[identity.username]!r} and {identity.id!r}", (identity.id,))
        seen[identity.username] = identity.id
        if any(provider.name == identity.username for provider in providers):
            raise table.error("identity", f"username {identity.username!r} is also an OIDC provider name",
                              (identity.id, "username"))
    webhook_section = table.section("webhook")
    webhooks = tuple(build(AuthWebhookConfig, entry, name=name, tls=_webhook_tls(entry))
                     for name, entry in _named_tables(webhook_section))
    webhook_section.finish()
    # [auth.token_service] / [auth.login_limits]
    token_table = table.table("token_service")
    token_service = None if token_table is None else _token_service(token_table)
    limits_table = table.table("login_limits")
    login_limits = LoginLimitsConfig() if limits_table is None else build(LoginLimitsConfig, limits_table)
    ldap_table = table.table("ldap")
    ldap = None if ldap_table is None else build(LdapConfig, ldap_table)
    table.finish()
    return AuthConfig(identities=tuple(identities), oidc=tuple(providers), webhooks=webhooks,
                      token_service=token_service, login_limits=login_limits, ldap=ldap)


# --- [auth.token_service] ----------------------------------------------------------------
def _token_service(table: Table) -> TokenServiceConfig:
    service = build(TokenServiceConfig, table)
    if service.signing_key is None and not service.secret_key:
        raise table.error("signing_key", "set signing_key (a PEM private key file) or secret_key")
    return service
# --- end of [auth.token_service] ---------------------------------------------------------


def _named_tables(section: Table) -> list[tuple[str, Table]]:
    found = []
    for name in sorted(section.keys()):
        entry = section.table(name)
        assert entry is not None
        found.append((name, entry))
    return found


def _webhook_tls(table: Table) -> WebhookTlsConfig:
    values = {key: table.get(key, as_str) for key in _TLS_KEYS if key in table}
    tls = WebhookTlsConfig(**values)
    if (tls.client_certificate_bundle is None) != (tls.client_private_key is None):
        present = "client_certificate_bundle" if tls.client_private_key is None else "client_private_key"
        raise table.error(present, "client_certificate_bundle and client_private_key must be set together")
    return tls


def _check_webhook_references(root: Table, global_: GlobalConfig, repositories: tuple[RepositoryConfig, ...],
                              auth: AuthConfig, events: tuple[EventWebhookConfig, ...]) -> None:
    """Every webhook named by [global] or a repository must be defined ("" disables)."""
    auth_names = {webhook.name for webhook in auth.webhooks}
    event_names = {webhook.name for webhook in events}
    places: list[tuple[tuple[str | int, ...], str | None, tuple[str, ...]]] = [
        (("global",), global_.authorization_webhook, global_.event_webhooks)]
    places += [(("repository", r.name), r.authorization_webhook, r.event_webhooks) for r in repositories]
    for path, authorization, event_list in places:
        if authorization and authorization not in auth_names:
            raise ConfigError(f"{root.context.origin((*path, 'authorization_webhook'))}: "
                              f"{dotted((*path, 'authorization_webhook'))}: no [auth.webhook.{authorization}]")
        for index, name in enumerate(event_list):
            if name not in event_names:
                raise ConfigError(f"{root.context.origin((*path, 'event_webhooks'))}: "
                                  f"{dotted((*path, 'event_webhooks', index))}: no [event_webhook.{name}]")


# ---- [mirror] and [bundle] (air-gapped sites) ----


def _air_gap(root: Table) -> tuple[MirrorConfig, BundleConfig]:
    mirror_section = root.section("mirror")
    mirror = build(MirrorConfig, mirror_section)
    if mirror.backoff_max_secs < mirror.backoff_initial_secs:
        raise mirror_section.error("backoff_max_secs", "must not be less than backoff_initial_secs")
    return mirror, build(BundleConfig, root.section("bundle"))


# ---- end of [mirror] and [bundle] ----
# --- [observability] ---------------------------------------------------------------------
def _observability(table: Table) -> ObservabilityConfig:
    """``[observability.tracing]`` and ``[observability.audit]``."""
    tracing, audit = table.section("tracing"), table.section("audit")
    table.finish()
    return ObservabilityConfig(tracing=build(TracingConfig, tracing), audit=build(AuditConfig, audit))
# --- end of [observability] --------------------------------------------------------------


def read_config(root: Table) -> Config:
    """The `Config` described by the merged document ``root``."""
    for key in _ACCEPTED_SECTIONS:
        root.table(key)  # must be a table; contents accepted unread
    root.no_effect(_ROOT_NO_EFFECT)
    server = _server(root.section("server"))
    blob_store, blob_store_s3 = _blob_store(_blob_store_section(root))
    metadata_store, metadata_store_s3 = _metadata_store(root.table("metadata_store"), blob_store)
    redis = _redis(root)
    global_section = root.section("global")
    legacy_redirect = {}
    if "enable_blob_redirect" not in global_section and "enable_redirect" in global_section:
        legacy_redirect["enable_blob_redirect"] = global_section.get("enable_redirect", as_bool)
    global_section.no_effect(_GLOBAL_NO_EFFECT)
    global_ = build(GlobalConfig, global_section, _GLOBAL_EXTRAS, **_policies(global_section), **legacy_redirect)
    repositories = _repositories(root.section("repository"), global_)
    _check_namespaces(root, repositories)
    ui = build(UiConfig, root.section("ui"))
    auth = _auth(root.section("auth"))
    event_section = root.section("event_webhook")
    events = tuple(build(EventWebhookConfig, entry, name=name, tls=_webhook_tls(entry))
                   for name, entry in _named_tables(event_section))
    event_section.finish()
    _check_webhook_references(root, global_, repositories, auth, events)
    mirror, bundle = _air_gap(root)
    observability = _observability(root.section("observability"))
    root.finish()
    policy_configured = "access_policy" in global_section or any(r.access_policy is not None for r in repositories)
    return Config(server=server, blob_store=blob_store, blob_store_s3=blob_store_s3, redis=redis,
                  global_=global_, repositories=repositories, ui=ui,
                  auth=auth, event_webhooks=events, sources=root.context.sources,
                  mirror=mirror, bundle=bundle, observability=observability,
                  access_policy_configured=policy_configured, metadata_store=metadata_store,
                  metadata_store_s3=metadata_store_s3)


def _metadata_store(table: Table | None, blob_store: FsStoreConfig
                    ) -> tuple[FsStoreConfig | None, S3StoreConfig | None]:
    """``[metadata_store]``: a directory (``root_dir`` defaults to the blob store's) or a
    bucket for the metadata; None, None when absent."""
    if table is None:
        return None, None
    fs, s3 = table.table("fs"), table.table("s3")
    if fs is not None and s3 is not None:
        raise table.error("s3", "set either [metadata_store.fs] or [metadata_store.s3], not both")
    table.finish()
    if s3 is not None:
        s3.no_effect(_S3_NO_EFFECT + _METADATA_NO_EFFECT)
        return None, build(S3StoreConfig, s3)
    if fs is None:
        return None, None
    fs.no_effect(_METADATA_NO_EFFECT)
    given = {} if "root_dir" in fs else {"root_dir": blob_store.root_dir}
    return build(FsStoreConfig, fs, **given), None


def _blob_store_section(root: Table) -> Table:
    """``[blob_store]``, or its deprecated alias ``[storage]`` (warned about) when only that is set."""
    blob_store, storage = root.table("blob_store"), root.table("storage")
    if storage is None:
        return blob_store if blob_store is not None else root.section("blob_store")
    if blob_store is not None:
        root.warn("storage", "ignored: [blob_store] is set ([storage] is its deprecated alias)")
        return blob_store
    root.warn("storage", "deprecated alias of [blob_store], used as such; rename the section to [blob_store]")
    return storage


def _check_namespaces(root: Table, repositories: tuple[RepositoryConfig, ...]) -> None:
    """No two repositories may claim the same ``namespace`` (``?ns=`` value)."""
    claimed: dict[str, str] = {}
    for repository in repositories:
        if repository.namespace is None:
            continue
        if repository.namespace in claimed:
            path = ("repository", repository.name, "namespace")
            raise ConfigError(f"{root.context.origin(path)}: {dotted(path)}: {repository.namespace!r} is also the "
                              f"namespace of repository {claimed[repository.namespace]!r}")
        claimed[repository.namespace] = repository.name

