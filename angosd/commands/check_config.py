"""``angosd check-config -c FILE [-c FILE ...]``: is this configuration safe to deploy?

Checks what the daemon checks at start, and what it would only find later:

- the merged files load and validate (`angosd.config.load_config`);
- every access and retention policy rule compiles (`angosd.auth.policy.AccessPolicy`);
- TLS files load and match: ``[server.tls]`` through `angosd.tls.server.build_context`; the CA
  bundles and client certificate/key pairs of upstreams, webhooks and OIDC providers with
  ``cryptography``;
- every ``authorization_webhook`` names an existing ``[auth.webhook.NAME]`` table;
- a daemon listening on a non-loopback address has an access policy (`exposure_problem`);
- ``[server] listen`` is a valid endpoint description, one that worker processes can share
  unless ``[server] workers = 1``;
- with ``[blob_store.s3]``, botocore (the ``s3`` extra) is installed.

Prints ``ok`` (exit 0) or one line per problem, ``<file>: <key>: <problem>`` (exit 1).
Unknown keys are warnings on stderr and do not fail the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from angosd.config import AccessPolicyConfig, Config, ConfigError, WebhookTlsConfig, load_config
from angosd.config.exposure import exposure_problem

_Path = tuple[str, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def register(commands: Any) -> None:
    parser = commands.add_parser("check-config", help="validate configuration files before deploying them",
                                 description="Load and validate the merged configuration, compile every policy "
                                             "rule, check TLS files and webhook references. Prints 'ok' or one "
                                             "line per problem naming the file and key; exits 0 or 1.")
    parser.add_argument("-c", "--config", dest="configs", metavar="FILE", action="append", required=True,
                        help="a TOML configuration file; repeat to merge several (later files win)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    problems = check(args.configs, warn=warnings.append)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem)
    if not problems:
        print("ok")
    return 1 if problems else 0


def check(paths: Sequence[str], warn: Callable[[str], None] = lambda _: None) -> list[str]:
    """Every problem found in the configuration merged from ``paths``, one line each.

    An empty list means the daemon would start with it. Each line names the file (and,
    where there is one, the key) at fault. Never raises for a bad configuration.
    """
    origins = _Origins(paths)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = load_config(paths, warn=warn)
    except ConfigError as exc:
        problems.append(str(exc))
    reported = {_file_and_key(problem) for problem in problems}
    problems += [problem for problem in _webhook_references(origins) if _file_and_key(problem) not in reported]
    if config is not None:
        exposed = exposure_problem(config)
        if exposed is not None:
            problems.append(f"{origins.origin(('server', 'bind_address'))}: {exposed}")
        problems += _policies(config, origins)
        problems += _server_tls(config, origins)
        problems += _client_tls(config, origins)
        problems += _listen(config, origins)
        problems += _s3_support(config, origins)
        problems += _token_service(config, origins)
        _anonymous_login_trap(config, warn)
    return problems


# --- authentication: token service keys, the anonymous-login trap -------------------------
def _token_service(config: Config, origins: _Origins) -> Iterator[str]:
    from angosd.auth.token_service import TokenService
    from angosd.auth.tokens import TokenKeyError

    if config.auth.token_service is None:
        return
    try:
        TokenService.build(config.auth.token_service)
    except (OSError, TokenKeyError) as exc:
        yield origins.line(("auth", "token_service", "signing_key"), str(exc))


def _anonymous_login_trap(config: Config, warn: Callable[[str], None]) -> None:
    """Without a token service, an anonymous ``GET /v2/`` that succeeds means clients never
    send credentials there: ``docker login`` says "Login Succeeded" whatever the password."""
    from angosd.actions import Action, Route
    from angosd.auth.authorizer import request_variables
    from angosd.auth.identity import ANONYMOUS
    from angosd.auth.policy import AccessPolicy, PolicyError

    if config.auth.token_service is not None or not config.auth.identities:
        return
    try:
        policy = AccessPolicy.compile(config.global_.access_policy, "global.access_policy")
    except PolicyError:
        return  # reported as a problem
    route = Route(Action.GET_API_VERSION, "GET", "/v2/")
    if policy.decide({"identity": ANONYMOUS.to_cel(), "request": request_variables(route)}).allowed:
        warn("anonymous callers may 'get-api-version' while [auth.identity] users exist: clients will not "
             "send credentials to /v2/, so 'docker login' succeeds with any password and authenticated "
             "pushes fail; configure [auth.token_service] for public-read registries")
# --- end of authentication checks ---------------------------------------------------------


def _file_and_key(problem: str) -> tuple[str, ...]:
    return tuple(problem.split(": ", 2)[:2])


# --------------------------------------------------------------------------- raw TOML


def _dotted(path: Sequence[str]) -> str:
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in path)


class _Origins:
    """The raw TOML of each file: which file set a key last, and the merged tables."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.files = [str(path) for path in paths]
        self._setter: dict[_Path, str] = {}
        self.merged: dict[str, Any] = {}
        for path in self.files:
            try:
                with open(path, "rb") as handle:
                    document = tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue  # load_config reports it
            self._merge(self.merged, document, path, ())

    def _merge(self, target: dict[str, Any], table: Mapping[str, Any], source: str, path: _Path) -> None:
        for key, value in table.items():
            here = (*path, key)
            self._setter[here] = source
            if isinstance(value, dict):
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                self._merge(target[key], value, source, here)
            else:
                target[key] = value

    def origin(self, path: Sequence[str]) -> str:
        """The file that set ``path`` (or its closest parent) last; the last file if none did."""
        for end in range(len(path), 0, -1):
            source = self._setter.get(tuple(path[:end]))
            if source is not None:
                return source
        return self.files[-1] if self.files else "<none>"

    def line(self, path: Sequence[str], problem: str) -> str:
        return f"{self.origin(path)}: {_dotted(path)}: {problem}"

    def get(self, path: Sequence[str]) -> object:
        node: object = self.merged
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node


