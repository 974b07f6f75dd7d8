"""Storage-level failures (no HTTP, no OCI semantics)."""


class StorageError(Exception):
    """Base class for driver failures."""


class PathNotFound(StorageError):
    """The key does not exist."""


class InvalidPath(StorageError):
    """The key is not a safe relative path."""


class OutOfSpace(StorageError):
    """The backing store has no room left."""
