"""Helpers for driving Deferreds and coroutines in unit tests.

pytest-twisted runs every test inside the reactor's greenlet, so a test cannot block
on a Deferred; tests that need the reactor (thread pool work) are ``async def`` tests
decorated with ``pytest_twisted.ensureDeferred``. Code over the memory driver and a
fake clock completes synchronously and is driven with `run`/`fired` instead.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def fired(deferred: Deferred[T]) -> T:
    """The result of a Deferred that must already have fired; its failure is raised."""
    outcome: list[T | Failure] = []
    deferred.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return cast(T, result)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must complete synchronously (memory driver, fake clock)."""
    return fired(Deferred.fromCoroutine(coroutine))
