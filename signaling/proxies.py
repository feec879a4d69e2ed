"""Which address is the client, behind proxies: only what a trusted proxy vouches for."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`; else None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: Iterable[str], real_ip: str | None,
                   trusted: Sequence[Network]) -> str | None:
    """The client's address: `peer` (the socket's), unless `peer` is a trusted proxy.

    From a trusted proxy, `X-Forwarded-For` is read right to left and the first hop that
    is not itself a trusted proxy is the client (what nginx's `real_ip_recursive on`
    does), so a client cannot pose as another address by sending the header itself;
    without that header, `X-Real-IP`. Anything unparsable stops the walk at the last
    address a trusted proxy vouched for.
    """
    def is_trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in trusted)

    here = _ip(peer) if peer else None
    if here is None or not trusted or not is_trusted(here):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    if not hops:
        vouched = _ip(real_ip) if real_ip else None
        return str(vouched) if vouched is not None else peer
    for hop in reversed(hops):
        addr = _ip(hop)
        if addr is None:
            return str(here)
        here = addr
        if not is_trusted(addr):
            return str(addr)
    return str(here)  # every hop is a proxy of ours: the leftmost is as far as we can see
