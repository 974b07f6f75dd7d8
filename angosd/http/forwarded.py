"""The client's address behind trusted proxies (``[global] trusted_proxies``).

``X-Forwarded-For`` is believed only as far as it was written by trusted proxies: the
hops are read from the right, starting at the socket peer; while the current hop is a
trusted proxy, the address it names before it is taken. The first untrusted hop is the
client. ``X-Real-IP`` is used when there is no ``X-Forwarded-For``. A peer that is not a
trusted proxy is the client, whatever the headers say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    """The networks of ``texts`` (already validated by the configuration)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def client_address(peer: str, forwarded_for: Sequence[str], real_ip: str | None,
                   proxies: Sequence[Network]) -> str:
    """The client's address, given the socket ``peer``, the ``X-Forwarded-For`` header values
    (in order), ``X-Real-IP`` and the trusted ``proxies``."""
    current = _address(peer)
    if current is None or not proxies or not _trusted(current, proxies):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    if not hops and real_ip:
        hops = [real_ip]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # a hop a trusted proxy would not write: stop believing here
            break
        current = address
        if not _trusted(current, proxies):
            break
    return str(current)
