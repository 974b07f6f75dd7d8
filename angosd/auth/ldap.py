"""LDAP / Active Directory identities (``[auth.ldap]``): Basic credentials bound against a directory.

ldaptor is used: it speaks LDAP on the reactor (no thread per check, no blocking C library),
so a slow directory holds only a connection, and every step has a timeout. A check
connects (LDAPS, or StartTLS when asked, verifying the server against ``ca_file``), binds
with the search account, finds the user's entry, binds as the user with the password
given, then reads the user's groups. Successful checks are cached for ``cache_ttl_secs``.
A directory that cannot be reached answers 503 naming it: never a fallback to anonymous.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import endpoints, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger

from angosd.compat import enable_client_tls
from angosd.config import ConfigError
from angosd.config.model import LdapConfig
from angosd.oci.errors import OciError

MAX_CACHED = 1024
_log = Logger()


class DirectoryUnavailable(OciError):
    """The directory could not be asked (503)."""

    code = "UNAVAILABLE"
    status = 503
    message = "the user directory is unavailable"


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    username: str
    dn: str
    groups: tuple[str, ...]


def escape_filter_value(value: str) -> str:
    """``value`` escaped for an LDAP search filter (RFC 4515)."""
    out = []
    for char in value:
        if char in "\\*()\0":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


class LdapDirectory:
    """Checks usernames and passwords against one directory."""

    def __init__(self, config: LdapConfig, reactor: Any) -> None:
        """Raises `ConfigError` when ``start_tls`` is asked of a daemon started without [auth.ldap]:
        its TCP connections were then built without StartTLS (see `angosd.daemon.tap`)."""
        if config.start_tls and not ITLSTransport.implementedBy(tcp.Client):
            raise ConfigError("[auth.ldap] start_tls needs a restart: the daemon was started without "
                              "[auth.ldap], so its connections cannot start TLS")
        enable_client_tls()  # ldaps:// wraps its connection in TLS
        self.config = config
        self._reactor = reactor
        self._cache: OrderedDict[bytes, tuple[DirectoryUser, float]] = OrderedDict()
        parts = urlsplit(config.url)
        self._secure = parts.scheme == "ldaps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (636 if self._secure else 389)

    @property
    def name(self) -> str:
        return self.config.url

    def cached(self, username: str, password: str) -> DirectoryUser | None:
        """The user when this password was verified within ``cache_ttl_secs``."""
        entry = self._cache.get(self._key(username, password))
        if entry is not None and entry[1] > self._reactor.seconds():
            return entry[0]
        return None

    async def check(self, username: str, password: str) -> DirectoryUser | None:
        """The directory user for a right password; None for a wrong one or an unknown user.
        Raises `DirectoryUnavailable` when the directory cannot be asked."""
        if not username or not password:  # an empty password is an unauthenticated bind: never success
            return None
        found = self.cached(username, password)
        if found is not None:
            return found
        try:
            user = await self._timed(self._check(username, password))
        except DirectoryUnavailable:
            raise
        except Exception as exc:
            _log.warn("LDAP directory {url} failed: {error}", url=self.config.url, error=repr(exc)[:300])
            raise DirectoryUnavailable(f"the user directory {self.config.url} is unavailable") from None
        if user is not None and self.config.cache_ttl_secs > 0:
            self._cache[self._key(username, password)] = (user, self._reactor.seconds() + self.config.cache_ttl_secs)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return user

    def _key(self, username: str, password: str) -> bytes:
        return hashlib.sha256(f"{username}\0{password}".encode()).digest()

    async def _timed(self, coroutine: Any) -> Any:
        deferred: Deferred[Any] = Deferred.fromCoroutine(coroutine)
        deferred.addTimeout(self.config.timeout_secs, self._reactor)
        return await deferred

    def _tls(self) -> Any:
        trust = None
        if self.config.ca_file:
            with open(self.config.ca_file, "rb") as handle:
                trust = Certificate.loadPEM(handle.read())
        return optionsForClientTLS(self._host, trustRoot=trust)

    async def _connect(self) -> Any:
        from ldaptor.protocols.ldap.ldapclient import LDAPClient

        endpoint: Any = endpoints.TCP4ClientEndpoint(self._reactor, self._host, self._port,
                                                     timeout=self.config.timeout_secs)
        if self._secure:
            endpoint = endpoints.wrapClientTLS(self._tls(), endpoint)
        client = await endpoints.connectProtocol(endpoint, LDAPClient())
        if self.config.start_tls and not self._secure:
            client = await client.startTLS(self._tls())
        return client

    async def _check(self, username: str, password: str) -> DirectoryUser | None:
        from ldaptor.protocols.ldap import ldaperrors, ldapsyntax

        client = await self._connect()
        try:
            if self.config.bind_dn:
                await client.bind(self.config.bind_dn, self.config.bind_password or "")
            base = ldapsyntax.LDAPEntry(client, self.config.user_base_dn)
            user_filter = self.config.user_filter.replace("{username}", escape_filter_value(username))
            entries = await base.search(filterText=user_filter, attributes=["dn"], sizeLimit=2)
            if len(entries) != 1:
                return None
            dn = entries[0].dn.getText()
            try:
                await client.bind(dn, password)
            except ldaperrors.LDAPInvalidCredentials:
                return None
            groups: tuple[str, ...] = ()
            if self.config.group_base_dn:
                if self.config.bind_dn:  # read groups as the search account again
                    await client.bind(self.config.bind_dn, self.config.bind_password or "")
                group_filter = self.config.group_filter.replace("{dn}", escape_filter_value(dn)).replace(
                    "{username}", escape_filter_value(username))
                group_base = ldapsyntax.LDAPEntry(client, self.config.group_base_dn)
                found = await group_base.search(filterText=group_filter,
                                                attributes=[self.config.group_name_attribute])
                names = []
                for entry in found:
                    for value in entry.get(self.config.group_name_attribute, ()):
                        names.append(value.decode() if isinstance(value, bytes) else str(value))
                groups = tuple(sorted(set(names)))
            return DirectoryUser(username, dn, groups)
        finally:
            client.transport.loseConnection()
