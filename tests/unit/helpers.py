"""Helpers for driving Deferreds and coroutines in unit tests.

pytest-twisted runs every test inside the reactor's greenlet, so a test cannot block
on a Deferred; tests that need the reactor (thread pool work) are ``async def`` tests
decorated with ``pytest_twisted.ensureDeferred``. Code over the memory driver and a
fake clock completes synchronously and is driven with `run`/`fired` instead.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from angosd.oci.digest import Digest

if TYPE_CHECKING:
    from angosd.registry.registry import Registry

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


def push_blob(registry: Registry, namespace: str, data: bytes) -> Digest:
    """Upload ``data`` into ``namespace`` in one chunk and complete it; its digest."""
    session = run(registry.uploads.start(namespace))
    sink = run(registry.uploads.open_sink(namespace, session, 0))
    sink.write(data)
    run(sink.finish())
    digest = Digest.of(data)
    run(registry.uploads.complete(namespace, session, digest))
    return digest
