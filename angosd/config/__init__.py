"""angosd configuration: TOML files in, frozen and validated dataclasses out.

Several files may be given; they are deep-merged in order (tables merge key by key,
every other value, arrays and arrays of tables included, is replaced by the later
file). While merging, the loader remembers which file set each key, so that every
problem found afterwards names that file and the dotted key path::

    /etc/angosd/b.toml: server.port: expected an integer, got string

Key names follow the reference product (Angos), so an Angos configuration loads:
sections this build does not use yet (``auth``, ``cache``, ``metadata_store``,
``event_webhook``, ``observability``, some ``server``/``global`` tuning keys) are
accepted silently; any other unknown key is reported once through ``warn`` and
ignored.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "AccessPolicyConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "FsStoreConfig",
    "GlobalConfig",
    "IdentityConfig",
    "OidcConfig",
    "RedisConfig",
    "RepositoryConfig",
    "RetentionPolicyConfig",
    "S3StoreConfig",
    "ServerConfig",
    "TlsConfig",
    "UiConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "merge_tables",
    "parse_size",
]


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``str(error)`` is always a single line, ``"<file>: <key.path>: <problem>"``
    (``"<file>: <problem>"`` when the whole file is at fault).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


# --------------------------------------------------------------------------- values

#: A key path: table keys and array indexes, e.g. ("repository", "hub", "upstream", 0, "url").
_Path = tuple[str | int, ...]
#: Turns a raw TOML value into a validated one, or raises `_Invalid`.
_Parser = Callable[[object], Any]


class _Invalid(ValueError):
    """A bad value; ``at`` locates the culprit inside it (e.g. an array index)."""

    def __init__(self, problem: str, at: _Path = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


_TOML_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),  # before date: datetime is a date subclass
    (datetime.date, "date"),
    (datetime.time, "time"),
)


def _kind(value: object) -> str:
    """The TOML name of ``value``'s type, for messages."""
    for python_type, name in _TOML_KINDS:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _as_str(value: object) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    return value


def _as_bool(value: object) -> bool:
    """``value`` if it is a real TOML boolean (not 0/1, not "true")."""
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {_kind(value)}")
    return value


def _as_int(value: object) -> int:
    """``value`` if it is a TOML integer (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_kind(value)}")
    return value


def _as_float(value: object) -> float:
    """``value`` as a float if it is a TOML float or integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"expected a number, got {_kind(value)}")
    return float(value)


def _as_strings(value: object) -> tuple[str, ...]:
    """``value`` as a tuple if it is an array of strings."""
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of strings, got {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"expected a string, got {_kind(item)}", (index,))
    return tuple(value)


def _int_range(low: int, high: int | None = None) -> _Parser:
    """A parser for integers within ``low..high`` (inclusive; no upper bound if None)."""

    def parse(value: object) -> int:
        number = _as_int(value)
        if number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _Invalid(f"must be {bounds}, got {number}")
        return number

    return parse


def _positive_float(value: object) -> float:
    """A finite number greater than zero, as a float."""
    number = _as_float(value)
    if not (math.isfinite(number) and number > 0):
        raise _Invalid(f"must be a finite number greater than 0, got {number}")
    return number


def _choice(*options: str) -> _Parser:
    """A parser for strings that must be one of ``options``."""

    def parse(value: object) -> str:
        text = _as_str(value)
        if text not in options:
            raise _Invalid(f"expected one of {', '.join(map(repr, options))}, got {text!r}")
        return text

    return parse


#: Upper bound of ``[server] workers``.
MAX_WORKERS = 256


def parse_workers(value: object) -> int | None:
    """``[server] workers`` (and ``--workers``): ``"auto"`` (None: one per usable core) or 1..`MAX_WORKERS`."""
    if value == "auto":
        return None
    if isinstance(value, str):
        raise _Invalid(f'expected an integer or "auto", got {value!r}')
    return _int_range(1, MAX_WORKERS)(value)


def _non_empty(value: object) -> str:
    """A string with something other than whitespace in it."""
    text = _as_str(value)
    if not text.strip():
        raise _Invalid("must not be empty")
    return text