# --------------------------------------------------------------------------- the checks


def _webhook_references(origins: _Origins) -> Iterator[str]:
    webhooks = origins.get(("auth", "webhook"))
    names = set(webhooks) if isinstance(webhooks, dict) else set()
    for name in sorted(names):
        assert isinstance(webhooks, dict)
        if not isinstance(webhooks[name], dict):
            yield origins.line(("auth", "webhook", name), "expected a table [auth.webhook.NAME]")
    references: list[_Path] = [("global", "authorization_webhook")]
    repositories = origins.get(("repository",))
    if isinstance(repositories, dict):
        references += [("repository", name, "authorization_webhook") for name in sorted(repositories)]
    for reference in references:
        value = origins.get(reference)
        if isinstance(value, str) and value and value not in names:  # "" turns the webhook off
            yield origins.line(reference, f"unknown webhook {value!r} (no [auth.webhook.{_dotted([value])}] table)")


def _policies(config: Config, origins: _Origins) -> Iterator[str]:
    from angosd.auth.policy import AccessPolicy, PolicyError

    def compile_rules(policy: AccessPolicyConfig, where: _Path) -> Iterator[str]:
        try:
            AccessPolicy.compile(policy, _dotted(where))
        except PolicyError as exc:
            yield f"{origins.origin((*where, 'rules'))}: {exc}"

    yield from compile_rules(config.global_.access_policy, ("global", "access_policy"))
    yield from compile_rules(AccessPolicyConfig(rules=config.global_.retention_policy.rules),
                             ("global", "retention_policy"))
    for repository in config.repositories:
        if repository.access_policy is not None:
            yield from compile_rules(repository.access_policy, ("repository", repository.name, "access_policy"))
        if repository.retention_policy is not None:
            yield from compile_rules(AccessPolicyConfig(rules=repository.retention_policy.rules),
                                     ("repository", repository.name, "retention_policy"))


def _server_tls(config: Config, origins: _Origins) -> Iterator[str]:
    from angosd.tls.server import TlsError, build_context

    tls = config.server.tls
    if tls is None:
        return
    try:
        build_context(tls)
    except TlsError as exc:
        keys = {tls.server_certificate_bundle: "server_certificate_bundle",
                tls.server_private_key: "server_private_key", tls.client_ca_bundle: "client_ca_bundle"}
        yield origins.line(("server", "tls", keys.get(exc.path, "server_certificate_bundle")), str(exc))
    except Exception as exc:  # a bug, not the files: still one line, no traceback
        yield origins.line(("server", "tls"), f"cannot be checked: {type(exc).__name__}: {exc}")


