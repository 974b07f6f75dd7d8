"""How a failure of the store is reported to a registry client.

Storage drivers raise `StorageError`s (no OCI semantics); the registry lets them pass
through its operations (including blob bodies already streaming) rather than wrapping
every call. This function is the one translation, so the HTTP layer never needs the
storage layer's types.
"""

from __future__ import annotations

from angosd.oci.errors import OciError, StorageFailure, StorageUnavailable
from angosd.storage.errors import OutOfSpace, StorageError


def storage_failure(error: BaseException) -> OciError | None:
    """The OCI error answering ``error`` when it is a storage failure, else None:
    `StorageUnavailable` (507) for a full store, `StorageFailure` (503) for any other."""
    if isinstance(error, OutOfSpace):
        return StorageUnavailable("insufficient storage: the registry's disk is full")
    if isinstance(error, StorageError):
        return StorageFailure(f"storage error: {error}")
    return None
