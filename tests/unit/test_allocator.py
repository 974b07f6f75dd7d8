"""The allocator tuning applies on glibc and is a no-op elsewhere."""

from __future__ import annotations

import platform

import pytest

from angosd.daemon import allocator


def test_tuning_applies_on_glibc() -> None:
    assert platform.libc_ver()[0] == "glibc", "the daemon's supported platform is glibc Linux"
    assert allocator.tune() is True


def test_without_a_c_library_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.tune() is False

