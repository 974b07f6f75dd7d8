"""Secure by default: a daemon reachable from the network must have an access policy.

Without any ``access_policy`` the registry allows everything to everyone (the quick start
on 127.0.0.1). Angos denies in that case, so a configuration written for Angos that relies
on its default would open the registry to the network here: such a daemon refuses to start
until the operator chooses.
"""

from __future__ import annotations

import ipaddress
import re

from angosd.config.model import Config

_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\:|[^:])+)")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.replace("\\:", ":").strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def listening_address(config: Config, listen: str | None = None) -> str | None:
    """The address the daemon listens on, when it can be told (None for systemd's socket and
    unix sockets); ``listen`` (``--listen``) replaces the configured one."""
    description = listen if listen is not None else config.server.listen
    if description is None:
        return config.server.bind_address
    if description == "systemd" or description.startswith(("systemd:", "unix:")):  # passed in, or local
        return None
    match = _INTERFACE.search(description)
    return match.group(1) if match else "0.0.0.0"


def exposure_problem(config: Config, listen: str | None = None) -> str | None:
    """One line saying how to choose, when ``config`` listens on a non-loopback address with no
    access policy configured; None when it may start."""
    address = listening_address(config, listen)
    if address is None or _loopback(address) or config.access_policy_configured:
        return None
    return (f"server: listening on {address} (not a loopback address) with no access policy; choose one: "
            f'[global.access_policy] default = "deny" with rules granting what each identity may do, or '
            f'default = "allow" to let anyone do anything')
