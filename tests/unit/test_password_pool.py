"""Password checks on a full ``cpu`` pool: 429 with Retry-After (never a 401, never unbounded
queueing), recorded as ``limited``; the check is also counted by the login limiter."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address

from angosd.auth.authenticator import Authenticator
from angosd.auth.basic import PasswordUsers, hash_password
from angosd.auth.limits import LoginLimiter
from angosd.config.model import IdentityConfig, LoginLimitsConfig
from angosd.oci.errors import TooManyRequests
from angosd.storage.pools import BoundedPool
from tests.unit.test_pools import until


class Request:
    def __init__(self, user: str, password: str) -> None:
        self._authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def getHeader(self, name: str) -> str | None:
        return self._authorization if name == "Authorization" else None

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.9", 40000)


@pytest.fixture
def cpu() -> Iterator[BoundedPool]:
    pool = BoundedPool("cpu", reactor, max_threads=1, max_queue=1)
    pool.startService()
    yield pool
    pool.stopService()


@pytest_twisted.ensureDeferred
async def test_a_full_password_pool_answers_429(cpu: BoundedPool) -> None:
    gate = threading.Event()
    blockers = [cpu.run(gate.wait, 30) for _ in range(2)]  # one running, one queued: the pool is full
    await until(lambda: cpu.active == 1)
    recorded: list[tuple[str, str]] = []
    users = PasswordUsers([IdentityConfig("ci", "ci", hash_password("right"))], cpu, reactor)
    limiter = LoginLimiter(LoginLimitsConfig(failures_per_address=1, failures_per_username=100), reactor)
    authenticator = Authenticator(users, None, lambda method, result: recorded.append((method, result)),
                                  clock=reactor, limiter=limiter)
    with pytest.raises(TooManyRequests) as refused:
        await authenticator.authenticate(Request("ci", "right"))  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.headers["Retry-After"]) == (429, "1")
    assert recorded == [("basic", "limited")]
    gate.set()
    for blocker in blockers:
        await blocker
    # The refused check counted against the address (limit 1): the next one is refused by the limiter.
    with pytest.raises(TooManyRequests, match="address"):
        await authenticator.authenticate(Request("ci", "right"))  # type: ignore[arg-type]
    other: Any = Request("ci", "right")
    other.getClientAddress = lambda: IPv4Address("TCP", "192.0.2.10", 40000)
    identity = await authenticator.authenticate(other)
    assert identity.username == "ci"
