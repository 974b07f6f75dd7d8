"""Reading one merged TOML table: typed access by key, unknown-key warnings, dataclass building."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from angosd.config.schema import (
    ConfigError,
    Invalid,
    KeyPath,
    Parser,
    as_bool,
    as_float,
    as_int,
    as_str,
    as_strings,
    kind_of,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: How plain fields are read when their metadata names no parser.
_PARSERS_BY_TYPE: dict[object, Parser] = {
    str: as_str,
    str | None: as_str,
    bool: as_bool,
    int: as_int,
    float: as_float,
    tuple[str, ...]: as_strings,
}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: How a key that is accepted but does nothing is reported (at start and by check-config).
NO_EFFECT = "accepted for compatibility, has no effect in angosd"


def dotted(path: KeyPath) -> str:
    """``path`` as TOML would spell it: ``repository."lib/x".upstream[0].url``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return text


@dataclass(frozen=True, slots=True)
class Context:
    """What every table reader shares: key origins, file order and the warning sink."""

    provenance: Mapping[KeyPath, str]
    sources: tuple[str, ...]
    warn: Callable[[str], None]

    def origin(self, path: KeyPath) -> str:
        """The file that set ``path`` (or its nearest recorded parent), else ``"<merged>"``."""
        for end in range(len(path), 0, -1):
            source = self.provenance.get(path[:end])
            if source is not None:
                return source
        return "<merged>"


class Table:
    """One TOML table being read: typed access by key, errors naming file and key path.

    Every key looked at is remembered; `finish` warns about the others.
    """

    def __init__(self, context: Context, path: KeyPath, data: Mapping[str, object]) -> None:
        self.context = context
        self.path = path
        self._data = data
        self._seen: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def keys(self) -> list[str]:
        return list(self._data)

    def origin(self, key: str) -> str:
        return self.context.origin((*self.path, key))

    def error(self, key: str, problem: str, at: KeyPath = ()) -> ConfigError:
        """A `ConfigError` for ``key`` (and ``at`` below it) of this table."""
        path = (*self.path, key, *at)
        return ConfigError(f"{self.context.origin(path)}: {dotted(path)}: {problem}")

    def warn(self, key: str, problem: str) -> None:
        self.context.warn(f"{self.origin(key)}: {dotted((*self.path, key))}: {problem}")

    def get(self, key: str, parse: Parser) -> Any:
        """``parse`` applied to the value of ``key``, which must be present."""
        self._seen.add(key)
        try:
            return parse(self._data[key])
        except Invalid as invalid:
            raise self.error(key, invalid.problem, invalid.at) from None

    def table(self, key: str) -> Table | None:
        """The sub-table ``key``, None if absent; a `ConfigError` if it is not a table."""
        self._seen.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {kind_of(value)}")
        return Table(self.context, (*self.path, key), value)

    def section(self, key: str) -> Table:
        """The sub-table ``key``, empty if absent."""
        found = self.table(key)
        return found if found is not None else Table(self.context, (*self.path, key), {})

    def tables(self, key: str) -> list[Table]:
        """The array of tables ``key`` (``[[...]]``), empty if absent."""
        self._seen.add(key)
        value = self._data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables, got {kind_of(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"expected a table, got {kind_of(item)}", (index,))
        return [Table(self.context, (*self.path, key, index), item) for index, item in enumerate(value)]

    def no_effect(self, keys: Iterable[str]) -> None:
        """Take ``keys`` as known, warning once about each one present that it does nothing here
        (an Angos key angosd accepts so that an Angos configuration loads)."""
        for key in keys:
            if key in self._data and key not in self._seen:
                self._seen.add(key)
                self.context.warn(f"{self.origin(key)}: {NO_EFFECT}: {dotted((*self.path, key))}")

    def accept(self, keys: Iterable[str]) -> None:
        """Take ``keys`` as known without reading them."""
        self._seen.update(keys)

    def finish(self) -> None:
        """Warn once about each key of this table that nobody read."""
        for key in self._data:
            if key not in self._seen:
                self.warn(key, "unknown key, ignored")


_T = TypeVar("_T", bound="DataclassInstance")


def build(cls: type[_T], table: Table, accept: Iterable[str] = (), **given: Any) -> _T:
    """An instance of dataclass ``cls`` read from ``table``; ``given`` fields are not read.

    Each other field is read from the key of the same name with its parser, or left
    to its default; a field without default is a required key. Keys in ``accept``
    are tolerated unread; any other unread key is warned about.
    """
    values = dict(given)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in given:
            continue
        if f.name in table:
            values[f.name] = table.get(f.name, f.metadata.get("parse") or _PARSERS_BY_TYPE[hints[f.name]])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise table.error(f.name, "required key is missing")
    table.accept(accept)
    table.finish()
    return cls(**values)