def _ip_address(value: object) -> str:
    """A string that parses as an IPv4 or IPv6 address, returned as given."""
    text = _as_str(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"expected an IP address, got {text!r}") from None
    return text


def _http_url(value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host (and a valid port, if any)."""
    text = _as_str(value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        valid = False
    if not valid:
        raise _Invalid(f"expected an http:// or https:// URL, got {text!r}")
    return text


def _regexes(value: object) -> tuple[str, ...]:
    """An array of strings that each compile as a Python regular expression."""
    patterns = _as_strings(value)
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as error:
            raise _Invalid(f"invalid regular expression {pattern!r}: {error}", (index,)) from None
    return patterns


_PLATFORM = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?")


def _platforms(value: object) -> tuple[str, ...]:
    """``"all"`` as ``("all",)``, or an array of ``"os/arch[/variant]"`` strings."""
    if value == "all":
        return ("all",)
    if isinstance(value, str):
        raise _Invalid(f'expected "all" or an array of "os/arch[/variant]" strings, got {value!r}')
    platforms = _as_strings(value)
    for index, platform in enumerate(platforms):
        if platform != "all" and not _PLATFORM.fullmatch(platform):
            raise _Invalid(f'expected "os/arch" or "os/arch/variant", got {platform!r}', (index,))
    return platforms


#: Lower-cased unit -> bytes: KB..PB are powers of 1000, KiB..PiB powers of 1024.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    **{f"{prefix}b": 1000**power for power, prefix in enumerate("kmgtp", start=1)},
    **{f"{prefix}ib": 1024**power for power, prefix in enumerate("kmgtp", start=1)},
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.ASCII | re.IGNORECASE)
_MAX_SIZE = 2**63 - 1


_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


def _argon2_hash(value: object) -> str:
    text = _as_str(value)
    if not re.fullmatch(r"\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", text):
        raise _Invalid("expected an argon2 PHC hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash); "
                       "make one with `angosd argon`")
    return text


def _claims(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a table of claim = value, got {_kind(value)}")
    return dict(value)


def _algorithms(value: object) -> tuple[str, ...]:
    algorithms = _as_strings(value)
    for index, algorithm in enumerate(algorithms):
        if algorithm not in _ALGORITHMS:
            raise _Invalid(f"unsupported algorithm {algorithm!r} (asymmetric JWS algorithms only)", (index,))
    if not algorithms:
        raise _Invalid("at least one algorithm is required")
    return algorithms


EVENTS = ("manifest.push", "manifest.pull", "manifest.delete", "blob.push", "blob.pull", "tag.create", "tag.delete")


def _events(value: object) -> tuple[str, ...]:
    events = _as_strings(value)
    for index, event in enumerate(events):
        if event not in EVENTS:
            raise _Invalid(f"unknown event {event!r} (one of {', '.join(EVENTS)})", (index,))
    return events


def _basic_auth(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != {"username", "password"} or \
            not all(isinstance(v, str) for v in value.values()):
        raise _Invalid("expected { username = \"...\", password = \"...\" }")
    return dict(value)


def parse_size(value: object) -> int:
    """A byte count from an integer or a string such as ``"4MiB"``, ``"5 MB"``, ``"1024"``.

    KB/MB/GB/TB/PB are powers of 1000, KiB/MiB/GiB/TiB/PiB powers of 1024, ``B`` or
    no unit means bytes (units are case-insensitive). The result is always an
    integer in ``1..2**63-1``; anything else raises ``ValueError`` with a one-line
    reason.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = Fraction(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None or match[2].lower() not in _SIZE_UNITS:
            raise _Invalid(f"expected a size such as '4MiB', '500MB' or '1024', got {value!r}")
        try:
            size = Fraction(match[1]) * _SIZE_UNITS[match[2].lower()]
        except ValueError:  # more digits than int() accepts
            raise _Invalid(f"size is too large: {value!r}") from None
    else:
        raise _Invalid(f"expected an integer or a size string such as '4MiB', got {_kind(value)}")
    if size.denominator != 1:
        raise _Invalid(f"size must be a whole number of bytes, got {value!r}")
    if not 0 < size <= _MAX_SIZE:
        raise _Invalid(f"size must be between 1 and {_MAX_SIZE} bytes, got {value!r}")
    return int(size)


def _part_size(value: object) -> int:
    """A size S3 accepts for the parts of a multipart upload: 5 MiB to 5 GiB."""
    size = parse_size(value)
    if not 5 * 1024**2 <= size <= 5 * 1024**3:
        raise _Invalid(f"must be between 5MiB and 5GiB (S3's part size limits), got {value!r}")
    return size


def _redis_url(value: object) -> str:
    """A ``redis://[[user]:password@]host[:port][/db]`` URL."""
    text = _as_str(value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme == "redis" and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a bad port
        valid = valid and (parts.path.strip("/") == "" or parts.path.strip("/").isdigit())
    except ValueError:
        valid = False
    if not valid:
        raise _Invalid("expected a redis://host[:port][/db] URL")  # the URL may hold a password: not echoed
    return text


def _parse(parser: _Parser) -> dict[str, _Parser]:
    """Dataclass field metadata: read this field's TOML value with ``parser``."""
    return {"parse": parser}


#: How plain fields are read when their metadata names no parser.
_PARSERS_BY_TYPE: dict[object, _Parser] = {
    str: _as_str,
    str | None: _as_str,
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    tuple[str, ...]: _as_strings,
}

_ACCESS_DEFAULT = _choice("allow", "deny")
_REPOSITORY_NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[server.tls]``: serve HTTPS; ``client_auth = "required"`` needs ``client_ca_bundle``."""

    server_certificate_bundle: str
    server_private_key: str
    client_ca_bundle: str | None = None
    client_auth: str = field(default="optional", metadata=_parse(_choice("optional", "required")))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where to listen; no ``tls`` means plain HTTP."""

    bind_address: str = field(default="127.0.0.1", metadata=_parse(_ip_address))
    port: int = field(default=5000, metadata=_parse(_int_range(0, 65535)))
    tls: TlsConfig | None = None
    #: ``"systemd"`` (the socket passed by systemd) or a Twisted server endpoint string;
    #: replaces ``bind_address``/``port`` when set (``--listen`` overrides it).
    listen: str | None = field(default=None, metadata=_parse(_non_empty))
    #: One JSON line per request in the ``angosd.access`` log namespace; off for benchmarks.
    access_log: bool = True
    #: Worker processes sharing the listening socket; None (``"auto"``): one per usable core.
    #: 1 is a single process, as before workers existed (see `angosd.daemon.workers`).
    workers: int | None = field(default=None, metadata=_parse(parse_workers))


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

    endpoint: str = field(metadata=_parse(_http_url))
    bucket: str = field(metadata=_parse(_non_empty))
    access_key_id: str = field(metadata=_parse(_non_empty))
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    key_prefix: str = ""
    multipart_part_size: int = field(default=16 * 1024**2, metadata=_parse(_part_size))
    max_attempts: int = field(default=3, metadata=_parse(_int_range(1, 20)))
    operation_timeout_secs: float = field(default=900.0, metadata=_parse(_positive_float))
    operation_attempt_timeout_secs: float = field(default=300.0, metadata=_parse(_positive_float))
    presign_ttl_secs: int = field(default=1800, metadata=_parse(_int_range(1, 7 * 86400)))


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[cache.redis]``: state shared by several daemons (upload locks). Absent: in memory.

    A lock a daemon holds expires ``lock_ttl_secs`` after its last renewal, so a killed
    daemon blocks nobody for longer. The URL (it may hold a password) is never printed.
    """

    url: str = field(repr=False, metadata=_parse(_redis_url))
    key_prefix: str = "angosd:"
    lock_ttl_secs: float = field(default=15.0, metadata=_parse(_positive_float))


@dataclass(frozen=True, slots=True)
class AccessPolicyConfig:
    """``access_policy``: CEL ``rules`` and the decision when none matches."""

    default: str = field(default="allow", metadata=_parse(_ACCESS_DEFAULT))
    rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionPolicyConfig:
    """``retention_policy``: CEL rules deciding which manifests to keep."""

    rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One ``[[repository."NAME".upstream]]`` of a pull-through repository."""

    url: str = field(metadata=_parse(_http_url))
    username: str | None = None
    password: str | None = None
    server_ca_bundle: str | None = None
    client_certificate: str | None = None
    client_private_key: str | None = None
    max_redirect: int = field(default=5, metadata=_parse(_int_range(0, 255)))
    connect_timeout_secs: float = field(default=30.0, metadata=_parse(_positive_float))
    read_timeout_secs: float = field(default=300.0, metadata=_parse(_positive_float))


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """``[repository."NAME"]``: a served namespace prefix and its overrides.

    As loaded by `load_config`, ``immutable_tags``, ``immutable_tags_exclusions`` and
    ``authorization_webhook`` hold the ``[global]`` value when the repository does not
    set them; ``access_policy``/``retention_policy`` are None when not set here.
    """

    name: str
    immutable_tags: bool = False
    immutable_tags_exclusions: tuple[str, ...] = field(default=(), metadata=_parse(_regexes))
    access_policy: AccessPolicyConfig | None = None
    retention_policy: RetentionPolicyConfig | None = None
    upstreams: tuple[UpstreamConfig, ...] = ()
    authorization_webhook: str | None = None
    event_webhooks: tuple[str, ...] = ()
    #: Pull-through only: when an index is cached, fetch these platforms' manifests and
    #: blobs in the background (``("all",)`` for every platform; empty: no prefetch).
    prefetch_platforms: tuple[str, ...] = field(default=(), metadata=_parse(_platforms))

    @property
    def is_pull_through(self) -> bool:
        """True when the repository mirrors at least one upstream registry."""
        return bool(self.upstreams)


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """``[global]``: limits and the defaults every repository inherits."""

    max_manifest_size: int = field(default=4 * 1024 * 1024, metadata=_parse(parse_size))
    max_blob_size: int = field(default=100 * 1024**3, metadata=_parse(parse_size))
    update_pull_time: bool = False
    #: Answer blob GETs with a 307 to a presigned URL when the store can make one (S3).
    enable_blob_redirect: bool = True
    immutable_tags: bool = False
    immutable_tags_exclusions: tuple[str, ...] = field(default=(), metadata=_parse(_regexes))
    access_policy: AccessPolicyConfig = AccessPolicyConfig()
    retention_policy: RetentionPolicyConfig = RetentionPolicyConfig()
    gc_grace_secs: int = field(default=300, metadata=_parse(_int_range(0)))
    shutdown_drain_secs: int = field(default=30, metadata=_parse(_int_range(0)))
    authorization_webhook: str | None = None
    event_webhooks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """``[auth.identity.ID]``: a Basic-auth user; ``password`` is an argon2 PHC hash."""

    id: str
    username: str
    password: str = field(metadata=_parse(_argon2_hash))


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """``[auth.oidc.NAME]``: an OIDC issuer whose JWTs authenticate callers.

    ``required_claims`` maps claim names to the value each must have. Without
    ``jwks_uri`` the keys are found through ``<issuer>/.well-known/openid-configuration``.
    """

    name: str
    issuer: str = field(metadata=_parse(_http_url))
    jwks_uri: str | None = field(default=None, metadata=_parse(_http_url))
    required_audience: str | None = None
    required_claims: Mapping[str, Any] = field(default_factory=dict, metadata=_parse(_claims))
    allowed_algorithms: tuple[str, ...] = field(default=("RS256",), metadata=_parse(_algorithms))
    clock_skew_tolerance: int = field(default=60, metadata=_parse(_int_range(0, 86400)))
    jwks_refresh_interval: int = field(default=3600, metadata=_parse(_int_range(1)))
    server_ca_bundle: str | None = None
    http_request_timeout_secs: float = field(default=10.0, metadata=_parse(_positive_float))


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
    url: str = field(metadata=_parse(_http_url))
    timeout_ms: int = field(metadata=_parse(_int_range(1, 600_000)))
    bearer_token: str | None = None
    basic_auth: Mapping[str, str] | None = field(default=None, metadata=_parse(_basic_auth))
    forward_headers: tuple[str, ...] = ()
    cache_ttl: int = field(default=60, metadata=_parse(_int_range(0, 86400)))
    tls: WebhookTlsConfig = WebhookTlsConfig()


@dataclass(frozen=True, slots=True)
class EventWebhookConfig:
    """``[event_webhook.NAME]``: where registry events are POSTed, and how firmly."""

    name: str
    url: str = field(metadata=_parse(_http_url))
    policy: str = field(default="optional", metadata=_parse(_choice("required", "optional", "async")))
    events: tuple[str, ...] = field(default=(), metadata=_parse(_events))
    token: str | None = None
    timeout_ms: int = field(default=5000, metadata=_parse(_int_range(1, 600_000)))
    max_retries: int | None = field(default=None, metadata=_parse(_int_range(0, 16)))
    repository_filter: tuple[str, ...] = field(default=(), metadata=_parse(_regexes))
    tls: WebhookTlsConfig = WebhookTlsConfig()

    @property
    def retries(self) -> int:
        """Retries after the first attempt: 3 for required receivers, 0 otherwise, unless set."""
        if self.max_retries is not None:
            return self.max_retries
        return 3 if self.policy == "required" else 0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: the users, OIDC providers and authorization webhooks."""

    identities: tuple[IdentityConfig, ...] = ()
    oidc: tuple[OidcConfig, ...] = ()
    webhooks: tuple[AuthWebhookConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class UiConfig:
    """``[ui]``: the optional web interface."""

    enabled: bool = False
    name: str = "angosd"


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

    def repository_for(self, namespace: str) -> RepositoryConfig | None:
        """The repository named ``namespace`` or its longest ``"name/"`` prefix, if any."""
        best: RepositoryConfig | None = None
        for repository in self.repositories:
            inside = namespace == repository.name or namespace.startswith(repository.name + "/")
            if inside and (best is None or len(repository.name) > len(best.name)):
                best = repository
        return best

    def namespace_allowed(self, namespace: str) -> bool:
        """Whether ``namespace`` is served: always without repositories, else inside one."""
        return not self.repositories or self.repository_for(namespace) is not None


# --------------------------------------------------------------------------- merging


def _stamp(provenance: dict[_Path, str], value: object, source: str, path: _Path) -> None:
    """Record ``source`` as the origin of ``path`` and of every table key inside ``value``."""
    provenance[path] = source
    if isinstance(value, dict):
        for key, item in value.items():
            _stamp(provenance, item, source, (*path, key))


def _merge_into(target: dict[str, Any], table: Mapping[str, Any], provenance: dict[_Path, str],
                source: str, path: _Path) -> None:
    """Deep-merge ``table`` (from ``source``) into ``target``, keeping ``provenance`` current."""
    for key, value in table.items():
        here = (*path, key)
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            _merge_into(current, value, provenance, source, here)
            continue
        if key in target:
            for stale in [known for known in provenance if known[: len(here)] == here]:
                del provenance[stale]
        target[key] = copy.deepcopy(value)
        _stamp(provenance, value, source, here)


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` deep-merged with ``override``; neither input is modified.

    Tables present in both are merged recursively; any other value of ``override``
    (scalars, arrays, arrays of tables) replaces the one in ``base``.
    """
    merged = copy.deepcopy(dict(base))
    _merge_into(merged, override, {}, "", ())
    return merged


# --------------------------------------------------------------------------- reading

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(path: _Path) -> str:
    """``path`` as TOML would spell it: ``repository."lib/x".upstream[0].url``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return text


@dataclass(frozen=True, slots=True)
class _Context:
    """What every table reader shares: key origins, file order and the warning sink."""

    provenance: Mapping[_Path, str]
    sources: tuple[str, ...]
    warn: Callable[[str], None]

    def origin(self, path: _Path) -> str:
        """The file that set ``path`` (or its nearest recorded parent), else ``"<merged>"``."""
        for end in range(len(path), 0, -1):
            source = self.provenance.get(path[:end])
            if source is not None:
                return source
        return "<merged>"


class _Table:
    """One TOML table being read: typed access by key, errors naming file and key path.

    Every key looked at is remembered; `finish` warns about the others.
    """

    def __init__(self, context: _Context, path: _Path, data: Mapping[str, object]) -> None:
        self.context = context
        self.path = path
        self._data = data
        self._seen: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> list[str]:
        return list(self._data)

    def origin(self, key: str) -> str:
        return self.context.origin((*self.path, key))

    def error(self, key: str, problem: str, at: _Path = ()) -> ConfigError:
        """A `ConfigError` for ``key`` (and ``at`` below it) of this table."""
        path = (*self.path, key, *at)
        return ConfigError(f"{self.context.origin(path)}: {_dotted(path)}: {problem}")

    def warn(self, key: str, problem: str) -> None:
        self.context.warn(f"{self.origin(key)}: {_dotted((*self.path, key))}: {problem}")

    def get(self, key: str, parse: _Parser) -> Any:
        """``parse`` applied to the value of ``key``, which must be present."""
        self._seen.add(key)
        try:
            return parse(self._data[key])
        except _Invalid as invalid:
            raise self.error(key, invalid.problem, invalid.at) from None

    def table(self, key: str) -> _Table | None:
        """The sub-table ``key``, None if absent; a `ConfigError` if it is not a table."""
        self._seen.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return _Table(self.context, (*self.path, key), value)

    def section(self, key: str) -> _Table:
        """The sub-table ``key``, empty if absent."""
        found = self.table(key)
        return found if found is not None else _Table(self.context, (*self.path, key), {})

    def tables(self, key: str) -> list[_Table]:
        """The array of tables ``key`` (``[[...]]``), empty if absent."""
        self._seen.add(key)
        value = self._data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"expected a table, got {_kind(item)}", (index,))
        return [_Table(self.context, (*self.path, key, index), item) for index, item in enumerate(value)]

    def accept(self, keys: Iterable[str]) -> None:
        """Take ``keys`` as known without reading them."""
        self._seen.update(keys)

    def finish(self) -> None:
        """Warn once about each key of this table that nobody read."""
        for key in self._data:
            if key not in self._seen:
                self.warn(key, "unknown key, ignored")


_T = TypeVar("_T", bound="DataclassInstance")


def _build(cls: type[_T], table: _Table, accept: Iterable[str] = (), **given: Any) -> _T:
    """An instance of dataclass ``cls`` read from ``table``; ``given`` fields are not read.

    Each other field is read from the key of the same name with its parser, or left
    to its default; a field without default is a required key. Keys in ``accept``
    are tolerated unread; any other unread key is warned about.
    """
    values = dict(given)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in given:
            continue
        if f.name in table:
            values[f.name] = table.get(f.name, f.metadata.get("parse") or _PARSERS_BY_TYPE[hints[f.name]])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise table.error(f.name, "required key is missing")
    table.accept(accept)
    table.finish()
    return cls(**values)


# --------------------------------------------------------------------------- sections

_SERVER_EXTRAS = ("query_timeout", "query_timeout_grace_period", "handshake_timeout")
_GLOBAL_EXTRAS = ("max_concurrent_requests", "max_concurrent_cache_jobs", "enable_redirect",
                  "enable_manifest_redirect", "allow_missing_manifest_references", "trusted_proxies")
_REPOSITORY_EXTRAS = ("namespace",)
_ACCEPTED_SECTIONS = ("metadata_store", "cache", "observability")
_AUTH_EXTRAS = ("token_service",)
_TLS_KEYS = ("server_ca_bundle", "client_certificate_bundle", "client_private_key")
_OIDC_EXTRAS = ("provider", "client_certificate_bundle", "client_private_key", "bearer_token_file",
                "jwks_refresh_timeout_secs")
_INHERITED = ("immutable_tags", "immutable_tags_exclusions", "authorization_webhook")


def _tls(table: _Table) -> TlsConfig:
    tls = _build(TlsConfig, table)
    if tls.client_auth == "required" and tls.client_ca_bundle is None:
        raise table.error("client_auth", "'required' needs client_ca_bundle to be set")
    return tls


def _server(table: _Table) -> ServerConfig:
    tls = table.table("tls")
    return _build(ServerConfig, table, _SERVER_EXTRAS, tls=None if tls is None else _tls(tls))


_S3_EXTRAS = ("multipart_copy_threshold", "multipart_copy_chunk_size", "multipart_copy_jobs",
              "multipart_uniform_parts")


def _blob_store(table: _Table) -> tuple[FsStoreConfig, S3StoreConfig | None]:
    """``[blob_store]``: the filesystem store, or an S3 bucket (not both)."""
    fs = table.table("fs")
    s3 = table.table("s3")
    if fs is not None and s3 is not None:
        raise table.error("s3", "set either [blob_store.fs] or [blob_store.s3], not both")
    table.finish()
    if s3 is not None:
        return FsStoreConfig(), _build(S3StoreConfig, s3, _S3_EXTRAS)
    return (FsStoreConfig() if fs is None else _build(FsStoreConfig, fs)), None


def _redis(root: _Table) -> RedisConfig | None:
    """``[cache.redis]`` (or its alias ``[cache_store.redis]``); other ``[cache]`` keys are accepted."""
    for name in ("cache", "cache_store"):
        cache = root.table(name)
        redis = cache.table("redis") if cache is not None else None
        if redis is not None:
            return _build(RedisConfig, redis)
    return None


def _access_policy(table: _Table) -> AccessPolicyConfig:
    """Reads ``default``, or the legacy ``default_allow``; if both, the later file wins."""
    if "default_allow" not in table:
        return _build(AccessPolicyConfig, table)
    default = "allow" if table.get("default_allow", _as_bool) else "deny"
    if "default" in table:
        chosen = table.get("default", _ACCESS_DEFAULT)
        legacy_file, new_file = table.origin("default_allow"), table.origin("default")
        if legacy_file == new_file:
            raise table.error("default_allow", "conflicts with 'default'; set only one of them")
        order = table.context.sources
        if order.index(new_file) > order.index(legacy_file):
            default = chosen
    return _build(AccessPolicyConfig, table, default=default)


def _policies(table: _Table) -> dict[str, Any]:
    """The ``access_policy``/``retention_policy`` sub-tables present in ``table``, built."""
    policies: dict[str, Any] = {}
    access, retention = table.table("access_policy"), table.table("retention_policy")
    if access is not None:
        policies["access_policy"] = _access_policy(access)
    if retention is not None:
        policies["retention_policy"] = _build(RetentionPolicyConfig, retention)
    return policies


def _upstream(table: _Table) -> UpstreamConfig:
    upstream = _build(UpstreamConfig, table)
    if (upstream.client_certificate is None) != (upstream.client_private_key is None):
        present, missing = ("client_certificate", "client_private_key")
        if upstream.client_certificate is None:
            present, missing = missing, present
        raise table.error(present, f"{missing} must be set as well")
    return upstream


def _repositories(section: _Table, global_: GlobalConfig) -> tuple[RepositoryConfig, ...]:
    repositories: list[RepositoryConfig] = []
    for name in sorted(section.keys()):
        table = section.table(name)
        assert table is not None
        if not _REPOSITORY_NAME.fullmatch(name):
            problem = f"invalid repository name {name!r} (lowercase OCI name components separated by '/')"
            raise section.error(name, problem)
        inherited = {key: getattr(global_, key) for key in _INHERITED if key not in table}
        upstreams = tuple(_upstream(upstream) for upstream in table.tables("upstream"))
        repositories.append(_build(RepositoryConfig, table, _REPOSITORY_EXTRAS, name=name, upstreams=upstreams,
                                   **_policies(table), **inherited))
    section.finish()
    return tuple(repositories)


def _auth(table: _Table) -> AuthConfig:
    identities = []
    for key in sorted(table.section("identity").keys()):
        entry = table.section("identity").table(key)
        assert entry is not None
        identities.append(_build(IdentityConfig, entry, id=key))
    providers = []
    oidc_section = table.section("oidc")
    for name in sorted(oidc_section.keys()):
        entry = oidc_section.table(name)
        assert entry is not None
        providers.append(_build(OidcConfig, entry, _OIDC_EXTRAS, name=name))
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
    webhooks = tuple(_build(AuthWebhookConfig, entry, name=name, tls=_webhook_tls(entry))
                     for name, entry in _named_tables(webhook_section))
    webhook_section.finish()
    table.accept(_AUTH_EXTRAS)
    table.finish()
    return AuthConfig(identities=tuple(identities), oidc=tuple(providers), webhooks=webhooks)


def _named_tables(section: _Table) -> list[tuple[str, _Table]]:
    found = []
    for name in sorted(section.keys()):
        entry = section.table(name)
        assert entry is not None
        found.append((name, entry))
    return found


def _webhook_tls(table: _Table) -> WebhookTlsConfig:
    values = {key: table.get(key, _as_str) for key in _TLS_KEYS if key in table}
    tls = WebhookTlsConfig(**values)
    if (tls.client_certificate_bundle is None) != (tls.client_private_key is None):
        present = "client_certificate_bundle" if tls.client_private_key is None else "client_private_key"
        raise table.error(present, "client_certificate_bundle and client_private_key must be set together")
    return tls


def _check_webhook_references(root: _Table, global_: GlobalConfig, repositories: tuple[RepositoryConfig, ...],
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
                              f"{_dotted((*path, 'authorization_webhook'))}: no [auth.webhook.{authorization}]")
        for index, name in enumerate(event_list):
            if name not in event_names:
                raise ConfigError(f"{root.context.origin((*path, 'event_webhooks'))}: "
                                  f"{_dotted((*path, 'event_webhooks', index))}: no [event_webhook.{name}]")


def _config(root: _Table) -> Config:
    """The `Config` described by the merged document ``root``."""
    for key in _ACCEPTED_SECTIONS:
        root.table(key)  # must be a table; contents accepted unread
    server = _server(root.section("server"))
    blob_store, blob_store_s3 = _blob_store(root.section("blob_store"))
    redis = _redis(root)
    global_section = root.section("global")
    legacy_redirect = {}
    if "enable_blob_redirect" not in global_section and "enable_redirect" in global_section:
        legacy_redirect["enable_blob_redirect"] = global_section.get("enable_redirect", _as_bool)
    global_ = _build(GlobalConfig, global_section, _GLOBAL_EXTRAS, **_policies(global_section), **legacy_redirect)
    repositories = _repositories(root.section("repository"), global_)
    ui = _build(UiConfig, root.section("ui"))
    auth = _auth(root.section("auth"))
    event_section = root.section("event_webhook")
    events = tuple(_build(EventWebhookConfig, entry, name=name, tls=_webhook_tls(entry))
                   for name, entry in _named_tables(event_section))
    event_section.finish()
    _check_webhook_references(root, global_, repositories, auth, events)
    root.finish()
    return Config(server=server, blob_store=blob_store, blob_store_s3=blob_store_s3, redis=redis,
                  global_=global_, repositories=repositories, ui=ui,
                  auth=auth, event_webhooks=events, sources=root.context.sources)


# --------------------------------------------------------------------------- entry points


def _ignore(_message: str) -> None:
    """The default warning sink: drop the message."""


def _read_toml(source: str) -> dict[str, Any]:
    """The parsed TOML document in ``source``; a `ConfigError` naming it otherwise."""
    try:
        with open(source, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read file: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None


def default_config() -> Config:
    """The built-in configuration: plain HTTP on 127.0.0.1:5000, ``./registry-data``, allow all."""
    return Config()


def load_config(paths: Sequence[str | os.PathLike[str]] | str, warn: Callable[[str], None] = _ignore) -> Config:
    """The validated `Config` from the TOML files ``paths``, merged in order.

    Raises `ConfigError` (one line, naming the file and key path) for an unreadable
    file, a TOML syntax error, a wrong type, a bad value or a missing required key.
    Calls ``warn`` once per unknown key (``"<file>: <key.path>: unknown key, ignored"``);
    loading still succeeds. No paths at all gives `default_config` (with no sources).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = tuple(os.fspath(path) for path in paths)
    merged: dict[str, Any] = {}
    provenance: dict[_Path, str] = {}
    for source in sources:
        _merge_into(merged, _read_toml(source), provenance, source, ())
    return _config(_Table(_Context(provenance, sources, warn), (), merged))
