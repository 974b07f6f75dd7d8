"""``angosd mirror -c CONFIG IMAGE... [--from-file LIST]``: fill the pull-through cache.

Each IMAGE is a namespace inside a pull-through repository plus ``:TAG`` or ``@DIGEST``
(``hub/library/alpine:3.20``; no reference means ``:latest``). The image, every platform
of an index (or those of ``--platform``), all their blobs and their referrers are fetched
into the store through the same cache code the daemon uses: digests are verified, and
what is already cached is skipped after a stat. A rerun after an interruption finishes
the job. The store is used directly (no daemon needed); every write is atomic, so a
daemon may serve the same store meanwhile.

Also home of what ``mirror``, ``export`` and ``import`` share: the store options,
configuration loading, logging to the terminal and the `run_async` runner.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from angosd.commands.progress import Bar, Progress, human_size
from angosd.config import Config, ConfigError, default_config, load_config


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "mirror", help="fill the pull-through cache with images, every platform and referrer (air-gapped sites)",
        description="Fetch images into the store's pull-through cache: each IMAGE is NAMESPACE:TAG or "
                    "NAMESPACE@DIGEST inside a pull-through repository (e.g. hub/library/alpine:3.20). Indexes "
                    "bring every platform, images their blobs, and referrers are fetched when the upstream has a "
                    "referrers API. Cached content is skipped; rerun to resume. Exits 1 if an image failed.")
    add_store_arguments(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="NAMESPACE:TAG or NAMESPACE@DIGEST")
    parser.add_argument("--from-file", metavar="LIST",
                        help="read more images from LIST, one per line (blank lines and # comments ignored; "
                             "- reads stdin)")
    parser.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                        help="only these platforms of an index (repeatable; default: all)")
    parser.add_argument("--no-referrers", action="store_true", help="do not fetch referrers")
    parser.add_argument("--set", dest="image_set", metavar="FILE",
                        help="sync the image-set file FILE: its images' matching upstream tags, platforms and "
                             "referrers (see docs/air-gap.md)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    return run_async("mirror", progress, lambda reactor: _mirror(reactor, args, progress), args=args)


async def _mirror(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    from twisted.internet.defer import DeferredSemaphore

    from angosd.archive.layout import LayoutError, parse_ref_name
    from angosd.daemon.assembly import open_store
    from angosd.oci.names import Reference
    from angosd.proxy.prefetch import ALL_PLATFORMS, FILL_SLOTS, CacheFill, PlatformFilter

    if args.image_set:
        return await _mirror_set(reactor, args, progress)
    texts = list(args.images) + (_read_list(args.from_file) if args.from_file else [])
    if not texts:
        raise UsageError("no images given (IMAGE arguments or --from-file)")
    try:
        platforms = PlatformFilter.parse(args.platform) if args.platform else ALL_PLATFORMS
    except ValueError as exc:
        raise UsageError(f"--platform: {exc}") from None
    config = load_store_config(args)
    registry, cache = open_store(config, reactor)
    images = []
    for text in texts:
        namespace, tag, digest = parse_ref_name(text)
        if namespace is None:
            raise LayoutError(f"{text!r}: expected NAMESPACE:TAG or NAMESPACE@DIGEST")
        repository = cache.repository(namespace)
        if repository is None or namespace == repository.name:
            raise UsageError(f"{text}: {namespace} is not inside a pull-through repository of the configuration")
        reference = Reference(digest=digest) if digest is not None else Reference(tag=tag or "latest")
        images.append((text, namespace, repository, reference))
    start_logging(progress)
    slots = DeferredSemaphore(FILL_SLOTS)
    failed = 0
    for text, namespace, repository, reference in images:
        bar = progress.bar(text)
        fill = CacheFill(cache, registry, slots, _BarObserver(progress, bar), referrers=not args.no_referrers)
        try:
            result = await fill.fill(namespace, repository, reference, platforms)
        except expected_errors() as exc:
            failed += 1
            bar.close(f"FAILED: {one_line(exc)}")
            continue
        if result.state == "stale":
            failed += 1
            bar.close(f"FAILED: no upstream answered for {reference}; the cached copy may be out of date")
            continue
        bar.close(f"{result.root}: {result.manifests} manifests, {result.blobs_fetched} blobs fetched "
                  f"({human_size(result.bytes_fetched)}), {result.blobs_cached} already cached")
    if failed:
        raise CommandFailed(f"{failed} of {len(images)} images failed; run it again to retry")
    return 0


async def _mirror_set(reactor: Any, args: argparse.Namespace, progress: Progress) -> int:
    """``--set FILE``: sync an image set (`angosd.proxy.sync`), one bar per image tag."""
    from angosd.daemon.assembly import open_store
    from angosd.proxy.imageset import ImageSetError, read_image_set
    from angosd.proxy.sync import sync_image_set

    if args.images or args.from_file or args.platform or args.no_referrers:
        raise UsageError("--set takes no IMAGE, --from-file, --platform or --no-referrers (the set file says)")
    try:
        image_set = read_image_set(args.image_set)
    except ImageSetError as exc:
        raise UsageError(str(exc)) from None
    registry, cache = open_store(load_store_config(args), reactor)
    start_logging(progress)
    bars: list[Bar] = []

    def observer(what: str) -> _BarObserver:
        bars.append(progress.bar(what))
        return _BarObserver(progress, bars[-1])

    summary = await sync_image_set(cache, registry, image_set, observer)
    for bar in bars:
        bar.close()
    progress.note(f"angosd mirror: {args.image_set}: {summary.line()}")
    if summary.failed:
        raise CommandFailed(f"{summary.failed} failed; run it again to retry")
    return 0


def _read_list(path: str) -> list[str]:
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as source:
                lines = source.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


class _BarObserver:
    """Draws a fill on its bar: bytes of missing blobs, done as they arrive."""

    def __init__(self, progress: Progress, bar: Bar) -> None:
        self._progress = progress
        self._bar = bar
        self._manifests = 0
        self._missing = 0
        self._filled = 0

    def manifest(self, digest: object, state: str) -> None:
        self._manifests += 1
        self._bar.advance(0, status=f"{self._manifests} manifests")

    def blobs(self, missing: int, missing_bytes: int, cached: int) -> None:
        self._missing = missing
        self._bar.grow(missing_bytes)
        self._bar.advance(0, status=f"0/{missing} blobs ({cached} cached)")

    def blob_filled(self, digest: object, size: int) -> None:
        self._filled += 1
        self._bar.advance(size, status=f"{self._filled}/{self._missing} blobs")

    def note(self, message: str) -> None:
        self._progress.note(f"{self._bar.label}: {message}")


# --------------------------------------------------------------------------- shared by mirror, export, import


class UsageError(Exception):
    """A wrong argument: reported as one line."""


class CommandFailed(Exception):
    """The command did some work but failed overall: reported as one line."""


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``-c FILE`` (repeatable) and ``--root DIR``: which store, and its configuration."""
    parser.add_argument("-c", "--config", dest="configs", metavar="FILE", action="append", default=[],
                        help="a TOML configuration file; repeat to merge several (later files win)")
    parser.add_argument("--root", metavar="DIR", help="storage root (overrides [blob_store.fs] root_dir)")


