"""The real client behind a front proxy: FORWARDED_ALLOW_IPS, X-Forwarded-For, Forwarded.

A forwarding header is believed only when the connection comes from a trusted proxy (an
address in ``FORWARDED_ALLOW_IPS``; none by default), and then only as far as trusted hops
reach: the chain is read right to left and the first address that is not a trusted proxy is
the client (the rightmost-untrusted rule), so whatever a client writes into the header itself
is left of that and never believed. ``X-Forwarded-For`` is read when present, else the
``Forwarded`` header's ``for=`` parameters (RFC 7239); a front proxy that sets only
``Forwarded`` must drop an incoming ``X-Forwarded-For``. A hop the chain does not name by
address (``unknown``, an obfuscated ``_name``, garbage) ends the walk: the last trusted hop
is then taken as the client, never a name the client could have chosen.

The app's outer layer (``front.Front``) rewrites the ASGI scope's ``client`` with
``TrustedProxies.client`` before anything reads it, so the fast lane, Litestar's routes, the
per-address limits and the access log all see the same address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """IP addresses or CIDR networks; ``ValueError`` naming the first bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry.strip()!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address from a header entry: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has several colons)
        text = text.partition(":")[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _forwarded_for(values: list[str]) -> list[str]:
    """The ``for=`` parameters of ``Forwarded`` headers, in order (RFC 7239 section 4)."""
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            for pair in element.split(";"):
                name, _, param = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(param)
    return hops


class TrustedProxies:
    """The proxies whose forwarding headers are believed."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self.trusts = lru_cache(maxsize=4096)(self._trusts)

    def _trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in net for net in self.networks)

    def client(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address for a connection from ``peer`` with these request headers."""
        if not self.networks or not self.trusts(peer):
            return peer
        xff: list[str] = []
        forwarded: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                xff.extend(value.decode("latin-1").split(","))
            elif name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
        hops = xff or _forwarded_for(forwarded)
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # a hop not named by address: the last trusted one is all we know
            client = str(address)
            if not self.trusts(client):
                break
        return client
