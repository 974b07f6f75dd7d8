"""Running a few awaitables side by side."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar, cast

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.python.failure import Failure

__all__ = ["concurrently"]

T = TypeVar("T")


async def concurrently(work: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``work`` (coroutines or Deferreds) side by side; their results in order, or the
    first failure raised as itself once all have ended (none is left running)."""
    if not work:
        return []
    results = await DeferredList([ensureDeferred(cast(Any, item)) for item in work], consumeErrors=True)
    for succeeded, result in results:
        if not succeeded:
            cast(Failure, result).raiseException()
    return [result for _succeeded, result in results]
