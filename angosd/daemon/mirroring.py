"""The daemon's scheduled image-set sync (``[mirror]``): built once per store.

The single daemon runs it in-process; with worker processes the supervisor runs it (like
the garbage collector) and writes its figures to the run directory, where every worker's
``/metrics`` reads them (`angosd.observability.mirror`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool

from angosd.config import Config, MirrorConfig
from angosd.observability.mirror import MirrorRecorder
from angosd.proxy.imageset import ImageSet, read_image_set
from angosd.proxy.sync import MirrorSchedule, SyncCache, SyncSummary, Timing, sync_image_set
from angosd.registry.registry import Registry

#: Name of the status file in a supervisor's run directory.
STATUS_FILE = "mirror-status.json"


def timing(mirror: MirrorConfig) -> Timing:
    """The schedule ``[mirror]`` asks for."""
    return Timing(interval=float(mirror.interval_secs), jitter=float(mirror.jitter_secs),
                  backoff_initial=float(mirror.backoff_initial_secs), backoff_max=float(mirror.backoff_max_secs),
                  first_delay=float(mirror.first_run_delay_secs))


def mirror_service(config: Callable[[], Config], reactor: Any, registry: Registry, cache: SyncCache,
                   recorder: MirrorRecorder) -> MirrorSchedule | None:
    """The schedule of the configured set file, or None when ``[mirror] set_file`` is unset.

    The set file is read again at each run (edits apply without a restart); ``config`` gives
    the current configuration. The file is read off the reactor thread.
    """
    initial = config()
    if initial.mirror.set_file is None:
        return None

    async def run() -> SyncSummary:
        path = config().mirror.set_file or initial.mirror.set_file
        assert path is not None
        image_set: ImageSet = await deferToThreadPool(reactor, reactor.getThreadPool(), read_image_set, path)
        return await sync_image_set(cache, registry, image_set)

    return MirrorSchedule(run, timing(initial.mirror), reactor, recorder,
                          name=f"mirror sync of {initial.mirror.set_file}")