class _BadFile(Exception):
    """A TLS file that cannot be used; the message starts with its path."""


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise _BadFile(f"{path}: cannot read: {exc.strerror or exc}") from None


def _certificates(path: str) -> list[x509.Certificate]:
    """Every certificate of the PEM bundle ``path``; at least one."""
    data = _read_pem(path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _BadFile(f"{path}: not a PEM certificate bundle") from None


def _private_key(path: str) -> Any:
    data = _read_pem(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _BadFile(f"{path}: private key is encrypted; passphrase-protected keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _BadFile(f"{path}: not a PEM private key") from None


def _public_key_der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _pair(label: str, ca: str | None, certificate: str | None, key: str | None,
          names: tuple[str, str, str]) -> Iterator[str]:
    """Problems of one client-side TLS setting: CA bundle, certificate bundle, matching key."""
    ca_name, certificate_name, key_name = names
    try:
        if ca is not None:
            _certificates(ca)
    except _BadFile as exc:
        yield f"{label}.{ca_name}: {exc}"
    if certificate is None or key is None:
        return
    at = certificate_name
    try:
        leaf = _certificates(certificate)[0]
        at = key_name
        private_key = _private_key(key)
    except _BadFile as exc:
        yield f"{label}.{at}: {exc}"
        return
    if _public_key_der(private_key.public_key()) != _public_key_der(leaf.public_key()):
        yield f"{label}.{key_name}: {key}: private key does not match the certificate in {certificate}"


def _client_tls(config: Config, origins: _Origins) -> Iterator[str]:
    """Upstreams, webhooks and OIDC providers: their CA bundles and client certificates."""
    upstream_names = ("server_ca_bundle", "client_certificate", "client_private_key")
    for repository in config.repositories:
        where = ("repository", repository.name, "upstream")
        for index, upstream in enumerate(repository.upstreams):
            yield from _pair(f"{origins.origin(where)}: {_dotted(where)}[{index}]", upstream.server_ca_bundle,
                             upstream.client_certificate, upstream.client_private_key, upstream_names)
    webhook_names = ("server_ca_bundle", "client_certificate_bundle", "client_private_key")
    webhooks: list[tuple[_Path, WebhookTlsConfig]] = [
        (("auth", "webhook", webhook.name, "tls"), webhook.tls) for webhook in config.auth.webhooks]
    webhooks += [(("event_webhook", webhook.name, "tls"), webhook.tls) for webhook in config.event_webhooks]
    for place, tls in webhooks:
        yield from _pair(f"{origins.origin(place)}: {_dotted(place)}", tls.server_ca_bundle,
                         tls.client_certificate_bundle, tls.client_private_key, webhook_names)
    for provider in config.auth.oidc:
        place = ("auth", "oidc", provider.name)
        yield from _pair(f"{origins.origin(place)}: {_dotted(place)}", provider.server_ca_bundle, None, None,
                         upstream_names)


def _s3_support(config: Config, origins: _Origins) -> Iterator[str]:
    from angosd.storage.s3_support import missing_s3_support

    problem = missing_s3_support() if config.blob_store_s3 is not None else None
    if problem is not None:
        yield origins.line(("blob_store", "s3"), problem)


def _listen(config: Config, origins: _Origins) -> Iterator[str]:
    listen = config.server.listen
    if listen is None or listen == "systemd" or listen.startswith("systemd:"):
        return  # systemd sockets exist only when systemd starts the daemon
    from twisted.internet import endpoints, reactor

    try:
        endpoint = endpoints.serverFromString(reactor, listen)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        yield origins.line(("server", "listen"), f"invalid endpoint {listen!r}: {exc or type(exc).__name__}")
        return
    shareable = (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint, endpoints.UNIXServerEndpoint)
    if config.server.workers != 1 and not isinstance(endpoint, shareable):
        yield origins.line(("server", "listen"), f"{listen!r} cannot be shared by worker processes: use a plain "
                           "tcp, tcp6, unix or systemd endpoint ([server.tls] provides TLS), or workers = 1")
