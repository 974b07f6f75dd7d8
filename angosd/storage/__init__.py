"""Byte storage: a small Deferred-returning driver interface and its drivers."""
