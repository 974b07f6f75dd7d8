"""State that several daemons on one store must share: expiring locks and a small TTL cache.

`RedisCoordination` keeps it in Redis (``[cache.redis]``), so every daemon sees it;
`MemoryCoordination` keeps it in this process, which is all a single daemon needs.

Locks are ``SET key token NX PX ttl``: a lock is owned by whoever holds its random token,
expires ``lock_ttl`` after its last renewal (so a daemon killed with ``kill -9`` blocks
others for at most that long), is renewed every third of it while held, and is released
only by its owner (compare-and-delete in a Lua script).

The Redis client is a minimal RESP2 client on a Twisted connection (the commands needed
are SET, GET, EVAL, PING, AUTH, SELECT): Deferred-based, with the reactor injected and a
timeout per command; a failure is a `CoordinationError`, which the API answers with 503.
It keeps one connection, pipelines commands on it, and reconnects on the next command
after the connection was lost or a command timed out.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from angosd.coordination.interface import CoordinationError, Lease

_log = Logger()

_RELEASE = b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = (b"if redis.call('get', KEYS[1]) == ARGV[1] then "
          b"return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")


class RedisCoordination:
    """Locks and cache entries in Redis at ``url``, every key starting with ``key_prefix``."""

    def __init__(self, reactor: Any, url: str, key_prefix: str = "angosd:", lock_ttl: float = 15.0,
                 timeout: float = 5.0) -> None:
        self._reactor = reactor
        self._prefix = key_prefix
        self._lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self._client = RedisClient(reactor, url, timeout)

    def _key(self, kind: str, name: str) -> bytes:
        return f"{self._prefix}{kind}:{name}".encode()

    async def acquire(self, name: str) -> Lease | None:
        lease = Lease(name, secrets.token_hex(16))
        reply = await self._client.execute(b"SET", self._key("lock", name), lease.token.encode(), b"NX", b"PX",
                                           str(self._lock_ttl_ms).encode())
        if reply is None:
            return None
        lease.renewal = LoopingCall(self._renew, lease)
        lease.renewal.clock = self._reactor
        lease.renewal.start(self._lock_ttl_ms / 3000, now=False).addErrback(self._renewal_crashed)
        return lease

    async def _renew(self, lease: Lease) -> None:
        try:
            kept = await self._client.execute(b"EVAL", _RENEW, b"1", self._key("lock", lease.name),
                                              lease.token.encode(), str(self._lock_ttl_ms).encode())
        except CoordinationError as exc:
            _log.warn("could not renew lock {name}: {error}", name=lease.name, error=str(exc))
            return  # it may still be valid; the next renewal tries again
        if not kept and not lease.lost:
            lease.lost = True
            _log.warn("lock {name} expired while held", name=lease.name)

    def _renewal_crashed(self, failure: Failure) -> None:
        _log.failure("lock renewal crashed", failure)

    async def release(self, lease: Lease) -> None:
        if lease.renewal is not None and lease.renewal.running:
            lease.renewal.stop()
        await self._client.execute(b"EVAL", _RELEASE, b"1", self._key("lock", lease.name), lease.token.encode())

    async def get(self, key: str) -> bytes | None:
        reply = await self._client.execute(b"GET", self._key("cache", key))
        return reply if isinstance(reply, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._client.execute(b"SET", self._key("cache", key), value, b"PX", str(max(1, int(ttl * 1000))).encode())

    def close(self) -> None:
        self._client.close()


# -- a minimal RESP2 client -------------------------------------------------------------------


class RedisReplyError(CoordinationError):
    """Redis answered a command with an error."""


class _Incomplete(Exception):
    pass


def encode_command(args: tuple[bytes, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def parse_reply(buffer: bytes, position: int = 0) -> tuple[Any, int]:
    """One RESP2 reply starting at ``position`` and where the next one starts.

    Raises `_Incomplete` when the buffer does not yet hold the whole reply. Error replies
    are returned as `RedisReplyError` instances (not raised), so a pipeline stays in step.
    """
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[position:position + 1], buffer[position + 1:end]
    after = end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), after
    if kind == b"-":
        return RedisReplyError(f"Redis refused the command: {line.decode('utf-8', 'replace')}"), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            raise _Incomplete
        return buffer[after:after + length], after + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse_reply(buffer, after)
            items.append(item)
        return items, after
    raise CoordinationError(f"unreadable reply from Redis: {buffer[position:position + 40]!r}")


class _RespProtocol(TwistedProtocol):
    """Sends commands and matches replies to them in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: list[Deferred[Any]] = []
        self.closed: Deferred[None] = Deferred()
        self.gone = False

    def send(self, args: tuple[bytes, ...]) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        if self.gone or self.transport is None:
            waiter.errback(CoordinationError("the connection to Redis is closed"))
            return waiter
        self._waiting.append(waiter)
        self.transport.write(encode_command(args))
        return waiter

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        position = 0
        try:
            while position < len(self._buffer):
                reply, position = parse_reply(self._buffer, position)
                if not self._waiting:
                    raise CoordinationError("Redis sent a reply nobody asked for")
                waiter = self._waiting.pop(0)
                if isinstance(reply, Exception):
                    waiter.errback(reply)
                else:
                    waiter.callback(reply)
        except _Incomplete:
            pass
        except (CoordinationError, ValueError) as exc:
            _log.warn("dropping the Redis connection: {error}", error=str(exc))
            self.abort()
            return
        self._buffer = self._buffer[position:]

    def abort(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(CoordinationError(f"lost the connection to Redis: {reason.getErrorMessage()}"))
        self.closed.callback(None)


class RedisClient:
    """Commands to the Redis server at ``url`` over one (re)connected connection."""

    def __init__(self, reactor: Any, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self._reactor = reactor
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._database = parts.path.strip("/") or None
        self._timeout = timeout
        self._protocol: _RespProtocol | None = None
        self._waiters: list[Deferred[_RespProtocol]] = []

    @property
    def where(self) -> str:
        return f"redis://{self._host}:{self._port}"

    async def execute(self, *args: bytes) -> Any:
        """The reply to one command; `CoordinationError` when Redis fails, refuses or times out."""
        protocol = await self._connection()
        pending = protocol.send(args)
        pending.addTimeout(self._timeout, self._reactor)
        try:
            return await pending
        except CoordinationError:
            raise
        except Exception as exc:  # a timeout: replies may now be out of step, start afresh
            protocol.abort()
            raise CoordinationError(f"Redis at {self.where} did not answer in {self._timeout:g}s") from exc

    async def _connection(self) -> _RespProtocol:
        """The open connection; one connection attempt at a time, shared by all callers."""
        if self._protocol is not None and not self._protocol.gone:
            return self._protocol
        waiter: Deferred[_RespProtocol] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._connect()).addBoth(self._connected)
        return await waiter

    def _connected(self, result: _RespProtocol | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _connect(self) -> _RespProtocol:
        endpoint = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
        protocol = _RespProtocol()
        try:
            await connectProtocol(endpoint, protocol)
        except Exception as exc:
            raise CoordinationError(f"cannot connect to Redis at {self.where}: {exc}") from None
        setup: list[tuple[bytes, ...]] = []
        if self._password is not None:
            setup.append((b"AUTH", self._username.encode(), self._password.encode()) if self._username
                         else (b"AUTH", self._password.encode()))
        if self._database is not None:
            setup.append((b"SELECT", self._database.encode()))
        for command in setup:
            pending = protocol.send(command)
            pending.addTimeout(self._timeout, self._reactor)
            try:
                await pending
            except Exception as exc:
                protocol.abort()
                raise CoordinationError(f"Redis at {self.where} refused {command[0].decode()}: {exc}") from None
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.abort()
