"""In-memory driver with the filesystem driver's semantics, for fast unit tests.

Objects live in a tree of directories that mirrors what `FilesystemDriver` leaves on
disk: writing ``a/b/c`` creates the prefixes ``a`` and ``a/b``, deleting an object
leaves its (possibly empty) prefixes behind, and a key cannot be both an object and a
prefix. Keys are validated exactly as on disk, failures are the same `StorageError`
subclasses, and every method returns an already-fired Deferred.

Like an open file, an append writer keeps writing to the object it opened even when
the key is replaced or deleted meanwhile; a read handle sees the object as it was
when opened. The one deliberate difference: `stat` of a prefix is ``None`` (the
filesystem reports the directory entry's size, which no caller relies on).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from angosd.storage.errors import InvalidPath, OutOfSpace, PathNotFound, StorageError
from angosd.storage.handles import bytes_handle
from angosd.storage.interface import COPIED, LINKED, IAppendWriter, IReadHandle, IStorageDriver
from angosd.storage.listings import page_of

T = TypeVar("T")

#: Names the filesystem driver uses for its temporary files; hidden from listings.
_TEMP_PREFIX = ".tmp-"
#: Longest name component a typical filesystem accepts, in bytes.
_NAME_MAX = 255


class _Object:
    """The bytes of one object (the in-memory analogue of an inode)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)


class _Directory:
    """A prefix: named objects and sub-prefixes."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, _Object | _Directory] = {}


_Node = _Object | _Directory


def _split(key: str, check_names: bool = True) -> list[str]:
    """The components of ``key``; raises `InvalidPath` exactly where the filesystem driver does.

    With ``check_names``, a component the filesystem would refuse (longer than 255 bytes)
    fails with `StorageError` as it does on disk.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise InvalidPath(key)
    if check_names:
        for part in parts:
            try:
                too_long = len(os.fsencode(part)) > _NAME_MAX
            except UnicodeError:
                raise StorageError(f"Invalid name ({key})") from None
            if too_long:
                raise StorageError(f"File name too long ({key})")
    return parts


def _run(function: Callable[[], T]) -> Deferred[T]:
    try:
        return succeed(function())
    except StorageError as exc:
        return fail(exc)


@implementer(IAppendWriter)
class _MemoryAppendWriter:
    """Appends to one object; ``offset`` counts its size at open plus our writes."""

    def __init__(self, driver: MemoryDriver, target: _Object, key: str) -> None:
        self._driver = driver
        self._target = target
        self._key = key
        self._closed = False
        self.offset = len(target.data)

    def write(self, data: bytes) -> None:
        """Append ``data``; raises `OutOfSpace` beyond the driver's capacity."""
        if self._closed:
            raise ValueError("write to closed file")
        self._driver._reserve(len(data), self._key)
        self._target.data += data
        self.offset += len(data)

    def finish(self) -> Deferred[None]:
        """Close the writer; memory is as durable as it gets."""
        self._closed = True
        return succeed(None)

    def abort(self) -> Deferred[None]:
        """Close the writer; what was appended stays."""
        self._closed = True
        return succeed(None)


