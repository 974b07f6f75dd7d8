"""Loading: reading TOML files, deep-merging them with key provenance, and building the `Config`."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from angosd.config.model import Config
from angosd.config.reader import Context, Table
from angosd.config.schema import ConfigError, KeyPath
from angosd.config.sections import read_config


def _stamp(provenance: dict[KeyPath, str], value: object, source: str, path: KeyPath) -> None:
    """Record ``source`` as the origin of ``path`` and of every table key inside ``value``."""
    provenance[path] = source
    if isinstance(value, dict):
        for key, item in value.items():
            _stamp(provenance, item, source, (*path, key))


def _merge_into(target: dict[str, Any], table: Mapping[str, Any], provenance: dict[KeyPath, str],
                source: str, path: KeyPath) -> None:
    """Deep-merge ``table`` (from ``source``) into ``target``, keeping ``provenance`` current."""
    for key, value in table.items():
        here = (*path, key)
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            _merge_into(current, value, provenance, source, here)
            continue
        if key in target:
            for stale in [known for known in provenance if known[: len(here)] == here]:
                del provenance[stale]
        target[key] = copy.deepcopy(value)
        _stamp(provenance, value, source, here)


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` deep-merged with ``override``; neither input is modified.

    Tables present in both are merged recursively; any other value of ``override``
    (scalars, arrays, arrays of tables) replaces the one in ``base``.
    """
    merged = copy.deepcopy(dict(base))
    _merge_into(merged, override, {}, "", ())
    return merged


def _ignore(_message: str) -> None:
    """The default warning sink: drop the message."""


def _read_toml(source: str) -> dict[str, Any]:
    """The parsed TOML document in ``source``; a `ConfigError` naming it otherwise."""
    try:
        with open(source, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read file: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None


def default_config() -> Config:
    """The built-in configuration: plain HTTP on 127.0.0.1:5000, ``./registry-data``, allow all."""
    return Config()


def load_config(paths: Sequence[str | os.PathLike[str]] | str, warn: Callable[[str], None] = _ignore) -> Config:
    """The validated `Config` from the TOML files ``paths``, merged in order.

    Raises `ConfigError` (one line, naming the file and key path) for an unreadable
    file, a TOML syntax error, a wrong type, a bad value or a missing required key.
    Calls ``warn`` once per unknown key (``"<file>: <key.path>: unknown key, ignored"``);
    loading still succeeds. No paths at all gives `default_config` (with no sources).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = tuple(os.fspath(path) for path in paths)
    merged: dict[str, Any] = {}
    provenance: dict[KeyPath, str] = {}
    for source in sources:
        _merge_into(merged, _read_toml(source), provenance, source, ())
    return read_config(Table(Context(provenance, sources, warn), (), merged))
