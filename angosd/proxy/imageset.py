"""Image-set files: what a site mirrors, declared in TOML.

::

    upstream = "hub"                  # a pull-through repository of the configuration (default for images)
    platforms = ["linux/amd64"]       # default for images: "all" (the default) or os/arch[/variant]
    referrers = true                  # default for images: bring signatures, SBOMs... along

    [[image]]
    name = "library/alpine"           # the repository inside the upstream
    tags = ["latest"]                 # exact tags
    glob = ["3.2*"]                   # shell-style patterns
    regex = ['^edge-[0-9]+$']         # full-match regular expressions
    semver = ">=3.19, <4"             # a semver range (see angosd.proxy.tagfilter)
    newest = 2                        # then keep only the 2 newest of what matched
    platforms = "all"                 # overrides the default
    referrers = false

An image without tag criteria takes every tag (``newest`` still applies). Its namespace
in the store is ``UPSTREAM/NAME``. `parse_image_set` reads the text and refuses anything
unexpected (unknown keys, wrong types, bad names, patterns or ranges, too many images)
with `ImageSetError` naming the file and the key; it never raises anything else.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from angosd.oci.names import is_valid_name
from angosd.proxy.tagfilter import TagFilter

#: Largest set file read (bytes), and most images in one.
MAX_SET_FILE = 1024 * 1024
MAX_IMAGES = 10_000
_TOP_KEYS = frozenset({"upstream", "platforms", "referrers", "image"})
_IMAGE_KEYS = frozenset({"name", "upstream", "tags", "glob", "regex", "semver", "newest", "platforms", "referrers"})


class ImageSetError(Exception):
    """A set file that cannot be used; ``str()`` is one line naming the file and key."""


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One ``[[image]]``: the namespace ``upstream/name`` and which tags, platforms, referrers."""

    upstream: str
    name: str
    tags: TagFilter
    platforms: tuple[str, ...]  # ("all",) or os/arch[/variant] strings
    referrers: bool

    @property
    def namespace(self) -> str:
        return f"{self.upstream}/{self.name}"


@dataclass(frozen=True, slots=True)
class ImageSet:
    """A parsed set file; ``source`` names where it came from (for messages)."""

    source: str
    images: tuple[ImageSpec, ...]

    def for_namespace(self, namespace: str) -> ImageSpec | None:
        return next((image for image in self.images if image.namespace == namespace), None)


def read_image_set(path: str) -> ImageSet:
    """Read and parse the set file at ``path``; raises `ImageSetError` (I/O problems included)."""
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_SET_FILE + 1)
    except OSError as exc:
        raise ImageSetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_image_set(data, path)


def parse_image_set(data: bytes, source: str = "<set file>") -> ImageSet:
    """The `ImageSet` described by TOML ``data``; raises `ImageSetError` only."""
    if len(data) > MAX_SET_FILE:
        raise ImageSetError(f"{source}: larger than {MAX_SET_FILE} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ImageSetError(f"{source}: not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ImageSetError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ImageSetError(f"{source}: unknown key {unknown[0][:80]!r} (expected one of "
                            f"{', '.join(sorted(_TOP_KEYS))})")
    try:
        upstream = _optional_name(document, "upstream")
        platforms = _platforms(document.get("platforms", "all"))
        referrers = _bool(document.get("referrers", True))
    except ValueError as exc:
        raise ImageSetError(f"{source}: {exc}") from None
    entries = document.get("image", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ImageSetError(f"{source}: image: expected [[image]] tables")
    if not entries:
        raise ImageSetError(f"{source}: no [[image]] entries")
    if len(entries) > MAX_IMAGES:
        raise ImageSetError(f"{source}: more than {MAX_IMAGES} images")
    images: list[ImageSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        try:
            image = _image(entry, upstream, platforms, referrers)
        except ValueError as exc:
            raise ImageSetError(f"{source}: image[{index}]: {exc}") from None
        if image.namespace in seen:
            raise ImageSetError(f"{source}: image[{index}]: {image.namespace} is listed twice")
        seen.add(image.namespace)
        images.append(image)
    return ImageSet(source, tuple(images))


def _image(entry: Mapping[str, Any], upstream: str | None, platforms: tuple[str, ...], referrers: bool) -> ImageSpec:
    unknown = sorted(set(entry) - _IMAGE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0][:80]!r} (expected one of {', '.join(sorted(_IMAGE_KEYS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise ValueError(f"name: expected a repository name such as 'library/alpine', got {str(name)[:80]!r}")
    upstream = _optional_name(entry, "upstream") or upstream
    if upstream is None:
        raise ValueError("upstream: not set here nor at the top of the file")
    if not is_valid_name(f"{upstream}/{name}"):
        raise ValueError(f"{upstream}/{name[:80]} is not a valid namespace")
    newest = entry.get("newest")
    if newest is not None and (not isinstance(newest, int) or isinstance(newest, bool) or not 1 <= newest <= 10_000):
        raise ValueError("newest: expected an integer from 1 to 10000")
    semver = entry.get("semver")
    if semver is not None and not isinstance(semver, str):
        raise ValueError("semver: expected a string such as '>=1.2, <2'")
    try:
        tags = TagFilter.build(_strings(entry, "tags"), _strings(entry, "glob"), _strings(entry, "regex"), semver,
                               newest)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    for tag in tags.exact:
        if not tag or len(tag) > 128:
            raise ValueError(f"tags: invalid tag {tag[:80]!r}")
    own_platforms = _platforms(entry["platforms"]) if "platforms" in entry else platforms
    own_referrers = _bool(entry["referrers"]) if "referrers" in entry else referrers
    return ImageSpec(upstream, name, tags, own_platforms, own_referrers)


def _optional_name(table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not is_valid_name(value):
        raise ValueError(f"{key}: expected a pull-through repository name, got {str(value)[:80]!r}")
    return value


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key}: expected a string or an array of strings")
    if len(value) > 1000:
        raise ValueError(f"{key}: more than 1000 entries")
    return tuple(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"referrers: expected true or false, got {str(value)[:40]!r}")
    return value


def _platforms(value: object) -> tuple[str, ...]:
    from angosd.proxy.prefetch import PlatformFilter

    if value == "all":
        return ("all",)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError('platforms: expected "all" or an array of "os/arch[/variant]" strings')
    try:
        PlatformFilter.parse(value)
    except ValueError as exc:
        raise ValueError(f"platforms: {exc}") from None
    return tuple(value)