@implementer(IStorageDriver)
class MemoryDriver:
    """Objects in a dictionary tree; ``capacity`` (bytes) simulates a full disk."""

    def __init__(self, capacity: int | None = None) -> None:
        self._root = _Directory()
        self.capacity = capacity

    # Tree navigation -----------------------------------------------------------------

    def _lookup(self, parts: list[str], key: str) -> _Node | None:
        """The node at ``parts``, None when missing; an object used as a prefix fails."""
        node: _Node = self._root
        for part in parts:
            if not isinstance(node, _Directory):
                raise StorageError(f"Not a directory ({key})")
            child = node.entries.get(part)
            if child is None:
                return None
            node = child
        return node

    def _find(self, parts: list[str]) -> _Node | None:
        """Like `_lookup`, but an object used as a prefix just means "missing"."""
        try:
            return self._lookup(parts, "")
        except StorageError:
            return None

    def _makedirs(self, parts: list[str], key: str) -> _Directory:
        """The directory at ``parts``, created with its parents as needed."""
        node = self._root
        for part in parts:
            child = node.entries.get(part)
            if child is None:
                child = node.entries[part] = _Directory()
            elif not isinstance(child, _Directory):
                raise StorageError(f"Not a directory ({key})")
            node = child
        return node

    def _object(self, key: str) -> _Object:
        """The object at ``key``; `PathNotFound` when missing."""
        node = self._lookup(_split(key), key)
        if node is None:
            raise PathNotFound(key)
        if isinstance(node, _Directory):
            raise StorageError(f"Is a directory ({key})")
        return node

    def _usage(self) -> int:
        unique = {id(obj): obj for obj in _objects(self._root)}  # a linked object counts once
        return sum(len(obj.data) for obj in unique.values())

    def _reserve(self, size: int, key: str, replacing: int = 0) -> None:
        if self.capacity is not None and self._usage() - replacing + size > self.capacity:
            raise OutOfSpace(f"no space left writing {key}")

    # IStorageDriver --------------------------------------------------------------------

    def read(self, key: str) -> Deferred[bytes]:
        """The bytes of an object; fails with `PathNotFound`."""
        return _run(lambda: bytes(self._object(key).data))

    def write(self, key: str, data: bytes) -> Deferred[None]:
        """Create or replace an object atomically (a new object, as a rename would)."""

        def write() -> None:
            parts = _split(key)
            parent = self._makedirs(parts[:-1], key)
            existing = parent.entries.get(parts[-1])
            if isinstance(existing, _Directory):
                raise StorageError(f"Is a directory ({key})")
            self._reserve(len(data), key, len(existing.data) if existing is not None else 0)
            parent.entries[parts[-1]] = _Object(data)

        return _run(write)

    def stat(self, key: str) -> Deferred[int | None]:
        """The size of an object; None when missing or a prefix."""

        def size() -> int | None:
            node = self._find(_split(key))
            return len(node.data) if isinstance(node, _Object) else None

        return _run(size)

    def children(self, prefix: str) -> Deferred[list[str]]:
        """Sorted names directly below ``prefix``, without temporary files."""

        def names() -> list[str]:
            node = self._find(_split(prefix))
            if not isinstance(node, _Directory):
                return []
            return sorted(name for name in node.entries if not name.startswith(_TEMP_PREFIX))

        return _run(names)

    def children_after(self, prefix: str, after: str | None, limit: int) -> Deferred[list[str]]:
        """A page of `children`."""

        def names() -> list[str]:
            node = self._find(_split(prefix))
            if not isinstance(node, _Directory):
                return []
            return page_of(sorted(name for name in node.entries if not name.startswith(_TEMP_PREFIX)), after, limit)

        return _run(names)

    def walk(self, prefix: str) -> Deferred[list[str]]:
        """Every object key below ``prefix``, relative to it, sorted."""

        def keys() -> list[str]:
            node = self._find(_split(prefix, check_names=False))
            if not isinstance(node, _Directory):
                return []
            return sorted(_walk(node, ""))

        return _run(keys)

    def delete(self, key: str) -> Deferred[None]:
        """Remove an object; missing is fine, a prefix is an error (as unlink)."""

        def remove() -> None:
            parts = _split(key)
            parent = self._lookup(parts[:-1], key)
            if parent is None:
                return
            if not isinstance(parent, _Directory):
                raise StorageError(f"Not a directory ({key})")
            node = parent.entries.get(parts[-1])
            if isinstance(node, _Directory):
                raise StorageError(f"Is a directory ({key})")
            if node is not None:
                del parent.entries[parts[-1]]

        return _run(remove)

    def delete_tree(self, prefix: str) -> Deferred[None]:
        """Remove the prefix and everything below it; missing (or an object) is ignored."""

        def remove_tree() -> None:
            parts = _split(prefix, check_names=False)
            parent = self._find(parts[:-1])
            if isinstance(parent, _Directory) and isinstance(parent.entries.get(parts[-1]), _Directory):
                del parent.entries[parts[-1]]

        return _run(remove_tree)

    def move(self, source: str, destination: str) -> Deferred[None]:
        """Rename ``source`` to ``destination``, replacing it, as `os.replace` would."""

        def rename() -> None:
            target_parts = _split(destination)
            target_parent = self._makedirs(target_parts[:-1], destination)
            source_parts = _split(source)
            source_parent = self._lookup(source_parts[:-1], source)
            if source_parent is None:
                raise PathNotFound(source)
            if not isinstance(source_parent, _Directory):
                raise StorageError(f"Not a directory ({source})")
            node = source_parent.entries.get(source_parts[-1])
            if node is None:
                raise PathNotFound(source)
            existing = target_parent.entries.get(target_parts[-1])
            if existing is node:
                return
            if isinstance(node, _Object):
                if isinstance(existing, _Directory):
                    raise StorageError(f"Is a directory ({source})")
            else:
                if isinstance(existing, _Object):
                    raise StorageError(f"Not a directory ({source})")
                if isinstance(existing, _Directory) and existing.entries:
                    raise StorageError(f"Directory not empty ({source})")
                if target_parts[:len(source_parts)] == source_parts:
                    raise StorageError(f"Invalid argument ({source})")
            del source_parent.entries[source_parts[-1]]
            target_parent.entries[target_parts[-1]] = node

        return _run(rename)

    def open_read(self, key: str) -> Deferred[IReadHandle]:
        """A handle on the object's current bytes; fails with `PathNotFound`."""
        return _run(lambda: bytes_handle(bytes(self._object(key).data)))

    def open_append(self, key: str) -> Deferred[IAppendWriter]:
        """A writer appending to ``key``, created empty when absent."""

        def open_writer() -> IAppendWriter:
            parts = _split(key)
            parent = self._makedirs(parts[:-1], key)
            node = parent.entries.get(parts[-1])
            if isinstance(node, _Directory):
                raise StorageError(f"Is a directory ({key})")
            if node is None:
                node = parent.entries[parts[-1]] = _Object()
            return _MemoryAppendWriter(self, node, key)

        return _run(open_writer)

    def hash_object(self, key: str, algorithm: str) -> Deferred[str]:
        """Hex digest of the object's bytes; an unknown algorithm fails with ValueError."""
        try:
            hasher = hashlib.new(algorithm)
        except ValueError as exc:
            return fail(exc)

        def digest() -> str:
            hasher.update(self._object(key).data)
            return hasher.hexdigest()

        return _run(digest)

    def link_from(self, source: IStorageDriver, source_key: str, key: str) -> Deferred[str]:
        """Another `MemoryDriver`'s object (or this one's) is shared, as a hard link shares an
        inode; any other driver's is streamed."""
        if not isinstance(source, MemoryDriver):
            from angosd.storage.transfer import stream_copy

            return Deferred.fromCoroutine(stream_copy(source, source_key, self, key)).addCallback(lambda _: COPIED)

        def link() -> str:
            node = source._object(source_key)
            parts = _split(key)
            parent = self._makedirs(parts[:-1], key)
            existing = parent.entries.get(parts[-1])
            if isinstance(existing, _Directory):
                raise StorageError(f"Is a directory ({key})")
            if existing is not node and source is not self:
                self._reserve(len(node.data), key, len(existing.data) if existing is not None else 0)
            parent.entries[parts[-1]] = node
            return LINKED

        return _run(link)


def _objects(directory: _Directory) -> Iterator[_Object]:
    for node in directory.entries.values():
        if isinstance(node, _Directory):
            yield from _objects(node)
        else:
            yield node


def _walk(directory: _Directory, relative: str) -> Iterator[str]:
    for name, node in directory.entries.items():
        path = f"{relative}{name}"
        if isinstance(node, _Directory):
            yield from _walk(node, f"{path}/")
        elif not name.startswith(_TEMP_PREFIX):
            yield path
