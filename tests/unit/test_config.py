"""angosd.config: TOML files -> validated dataclasses, merging, and error messages."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from angosd.config import (
    AccessPolicyConfig,
    AuditConfig,
    Config,
    ConfigError,
    FsStoreConfig,
    GlobalConfig,
    RedisConfig,
    RepositoryConfig,
    RetentionPolicyConfig,
    S3StoreConfig,
    ServerConfig,
    TlsConfig,
    TracingConfig,
    UiConfig,
    UpstreamConfig,
    default_config,
    load_config,
    merge_tables,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "angosd.toml"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load(*paths: str) -> tuple[Config, list[str]]:
    warnings: list[str] = []
    return load_config(paths, warnings.append), warnings


def load_error(*paths: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(paths)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- defaults


def test_default_config_is_local_plain_http_allow_all() -> None:
    config = default_config()
    assert config.server == ServerConfig(bind_address="127.0.0.1", port=5000, tls=None)
    assert config.blob_store == FsStoreConfig(root_dir="./registry-data", sync_to_disk=False)
    assert config.global_.access_policy == AccessPolicyConfig(default="allow", rules=())
    assert config.global_.max_manifest_size == 4 * 1024 * 1024
    assert config.global_.max_blob_size == 100 * 1024**3
    assert config.repositories == ()
    assert config.ui == UiConfig(enabled=False, name="angosd")
    assert config.namespace_allowed("anything/at/all")


def test_no_files_and_empty_file_give_the_defaults(tmp_path: Path) -> None:
    assert load_config([]) == default_config()
    empty = write(tmp_path, "empty.toml", "")
    config, warnings = load(empty)
    assert warnings == []
    assert dataclasses.replace(config, sources=()) == default_config()
    assert config.sources == (empty,)


def test_config_objects_are_frozen() -> None:
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- full files

ANGOS_FILE = """
    [server]
    bind_address = "0.0.0.0"
    port = 8000
    query_timeout = 3600
    query_timeout_grace_period = 60

    [server.tls]
    server_certificate_bundle = "/tls/server.crt"
    server_private_key = "/tls/server.key"
    client_ca_bundle = "/tls/ca.crt"
    client_auth = "required"

    [global]
    max_concurrent_requests = 64
    max_concurrent_cache_jobs = 4
    update_pull_time = true
    enable_redirect = true
    immutable_tags = true
    immutable_tags_exclusions = ["^latest$"]
    authorization_webhook = "authz"
    event_webhooks = ["audit"]
    trusted_proxies = ["10.0.0.0/8"]
    max_manifest_size = "8MiB"
    max_blob_size = 1000
    gc_grace_secs = 60
    shutdown_drain_secs = 5

    [global.access_policy]
    default_allow = false
    rules = ["identity.username != null"]

    [global.retention_policy]
    rules = ["image.tag != null", "top_pushed(10)"]

    [blob_store.fs]
    root_dir = "relative/blobs"
    sync_to_disk = true

    [metadata_store.fs]
    root_dir = "/var/registry/metadata"

    [metadata_store.fs.lock_strategy.redis]
    url = "redis://localhost:6379"
    ttl = 10

    [cache.redis]
    url = "redis://localhost:6379"
    key_prefix = "angos"

    [auth.identity.admin]
    username = "admin"
    password = "$argon2id$v=19$m=65536,t=3,p=4$oxAP82/uu6CkUea1mBcUWA$OXgGT+jFHTrJRPp0z7lX4jOfe7cxXKa+Et91PAvpbHc"

    [auth.oidc.github-actions]
    provider = "github"
    issuer = "https://token.actions.githubusercontent.com"

    [auth.webhook.authz]
    url = "https://authz.example.com"
    timeout_ms = 1000

    [repository."docker-io"]
    namespace = "docker-io"
    event_webhooks = ["audit"]
    authorization_webhook = ""

    [[repository."docker-io".upstream]]
    url = "https://registry-1.docker.io"
    username = "mirror"
    password = "secret"
    max_redirect = 3

    [[repository."docker-io".upstream]]
    url = "http://mirror.internal:5000"
    server_ca_bundle = "/tls/mirror-ca.crt"
    client_certificate = "/tls/c.crt"
    client_private_key = "/tls/c.key"
    connect_timeout_secs = 2
    read_timeout_secs = 7.5

    [repository."team/app"]
    immutable_tags = false

    [repository."team/app".access_policy]
    default = "deny"
    rules = ["identity.username == 'admin'"]

    [repository."team/app".retention_policy]
    rules = ["top_pushed(20)"]

    [event_webhook.audit]
    url = "https://audit.example.com"
    policy = "async"
    events = ["manifest.push"]

    [observability.tracing]
    endpoint = "http://otel:4317"
    sampling_rate = 0.5

    [ui]
    enabled = true
    name = "My Registry"
