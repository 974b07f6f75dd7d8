"""Namespace (repository name), tag and manifest reference grammars of the OCI spec."""

from __future__ import annotations

import re
from dataclasses import dataclass

from angosd.oci.digest import Digest
from angosd.oci.errors import NameInvalid, TagInvalid

#: One path component: ``[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*``.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")

#: Longest namespace accepted; the spec advises clients to stay under 255 characters.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid OCI namespace; raise `NameInvalid` otherwise.

    The grammar excludes empty, ``.``/``..`` and absolute components, so a valid name is
    always safe to use as a relative storage path.
    """
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise NameInvalid(name[:MAX_NAME_LENGTH + 1])
    return name


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME.match(name) is not None


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it matches the OCI tag grammar; raise `TagInvalid` otherwise."""
    if not _TAG.match(tag):
        raise TagInvalid(tag[:200])
    return tag


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference: exactly one of a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """A reference containing ``:`` is a digest, anything else a tag."""
        if ":" in text:
            return cls(digest=Digest.parse(text))
        return cls(tag=validate_tag(text))

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)
