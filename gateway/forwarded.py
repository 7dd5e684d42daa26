"""The client's address: the TCP peer, or X-Forwarded-For when the peer is a trusted proxy.

X-Forwarded-For is client-controlled except for the entries our own proxies appended, so it is
read right to left: each hop that is a trusted proxy vouches for the one before it, and the
right-most address that is *not* a trusted proxy is the client (nginx's real_ip_recursive).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Iterable

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.cache
def trusted_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parsed once per distinct list (config.py has already rejected malformed entries)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51234"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def resolve_client_ip(peer: str | None, forwarded_for: list[str], networks: tuple[IPNetwork, ...]) -> str | None:
    """The client address given the peer, the X-Forwarded-For header values and the trusted proxies."""
    current = _address(peer) if peer else None
    if current is None:
        return peer
    if not networks:
        return str(current)
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(current, networks):
            break
        previous = _address(hop)
        if previous is None:  # garbage in the header: stop at the last proxy that we can vouch for
            break
        current = previous
    return str(current)


def client_ip(request: web.Request, cidrs: list[str]) -> str | None:
    if not cidrs:  # no trusted proxies: the peer is the client, as the socket reports it
        return request.remote
    return resolve_client_ip(request.remote, request.headers.getall("X-Forwarded-For", []),
                             trusted_networks(tuple(cidrs)))


def came_over_tls(request: web.Request, cidrs: list[str]) -> bool:
    """Whether the client reached us over TLS: on this connection, or through a trusted proxy that
    says so in ``X-Forwarded-Proto`` (the right-most value: the one our proxy appended or set)."""
    if request.secure:
        return True
    if not cidrs:
        return False
    peer = _address(request.remote) if request.remote else None
    if peer is None or not _trusted(peer, trusted_networks(tuple(cidrs))):
        return False
    values = [v.strip().lower() for value in request.headers.getall("X-Forwarded-Proto", [])
              for v in value.split(",") if v.strip()]
    return bool(values) and values[-1] == "https"
