"""The audit log: one JSON line per state change and per denial, in a file of its own.

Each line is a JSON object with (absent values omitted)::

    {"time": "2026-01-31T12:00:00.123Z", "seq": 42, "via": "api", "action": "put-manifest",
     "result": "success", "status": 201, "identity": {"kind": "basic", "id": "ci"},
     "source": "10.0.0.7", "repository": "team/app", "reference": "v1",
     "digest": "sha256:...", "pid": 1234, "prev": "<64 hex>", "hash": "<64 hex>"}

- ``via``: ``api`` (registry and extension API), ``ui`` (the web interface), ``cli`` (a
  maintenance command), ``config`` (a configuration reload), ``daemon`` (an online garbage
  collection pass that deleted blobs, or failed);
- ``result``: ``success``, ``failure``, ``denied`` (403), ``unauthenticated`` (401),
  ``interrupted`` (a command stopped by a signal);
- ``identity.kind``: ``basic``, ``oidc``, ``certificate``, ``anonymous``, ``none`` (not
  authenticated), ``local`` (the OS user running a command); never a secret.

With ``hash_chain`` each line carries ``prev``, the ``hash`` of the line before it (64 zeros
for the first line ever), and ``hash``, the SHA-256 of its own canonical JSON without
``hash`` (keys sorted, no spaces). Editing a line breaks its hash; removing or reordering
lines breaks the next line's ``prev`` and the ``seq`` sequence (`verify`). Removing the last
lines leaves a valid chain: keep the last ``hash`` elsewhere and give it to ``verify --last``.

Several processes (the workers, a maintenance command) may write the same file: each line
is written under an exclusive lock on ``PATH.lock``, after reading the last line's ``hash``
and ``seq`` (a bounded read of the file's tail), so the chain stays one chain. A writer whose
file was renamed (rotation, by this log or by logrotate) reopens ``PATH`` before writing;
`AuditLog.reopen` (SIGHUP) does it at once.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from angosd.config import AuditConfig

__all__ = ["GENESIS", "AuditLog", "Verdict", "line_hash", "verify_lines"]

#: ``prev`` of the first line of a chain.
GENESIS = "0" * 64
#: Bytes read from the end of the file to find the last line.
_TAIL = 64 * 1024


def _timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps({key: value for key, value in record.items() if key != "hash"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def line_hash(record: Mapping[str, Any]) -> str:
    """The ``hash`` of ``record``: SHA-256 of its canonical JSON without ``hash``."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def _last_record(path: str) -> dict[str, Any] | None:
    """The last line of ``path`` as a record, None when the file is absent, empty or its last
    line is not JSON (it is read from the file's last `_TAIL` bytes)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - _TAIL))
            tail = file.read()
    except FileNotFoundError:
        return None
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        record = json.loads(lines[-1])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class AuditLog:
    """Appends audit records to ``config.path`` (see the module docstring).

    ``wall`` gives epoch seconds for ``time``. `record` raises `OSError` when the line cannot
    be written (the caller decides whether that stops anything).
    """

    def __init__(self, config: AuditConfig, wall: Callable[[], float]) -> None:
        if config.path is None:
            raise ValueError("the audit log needs a path")
        self.path = os.path.abspath(config.path)
        self._config = config
        self._wall = wall
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._last: tuple[str, int] | None = None  # (hash, seq) of the last line this writer wrote
        self._open()

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """Close and reopen ``path`` (after an external rotation; on SIGHUP)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open()

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None

    def _renamed(self) -> bool:
        assert self._fd is not None
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (status.st_ino, status.st_dev) != (mine.st_ino, mine.st_dev)

    def _previous(self) -> tuple[str, int]:
        """(hash, seq) of the last line written: the last line of ``path``; when ``path`` is
        empty (just rotated), the later of this writer's last line and the last line of
        ``PATH.1``; (`GENESIS`, 0) for a new log."""
        record = _last_record(self.path)
        if record is not None:
            return str(record.get("hash", GENESIS)), int(record.get("seq", 0))
        candidates = [self._last] if self._last is not None else []
        rotated = _last_record(f"{self.path}.1")
        if rotated is not None:
            candidates.append((str(rotated.get("hash", GENESIS)), int(rotated.get("seq", 0))))
        return max(candidates, key=lambda found: found[1], default=(GENESIS, 0))

    def record(self, via: str, action: str, result: str, **fields: Any) -> dict[str, Any]:
        """Append one line; ``fields`` with a None value are left out. Returns the record."""
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if self._renamed():
                self.reopen()
            prev, seq = self._previous()
            record: dict[str, Any] = {"time": _timestamp(self._wall()), "seq": seq + 1, "via": via,
                                      "action": action, "result": result}
            record.update({key: value for key, value in fields.items() if value is not None})
            record["pid"] = os.getpid()
            if self._config.hash_chain:
                record["prev"] = prev
                record["hash"] = line_hash(record)
            self._write(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
            self._last = (str(record.get("hash", GENESIS)), int(record["seq"]))
            if self._config.max_size and os.fstat(self._fd or 0).st_size >= self._config.max_size:
                self._rotate()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return record

    def _write(self, line: bytes) -> None:
        assert self._fd is not None
        written = 0
        while written < len(line):
            written += os.write(self._fd, line[written:])
        if self._config.fsync == "always":
            os.fsync(self._fd)

    def _rotate(self) -> None:
        """``PATH`` -> ``PATH.1`` -> ... -> ``PATH.keep`` (the oldest is dropped); then a new ``PATH``."""
        for index in range(self._config.keep, 0, -1):
            source = self.path if index == 1 else f"{self.path}.{index - 1}"
            try:
                os.replace(source, f"{self.path}.{index}")
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        self.reopen()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `verify_lines` found: ``problem`` is None when the chain is intact."""

    lines: int
    problem: str | None = None
    first_prev: str | None = None
    last_hash: str | None = None


def verify_lines(lines: Iterable[bytes], last: str | None = None) -> Verdict:
    """Check a hash-chained audit log: every line's ``hash``, every ``prev`` against the line
    before it, ``seq`` increasing by one; the first line may continue an earlier file (its
    ``prev`` is reported). ``last``: the ``hash`` the last line must have."""
    previous: dict[str, Any] | None = None
    count = 0
    first_prev: str | None = None
    for number, raw in enumerate(lines, 1):
        count = number
        try:
            record = json.loads(raw)
        except ValueError:
            return Verdict(count, f"line {number}: not JSON")
        if not isinstance(record, dict) or "hash" not in record or "prev" not in record:
            return Verdict(count, f"line {number}: no hash chain (is [observability.audit] hash_chain on?)")
        if line_hash(record) != record["hash"]:
            return Verdict(count, f"line {number}: its hash does not match its content (edited)")
        if previous is None:
            first_prev = record["prev"]
            if record.get("seq") == 1 and record["prev"] != GENESIS:
                return Verdict(count, f"line {number}: first line of the log but prev is not the genesis hash")
        else:
            if record["prev"] != previous["hash"]:
                return Verdict(count, f"line {number}: prev is not the hash of line {number - 1} "
                                      "(a line was removed, inserted or moved)")
            if record.get("seq") != previous.get("seq", 0) + 1:
                return Verdict(count, f"line {number}: seq {record.get('seq')} does not follow "
                                      f"{previous.get('seq')} (a line was removed or moved)")
        previous = record
    if previous is None:
        return Verdict(0, "no lines")
    if last is not None and previous["hash"] != last:
        return Verdict(count, f"the last line's hash is {previous['hash']}, not {last} (lines were removed at the end)")
    return Verdict(count, None, first_prev, previous["hash"])
