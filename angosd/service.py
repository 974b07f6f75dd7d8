"""Build the running daemon from a configuration: storage, registry, HTTP, listeners."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import endpoints

from angosd.auth.authorizer import AllowAll
from angosd.config import Config
from angosd.http.api import RegistryAPI
from angosd.http.site import RegistrySite
from angosd.registry.registry import Limits, Registry
from angosd.storage.fs import FilesystemDriver


def endpoint_description(config: Config) -> str:
    """The Twisted server endpoint string for ``[server]``."""
    interface = config.server.bind_address.replace(":", "\\:")
    return f"tcp:{config.server.port}:interface={interface}"


def build_registry(config: Config, reactor: Any) -> Registry:
    driver = FilesystemDriver(os.path.abspath(config.blob_store.root_dir), reactor, config.blob_store.sync_to_disk)
    limits = Limits(config.global_.max_manifest_size, config.global_.max_blob_size)
    return Registry(driver, reactor, limits, config.namespace_allowed)


def build_service(config: Config, reactor: Any, listen: str | None = None) -> MultiService:
    """The daemon as a service tree; nothing listens until it is started."""
    api = RegistryAPI(build_registry(config, reactor), AllowAll())
    site = RegistrySite(api)
    top = MultiService()
    endpoint = endpoints.serverFromString(reactor, listen or endpoint_description(config))
    StreamServerEndpointService(endpoint, site).setServiceParent(top)
    return top