"""


def test_full_angos_style_file_loads_warning_only_about_keys_without_effect(tmp_path: Path) -> None:
    path = write(tmp_path, "angos.toml", ANGOS_FILE)
    config, warnings = load(path)
    assert warnings == [f"{path}: accepted for compatibility, has no effect in angosd: {key}" for key in
                        ("metadata_store.fs.lock_strategy", "global.max_concurrent_cache_jobs",
                         "auth.oidc.github-actions.provider")]
    assert config.sources == (path,)
    assert config.server == ServerConfig(
        bind_address="0.0.0.0", port=8000, query_timeout=3600.0, query_timeout_grace_period=60.0,
        tls=TlsConfig("/tls/server.crt", "/tls/server.key", client_ca_bundle="/tls/ca.crt", client_auth="required"),
    )
    assert config.blob_store == FsStoreConfig(root_dir="relative/blobs", sync_to_disk=True)
    assert config.global_ == GlobalConfig(
        max_manifest_size=8 * 2**20, max_blob_size=1000, update_pull_time=True, immutable_tags=True,
        immutable_tags_exclusions=("^latest$",),
        access_policy=AccessPolicyConfig(default="deny", rules=("identity.username != null",)),
        retention_policy=RetentionPolicyConfig(rules=("image.tag != null", "top_pushed(10)")),
        gc_grace_secs=60, shutdown_drain_secs=5, authorization_webhook="authz", event_webhooks=("audit",),
        max_concurrent_requests=64, trusted_proxies=("10.0.0.0/8",),
    )
    assert config.observability.tracing == TracingConfig(endpoint="http://otel:4317", sampling_rate=0.5)
    hub, app = config.repositories
    assert hub == RepositoryConfig(
        name="docker-io", immutable_tags=True, immutable_tags_exclusions=("^latest$",), authorization_webhook="",
        event_webhooks=("audit",), namespace="docker-io",
        upstreams=(
            UpstreamConfig(url="https://registry-1.docker.io", username="mirror", password="secret", max_redirect=3),
            UpstreamConfig(url="http://mirror.internal:5000", server_ca_bundle="/tls/mirror-ca.crt",
                           client_certificate="/tls/c.crt", client_private_key="/tls/c.key",
                           connect_timeout_secs=2.0, read_timeout_secs=7.5),
        ),
    )
    assert hub.is_pull_through
    assert isinstance(hub.upstreams[1].connect_timeout_secs, float)
    assert app == RepositoryConfig(
        name="team/app", immutable_tags=False, immutable_tags_exclusions=("^latest$",), authorization_webhook="authz",
        access_policy=AccessPolicyConfig(default="deny", rules=("identity.username == 'admin'",)),
        retention_policy=RetentionPolicyConfig(rules=("top_pushed(20)",)),
    )
    assert not app.is_pull_through
    assert config.ui == UiConfig(enabled=True, name="My Registry")


def test_repositories_are_sorted_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", """
        [repository."zeta"]
        [repository."alpha/beta"]
        [repository."alpha"]
    """)
    config, _ = load(path)
    assert [repository.name for repository in config.repositories] == ["alpha", "alpha/beta", "zeta"]


@pytest.mark.parametrize(("legacy", "expected"), [(True, "allow"), (False, "deny")])
def test_legacy_default_allow(tmp_path: Path, legacy: bool, expected: str) -> None:
    path = write(tmp_path, "a.toml", f"[global.access_policy]\ndefault_allow = {str(legacy).lower()}\n")
    assert load(path)[0].global_.access_policy.default == expected


def test_default_and_default_allow_later_file_wins(tmp_path: Path) -> None:
    legacy = write(tmp_path, "legacy.toml", "[global.access_policy]\ndefault_allow = false\n")
    modern = write(tmp_path, "modern.toml", '[global.access_policy]\ndefault = "allow"\n')
    assert load(legacy, modern)[0].global_.access_policy.default == "allow"
    assert load(modern, legacy)[0].global_.access_policy.default == "deny"


def test_default_and_default_allow_in_one_file_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", '[global.access_policy]\ndefault = "allow"\ndefault_allow = false\n')
    assert load_error(path).startswith(f"{path}: global.access_policy.default_allow: conflicts with 'default'")


def test_s3_next_to_fs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", '[blob_store.fs]\nroot_dir = "/d"\n[blob_store.s3]\nbucket = "b"\n')
    assert load_error(path) == f"{path}: blob_store.s3: set either [blob_store.fs] or [blob_store.s3], not both"


S3_SECTION = """
[blob_store.s3]
endpoint = "http://127.0.0.1:9000"
bucket = "registry"
access_key_id = "AKID"
secret_key = "very-secret"
"""


def test_s3_store_defaults(tmp_path: Path) -> None:
    config, warnings = load(write(tmp_path, "a.toml", S3_SECTION))
    assert warnings == []
    s3 = config.blob_store_s3
    assert s3 == S3StoreConfig(endpoint="http://127.0.0.1:9000", bucket="registry", access_key_id="AKID",
                               secret_key="very-secret")
    assert (s3.region, s3.key_prefix, s3.multipart_part_size, s3.max_attempts) == ("us-east-1", "", 16 * 1024**2, 3)
    assert (s3.operation_timeout_secs, s3.operation_attempt_timeout_secs, s3.presign_ttl_secs) == (900.0, 300.0, 1800)
    assert "very-secret" not in repr(config)
    assert config.global_.enable_blob_redirect is True
    assert config.redis is None


def test_s3_store_all_keys(tmp_path: Path) -> None:
    extra = """region = "eu-west-3"
