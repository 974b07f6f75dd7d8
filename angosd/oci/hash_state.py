"""Hashers whose state can be saved as bytes and restored in another process.

hashlib's objects cannot export their state, so an upload whose chunks are received by
different processes (workers sharing a socket, daemons sharing a store, a restart) would
have to be hashed again at completion. These hashers drive OpenSSL's low-level
``SHA256_*`` / ``SHA512_*`` functions of the libcrypto that hashlib itself uses (same
code, same speed: the block functions are OpenSSL's assembly), whose context structures
are public and stable. `export` writes the state in a portable form (big-endian words,
the buffered tail, a checksum), not the raw structure, and `restore` rebuilds the
structure from fields it has checked, so a damaged or hostile state can at worst give
None, never memory corruption or a wrong digest for the bytes it claims to cover.

Without a loadable libcrypto (or with another algorithm) `new_resumable` returns None and
callers fall back to hashlib, losing only the ability to resume.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

_MAGIC = b"AGHS1"
_CHECK = 32  # a SHA-256 of everything before it closes the state


class _Sha256Ctx(ctypes.Structure):
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_uint8 * 64), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


class _Sha512Ctx(ctypes.Structure):
    _fields_ = [("h", ctypes.c_uint64 * 8), ("Nl", ctypes.c_uint64), ("Nh", ctypes.c_uint64),
                ("data", ctypes.c_uint8 * 128), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str
    code: int
    ctx: type[ctypes.Structure]
    word: int  # bytes per state word
    block: int
    digest_size: int
    count_bits: int  # width of each of Nl and Nh
    init: Any
    update: Any
    final: Any


def _load() -> dict[str, _Algorithm]:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return {}
    try:
        library = ctypes.CDLL(name)  # a CDLL call releases the GIL, as hashlib does for large inputs
        found = {}
        for algorithm, code, ctx, word, block, size, bits in (("sha256", 1, _Sha256Ctx, 4, 64, 32, 32),
                                                                 ("sha512", 2, _Sha512Ctx, 8, 128, 64, 64)):
            prefix = algorithm.upper()
            init, update, final = (getattr(library, f"{prefix}_{op}") for op in ("Init", "Update", "Final"))
            init.argtypes = [ctypes.c_void_p]
            update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            for function in (init, update, final):
                function.restype = ctypes.c_int
            found[algorithm] = _Algorithm(algorithm, code, ctx, word, block, size, bits, init, update, final)
    except (OSError, AttributeError):
        return {}
    for spec in list(found.values()):  # never trust a library we have not seen give hashlib's answer
        probe = ResumableHasher(spec)
        probe.update(b"abc" * 100)
        if probe.hexdigest() != hashlib.new(spec.name, b"abc" * 100).hexdigest():
            del found[spec.name]
    return found


class ResumableHasher:
    """A SHA-256 / SHA-512 hasher (hashlib's ``update``/``hexdigest``) with `export`.

    Not thread-safe: one thread at a time, as with hashlib objects.
    """

    def __init__(self, algorithm: _Algorithm) -> None:
        self._algorithm = algorithm
        self._ctx = algorithm.ctx()
        self._offset = 0
        algorithm.init(ctypes.byref(self._ctx))

    @property
    def name(self) -> str:
        return self._algorithm.name

    @property
    def offset(self) -> int:
        """Bytes hashed so far."""
        return self._offset

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        self._algorithm.update(ctypes.byref(self._ctx), data, len(data))
        self._offset += len(data)

    def hexdigest(self) -> str:
        """The digest of what was hashed; the hasher itself is left as it was."""
        copy = self._algorithm.ctx.from_buffer_copy(self._ctx)
        out = ctypes.create_string_buffer(self._algorithm.digest_size)
        self._algorithm.final(out, ctypes.byref(copy))
        return out.raw.hex()

    def export(self) -> bytes:
        """The state as bytes that `restore` accepts in any process, on any architecture."""
        algorithm, ctx = self._algorithm, self._ctx
        word = ">" + ("I" if algorithm.word == 4 else "Q") * 8
        tail = bytes(ctx.data)[:self._offset % algorithm.block]
        body = _MAGIC + struct.pack(">BQ", algorithm.code, self._offset) + struct.pack(word, *ctx.h) + tail
        return body + hashlib.sha256(body).digest()

    @classmethod
    def restore(cls, state: bytes, algorithm: str) -> ResumableHasher | None:
        """The hasher `export` saved, if ``state`` is one whole, intact state of
        ``algorithm``; None for anything else (damaged, truncated, foreign)."""
        spec = _ALGORITHMS.get(algorithm)
        head = len(_MAGIC) + 9
        if spec is None or len(state) < head + _CHECK or not state.startswith(_MAGIC):
            return None
        body, check = state[:-_CHECK], state[-_CHECK:]
        if hashlib.sha256(body).digest() != check:
            return None
        code, offset = struct.unpack(">BQ", body[len(_MAGIC):head])
        words = body[head:head + 8 * spec.word]
        tail = body[head + 8 * spec.word:]
        if code != spec.code or len(words) != 8 * spec.word or len(tail) != offset % spec.block:
            return None
        hasher = cls(spec)
        ctx = hasher._ctx
        ctx.h[:] = struct.unpack(">" + ("I" if spec.word == 4 else "Q") * 8, words)
        bits = offset * 8
        mask = (1 << spec.count_bits) - 1
        ctx.Nl, ctx.Nh = bits & mask, (bits >> spec.count_bits) & mask
        ctypes.memmove(ctx.data, tail, len(tail))  # len(tail) < block: checked above
        ctx.num = len(tail)
        ctx.md_len = spec.digest_size
        hasher._offset = offset
        return hasher


def new_resumable(algorithm: str) -> ResumableHasher | None:
    """A fresh resumable hasher for ``algorithm``; None when this process cannot make one."""
    spec = _ALGORITHMS.get(algorithm)
    return ResumableHasher(spec) if spec is not None else None


def state_offset(hasher: object) -> int | None:
    """How many bytes a resumable ``hasher`` has hashed; None for any other hasher."""
    return hasher.offset if isinstance(hasher, ResumableHasher) else None


_ALGORITHMS: dict[str, _Algorithm] = {}
_ALGORITHMS.update(_load())
