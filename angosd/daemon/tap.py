"""twistd integration: ``twistd -n angosd [-c FILE ...] [--listen ENDPOINT] [--root DIR] [--workers N]``."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from angosd import __version__
from angosd.auth.policy import PolicyError
from angosd.compat import import_reactor_without_tls
from angosd.config import Config, ConfigError, default_config, load_config, parse_workers
from angosd.config.exposure import exposure_problem
from angosd.daemon.overrides import AUTO, Overrides
from angosd.daemon.systemd import ListenError
from angosd.tls.errors import TlsError


class Options(usage.Options):
    synopsis = "[-c FILE ...] [--listen ENDPOINT] [--root DIR] [--workers N]"
    optParameters = [
        ["listen", "l", None, "Twisted server endpoint to listen on (overrides [server]), e.g. tcp:5000"],
        ["root", "r", None, "Filesystem storage root (overrides [blob_store.fs] root_dir)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = []
        self["workers"] = None

    def opt_config(self, path: str) -> None:
        """A TOML configuration file; repeat to merge several (later files win)."""
        self["config"].append(path)

    opt_c = opt_config

    def opt_workers(self, value: str) -> None:
        """Worker processes, or "auto" for one per core (overrides [server] workers)."""
        try:
            self["workers"] = AUTO if value == AUTO else parse_workers(int(value))
        except ValueError as exc:
            raise usage.UsageError(f"--workers: {exc}") from None

    opt_w = opt_workers

    def opt_version(self) -> None:
        """Display angosd's version and exit."""
        print(f"angosd {__version__}")
        raise SystemExit(0)


def _warn(message: str) -> None:
    print(f"angosd: warning: {message}", file=sys.stderr)


def reactor_needs_tls(config: Config, listen: str | None) -> bool:
    """Whether ``config`` may use the reactor's own TLS (``startTLS``, ``listenSSL``).

    An ``ssl:`` listening endpoint string and LDAP's StartTLS use it; a ``[server.tls]`` listener
    counts too (though it puts TLS over its connections itself). Otherwise the reactor is
    imported without OpenSSL, which is then loaded only by a feature that needs it (HTTPS
    clients wrap their connections themselves). ``[server]`` changes need a restart, and a
    reload adding StartTLS to LDAP is refused (`angosd.auth.ldap.LdapDirectory`).
    """
    description = listen or config.server.listen or ""
    return (description.split(":", 1)[0].strip().lower() == "ssl" or config.server.tls is not None
            or config.auth.ldap is not None)


def makeService(options: Options) -> IService:
    overrides = Overrides(root=options["root"], workers=options["workers"])
    try:
        config = overrides.apply(load_config(options["config"], warn=_warn) if options["config"] else default_config())
        exposed = exposure_problem(config, options["listen"])
        if exposed is not None:
            raise ConfigError(exposed)
        reactor: Any
        if reactor_needs_tls(config, options["listen"]):
            from twisted.internet import reactor
        else:
            reactor = import_reactor_without_tls()

        from angosd.daemon.service import build_service

        return build_service(config, reactor, listen=options["listen"], paths=options["config"], overrides=overrides)
    except (ConfigError, PolicyError, TlsError, ListenError) as exc:
        raise SystemExit(f"angosd: configuration error: {exc}") from None