key_prefix = "angosd/prod"
multipart_part_size = "64MiB"
max_attempts = 5
operation_timeout_secs = 60
operation_attempt_timeout_secs = 7.5
presign_ttl_secs = 300
multipart_copy_jobs = 4
[global]
enable_blob_redirect = false
[cache.redis]
url = "redis://:pw@10.0.0.5:6380/2"
key_prefix = "reg:"
lock_ttl_secs = 5
"""
    path = write(tmp_path, "a.toml", S3_SECTION + extra)
    config, warnings = load(path)
    assert warnings == [f"{path}: accepted for compatibility, has no effect in angosd: "
                        "blob_store.s3.multipart_copy_jobs"]
    s3 = config.blob_store_s3
    assert s3 is not None
    assert (s3.region, s3.key_prefix, s3.multipart_part_size) == ("eu-west-3", "angosd/prod", 64 * 1024**2)
    assert (s3.max_attempts, s3.operation_timeout_secs, s3.operation_attempt_timeout_secs) == (5, 60.0, 7.5)
    assert s3.presign_ttl_secs == 300
    assert config.global_.enable_blob_redirect is False
    assert config.redis == RedisConfig(url="redis://:pw@10.0.0.5:6380/2", key_prefix="reg:", lock_ttl_secs=5.0)
    assert ":pw@" not in repr(config)


def test_legacy_enable_redirect_and_cache_store_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", '[global]\nenable_redirect = false\n[cache_store.redis]\nurl = "redis://r"\n')
    config, warnings = load(path)
    assert warnings == []
    assert config.global_.enable_blob_redirect is False
    assert config.redis is not None and config.redis.url == "redis://r"
    both = write(tmp_path, "b.toml", "[global]\nenable_redirect = false\nenable_blob_redirect = true\n")
    assert load(both)[0].global_.enable_blob_redirect is True


# --------------------------------------------------------------------------- the example file


def test_example_file_loads_without_warnings() -> None:
    config, warnings = load(str(EXAMPLE))
    assert warnings == []
    assert config.server.bind_address == "127.0.0.1"
    assert config.server.port == 5000
    assert config.server.tls is None
    assert config.blob_store.root_dir == "/var/lib/angosd"
    assert config.repositories == ()
    assert config.namespace_allowed("team/app")
    assert not config.access_policy_configured


def _uncomment(first: str, last: str) -> str:
    """The commented-out block of the example file from line ``first`` to ``last``, enabled."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    block = lines[lines.index(first): lines.index(last) + 1]
    enabled = [line.removeprefix("# ") for line in block]
    return "\n".join(line for line in enabled if not line.startswith("#")) + "\n"


def test_example_file_s3_section_is_valid(tmp_path: Path) -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    without_fs = example.replace("[blob_store.fs]\n", "[unused_fs_example]\n")  # s3 replaces fs
    base = write(tmp_path, "base.toml", without_fs)
    s3 = write(tmp_path, "s3.toml", _uncomment("# [blob_store.s3]", "# presign_ttl_secs = 1800"))
    config, warnings = load(base, s3)
    assert warnings == [f"{base}: unused_fs_example: unknown key, ignored"]
    assert config.blob_store_s3 == S3StoreConfig(endpoint="https://s3.example.com", bucket="registry",
                                                 access_key_id="...", secret_key="...", key_prefix="angosd")
    assert config.global_.enable_blob_redirect is True


def test_example_file_commented_sections_are_valid(tmp_path: Path) -> None:
    tls = _uncomment("# [server.tls]", '# client_auth = "optional"')
    hub = _uncomment('# [repository."hub"]', "# read_timeout_secs = 300")
    redis = _uncomment("# [cache.redis]", "# lock_ttl_secs = 15")
    extras = write(tmp_path, "extras.toml", tls + hub + redis)
    config, warnings = load(str(EXAMPLE), extras)
    assert warnings == []
    assert config.server.tls == TlsConfig("/etc/angosd/tls/server.crt", "/etc/angosd/tls/server.key",
                                          client_ca_bundle="/etc/angosd/tls/clients-ca.crt")
    assert config.redis == RedisConfig(url="redis://localhost:6379/0")
    hub_config = config.repository_for("hub/library/alpine")
    assert hub_config is not None and hub_config.is_pull_through
    assert hub_config.upstreams[0].url == "https://registry-1.docker.io"


