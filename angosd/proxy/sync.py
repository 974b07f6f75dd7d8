"""Syncing an image set (`angosd.proxy.imageset`) into the pull-through cache, once or on a schedule.

`sync_image_set` lists each image's tags upstream, selects them with the image's filter
and fills each selected tag through `CacheFill` (every chosen platform, blobs,
referrers): what is cached costs a stat, what changed upstream is fetched and verified.
It never raises for one image: failures are counted and named in the `SyncSummary`.

`MirrorSchedule` runs a sync every ``interval`` seconds plus a random ``jitter`` (so
several sites do not hit an upstream at the same second), retries sooner after a run
with upstream failures (``backoff_initial`` doubling up to ``backoff_max``), logs a
summary of each run and hands it to a recorder (the daemon's metrics). The clock and the
random source are given, so tests drive it with `twisted.internet.task.Clock`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from angosd.oci.names import Reference
from angosd.proxy.imageset import ImageSet
from angosd.proxy.prefetch import FILL_SLOTS, CacheFill, FillObserver, FillSource, PlatformFilter
from angosd.registry.registry import Registry

_log = Logger()
#: Failures named in a summary (the count is always exact).
MAX_NAMED_FAILURES = 20


class TagLister(Protocol):
    """What a sync asks of the pull-through cache besides fills."""

    def repository(self, namespace: str) -> Any: ...
    async def upstream_tags(self, namespace: str, repository: Any) -> list[str]: ...


class SyncCache(TagLister, FillSource, Protocol):
    """The pull-through cache as a sync sees it (`angosd.proxy.cache.PullThroughCache`)."""


@dataclass(slots=True)
class SyncSummary:
    """What one sync did. ``images`` counts tags synced; ``changed`` those whose manifest was new."""

    images: int = 0
    changed: int = 0
    failed: int = 0
    manifests: int = 0
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    failures: list[str] = field(default_factory=list)
    changed_images: list[str] = field(default_factory=list)

    def fail(self, what: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_NAMED_FAILURES:
            self.failures.append(f"{what}: {reason}")

    def line(self) -> str:
        """The summary as one log line."""
        text = (f"{self.images} images ({self.changed} changed), {self.manifests} manifests, "
                f"{self.blobs_fetched} blobs fetched ({self.bytes_fetched} bytes), {self.failed} failed")
        if self.changed_images:
            text += "; changed: " + ", ".join(self.changed_images[:MAX_NAMED_FAILURES])
        if self.failures:
            text += "; failures: " + "; ".join(self.failures)
        return text


ObserverFor = Callable[[str], FillObserver | None]


async def sync_image_set(cache: SyncCache, registry: Registry, image_set: ImageSet,
                         observer_for: ObserverFor = lambda _image: None,
                         slots: DeferredSemaphore | None = None) -> SyncSummary:
    """Fill every tag ``image_set`` selects into the cache (see the module doc); never raises
    for an image's failure (it is counted in the summary)."""
    summary = SyncSummary()
    slots = slots or DeferredSemaphore(FILL_SLOTS)
    for image in image_set.images:
        repository = cache.repository(image.namespace)
        if repository is None:
            summary.fail(image.namespace, f"{image.upstream} is not a pull-through repository of the configuration")
            continue
        try:
            tags = image.tags.select(await cache.upstream_tags(image.namespace, repository))
        except Exception as exc:
            summary.fail(image.namespace, f"tags not listed: {_describe(exc)}")
            continue
        if not tags:
            summary.fail(image.namespace, "no upstream tag matches")
            continue
        platforms = PlatformFilter.parse(image.platforms)
        for tag in tags:
            what = f"{image.namespace}:{tag}"
            fill = CacheFill(cache, registry, slots, observer_for(what), referrers=image.referrers)
            try:
                result = await fill.fill(image.namespace, repository, Reference(tag=tag), platforms)
            except Exception as exc:
                summary.fail(what, _describe(exc))
                continue
            if result.state == "stale":
                summary.fail(what, "no upstream answered; the cached copy may be out of date")
                continue
            summary.images += 1
            summary.manifests += result.manifests
            summary.blobs_fetched += result.blobs_fetched
            summary.bytes_fetched += result.bytes_fetched
            if result.state == "miss":
                summary.changed += 1
                summary.changed_images.append(what)
    return summary


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    detail = getattr(exc, "detail", None)
    if detail:
        text = f"{text}: {detail}"
    return " ".join(str(text).split())


