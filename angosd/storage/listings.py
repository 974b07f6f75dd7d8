"""Pages of directory listings on a local filesystem, without sorting a large directory per page.

A filesystem lists a directory unsorted and whole, so a page of a sorted listing costs the
whole directory. `SortedListings` keeps the sorted names of large directories and serves
pages from them by bisection while the directory is unchanged: its modification time and
inode are the same as when it was listed. A listing is only kept when the directory had
not changed for `SETTLED_NS` before it was read, so a change made later in the same
timestamp tick (timestamps are coarse) cannot go unseen. The cache holds at most
``max_names`` names in all (least recently used directories go first), so its memory is
bounded whatever the store holds. Thread-safe: pages are computed on the ``io`` pool.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

#: How long a directory must have been unchanged for its listing to be kept.
SETTLED_NS = 2_000_000_000
#: Names kept in all, across directories.
MAX_NAMES = 50_000
#: Smaller directories are not kept: they are listed inline (`angosd.storage.fs.INLINE_ENTRIES`).
MIN_NAMES = 256


def page_of(names: Sequence[str], after: str | None, limit: int) -> list[str]:
    """At most ``limit`` names of sorted ``names`` that sort after ``after``."""
    start = 0 if after is None else bisect.bisect_right(names, after)
    return list(names[start:start + max(0, limit)])


class SortedListings:
    """Sorted listings of large directories, kept while unchanged (see the module docstring)."""

    def __init__(self, keep: Callable[[str], bool], max_names: int = MAX_NAMES, min_names: int = MIN_NAMES,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        """``keep(name)`` says whether a directory entry is listed at all (temporary files are not)."""
        self._keep = keep
        self._max_names = max_names
        self._min_names = min_names
        self._now_ns = now_ns
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[tuple[int, int], tuple[str, ...]]] = OrderedDict()
        self._held = 0

    @property
    def held(self) -> int:
        """Names kept now."""
        return self._held

    def sorted_names(self, path: str) -> Sequence[str]:
        """Every listed name of directory ``path``, sorted; [] when it does not exist."""
        try:
            before = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return ()
        version = (before.st_mtime_ns, before.st_ino)
        with self._lock:
            kept = self._kept.get(path)
            if kept is not None:
                if kept[0] == version:
                    self._kept.move_to_end(path)
                    return kept[1]
                del self._kept[path]  # out of date
                self._held -= len(kept[1])
        try:
            names = tuple(sorted(name for name in os.listdir(path) if self._keep(name)))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        settled = self._now_ns() - before.st_mtime_ns > SETTLED_NS
        if settled and self._min_names <= len(names) <= self._max_names:
            after = os.stat(path)
            if (after.st_mtime_ns, after.st_ino) == version:
                self._store(path, version, names)
        return names

    def _store(self, path: str, version: tuple[int, int], names: tuple[str, ...]) -> None:
        with self._lock:
            previous = self._kept.pop(path, None)
            if previous is not None:
                self._held -= len(previous[1])
            self._kept[path] = (version, names)
            self._held += len(names)
            while self._held > self._max_names:
                _path, (_version, dropped) = self._kept.popitem(last=False)
                self._held -= len(dropped)

    def page(self, path: str, after: str | None, limit: int) -> list[str]:
        """At most ``limit`` sorted names of directory ``path`` after ``after``."""
        return page_of(self.sorted_names(path), after, limit)