def test_thread_pool_sizes_default_and_the_example_block_is_valid(tmp_path: Path) -> None:
    server = ServerConfig()
    assert (server.io_threads, server.io_queue, server.cpu_threads, server.cpu_queue) == (10, 1024, 2, 64)
    pools = write(tmp_path, "pools.toml", "[server]\n" + _uncomment("# io_threads = 10", "# cpu_queue = 64"))
    config, warnings = load(str(EXAMPLE), pools)
    assert warnings == []
    assert (config.server.io_threads, config.server.io_queue) == (10, 1024)
    assert (config.server.cpu_threads, config.server.cpu_queue) == (2, 64)


def test_thread_pool_sizes_are_read_and_bounded(tmp_path: Path) -> None:
    sizes = write(tmp_path, "a.toml", "[server]\nio_threads = 4\nio_queue = 100\ncpu_threads = 1\ncpu_queue = 8\n")
    config, warnings = load(sizes)
    assert (config.server.io_threads, config.server.io_queue) == (4, 100)
    assert (config.server.cpu_threads, config.server.cpu_queue) == (1, 8)
    assert warnings == []
    zero = write(tmp_path, "b.toml", "[server]\ncpu_threads = 0\n")
    assert load_error(zero) == f"{zero}: server.cpu_threads: must be between 1 and 256, got 0"
    text = write(tmp_path, "c.toml", '[server]\nio_queue = "many"\n')
    assert load_error(text) == f"{text}: server.io_queue: expected an integer, got string"
    huge = write(tmp_path, "d.toml", "[server]\nio_queue = 1000001\n")
    assert load_error(huge) == f"{huge}: server.io_queue: must be between 1 and 1000000, got 1000001"


# --------------------------------------------------------------------------- merging


def test_multi_file_merge(tmp_path: Path) -> None:
    base = write(tmp_path, "base.toml", """
        [server]
        bind_address = "0.0.0.0"
        port = 5000

        [global]
        immutable_tags_exclusions = ["^latest$", "^dev$"]

        [global.access_policy]
        default = "deny"
        rules = ["a", "b"]

        [repository."hub"]
        immutable_tags = true

        [[repository."hub".upstream]]
        url = "https://one.example"
        username = "u1"

        [[repository."hub".upstream]]
        url = "https://two.example"
    """)
    override = write(tmp_path, "override.toml", """
        [server]
        port = 5443

        [global]
        immutable_tags_exclusions = ["^nightly$"]

        [global.access_policy]
        rules = ["c"]

        [[repository."hub".upstream]]
        url = "https://three.example"
    """)
    config, warnings = load(base, override)
    assert warnings == []
    assert config.sources == (base, override)
    assert config.server == ServerConfig(bind_address="0.0.0.0", port=5443)  # table merged, scalar replaced
    assert config.global_.immutable_tags_exclusions == ("^nightly$",)  # array replaced, not appended
    assert config.global_.access_policy == AccessPolicyConfig(default="deny", rules=("c",))
    (hub,) = config.repositories
    assert hub.immutable_tags  # kept from base
    assert hub.upstreams == (UpstreamConfig(url="https://three.example"),)  # array of tables replaced


def test_merge_tables_is_deep_and_pure() -> None:
    base: dict[str, Any] = {"a": {"x": 1, "y": [1, 2], "t": {"k": 1}}, "arr": [{"u": 1}], "s": "keep"}
    override: dict[str, Any] = {"a": {"y": [3], "t": {"j": 2}, "z": True}, "arr": [{"v": 2}]}
    base_before, override_before = json.dumps(base), json.dumps(override)
    merged = merge_tables(base, override)
    assert merged == {"a": {"x": 1, "y": [3], "t": {"k": 1, "j": 2}, "z": True}, "arr": [{"v": 2}], "s": "keep"}
    assert json.dumps(base) == base_before and json.dumps(override) == override_before
    merged["a"]["t"]["k"] = 99
    assert base["a"]["t"]["k"] == 1


