"""Parsing the ``Authorization`` header (RFC 7617 Basic, RFC 6750 Bearer)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from angosd.oci.errors import Unauthorized

#: Longest Authorization header accepted; JWTs with many claims stay well below it.
MAX_HEADER = 16 * 1024


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class BearerToken:
    token: str

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


def parse_authorization(header: str | None) -> BasicCredentials | BearerToken | None:
    """The credentials in an ``Authorization`` header; None when there is no header, or
    Basic credentials with an empty username and password.

    Raises `Unauthorized` for a header that is present but malformed or of an
    unsupported scheme: invalid credentials fail the request, they never fall through.
    """
    if header is None:
        return None
    if len(header) > MAX_HEADER:
        raise Unauthorized("Authorization header too long")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return BearerToken(value)
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials") from None
        if decoded == ":":
            return None  # empty credentials (``Og==``, sent by podman and skopeo): anonymous
        username, separator, password = decoded.partition(":")
        if not separator or not username:
            raise Unauthorized("malformed Basic credentials")
        return BasicCredentials(username, password)
    raise Unauthorized("unsupported Authorization scheme")
