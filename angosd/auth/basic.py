"""Basic-auth users with argon2 password hashes, verified on the ``cpu`` thread pool."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet.interfaces import IReactorTime

from angosd.config import IdentityConfig
from angosd.storage.pools import BoundedPool

#: How long a verified (username, password) pair skips argon2; clients such as docker
#: send Basic credentials on every request, and argon2 costs tens of milliseconds by design.
VERIFIED_TTL = 60.0
MAX_VERIFIED = 1024

_hasher = PasswordHasher()
#: Verified against when the username is unknown (its password is irrelevant).
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$oxAP82/uu6CkUea1mBcUWA$OXgGT+jFHTrJRPp0z7lX4jOfe7cxXKa+Et91PAvpbHc"


def hash_password(password: str) -> str:
    """An argon2id PHC string for ``password`` (argon2-cffi's recommended parameters)."""
    return _hasher.hash(password)


#: Nice value of threads that hash passwords, above the serving threads' (Linux: per thread).
HASHING_NICE = 10
_hashing_thread = threading.local()


def _yield_cpu() -> None:
    """Lower this thread's scheduling priority, once: argon2 (slow by design, and what a
    wrong-password flood makes the daemon do) must not take CPU from serving requests.
    argon2's own worker threads inherit it."""
    if getattr(_hashing_thread, "lowered", False):
        return
    _hashing_thread.lowered = True
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the priority stays
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)


def _verify(phc: str, password: str) -> bool:
    _yield_cpu()
    try:
        return _hasher.verify(phc, password)
    except (VerificationError, InvalidHashError):
        return False


class PasswordUsers:
    """``[auth.identity.*]``: checks a username and password, returning the identity id.

    argon2 runs on ``pool`` (the ``cpu`` pool); when its queue is full, `check` fails with
    `TooManyRequests`.
    """

    def __init__(self, identities: Sequence[IdentityConfig], pool: BoundedPool, clock: IReactorTime) -> None:
        self._by_username = {identity.username: identity for identity in identities}
        self._pool = pool
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __contains__(self, username: str) -> bool:
        return username in self._by_username

    def cached(self, username: str, password: str) -> str | None:
        """The identity id when this password was verified within `VERIFIED_TTL` (no hashing)."""
        identity = self._by_username.get(username)
        if identity is None:
            return None
        cached = self._verified.get(hashlib.sha256(f"{username}\0{password}\0{identity.password}".encode()).digest())
        return cached[0] if cached is not None and cached[1] > self._clock.seconds() else None

    async def check(self, username: str, password: str) -> str | None:
        """The identity id when the password is right; None otherwise (unknown user included).

        An unknown user still costs one argon2 verification, so timing does not reveal
        which usernames exist.
        """
        identity = self._by_username.get(username)
        phc = identity.password if identity is not None else _DUMMY_HASH
        key = hashlib.sha256(f"{username}\0{password}\0{phc}".encode()).digest()
        cached = self._verified.get(key)
        now = self._clock.seconds()
        if cached is not None and cached[1] > now:
            return cached[0]
        ok = await self._pool.run(_verify, phc, password)
        if not ok or identity is None:
            return None
        self._verified[key] = (identity.id, now + VERIFIED_TTL)
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
        return identity.id

