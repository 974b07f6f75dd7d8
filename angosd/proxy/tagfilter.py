"""Which tags of a repository an image set selects: exact names, globs, regexes, semver ranges, newest N.

A `TagFilter` selects a tag when it matches any of its exact names, globs, regexes or
its semver range (no criterion at all selects every tag); ``newest = N`` then keeps the N
newest of the selected tags: those that read as versions (``1.2.3``, ``v1.2``,
``1.2.3-rc.1``) ordered by version, after them (older) the others in reverse name order.

Semver ranges: comparators ``=``, ``>``, ``>=``, ``<``, ``<=``, ``^`` (same major, or same
minor below 1.0), ``~`` (same minor), a bare version (``=``), and ``x``/``*`` wildcards
(``1.2.x``). Comparators separated by spaces or commas must all hold; ``||`` separates
alternatives. Pre-releases (``1.2.3-rc.1``) match only a range that names a pre-release
of the same version, as in npm. A range that cannot be read raises `ValueError`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Longest range, glob or regex text accepted (set files are small).
MAX_PATTERN = 500

_VERSION = re.compile(r"v?(0|[1-9][0-9]{0,8})(?:\.(0|[1-9][0-9]{0,8}))?(?:\.(0|[1-9][0-9]{0,8}))?"
                      r"(?:-([0-9A-Za-z.-]{1,64}))?(?:\+[0-9A-Za-z.-]{1,64})?", re.ASCII)
_PART = re.compile(r"v?(0|[1-9][0-9]{0,8}|[xX*])(?:\.(0|[1-9][0-9]{0,8}|[xX*]))?(?:\.(0|[1-9][0-9]{0,8}|[xX*]))?"
                   r"(?:-([0-9A-Za-z.-]{1,64}))?", re.ASCII)
_COMPARATOR = re.compile(r"(>=|<=|>|<|=|\^|~)?\s*(\S+)", re.ASCII)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A semantic version; ordered by precedence (a pre-release sorts before its release)."""

    major: int
    minor: int
    patch: int
    release: bool  # True for a release; False sorts a pre-release first
    pre: tuple[tuple[int, int | str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """The version a tag reads as (``v`` prefix and missing minor/patch allowed), else None."""
        match = _VERSION.fullmatch(text)
        if match is None:
            return None
        pre = match[4]
        return cls(int(match[1]), int(match[2] or 0), int(match[3] or 0), pre is None, _pre_key(pre))

    @property
    def core(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)


def _pre_key(pre: str | None) -> tuple[tuple[int, int | str], ...]:
    if pre is None:
        return ()
    # numeric identifiers sort before alphanumeric ones, numerically
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in pre.split("."))


@dataclass(frozen=True, slots=True)
class _Comparator:
    op: str
    version: Version

    def holds(self, version: Version) -> bool:
        if self.op == "=":
            return version == self.version
        if self.op == ">":
            return version > self.version
        if self.op == ">=":
            return version >= self.version
        if self.op == "<":
            return version < self.version
        return version <= self.version  # "<="


def _bound(major: int, minor: int, patch: int, pre: str | None = None) -> Version:
    return Version(major, minor, patch, pre is None, _pre_key(pre))


def _comparators(op: str, text: str) -> list[_Comparator]:
    """The comparators one ``OP VERSION`` word of a range stands for."""
    match = _PART.fullmatch(text)
    if match is None:
        raise ValueError(f"not a version: {text[:60]!r}")
    parts = [match[1], match[2], match[3]]
    pre = match[4]
    wild = [p is None or p in ("x", "X", "*") for p in parts]
    given = wild.index(True) if True in wild else 3  # how many leading parts are numbers
    if any(wild[:given]) or not all(wild[given:]):
        raise ValueError(f"a wildcard must come last: {text[:60]!r}")
    if pre is not None and given < 3:
        raise ValueError(f"a pre-release needs major.minor.patch: {text[:60]!r}")
    n = [int(p) if i < given else 0 for i, p in enumerate(parts)]
    low = _bound(n[0], n[1], n[2], pre)
    if given == 0:  # "*", "x": every release; "<*" and ">*" match nothing
        return [_Comparator("<", _bound(0, 0, 0, "0"))] if op in ("<", ">") else []
    following = _bound(n[0] + 1, 0, 0) if given == 1 else _bound(n[0], n[1] + 1, 0) if given == 2 else None
    if op in ("", "="):
        return [_Comparator("=", low)] if following is None else [_Comparator(">=", low), _Comparator("<", following)]
    if op == "~":
        return [_Comparator(">=", low), _Comparator("<", following or _bound(n[0], n[1] + 1, 0))]
    if op == "^":
        if n[0] > 0 or given == 1:
            high = _bound(n[0] + 1, 0, 0)
        elif n[1] > 0 or given == 2:
            high = _bound(0, n[1] + 1, 0)
        else:
            high = _bound(0, 0, n[2] + 1)
        return [_Comparator(">=", low), _Comparator("<", high)]
    if following is not None and op == ">":
        return [_Comparator(">=", following)]
    if following is not None and op == "<=":
        return [_Comparator("<", following)]
    return [_Comparator(op, low)]


@dataclass(frozen=True, slots=True)
class SemverRange:
    """A parsed range (see the module doc); `matches` takes a tag."""

    text: str
    alternatives: tuple[tuple[_Comparator, ...], ...]

    @classmethod
    def parse(cls, text: str) -> SemverRange:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty semver range")
        if len(text) > MAX_PATTERN:
            raise ValueError(f"semver range longer than {MAX_PATTERN} characters")
        alternatives = []
        for alternative in text.split("||"):
            comparators: list[_Comparator] = []
            words = alternative.replace(",", " ").split()
            if not words:
                raise ValueError(f"empty alternative in semver range {text[:60]!r}")
            if len(words) == 3 and words[1] == "-":  # "1.2 - 2.3": inclusive
                comparators += _comparators(">=", words[0])
                upper = _comparators("<=", words[2])
                comparators += upper
            else:
                pending = ""
                for word in words:
                    if word in (">=", "<=", ">", "<", "=", "^", "~"):
                        pending = word
                        continue
                    match = _COMPARATOR.fullmatch(pending + word)
                    if match is None:
                        raise ValueError(f"cannot read {word[:60]!r} in semver range")
                    comparators += _comparators(match[1] or "", match[2])
                    pending = ""
                if pending:
                    raise ValueError(f"{pending!r} with no version in semver range {text[:60]!r}")
            alternatives.append(tuple(comparators))
        return cls(text, tuple(alternatives))

    def matches(self, tag: str) -> bool:
        version = Version.parse(tag)
        if version is None:
            return False
        for comparators in self.alternatives:
            if not all(c.holds(version) for c in comparators):
                continue
            if version.release or any(not c.version.release and c.version.core == version.core
                                       for c in comparators):
                return True
        return False


@dataclass(frozen=True, slots=True)
class TagFilter:
    """The tags of one repository an image set asks for (see the module doc)."""

    exact: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    semver: SemverRange | None = None
    newest: int | None = None
    _compiled_globs: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def build(cls, exact: Iterable[str] = (), globs: Iterable[str] = (), regexes: Iterable[str] = (),
              semver: str | None = None, newest: int | None = None) -> TagFilter:
        """Raises `ValueError` for an unreadable regex, glob or range, or ``newest`` < 1."""
        globs = tuple(globs)
        compiled = []
        for pattern in (*globs, *regexes):
            if len(pattern) > MAX_PATTERN:
                raise ValueError(f"pattern longer than {MAX_PATTERN} characters: {pattern[:60]!r}...")
        for pattern in regexes:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern[:60]!r}: {exc}") from None
        if newest is not None and newest < 1:
            raise ValueError("newest must be at least 1")
        return cls(tuple(exact), globs, tuple(compiled), SemverRange.parse(semver) if semver is not None else None,
                   newest, tuple(re.compile(fnmatch.translate(glob)) for glob in globs))

    @property
    def everything(self) -> bool:
        return not (self.exact or self.globs or self.regexes or self.semver is not None)

    def matches(self, tag: str) -> bool:
        """Whether ``tag`` passes the name criteria (``newest`` aside)."""
        if self.everything:
            return True
        return (tag in self.exact or any(glob.fullmatch(tag) for glob in self._compiled_globs)
                or any(regex.fullmatch(tag) for regex in self.regexes)
                or (self.semver is not None and self.semver.matches(tag)))

    def select(self, tags: Iterable[str]) -> list[str]:
        """The selected tags among ``tags``, newest first when ``newest`` is set, else sorted."""
        chosen = sorted({tag for tag in tags if self.matches(tag)})
        if self.newest is None:
            return chosen
        return sorted(chosen, key=_age)[: self.newest]


def _age(tag: str) -> tuple[int, object]:
    """Sort key: versions newest first, then other tags in reverse name order."""
    version = Version.parse(tag)
    if version is None:
        return (1, _Reversed(tag))
    return (0, _Reversed(version))


@dataclass(frozen=True, slots=True)
class _Reversed:
    value: object

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value  # type: ignore[operator]
