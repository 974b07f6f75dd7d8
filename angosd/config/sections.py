"""The section readers: each turns a table of the merged document into its `angosd.config.model` value.

`read_config` reads the whole document; cross-section checks (webhook references,
inherited repository defaults) live here too.
"""

from __future__ import annotations

import re
from typing import Any

from angosd.config.model import (
    AccessPolicyConfig,
    AuthConfig,
    AuthWebhookConfig,
    Config,
    EventWebhookConfig,
    FsStoreConfig,
    GlobalConfig,
    IdentityConfig,
    LdapConfig,
    LoginLimitsConfig,
    OidcConfig,
    RedisConfig,
    RepositoryConfig,
    RetentionPolicyConfig,
    S3StoreConfig,
    ServerConfig,
    TlsConfig,
    TokenServiceConfig,
    UiConfig,
    UpstreamConfig,
    WebhookTlsConfig,
)
from angosd.config.reader import Table, build, dotted
from angosd.config.schema import ACCESS_DEFAULT, ConfigError, as_bool, as_str

_REPOSITORY_NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")

_SERVER_EXTRAS = ("query_timeout", "query_timeout_grace_period", "handshake_timeout")
_GLOBAL_EXTRAS = ("max_concurrent_requests", "max_concurrent_cache_jobs", "enable_redirect",
                  "enable_manifest_redirect", "allow_missing_manifest_references", "trusted_proxies")
_REPOSITORY_EXTRAS = ("namespace",)
_ACCEPTED_SECTIONS = ("metadata_store", "cache", "observability")
_AUTH_EXTRAS: tuple[str, ...] = ()
_TLS_KEYS = ("server_ca_bundle", "client_certificate_bundle", "client_private_key")
_OIDC_EXTRAS = ("provider", "client_certificate_bundle", "client_private_key", "bearer_token_file",
                "jwks_refresh_timeout_secs")
_INHERITED = ("immutable_tags", "immutable_tags_exclusions", "authorization_webhook")


def _tls(table: Table) -> TlsConfig:
    tls = build(TlsConfig, table)
    if tls.client_auth == "required" and tls.client_ca_bundle is None:
        raise table.error("client_auth", "'required' needs client_ca_bundle to be set")
    return tls


def _server(table: Table) -> ServerConfig:
    tls = table.table("tls")
    return build(ServerConfig, table, _SERVER_EXTRAS, tls=None if tls is None else _tls(tls))


_S3_EXTRAS = ("multipart_copy_threshold", "multipart_copy_chunk_size", "multipart_copy_jobs",
              "multipart_uniform_parts")


def _blob_store(table: Table) -> tuple[FsStoreConfig, S3StoreConfig | None]:
    """``[blob_store]``: the filesystem store, or an S3 bucket (not both)."""
    fs = table.table("fs")
    s3 = table.table("s3")
    if fs is not None and s3 is not None:
        raise table.error("s3", "set either [blob_store.fs] or [blob_store.s3], not both")
    table.finish()
    if s3 is not None:
        return FsStoreConfig(), build(S3StoreConfig, s3, _S3_EXTRAS)
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
        repositories.append(build(RepositoryConfig, table, _REPOSITORY_EXTRAS, name=name, upstreams=upstreams,
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
        providers.append(build(OidcConfig, entry, _OIDC_EXTRAS, name=name))
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
    table.accept(_AUTH_EXTRAS)
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


def read_config(root: Table) -> Config:
    """The `Config` described by the merged document ``root``."""
    for key in _ACCEPTED_SECTIONS:
        root.table(key)  # must be a table; contents accepted unread
    server = _server(root.section("server"))
    blob_store, blob_store_s3 = _blob_store(root.section("blob_store"))
    redis = _redis(root)
    global_section = root.section("global")
    legacy_redirect = {}
    if "enable_blob_redirect" not in global_section and "enable_redirect" in global_section:
        legacy_redirect["enable_blob_redirect"] = global_section.get("enable_redirect", as_bool)
    global_ = build(GlobalConfig, global_section, _GLOBAL_EXTRAS, **_policies(global_section), **legacy_redirect)
    repositories = _repositories(root.section("repository"), global_)
    ui = build(UiConfig, root.section("ui"))
    auth = _auth(root.section("auth"))
    event_section = root.section("event_webhook")
    events = tuple(build(EventWebhookConfig, entry, name=name, tls=_webhook_tls(entry))
                   for name, entry in _named_tables(event_section))
    event_section.finish()
    _check_webhook_references(root, global_, repositories, auth, events)
    root.finish()
    return Config(server=server, blob_store=blob_store, blob_store_s3=blob_store_s3, redis=redis,
                  global_=global_, repositories=repositories, ui=ui,
                  auth=auth, event_webhooks=events, sources=root.context.sources)

