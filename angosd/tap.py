"""twistd integration: ``twistd -n angosd [-c FILE ...] [--listen ENDPOINT] [--root DIR]``."""

from __future__ import annotations

import dataclasses
import sys

from twisted.application.service import IService
from twisted.python import usage

from angosd.auth.policy import PolicyError
from angosd.config import Config, ConfigError, default_config, load_config
from angosd.systemd import ListenError
from angosd.tls import TlsError


class Options(usage.Options):
    synopsis = "[-c FILE ...] [--listen ENDPOINT] [--root DIR]"
    optParameters = [
        ["listen", "l", None, "Twisted server endpoint to listen on (overrides [server]), e.g. tcp:5000"],
        ["root", "r", None, "Filesystem storage root (overrides [blob_store.fs] root_dir)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = []

    def opt_config(self, path: str) -> None:
        """A TOML configuration file; repeat to merge several (later files win)."""
        self["config"].append(path)

    opt_c = opt_config


def _warn(message: str) -> None:
    print(f"angosd: warning: {message}", file=sys.stderr)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from angosd.service import build_service

    def adjust(config: Config) -> Config:
        if not options["root"]:
            return config
        return dataclasses.replace(config, blob_store=dataclasses.replace(config.blob_store, root_dir=options["root"]))

    try:
        config = adjust(load_config(options["config"], warn=_warn) if options["config"] else default_config())
        return build_service(config, reactor, listen=options["listen"], paths=options["config"], adjust=adjust)
    except (ConfigError, PolicyError, TlsError, ListenError) as exc:
        raise SystemExit(f"angosd: configuration error: {exc}") from None
