"""The running configuration, reloaded when its files change.

Everything derived from the configuration that may change without a restart (users,
OIDC providers, policies, repositories, immutability rules) hangs off one
`SecurityState`, built completely before it replaces the current one. An invalid new
configuration is refused with one log line naming the file and key; the running one stays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from twisted.logger import Logger

from angosd.auth.authorizer import SecurityState
from angosd.auth.policy import PolicyError
from angosd.config import Config, ConfigError, load_config
from angosd.observability.audit import AuditLog

_log = Logger()
#: Settings that only take effect at start: a reload that changes them says so.
_RESTART_ONLY = ("server", "blob_store", "observability")


@lru_cache(maxsize=1024)
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


def tag_immutable(config: Config, namespace: str, tag: str) -> bool:
    """Whether ``tag`` of ``namespace`` may not move once it exists.

    The repository's flag (inherited from ``[global]`` when unset) decides; a non-empty
    repository exclusion list replaces the global one, and an excluded tag is mutable.
    """
    repository = config.repository_for(namespace)
    immutable = repository.immutable_tags if repository is not None else config.global_.immutable_tags
    if not immutable:
        return False
    exclusions = (repository.immutable_tags_exclusions if repository is not None else ()) \
        or config.global_.immutable_tags_exclusions
    return not any(_pattern(expression).search(tag) for expression in exclusions)


class LiveConfig:
    """The current `SecurityState`, rebuilt from ``paths`` by `reload` when they change."""

    def __init__(self, paths: Sequence[str], security: SecurityState,
                 build: Callable[[Config], SecurityState], adjust: Callable[[Config], Config],
                 audit: AuditLog | None = None) -> None:
        """``audit`` records each reload (applied or refused)."""
        self._audit = audit
        self._paths = tuple(paths)
        self.security = security
        self._build = build
        self._adjust = adjust
        self._stamps = self._read_stamps()

    @property
    def config(self) -> Config:
        return self.security.config

    def namespace_allowed(self, namespace: str) -> bool:
        return self.security.config.namespace_allowed(namespace)

    def references_required(self, namespace: str) -> bool:
        return self.security.config.references_required(namespace)

    def tag_immutable(self, namespace: str, tag: str) -> bool:
        return tag_immutable(self.security.config, namespace, tag)

    def _read_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._paths:
            try:
                status = os.stat(path)
                stamps.append((status.st_mtime_ns, status.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def poll(self) -> bool:
        """Reload if any file changed since the last look; True when a new config is live."""
        stamps = self._read_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return self.reload()

    def reload(self) -> bool:
        """Load, validate and build the configuration now; keep the running one on error."""
        try:
            config = self._adjust(load_config(self._paths, warn=lambda message: _log.warn("{m}", m=message)))
            security = self._build(config)
        except (ConfigError, PolicyError) as exc:
            _log.error("configuration reload refused, the running configuration stays: {error}", error=str(exc))
            self._record("failure", str(exc))
            return False
        for section in _RESTART_ONLY:
            if getattr(config, section) != getattr(self.security.config, section):
                _log.warn("configuration reload: [{section}] changed; it takes effect at the next restart",
                          section=section)
        self.security = security
        _log.info("configuration reloaded from {paths}", paths=", ".join(self._paths))
        self._record("success", None)
        return True

    def _record(self, result: str, reason: str | None) -> None:
        if self._audit is None:
            return
        try:
            self._audit.record("config", "reload", result, identity={"kind": "local"}, files=list(self._paths),
                               reason=reason)
        except OSError as exc:
            _log.error("audit log {path}: {error}", path=self._audit.path, error=str(exc))
