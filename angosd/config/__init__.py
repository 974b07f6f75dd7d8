"""angosd configuration: TOML files in, frozen and validated dataclasses out.

Several files may be given; they are deep-merged in order (tables merge key by key,
every other value, arrays and arrays of tables included, is replaced by the later
file). While merging, the loader remembers which file set each key, so that every
problem found afterwards names that file and the dotted key path::

    /etc/angosd/b.toml: server.port: expected an integer, got string

Key names follow the reference product (Angos), so an Angos configuration loads:
sections this build does not use yet (``auth``, ``cache``, ``metadata_store``,
``event_webhook``, some ``server``/``global`` tuning keys) are
accepted silently; any other unknown key is reported once through ``warn`` and
ignored.

Modules, one job each: `angosd.config.schema` (typed value parsers, `ConfigError`),
`angosd.config.model` (the frozen dataclasses), `angosd.config.reader` (reading one
table), `angosd.config.sections` (the section readers) and `angosd.config.load`
(files, merging, `load_config`). This package re-exports the public names.
"""

from angosd.config.load import default_config, load_config, merge_tables
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
    MirrorConfig,
    ObservabilityConfig,
    OidcConfig,
    RedisConfig,
    RepositoryConfig,
    RetentionPolicyConfig,
    S3StoreConfig,
    ServerConfig,
    TlsConfig,
    TracingConfig,
    UiConfig,
    UpstreamConfig,
    WebhookTlsConfig,
)
from angosd.config.schema import EVENTS, MAX_WORKERS, ConfigError, parse_size, parse_workers

__all__ = [
    "EVENTS",
    "MAX_WORKERS",
    "AccessPolicyConfig",
    "AuditConfig",
    "AuthConfig",
    "AuthWebhookConfig",
    "BundleConfig",
    "Config",
    "ConfigError",
    "EventWebhookConfig",
    "FsStoreConfig",
    "GlobalConfig",
    "IdentityConfig",
    "MirrorConfig",
    "ObservabilityConfig",
    "OidcConfig",
    "RedisConfig",
    "RepositoryConfig",
    "RetentionPolicyConfig",
    "S3StoreConfig",
    "ServerConfig",
    "TlsConfig",
    "TracingConfig",
    "UiConfig",
    "UpstreamConfig",
    "WebhookTlsConfig",
    "default_config",
    "load_config",
    "merge_tables",
    "parse_size",
    "parse_workers",
]
