"""The value vocabulary of the configuration: typed TOML value parsers and the errors they raise.

A parser (`Parser`) takes one raw TOML value and returns it validated (and maybe
converted), or raises `Invalid` with a one-line problem; the table reader
(`angosd.config.reader`) turns that into a `ConfigError` naming file and key path.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``str(error)`` is always a single line, ``"<file>: <key.path>: <problem>"``
    (``"<file>: <problem>"`` when the whole file is at fault).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


# --------------------------------------------------------------------------- values

#: A key path: table keys and array indexes, e.g. ("repository", "hub", "upstream", 0, "url").
KeyPath = tuple[str | int, ...]
#: Turns a raw TOML value into a validated one, or raises `Invalid`.
Parser = Callable[[object], Any]


class Invalid(ValueError):
    """A bad value; ``at`` locates the culprit inside it (e.g. an array index)."""

    def __init__(self, problem: str, at: KeyPath = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


_TOML_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),  # before date: datetime is a date subclass
    (datetime.date, "date"),
    (datetime.time, "time"),
)


def kind_of(value: object) -> str:
    """The TOML name of ``value``'s type, for messages."""
    for python_type, name in _TOML_KINDS:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def as_str(value: object) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {kind_of(value)}")
    return value


def as_bool(value: object) -> bool:
    """``value`` if it is a real TOML boolean (not 0/1, not "true")."""
    if not isinstance(value, bool):
        raise Invalid(f"expected a boolean, got {kind_of(value)}")
    return value


def as_int(value: object) -> int:
    """``value`` if it is a TOML integer (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {kind_of(value)}")
    return value


def as_float(value: object) -> float:
    """``value`` as a float if it is a TOML float or integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number, got {kind_of(value)}")
    return float(value)


