"""A storage driver decorator that puts each operation in a tracing span.

Storage knows nothing of tracing: `angosd.daemon.assembly` wraps the driver in `TracedDriver`
when tracing is on. Each call of an `IStorageDriver` method runs inside
``around("storage.<method>", call, {"angosd.storage.key": key})``, which ends the span when
the returned Deferred fires; every other attribute is the wrapped driver's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from zope.interface import alsoProvides, implementer, providedBy

from angosd.storage.interface import IStorageDriver

__all__ = ["TracedDriver"]

#: ``around(name, call, attributes, parent)``: ``call()`` in a span (`angosd.observability.tracing.Tracing.around`).
Around = Callable[[str, Callable[[], Any], Mapping[str, Any], bool], Any]
_TRACED = frozenset(IStorageDriver.names())


@implementer(IStorageDriver)
class TracedDriver:
    """``driver`` with a span around each storage operation (see the module docstring)."""

    def __init__(self, driver: Any, around: Around, parent: bool = False) -> None:
        """``parent``: each operation's span is the parent of what the driver starts in it
        (the S3 driver's requests); a filesystem driver starts nothing traced."""
        self.wrapped = driver
        self._around = around
        self._parent = parent
        alsoProvides(self, *providedBy(driver))  # e.g. IRedirectingDriver: presigned blob URLs

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.wrapped, name)
        if name not in _TRACED:
            return attribute

        def traced(*args: Any, **kwargs: Any) -> Any:
            key = args[0] if args and isinstance(args[0], str) else ""
            return self._around(f"storage.{name}", lambda: attribute(*args, **kwargs), {"angosd.storage.key": key},
                                self._parent)

        return traced
