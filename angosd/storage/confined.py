"""A filesystem store read from a tree that angosd does not own (another registry's).

Such a tree may hold symbolic links, possibly pointing outside it. `ConfinedFilesystemDriver`
refuses every key whose path passes through one (`InvalidPath`), so nothing outside the
root is ever read, listed or linked through it.
"""

from __future__ import annotations

import os

from angosd.storage.errors import InvalidPath
from angosd.storage.fs import FilesystemDriver
from angosd.storage.pools import BoundedPool


class ConfinedFilesystemDriver(FilesystemDriver):
    """A `FilesystemDriver` whose keys never resolve through a symbolic link."""

    def __init__(self, root: str, pool: BoundedPool) -> None:
        super().__init__(root, pool)
        self._real_root = os.path.realpath(self.root)

    def _path(self, key: str) -> str:
        path = super()._path(key)
        if os.path.realpath(path) != os.path.join(self._real_root, *key.split("/")):
            raise InvalidPath(key)
        return path
