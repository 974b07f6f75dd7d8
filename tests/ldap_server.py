"""A private ``slapd`` (Debian's OpenLDAP) for tests: its own slapd.conf, database and free
port, loaded from an LDIF, stopped afterwards. Nothing system-wide is started or changed."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
SEARCH_DN = f"cn=registry,ou=services,{SUFFIX}"
SEARCH_PASSWORD = "search-secret"
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"

CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {base}/slapd.pid
access to attrs=userPassword by anonymous auth by self read by * none
access to * by users read by anonymous auth
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{admin}"
rootpw {admin_password}
directory {base}/data
{tls}"""


def ldif(users: dict[str, str], groups: dict[str, list[str]]) -> str:
    """The directory: people (uid=NAME, userPassword in clear), groups (groupOfNames), and the
    search account."""
    entries = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
               f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
               f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
               f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
               f"dn: {SEARCH_DN}\nobjectClass: person\ncn: registry\nsn: registry\n"
               f"userPassword: {SEARCH_PASSWORD}\n"]
    for name, password in users.items():
        entries.append(f"dn: uid={name},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\n"
                       f"sn: {name}\nuserPassword: {password}\n")
    for group, members in groups.items():
        lines = [f"dn: cn={group},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: {group}"]
        lines += [f"member: uid={member},ou=people,{SUFFIX}" for member in members]
        entries.append("\n".join(lines) + "\n")
    return "\n".join(entries)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Slapd:
    """``tls``: (certificate, key) files: StartTLS on ``ldap://``, and ``ldaps://`` with ``ldaps``."""

    base: Path
    port: int = 0
    tls: tuple[str, str] | None = None
    ldaps: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'ldaps' if self.ldaps else 'ldap'}://127.0.0.1:{self.port}"

    def load(self, data: str) -> Slapd:
        for executable in (SLAPD, SLAPADD):
            if not Path(executable).exists():
                pytest.fail(f"{executable} is missing: install Debian's slapd and ldap-utils")
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        conf = self.base / "slapd.conf"
        tls = "" if self.tls is None else f"TLSCertificateFile {self.tls[0]}\nTLSCertificateKeyFile {self.tls[1]}\n"
        conf.write_text(CONF.format(base=self.base, suffix=SUFFIX, admin=ADMIN_DN, admin_password=ADMIN_PASSWORD,
                                    tls=tls))
        (self.base / "data.ldif").write_text(data)
        subprocess.run([SLAPADD, "-f", str(conf), "-l", str(self.base / "data.ldif")], check=True,
                       capture_output=True)
        return self

    def start(self, timeout: float = 20) -> Slapd:
        self.port = self.port or free_port()
        log = open(self.base / "slapd.log", "wb")  # noqa: SIM115 - kept open while slapd runs
        self.process = subprocess.Popen([SLAPD, "-f", str(self.base / "slapd.conf"), "-h", self.url,
                                         "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.base / 'slapd.log').read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("slapd did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