def load_store_config(args: argparse.Namespace) -> Config:
    """The configuration of ``-c``/``--root``; unknown keys are warned about on stderr."""
    warn: Callable[[str], None] = lambda message: print(f"angosd: warning: {message}", file=sys.stderr)  # noqa: E731
    config = load_config(args.configs, warn=warn) if args.configs else default_config()
    if args.root:
        config = dataclasses.replace(config, blob_store=dataclasses.replace(config.blob_store, root_dir=args.root))
    return config


def one_line(exc: BaseException) -> str:
    """A failure as one line for the terminal."""
    from angosd.oci.errors import OciError

    if isinstance(exc, OciError):
        text = exc.message if exc.detail is None else f"{exc.message}: {exc.detail}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def start_logging(progress: Progress) -> None:
    """Send warnings and errors of the code below (the cache, upstreams) to ``progress``."""
    from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
    from zope.interface import provider

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            progress.note("warning: " + " ".join((formatEvent(event) or "").split()))

    globalLogBeginner.beginLoggingTo([observe], discardBuffer=True, redirectStandardIO=False)


def run_async(name: str, progress: Progress, work: Callable[[Any], Awaitable[int]],
              interrupted: str = "interrupted; run it again to resume", args: argparse.Namespace | None = None) -> int:
    """Run ``work(reactor)`` under `twisted.internet.task.react` and return its exit status.

    An expected failure (configuration, OCI, upstream, storage, archive, I/O) is printed
    as ``angosd NAME: reason`` and gives 1; an interruption (SIGINT/SIGTERM) prints
    ``interrupted`` and gives 130; anything else is printed with its type and gives 1.
    With ``args`` (the command line), the run is one line of the configuration's audit log.
    """
    status = _run_async(name, progress, work, interrupted)
    if args is not None:
        audit_command(name, args, status, progress)
    return status


def audit_command(name: str, args: argparse.Namespace, status: int, progress: Progress) -> None:
    """Append the run of command ``name`` (exit ``status``) to ``[observability.audit]`` of
    its configuration, if any; a configuration that does not load has nothing to record."""
    import getpass

    from angosd.observability.audit import AuditLog

    try:
        config = load_config(args.configs) if getattr(args, "configs", None) else default_config()
    except Exception:
        return
    if config.observability.audit.path is None:
        return
    result = {0: "success", 130: "interrupted"}.get(status, "failure")
    options = {key: value for key, value in sorted(vars(args).items())
               if key not in ("run", "command", "configs") and isinstance(value, str | int | float | bool | None)}
    try:
        log = AuditLog(config.observability.audit, time.time)
        try:
            log.record("cli", name, result, status=status, identity={"kind": "local", "id": getpass.getuser()},
                       options=options)
        finally:
            log.close()
    except OSError as exc:
        progress.note(f"angosd {name}: audit log: {one_line(exc)}")


def _run_async(name: str, progress: Progress, work: Callable[[Any], Awaitable[int]], interrupted: str) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    outcome: dict[str, int] = {}

    def stopping() -> None:  # the reactor stops: an interruption unless the work is done
        if "status" not in outcome:
            outcome["interrupted"] = 1

    async def main(reactor: Any) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        try:
            outcome["status"] = await work(reactor)
        except expected_errors() as exc:
            progress.note(f"angosd {name}: {one_line(exc)}")
            outcome["status"] = 1
        except Exception as exc:
            progress.note(f"angosd {name}: unexpected {type(exc).__name__}: {one_line(exc)}")
            outcome["status"] = 1

    with contextlib.suppress(SystemExit):  # react() always exits; the status is in outcome
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    if "status" not in outcome or "interrupted" in outcome:
        progress.note(f"angosd {name}: {interrupted}")
        return 130
    return outcome["status"]


@functools.cache
def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures reported as one line (anything else is a bug, reported with its type)."""
    from angosd.archive.layout import LayoutError
    from angosd.oci.errors import OciError
    from angosd.proxy.upstream import UpstreamError, UpstreamNotFound
    from angosd.storage.errors import StorageError

    return (ConfigError, OciError, UpstreamError, UpstreamNotFound, StorageError, LayoutError, OSError, UsageError,
            CommandFailed)
