"""A worker process: ``python -m angosd.daemon.workers.main --run-dir DIR [--index N] [-c FILE ...] [--root DIR]``.

Only `angosd.daemon.workers.supervisor` starts workers, with the descriptors it documents. A worker
loads the same configuration files as the supervisor and serves on the inherited listening
socket exactly what a single daemon serves (`angosd.daemon.service.build_worker_service`). It:

- logs every event to the supervisor (`angosd.daemon.workers.logrelay`) and reports its state on
  the status pipe (`angosd.daemon.workers.status`);
- reloads its configuration on SIGHUP and when its files change, like a single daemon;
- on SIGTERM or SIGINT, stops accepting and drains its requests in flight, then exits 0;
- when the supervisor goes away (end of file on its standard input), stops the same way;
- exits 1 when it cannot start (configuration refused, socket not usable).

It runs in a process group of its own, so a terminal's Ctrl-C reaches the supervisor only,
which stops the workers in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from angosd.daemon.workers.supervisor import LISTEN_FD, STATUS_FD

__all__ = ["WorkerOptions", "main"]

_log = Logger()


class WorkerOptions(usage.Options):
    optParameters = [
        ["run-dir", None, None, "The supervisor's run directory (angosd.daemon.workers.rundir)"],
        ["index", None, "1", "This worker's number, for the log"],
        ["root", "r", None, "Filesystem storage root (overrides [blob_store.fs] root_dir)"],
        ["listen-fd", None, str(LISTEN_FD), "The inherited listening socket"],
        ["status-fd", None, str(STATUS_FD), "The status pipe to the supervisor"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = []

    def opt_config(self, path: str) -> None:
        """A TOML configuration file; repeat to merge several (later files win)."""
        self["config"].append(path)

    opt_c = opt_config

    def postOptions(self) -> None:
        if not self["run-dir"]:
            raise usage.UsageError("--run-dir is required")
        for name in ("index", "listen-fd", "status-fd"):
            try:
                self[name] = int(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be an integer") from None


@implementer(IReadDescriptor)
class SupervisorWatch:
    """Calls ``gone`` once when descriptor ``fd`` (a pipe from the supervisor, never written
    to) reaches end of file or fails: the supervisor has ended."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        return None if data else Failure(CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        self._gone()

    def logPrefix(self) -> str:
        return "supervisor-watch"


def run(reactor: Any, options: WorkerOptions) -> int:
    """Build and run the worker on ``reactor`` until it stops; returns the exit status."""
    # Imported here, once logging goes to the supervisor: what importing logs is relayed too.
    from angosd.auth.policy import PolicyError
    from angosd.config import ConfigError, default_config, load_config
    from angosd.daemon.overrides import Overrides
    from angosd.daemon.service import build_worker_service
    from angosd.daemon.systemd import ObservedEndpoint
    from angosd.daemon.workers.listening import SharedSocketEndpoint
    from angosd.daemon.workers.status import PipeNotifier
    from angosd.tls.errors import TlsError

    overrides = Overrides(root=options["root"])
    endpoint = ObservedEndpoint(SharedSocketEndpoint(reactor, options["listen-fd"]))
    try:
        config = overrides.apply(load_config(options["config"]) if options["config"] else default_config())
        service = build_worker_service(config, reactor, endpoint, PipeNotifier(options["status-fd"]),
                                       options["run-dir"], paths=options["config"], overrides=overrides)
    except (ConfigError, PolicyError, TlsError) as exc:
        _log.error("worker {index} cannot start: {error}", index=options["index"], error=str(exc))
        return 1
    status = {"code": 0, "stopping": False}

    def stopping() -> None:
        status["stopping"] = True

    def cannot_listen(failure: Failure) -> None:
        _log.error("worker {index} cannot listen: {error}", index=options["index"], error=failure.getErrorMessage())
        status["code"] = 1
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    def supervisor_gone() -> None:
        if status["stopping"]:
            return  # the reactor closes the pipe while it shuts down
        _log.warn("worker {index}: the supervisor is gone; stopping", index=options["index"])
        reactor.stop()

    reactor.addReader(SupervisorWatch(0, supervisor_gone))
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    endpoint.listening().addErrback(cannot_listen)
    reactor.run()
    return status["code"]


def main(argv: list[str] | None = None, forked: bool = False) -> None:
    """The worker's entry point (see the module docstring); never returns. ``forked``: this
    process was forked by the fork server (`angosd.daemon.workers.forks`), whose log buffer
    holds the supervisor's early events, not this worker's."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is installed
    options = WorkerOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as exc:
        print(f"angosd worker: {exc}", file=sys.stderr)
        sys.exit(2)
    from angosd.daemon.workers.logrelay import relay_observer

    log_file = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - lives as long as the process
    globalLogBeginner.beginLoggingTo([relay_observer(log_file)], discardBuffer=forked, redirectStandardIO=True)
    from twisted.internet import reactor

    sys.exit(run(reactor, options))


if __name__ == "__main__":
    main()
