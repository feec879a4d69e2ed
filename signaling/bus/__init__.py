"""Buses, chosen by URL: empty or `memory://` (one node, the default), `redis://` (a cluster)."""

from __future__ import annotations

from .base import Bus, BusUnavailable, Mailbox

__all__ = ["Bus", "BusUnavailable", "Mailbox", "from_url"]


def from_url(url: str, *, node_id: str, grace: float, inbox_limit: int) -> Bus:
    scheme = url.partition("://")[0] if url else "memory"
    if scheme == "memory":
        from .memory import MemoryBus

        return MemoryBus(node_id=node_id, grace=grace, inbox_limit=inbox_limit)
    raise ValueError(f"unsupported bus URL scheme {scheme!r}: use memory:// (the Redis bus is not built yet)")
