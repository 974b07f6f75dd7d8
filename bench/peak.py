"""Run a command to completion and measure its peak RSS, untainted by the caller's.

``wait4`` alone reports at least the caller's own peak: the child is forked (or vforked) from
the caller, and Linux carries the peak of the address space a process had before ``exec``
into its ``ru_maxrss``. A benchmark that has grown (writing a large store in-process, say)
would see its own size for every command. So the command is started by a small Python that
forks it afresh and reports what ``wait4`` says of that grandchild.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["Measured", "measured"]

_STARTER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvpe(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_pid, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    lines: list[str]
    errors: str


def measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``command``: wall seconds, its peak RSS in MiB (KiB precision), its exit code, the
    last lines it printed on stdout and the end of its stderr."""
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors, \
            tempfile.NamedTemporaryFile("r") as peak:
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-c", _STARTER, peak.name, *command],
                               stdout=output, stderr=errors, env=env)
        seconds = time.monotonic() - started
        peak_kib = int(peak.read() or 0)
        output.seek(max(0, output.seek(0, os.SEEK_END) - 4096))
        lines = output.read().decode(errors="replace").strip().splitlines()
        errors.seek(max(0, errors.seek(0, os.SEEK_END) - 2000))
        return Measured(seconds, peak_kib / 1024, code, lines, errors.read().decode(errors="replace"))