def as_strings(value: object) -> tuple[str, ...]:
    """``value`` as a tuple if it is an array of strings."""
    if not isinstance(value, list):
        raise Invalid(f"expected an array of strings, got {kind_of(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"expected a string, got {kind_of(item)}", (index,))
    return tuple(value)


def int_range(low: int, high: int | None = None) -> Parser:
    """A parser for integers within ``low..high`` (inclusive; no upper bound if None)."""

    def parse(value: object) -> int:
        number = as_int(value)
        if number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise Invalid(f"must be {bounds}, got {number}")
        return number

    return parse


def positive_float(value: object) -> float:
    """A finite number greater than zero, as a float."""
    number = as_float(value)
    if not (math.isfinite(number) and number > 0):
        raise Invalid(f"must be a finite number greater than 0, got {number}")
    return number


# --- observability parsers (tracing, audit log) ---------------------------------------
def fraction(value: object) -> float:
    """A number from 0 to 1 inclusive (a sampling ratio), as a float."""
    number = as_float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise Invalid(f"must be a number from 0 to 1, got {number}")
    return number


# --- end of observability parsers -----------------------------------------------------


def one_of(*options: str) -> Parser:
    """A parser for strings that must be one of ``options``."""

    def parse(value: object) -> str:
        text = as_str(value)
        if text not in options:
            raise Invalid(f"expected one of {', '.join(map(repr, options))}, got {text!r}")
        return text

    return parse


#: Upper bound of ``[server] workers``.
MAX_WORKERS = 256
#: Upper bounds of ``[server] io_threads``/``cpu_threads`` and ``io_queue``/``cpu_queue``.
MAX_POOL_THREADS = 256
MAX_POOL_QUEUE = 1_000_000


def parse_workers(value: object) -> int | None:
    """``[server] workers`` (and ``--workers``): ``"auto"`` (None: one per usable core) or 1..`MAX_WORKERS`."""
    if value == "auto":
        return None
    if isinstance(value, str):
        raise Invalid(f'expected an integer or "auto", got {value!r}')
    return int_range(1, MAX_WORKERS)(value)


def non_empty(value: object) -> str:
    """A string with something other than whitespace in it."""
    text = as_str(value)
    if not text.strip():
        raise Invalid("must not be empty")
    return text


def ip_address(value: object) -> str:
    """A string that parses as an IPv4 or IPv6 address, returned as given."""
    text = as_str(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(f"expected an IP address, got {text!r}") from None
    return text


def http_url(value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host (and a valid port, if any)."""
    text = as_str(value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        valid = False
    if not valid:
        raise Invalid(f"expected an http:// or https:// URL, got {text!r}")
    return text


def ldap_url(value: object) -> str:
    """An ``ldap://`` or ``ldaps://`` URL with a host."""
    text = as_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise Invalid(f"expected an ldap:// or ldaps:// URL with a host, got {text!r}")
    return text


def regexes(value: object) -> tuple[str, ...]:
    """An array of strings that each compile as a Python regular expression."""
    patterns = as_strings(value)
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as error:
            raise Invalid(f"invalid regular expression {pattern!r}: {error}", (index,)) from None
    return patterns


_PLATFORM = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?")


def platform_list(value: object) -> tuple[str, ...]:
    """``"all"`` as ``("all",)``, or an array of ``"os/arch[/variant]"`` strings."""
    if value == "all":
        return ("all",)
    if isinstance(value, str):
        raise Invalid(f'expected "all" or an array of "os/arch[/variant]" strings, got {value!r}')
    platforms = as_strings(value)
    for index, platform in enumerate(platforms):
        if platform != "all" and not _PLATFORM.fullmatch(platform):
            raise Invalid(f'expected "os/arch" or "os/arch/variant", got {platform!r}', (index,))
    return platforms


#: Lower-cased unit -> bytes: KB..PB are powers of 1000, KiB..PiB powers of 1024.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    **{f"{prefix}b": 1000**power for power, prefix in enumerate("kmgtp", start=1)},
    **{f"{prefix}ib": 1024**power for power, prefix in enumerate("kmgtp", start=1)},
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.ASCII | re.IGNORECASE)
_MAX_SIZE = 2**63 - 1


_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


def argon2_hash(value: object) -> str:
    text = as_str(value)
    if not re.fullmatch(r"\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", text):
        raise Invalid("expected an argon2 PHC hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash); "
                       "make one with `angosd argon`")
    return text


def claims_table(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"expected a table of claim = value, got {kind_of(value)}")
    return dict(value)


def jws_algorithms(value: object) -> tuple[str, ...]:
    algorithms = as_strings(value)
    for index, algorithm in enumerate(algorithms):
        if algorithm not in _ALGORITHMS:
            raise Invalid(f"unsupported algorithm {algorithm!r} (asymmetric JWS algorithms only)", (index,))
    if not algorithms:
        raise Invalid("at least one algorithm is required")
    return algorithms


EVENTS = ("manifest.push", "manifest.pull", "manifest.delete", "blob.push", "blob.pull", "tag.create", "tag.delete")


def webhook_events(value: object) -> tuple[str, ...]:
    events = as_strings(value)
    for index, event in enumerate(events):
        if event not in EVENTS:
            raise Invalid(f"unknown event {event!r} (one of {', '.join(EVENTS)})", (index,))
    return events


def basic_auth_table(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != {"username", "password"} or \
            not all(isinstance(v, str) for v in value.values()):
        raise Invalid("expected { username = \"...\", password = \"...\" }")
    return dict(value)


def parse_size(value: object) -> int:
    """A byte count from an integer or a string such as ``"4MiB"``, ``"5 MB"``, ``"1024"``.

    KB/MB/GB/TB/PB are powers of 1000, KiB/MiB/GiB/TiB/PiB powers of 1024, ``B`` or
    no unit means bytes (units are case-insensitive). The result is always an
    integer in ``1..2**63-1``; anything else raises ``ValueError`` with a one-line
    reason.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = Fraction(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None or match[2].lower() not in _SIZE_UNITS:
            raise Invalid(f"expected a size such as '4MiB', '500MB' or '1024', got {value!r}")
        try:
            size = Fraction(match[1]) * _SIZE_UNITS[match[2].lower()]
        except ValueError:  # more digits than int() accepts
            raise Invalid(f"size is too large: {value!r}") from None
    else:
        raise Invalid(f"expected an integer or a size string such as '4MiB', got {kind_of(value)}")
    if size.denominator != 1:
        raise Invalid(f"size must be a whole number of bytes, got {value!r}")
    if not 0 < size <= _MAX_SIZE:
        raise Invalid(f"size must be between 1 and {_MAX_SIZE} bytes, got {value!r}")
    return int(size)


def part_size(value: object) -> int:
    """A size S3 accepts for the parts of a multipart upload: 5 MiB to 5 GiB."""
    size = parse_size(value)
    if not 5 * 1024**2 <= size <= 5 * 1024**3:
        raise Invalid(f"must be between 5MiB and 5GiB (S3's part size limits), got {value!r}")
    return size


def redis_url(value: object) -> str:
    """A ``redis://[[user]:password@]host[:port][/db]`` URL."""
    text = as_str(value)
    try:
        parts = urlsplit(text)
        valid = parts.scheme == "redis" and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a bad port
        valid = valid and (parts.path.strip("/") == "" or parts.path.strip("/").isdigit())
    except ValueError:
        valid = False
    if not valid:
        raise Invalid("expected a redis://host[:port][/db] URL")  # the URL may hold a password: not echoed
    return text


def networks(value: object) -> tuple[str, ...]:
    """An array of IP addresses or CIDR networks (``10.0.0.0/8``, ``::1``), normalized."""
    found = []
    for index, text in enumerate(as_strings(value)):
        try:
            found.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise Invalid(f"not an IP address or network: {text[:100]!r}", (index,)) from None
    return tuple(found)


def parsed_by(parser: Parser) -> dict[str, Parser]:
    """Dataclass field metadata: read this field's TOML value with ``parser``."""
    return {"parse": parser}



#: ``access_policy.default``.
ACCESS_DEFAULT = one_of("allow", "deny")
