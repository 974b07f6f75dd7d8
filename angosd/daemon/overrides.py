"""Command-line settings that win over the configuration files (``--root``, ``--workers``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from angosd.config import Config

__all__ = ["Overrides"]

#: ``--workers`` value meaning "one per usable core" (as ``[server] workers = "auto"``).
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line sets over ``[blob_store.fs] root_dir`` and ``[server] workers``.

    ``workers`` is ``AUTO`` (one per usable core), a count, or None when not given (the
    configuration decides). `apply` is re-applied to every reloaded configuration, so a
    reload never undoes the command line.
    """

    root: str | None = None
    workers: int | str | None = None

    def apply(self, config: Config) -> Config:
        """``config`` with the command-line settings in place of the files' ones."""
        if self.root:
            config = dataclasses.replace(config, blob_store=dataclasses.replace(config.blob_store,
                                                                                 root_dir=self.root))
        if self.workers is not None:
            count = self.workers if isinstance(self.workers, int) else None  # AUTO
            config = dataclasses.replace(config, server=dataclasses.replace(config.server, workers=count))
        return config

    def worker_arguments(self) -> list[str]:
        """The options that make a worker process load the same configuration (``--root``;
        the worker count does not concern a worker)."""
        return ["--root", self.root] if self.root else []
