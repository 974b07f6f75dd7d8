"""Build the running daemon from a configuration: storage, registry, HTTP, listeners."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import endpoints

from angosd.auth.authenticator import Authenticator, TokenValidator
from angosd.auth.authorizer import PolicyAuthorizer, SecurityState
from angosd.auth.basic import PasswordUsers
from angosd.auth.oidc import OidcProviders, make_http_client
from angosd.config import Config
from angosd.http.api import RegistryAPI
from angosd.http.site import RegistrySite
from angosd.live import LiveConfig
from angosd.proxy.cache import PullThroughCache
from angosd.registry.registry import Limits, Registry
from angosd.storage.fs import FilesystemDriver
from angosd.tls import listening_factory
from angosd.webhooks import AuthorizationWebhooks, EventBus

#: Seconds between looks at the configuration files' modification times.
RELOAD_INTERVAL = 2.0


def endpoint_description(config: Config) -> str:
    """The Twisted server endpoint string for ``[server]``."""
    interface = config.server.bind_address.replace(":", "\\:")
    return f"tcp:{config.server.port}:interface={interface}"


def build_security(config: Config, reactor: Any) -> SecurityState:
    """Users, OIDC providers and compiled policies for ``config``; raises `PolicyError`."""
    oidc: TokenValidator | None = None
    if config.auth.oidc:
        oidc = OidcProviders(config.auth.oidc, {p.name: make_http_client(reactor, p) for p in config.auth.oidc},
                             reactor)
    authenticator = Authenticator(PasswordUsers(config.auth.identities, reactor, reactor), oidc)
    return SecurityState.build(config, authenticator, AuthorizationWebhooks(config.auth.webhooks, reactor))


def build_registry(live: LiveConfig, reactor: Any) -> Registry:
    config = live.config
    driver = FilesystemDriver(os.path.abspath(config.blob_store.root_dir), reactor, config.blob_store.sync_to_disk)
    limits = Limits(config.global_.max_manifest_size, config.global_.max_blob_size)
    return Registry(driver, reactor, limits, live.namespace_allowed, live.tag_immutable)


def build_service(config: Config, reactor: Any, listen: str | None = None, paths: Sequence[str] = (),
                  adjust: Callable[[Config], Config] = lambda config: config) -> MultiService:
    """The daemon as a service tree; nothing listens until it is started.

    ``paths`` are the configuration files ``config`` came from: they are watched and
    reloaded when they change (``adjust`` re-applies command-line overrides).
    """
    live = LiveConfig(paths, build_security(config, reactor), lambda new: build_security(new, reactor), adjust)
    registry = build_registry(live, reactor)
    cache = PullThroughCache(registry, lambda namespace: live.config.repository_for(namespace), live.tag_immutable,
                             reactor)
    events = EventBus(lambda: live.config, reactor, drain_seconds=config.global_.shutdown_drain_secs)
    api = RegistryAPI(registry, PolicyAuthorizer(lambda: live.security), cache=cache, events=events)
    site = RegistrySite(api)
    top = MultiService()
    events.setServiceParent(top)  # added before the listener, so it stops (drains) after it
    if paths:
        TimerService(RELOAD_INTERVAL, live.poll).setServiceParent(top)
    endpoint = endpoints.serverFromString(reactor, listen or endpoint_description(config))
    factory, listener_services = listening_factory(config, site, reactor)
    StreamServerEndpointService(endpoint, factory).setServiceParent(top)
    for service in listener_services:
        service.setServiceParent(top)
    return top
