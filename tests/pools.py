"""Thread pools for tests that build drivers or password checkers themselves (not a daemon)."""

from __future__ import annotations

from typing import Any

from angosd.config import ServerConfig
from angosd.storage.pools import Pools

_POOLS: dict[int, Pools] = {}


def started_pools(reactor: Any) -> Pools:
    """``reactor``'s pools with the default sizes: started at the first call, stopped when it shuts down."""
    pools = _POOLS.get(id(reactor))
    if pools is None:
        server = ServerConfig()
        pools = Pools.create(reactor, server.io_threads, server.io_queue, server.cpu_threads, server.cpu_queue)
        pools.start_until_shutdown(reactor)
        _POOLS[id(reactor)] = pools
    return pools