class SyncRecorder(Protocol):
    """Hears of each finished run (the daemon's mirror metrics)."""

    def record(self, summary: SyncSummary | None, succeeded: bool, finished_at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Timing:
    """When runs happen: every ``interval`` + uniform(0, ``jitter``) seconds; after a failed run,
    ``backoff_initial`` doubling per failure up to ``backoff_max``; the first after ``first_delay``
    + uniform(0, ``jitter``)."""

    interval: float
    jitter: float = 0.0
    backoff_initial: float = 60.0
    backoff_max: float = 3600.0
    first_delay: float = 0.0

    def after_success(self, draw: Callable[[], float]) -> float:
        return self.interval + self.jitter * draw()

    def after_failure(self, failures: int, draw: Callable[[], float]) -> float:
        delay = min(self.backoff_initial * 2 ** min(failures - 1, 30), self.backoff_max)
        return min(delay, self.interval) + self.jitter * draw() * min(1.0, delay / max(self.interval, 1e-9))


class MirrorSchedule(Service):
    """Runs ``run`` on the schedule of ``timing`` (see the module doc) while the service runs.

    ``run`` returns the run's summary; a summary with failures, or an exception (the set
    file cannot be read, the store fails), counts as a failed run. Runs never overlap.
    """

    def __init__(self, run: Callable[[], Awaitable[SyncSummary]], timing: Timing, clock: IReactorTime,
                 recorder: SyncRecorder | None = None, draw: Callable[[], float] = random.random,
                 wall: Callable[[], float] | None = None, name: str = "mirror sync") -> None:
        self._run = run
        self.timing = timing
        self._clock = clock
        self._recorder = recorder
        self._draw = draw
        self._wall = wall or clock.seconds
        self._label = name
        self._call: IDelayedCall | None = None
        self._running: Deferred[None] | None = None
        self.failures = 0  # consecutive failed runs
        self.runs = 0
        self.last: SyncSummary | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(self.timing.first_delay + self.timing.jitter * self._draw())

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._running is not None:
            self._running.cancel()

    @property
    def next_run(self) -> float | None:
        """When the next run is due on the clock, if one is scheduled."""
        return self._call.getTime() if self._call is not None and self._call.active() else None

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(max(delay, 0.0), self._start)

    def _start(self) -> None:
        self._call = None
        self._running = Deferred.fromCoroutine(self._once())
        self._running.addErrback(lambda failure: _log.failure("{label} crashed", failure, label=self._label))

    async def _once(self) -> None:
        summary: SyncSummary | None = None
        try:
            summary = await self._run()
            succeeded = summary.failed == 0
            problem = "" if succeeded else f"{summary.failed} failed"
        except Exception as exc:
            succeeded = False
            problem = _describe(exc)
        finally:
            self._running = None
        self.runs += 1
        self.last = summary
        self.failures = 0 if succeeded else self.failures + 1
        delay = (self.timing.after_success(self._draw) if succeeded
                 else self.timing.after_failure(self.failures, self._draw))
        if self._recorder is not None:
            self._recorder.record(summary, succeeded, self._wall())
        if succeeded:
            _log.info("{label}: {summary}; next run in {delay:.0f} s", label=self._label,
                      summary=summary.line() if summary else "", delay=delay)
        else:
            _log.warn("{label} failed ({problem}): {summary}; retrying in {delay:.0f} s", label=self._label,
                      problem=problem, summary=summary.line() if summary else "nothing synced", delay=delay)
        self._schedule(delay)