def test_merge_tables_replaces_across_kinds() -> None:
    assert merge_tables({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert merge_tables({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


# --------------------------------------------------------------------------- errors


ERROR_CASES = [
    pytest.param("[server]\nport = 5000\n", '[server]\nport = "80"\n', "server.port", "expected an integer, got string",
                 id="wrong-type-second-file"),
    pytest.param("[server]\nport = true\n", "", "server.port", "expected an integer, got boolean",
                 id="bool-is-not-int"),
    pytest.param("[server]\nport = 70000\n", "", "server.port", "must be between 0 and 65535", id="port-range"),
    pytest.param("[blob_store.fs]\nsync_to_disk = 1\n", "", "blob_store.fs.sync_to_disk",
                 "expected a boolean, got integer", id="int-is-not-bool"),
    pytest.param('[server]\nbind_address = "localhost"\n', "", "server.bind_address", "expected an IP address",
                 id="bad-ip"),
    pytest.param('[global]\nmax_blob_size = "5 parsecs"\n', "", "global.max_blob_size", "expected a size",
                 id="bad-size-string"),
    pytest.param("[global]\nmax_manifest_size = 0\n", "", "global.max_manifest_size", "size must be between 1",
                 id="zero-size"),
    pytest.param('[global]\nimmutable_tags_exclusions = ["ok", "("]\n', "", "global.immutable_tags_exclusions[1]",
                 "invalid regular expression '('", id="bad-regex"),
    pytest.param('[global]\nimmutable_tags_exclusions = ["a{4294967296}"]\n', "", "global.immutable_tags_exclusions[0]",
                 "invalid regular expression", id="regex-repeat-overflow"),
    pytest.param('[global]\nimmutable_tags_exclusions = ["ok", 3]\n', "", "global.immutable_tags_exclusions[1]",
                 "expected a string, got integer", id="array-element-type"),
    pytest.param('[global.access_policy]\ndefault = "maybe"\n', "", "global.access_policy.default",
                 "expected one of 'allow', 'deny', got 'maybe'", id="bad-enum"),
    pytest.param("[server.tls]\nserver_certificate_bundle = 'c'\nserver_private_key = 'k'\n",
                 "[server.tls]\nclient_auth = 'sometimes'\n", "server.tls.client_auth",
                 "expected one of 'optional', 'required'", id="bad-enum-second-file"),
    pytest.param('[server.tls]\nserver_certificate_bundle = "/c.pem"\n', "", "server.tls.server_private_key",
                 "required key is missing", id="missing-tls-key"),
    pytest.param("[server.tls]\nserver_certificate_bundle = 'c'\nserver_private_key = 'k'\nclient_auth = 'required'\n",
                 "", "server.tls.client_auth", "needs client_ca_bundle", id="required-client-auth-needs-ca"),
    pytest.param("[global]\n", '[repository."hub"]\n[[repository."hub".upstream]]\nusername = "u"\n',
                 "repository.hub.upstream[0].url", "required key is missing", id="missing-upstream-url"),
    pytest.param('[[repository."hub".upstream]]\nurl = "ftp://example.com"\n', "", "repository.hub.upstream[0].url",
                 "expected an http:// or https:// URL", id="bad-upstream-url"),
    pytest.param('[[repository."hub".upstream]]\nurl = "https://x.example"\nclient_certificate = "c"\n', "",
                 "repository.hub.upstream[0].client_certificate", "client_private_key must be set as well",
                 id="client-cert-without-key"),
    pytest.param('[[repository."hub".upstream]]\nurl = "https://x.example"\nread_timeout_secs = 0\n', "",
                 "repository.hub.upstream[0].read_timeout_secs", "greater than 0", id="zero-timeout"),
    pytest.param('[repository."hub".upstream]\nurl = "https://x.example"\n', "", "repository.hub.upstream",
                 "expected an array of tables, got table", id="upstream-not-array"),
    pytest.param('[repository."Team/App"]\n', "", 'repository."Team/App"', "invalid repository name",
                 id="bad-repository-name"),
    pytest.param("[repository]\napps = 3\n", "", "repository.apps", "expected a table, got integer",
                 id="repository-not-table"),
    pytest.param("server = 5\n", "", "server", "expected a table, got integer", id="section-not-table"),
    pytest.param('[blob_store.s3]\nbucket = "b"\n', "", "blob_store.s3.endpoint",
                 "required key is missing", id="s3-without-endpoint"),
    pytest.param(S3_SECTION, '[blob_store.s3]\nmultipart_part_size = "1MiB"\n', "blob_store.s3.multipart_part_size",
                 "must be between 5MiB and 5GiB", id="s3-part-too-small"),
    pytest.param(S3_SECTION, '[blob_store.s3]\nendpoint = "s3.local"\n', "blob_store.s3.endpoint",
                 "expected an http:// or https:// URL", id="s3-bad-endpoint"),
    pytest.param(S3_SECTION + "max_attempts = 0\n", "", "blob_store.s3.max_attempts", "must be between 1 and 20",
                 id="s3-no-attempts"),
    pytest.param('[cache.redis]\nurl = "http://:secret@r"\n', "", "cache.redis.url",
                 "expected a redis://host[:port][/db] URL", id="redis-bad-url"),
    pytest.param("[cache.redis]\nkey_prefix = 'x'\n", "", "cache.redis.url", "required key is missing",
                 id="redis-without-url"),
    pytest.param('[ui]\nname = ["x"]\n', "", "ui.name", "expected a string, got array", id="string-expected"),
    pytest.param("[global.access_policy]\nrules = 'x'\n", "", "global.access_policy.rules",
                 "expected an array of strings, got string", id="array-expected"),
]


@pytest.mark.parametrize(("first", "second", "key", "problem"), ERROR_CASES)
def test_errors_name_the_file_and_key(tmp_path: Path, first: str, second: str, key: str, problem: str) -> None:
    a = write(tmp_path, "a.toml", first)
    b = write(tmp_path, "b.toml", second)
    message = load_error(a, b)
    culprit = b if second.strip() else a
    assert message.startswith(f"{culprit}: {key}: "), message
    assert problem in message, message


def test_error_names_the_file_that_set_the_key_even_when_it_comes_first(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", '[global]\nmax_blob_size = "lots"\n')
    b = write(tmp_path, "b.toml", "[global]\nupdate_pull_time = true\n")
    assert load_error(a, b).startswith(f"{a}: global.max_blob_size: ")


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    message = load_error(missing)
    assert message.startswith(f"{missing}: cannot read file")


def test_unreadable_file(tmp_path: Path) -> None:
    message = load_error(str(tmp_path))  # a directory cannot be read as a file
    assert message.startswith(f"{tmp_path}: cannot read file")


def test_toml_syntax_error(tmp_path: Path) -> None:
    good = write(tmp_path, "good.toml", "[server]\nport = 1\n")
    bad = write(tmp_path, "bad.toml", "[server\nport = = 1\n")
    message = load_error(good, bad)
    assert message.startswith(f"{bad}: invalid TOML: ")
    assert "line 1" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[ui]\nname = "caf\xe9"\n')
    assert load_error(str(path)).startswith(f"{path}: invalid TOML: ")


def test_key_paths_with_special_characters_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", '[repository."bad\\nname"]\n')
    message = load_error(path)
    assert message.startswith(f'{path}: repository."bad\\nname": invalid repository name')


# --------------------------------------------------------------------------- unknown keys


def test_unknown_keys_warn_once_each_and_loading_succeeds(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", """
        typo_section = 1

        [server]
        port = 5001
        prot = 5002
        workers = 4

        [server.tls]
        server_certificate_bundle = "c"
        server_private_key = "k"
        cipher = "x"

        [global.access_policy]
        defualt = "deny"

        [repository."apps"]
        imutable_tags = true

        [[repository."apps".upstream]]
        url = "https://x.example"
        timeout = 3

        [nonsense.deeply.nested]
        a = 1
        b = 2

        [auth.identity.someone]
        username = "u"
        password = "$argon2id$v=19$m=65536,t=3,p=4$oxAP82/uu6CkUea1mBcUWA$OXgGT+jFHTrJRPp0z7lX4jOfe7cxXKa+Et91PAvpbHc"
        anything = "goes here"
    """)
    b = write(tmp_path, "b.toml", """
        [ui]
        enabled = true
        colour = "blue"

        [blob_store.fs]
        root = "/x"
    """)
    config, warnings = load(a, b)
    assert config.server.port == 5001
    assert config.ui.enabled
    assert sorted(warnings) == sorted([
        f"{a}: typo_section: unknown key, ignored",
        f"{a}: server.prot: unknown key, ignored",
        f"{a}: server.tls.cipher: unknown key, ignored",
        f"{a}: global.access_policy.defualt: unknown key, ignored",
        f"{a}: repository.apps.imutable_tags: unknown key, ignored",
        f"{a}: repository.apps.upstream[0].timeout: unknown key, ignored",
        f"{a}: nonsense: unknown key, ignored",
        f"{a}: auth.identity.someone.anything: unknown key, ignored",
        f"{b}: ui.colour: unknown key, ignored",
        f"{b}: blob_store.fs.root: unknown key, ignored",
    ])


# --------------------------------------------------------------------------- repositories


def _with_repositories(*names: str) -> Config:
    return Config(repositories=tuple(RepositoryConfig(name=name) for name in sorted(names)))


@pytest.mark.parametrize(("namespace", "expected"), [
    ("team", "team"),
    ("team/app", "team/app"),
    ("team/app/sub", "team/app"),
    ("team/application", "team"),
    ("team/other", "team"),
    ("teams", None),
    ("tea", None),
    ("other", None),
    ("hub/library/alpine", "hub"),
])
def test_repository_for_longest_prefix(namespace: str, expected: str | None) -> None:
    config = _with_repositories("hub", "team", "team/app")
    found = config.repository_for(namespace)
    assert (found.name if found else None) == expected
    assert config.namespace_allowed(namespace) == (expected is not None)


def test_namespace_allowed_without_repositories() -> None:
    assert Config().namespace_allowed("whatever/you/like")
    assert Config().repository_for("whatever") is None


def test_repositories_inherit_global_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", """
        [global]
        immutable_tags = true
        immutable_tags_exclusions = ["^latest$"]
        authorization_webhook = "authz"

        [auth.webhook.authz]
        url = "https://authz.example"
        timeout_ms = 500

        [repository."inherits"]

        [repository."overrides"]
        immutable_tags = false
        immutable_tags_exclusions = []
        authorization_webhook = ""
    """)
    inherits, overrides = load(path)[0].repositories
    assert (inherits.immutable_tags, inherits.immutable_tags_exclusions, inherits.authorization_webhook) == (
        True, ("^latest$",), "authz")
    assert (overrides.immutable_tags, overrides.immutable_tags_exclusions, overrides.authorization_webhook) == (
        False, (), "")
    assert inherits.access_policy is None and inherits.retention_policy is None


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("5MiB", 5 * 2**20), ("4 MiB", 4 * 2**20), ("100GiB", 100 * 2**30), ("5MB", 5 * 10**6), ("512KiB", 512 * 2**10),
    ("1024", 1024), ("1024B", 1024), ("2kb", 2000), ("1.5GiB", 3 * 2**29), (" 7 TiB ", 7 * 2**40), (42, 42),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MiB", "5 parsecs", "-5MiB", "0", "0.5", "1e3", "5 Mi B", "\uff15MiB", 0, -1, 1.5,
                                 True, "9" * 5000, 2**63])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_size_string_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", '[global]\nmax_manifest_size = "8 MiB"\nmax_blob_size = "5GB"\n')
    config = load(path)[0]
    assert (config.global_.max_manifest_size, config.global_.max_blob_size) == (8 * 2**20, 5 * 10**9)


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


@given(n=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)), space=st.sampled_from(["", " "]),
       lower=st.booleans())
def test_size_round_trip(n: int, unit: str, space: str, lower: bool) -> None:
    text = f"{n}{space}{unit.lower() if lower else unit}"
    assert parse_size(text) == n * UNITS[unit]
    assert parse_size(n * UNITS[unit]) == n * UNITS[unit]


@given(n=st.integers(1, 2**40))
def test_size_mib_round_trip(n: int) -> None:
    assert parse_size(f"{n}MiB") == n * 2**20


@given(st.text())
def test_size_parsing_only_raises_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int) and size > 0


# --------------------------------------------------------------------------- junk values


def toml_value(value: object) -> str:
    """``value`` as a TOML inline value (the test's own tiny writer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(key)} = {toml_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(value)


TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), TEXT,
    st.sampled_from(["5MiB", "0.0.0.0", "https://x.example", "allow", "required", "^x$", "(", "0"]),
    st.datetimes(min_value=datetime.datetime(1000, 1, 1)), st.dates(min_value=datetime.date(1000, 1, 1)), st.times(),
)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)

# (table header and prerequisites, key, dotted path of the key, the Python types a valid value has)
TYPED_KEYS: list[tuple[str, str, str, tuple[type, ...]]] = [
    ("[server]", "port", "server.port", (int,)),
    ("[server]", "bind_address", "server.bind_address", (str,)),
    ("[server.tls]\nserver_certificate_bundle = 'c'\nserver_private_key = 'k'", "client_auth", "server.tls.client_auth",
     (str,)),
    ("[server.tls]\nserver_private_key = 'k'", "server_certificate_bundle", "server.tls.server_certificate_bundle",
     (str,)),
    ("[blob_store.fs]", "root_dir", "blob_store.fs.root_dir", (str,)),
    ("[blob_store.fs]", "sync_to_disk", "blob_store.fs.sync_to_disk", (bool,)),
    ("[global]", "max_manifest_size", "global.max_manifest_size", (int, str)),
    ("[global]", "max_blob_size", "global.max_blob_size", (int, str)),
    ("[global]", "update_pull_time", "global.update_pull_time", (bool,)),
    ("[global]", "immutable_tags_exclusions", "global.immutable_tags_exclusions", (list,)),
    ("[global]", "gc_grace_secs", "global.gc_grace_secs", (int,)),
    ("[global]", "authorization_webhook", "global.authorization_webhook", (str,)),
    ("[global.access_policy]", "default", "global.access_policy.default", (str,)),
    ("[global.access_policy]", "default_allow", "global.access_policy.default_allow", (bool,)),
    ("[global.retention_policy]", "rules", "global.retention_policy.rules", (list,)),
    ('[repository."r"]', "immutable_tags", "repository.r.immutable_tags", (bool,)),
    ('[repository."r".access_policy]', "rules", "repository.r.access_policy.rules", (list,)),
    ('[[repository."r".upstream]]', "url", "repository.r.upstream[0].url", (str,)),
    ('[[repository."r".upstream]]\nurl = "https://x.example"', "max_redirect", "repository.r.upstream[0].max_redirect",
     (int,)),
    ('[[repository."r".upstream]]\nurl = "https://x.example"', "connect_timeout_secs",
     "repository.r.upstream[0].connect_timeout_secs", (int, float)),
    ('[[repository."r".upstream]]\nurl = "https://x.example"', "password", "repository.r.upstream[0].password", (str,)),
    ("[ui]", "enabled", "ui.enabled", (bool,)),
    ("[ui]", "name", "ui.name", (str,)),
    ("", "server", "server", (dict,)),
    ("", "repository", "repository", (dict,)),
    ("[blob_store]", "fs", "blob_store.fs", (dict,)),
    ("[blob_store.s3]\nendpoint = 'http://s3'\nbucket = 'b'\naccess_key_id = 'a'", "secret_key",
     "blob_store.s3.secret_key", (str,)),
    ("[blob_store.s3]\nendpoint = 'http://s3'\nbucket = 'b'\naccess_key_id = 'a'\nsecret_key = 's'",
     "multipart_part_size", "blob_store.s3.multipart_part_size", (int, str)),
    ("[blob_store.s3]\nendpoint = 'http://s3'\nbucket = 'b'\naccess_key_id = 'a'\nsecret_key = 's'",
     "presign_ttl_secs", "blob_store.s3.presign_ttl_secs", (int,)),
    ("[global]", "enable_blob_redirect", "global.enable_blob_redirect", (bool,)),
    ("[cache.redis]", "url", "cache.redis.url", (str,)),
    ('[repository."r"]', "upstream", "repository.r.upstream", (list,)),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("junk") / "junk.toml"


def _load_junk(scratch: Path, header: str, key: str, value: object) -> Config:
    scratch.write_text(f"{header}\n{key} = {toml_value(value)}\n", encoding="utf-8")
    return load_config([str(scratch)])


@given(entry=st.sampled_from(TYPED_KEYS), value=JUNK)
def test_junk_values_give_config_error_or_config(scratch: Path, entry: tuple[str, str, str, tuple[type, ...]],
                                                 value: object) -> None:
    header, key, _, _ = entry
    try:
        config = _load_junk(scratch, header, key, value)
    except ConfigError as error:
        assert "\n" not in str(error)
        assert str(error).startswith(f"{scratch}: ")
    else:
        assert isinstance(config, Config)


@given(entry=st.sampled_from(TYPED_KEYS), value=JUNK)
def test_values_of_the_wrong_type_are_errors_naming_the_key(
        scratch: Path, entry: tuple[str, str, str, tuple[type, ...]], value: object) -> None:
    header, key, dotted, valid_types = entry
    if isinstance(value, valid_types) and not (isinstance(value, bool) and bool not in valid_types):
        return
    with pytest.raises(ConfigError) as caught:
        _load_junk(scratch, header, key, value)
    assert str(caught.value).startswith(f"{scratch}: {dotted}: expected "), str(caught.value)


@given(name=TEXT)
def test_any_repository_name_gives_config_error_or_config(scratch: Path, name: str) -> None:
    scratch.write_text(f"[repository.{toml_value(name)}]\n", encoding="utf-8")
    try:
        config = load_config([str(scratch)])
    except ConfigError as error:
        assert "invalid repository name" in str(error)
    else:
        assert config.repositories[0].name == name


# --------------------------------------------------------------------------- prefetch_platforms


def test_prefetch_platforms(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", """
        [repository."hub"]
        prefetch_platforms = ["linux/amd64", "linux/arm/v7"]
        [[repository."hub".upstream]]
        url = "https://registry-1.docker.io"
        [repository."all"]
        prefetch_platforms = "all"
        [repository."none"]
    """)
    config, warnings = load(path)
    assert warnings == []
    platforms = {repository.name: repository.prefetch_platforms for repository in config.repositories}
    assert platforms == {"all": ("all",), "hub": ("linux/amd64", "linux/arm/v7"), "none": ()}


@pytest.mark.parametrize(("value", "problem"), [
    ('"linux/amd64"', 'expected "all" or an array'),
    ('["linux"]', 'expected "os/arch" or "os/arch/variant"'),
    ('["linux/arm/v7/x"]', 'expected "os/arch" or "os/arch/variant"'),
    ("true", "expected an array of strings"),
])
def test_prefetch_platforms_errors(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, "p.toml", f'[repository."hub"]\nprefetch_platforms = {value}\n')
    assert load_error(path).startswith(f"{path}: repository.hub.prefetch_platforms"), load_error(path)
    assert problem in load_error(path)


def test_example_file_documents_prefetch_platforms(tmp_path: Path) -> None:
    hub = _uncomment('# [repository."hub"]', "# read_timeout_secs = 300")
    config, warnings = load(str(EXAMPLE), write(tmp_path, "hub.toml", hub))
    assert warnings == []
    hub_config = config.repository_for("hub/library/alpine")
    assert hub_config is not None and hub_config.prefetch_platforms == ("linux/amd64", "linux/arm64")


# --- [observability] ------------------------------------------------------------------------


def test_observability_tables(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text('[observability.tracing]\nendpoint = "http://collector:4318"\nsampling_rate = 0.1\n'
                    'service_name = "registry-eu"\n[observability.audit]\npath = "/var/log/angosd/audit.log"\n'
                    'fsync = "never"\nhash_chain = true\nmax_size = "64MiB"\nkeep = 9\n'
                    '[global]\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n')
    config, warnings = load(str(path))
    assert warnings == []
    assert config.observability.tracing == TracingConfig("http://collector:4318", 0.1, "registry-eu")
    assert config.observability.audit == AuditConfig("/var/log/angosd/audit.log", "never", True, 64 * 2**20, 9)
    assert config.global_.trusted_proxies == ("10.0.0.0/8", "::1/128")  # normalized
    assert Config().observability.audit.path is None and Config().observability.tracing.endpoint is None


@pytest.mark.parametrize(("text", "key"), [
    ('[observability.tracing]\nsampling_rate = 1.5\n', "observability.tracing.sampling_rate"),
    ('[observability.tracing]\nendpoint = "collector:4318"\n', "observability.tracing.endpoint"),
    ('[observability.audit]\nfsync = "sometimes"\n', "observability.audit.fsync"),
    ('[global]\ntrusted_proxies = ["10.0.0.300/8"]\n', "global.trusted_proxies[0]"),
])
def test_observability_mistakes_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config([str(path)])
