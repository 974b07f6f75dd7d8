"""The supervisor's run directory: state its workers share for one run of the daemon.

::

    <base>/angosd-run-<supervisor pid>-<random>/
        metrics/        prometheus-client multiprocess files (PROMETHEUS_MULTIPROC_DIR)
        processes       the supervisor's and the running workers' pids (process_* metrics)
        coordination/   upload locks when the store is not a local directory (see angosd.coordination.files)

``<base>`` is systemd's ``$RUNTIME_DIRECTORY`` when set (``RuntimeDirectory=`` in the unit),
else the temporary directory. A run starts with an empty directory of its own and removes it
when it stops; directories left by runs that were killed (their supervisor pid no longer
exists) are removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping

from prometheus_client.multiprocess import mark_process_dead

from angosd.observability.processes import write_processes

__all__ = ["PREFIX", "RunDirectory", "default_base"]

#: Names of run directories start with this, then the supervisor's pid and a dash.
PREFIX = "angosd-run-"


def default_base(environ: Mapping[str, str] | None = None) -> str:
    """Where run directories go: the first of ``$RUNTIME_DIRECTORY``, else the temporary directory."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(base: str) -> list[str]:
    """Remove the run directories in ``base`` that belong to this user and to no running
    process; returns their paths."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        pid_text = entry.name[len(PREFIX):].split("-", 1)[0]
        try:
            pid = int(pid_text)
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except (ValueError, OSError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


class RunDirectory:
    """One run's directory (see the module docstring): `create` at start, `remove` at stop."""

    def __init__(self, base: str | None = None) -> None:
        self.base = base if base is not None else default_base()
        self._path: str | None = None

    @classmethod
    def existing(cls, path: str) -> RunDirectory:
        """The run directory at ``path``, created by the supervisor (a worker's view of it)."""
        run = cls(os.path.dirname(path))
        run._path = path
        return run

    @property
    def path(self) -> str:
        if self._path is None:
            raise RuntimeError("the run directory has not been created")
        return self._path

    @property
    def metrics(self) -> str:
        """The prometheus-client multiprocess directory."""
        return os.path.join(self.path, "metrics")

    @property
    def processes(self) -> str:
        """The file listing the daemon's pids."""
        return os.path.join(self.path, "processes")

    @property
    def coordination(self) -> str:
        """Coordination files of workers on a store that is not a local directory."""
        return os.path.join(self.path, "coordination")

    def create(self) -> str:
        """Make a new, empty run directory (after sweeping those of dead runs); returns its path."""
        sweep(self.base)
        self._path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self.base)
        os.mkdir(self.metrics)
        return self._path

    def record(self, pids: Iterable[int]) -> None:
        """Write the daemon's pids, the supervisor first."""
        with contextlib.suppress(OSError):
            write_processes(self.processes, pids)

    def process_ended(self, pid: int) -> None:
        """Forget the live gauges of a worker that ended (its counters stay counted)."""
        with contextlib.suppress(OSError):
            mark_process_dead(pid, self.metrics)

    def remove(self) -> None:
        """Delete the directory and everything in it."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
