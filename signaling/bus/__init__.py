"""Buses, chosen by URL: empty or `memory://` (one node, the default); `redis://` / `rediss://`
(nodes on one Redis); `redis+cluster://host:port[,host:port...]` (Redis Cluster, sharded pub/sub)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import AttachRefused, Bus, BusUnavailable, LeaseLost, Mailbox

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["AttachRefused", "Bus", "BusUnavailable", "LeaseLost", "Mailbox", "from_settings"]


def from_settings(settings: Settings, metrics: Any = None) -> Bus:
    url = settings.redis_url
    scheme = url.partition("://")[0] if url else "memory"
    if scheme == "memory":
        from .memory import MemoryBus  # never imports redis

        return MemoryBus(node_id=settings.node_id, grace=settings.grace, inbox_limit=settings.inbox_limit,
                         inbox_bytes=settings.inbox_bytes)
    if scheme in ("redis", "rediss", "unix", "redis+cluster"):
        from .redis import RedisBus

        return RedisBus(url, node_id=settings.node_id, grace=settings.grace, inbox_limit=settings.inbox_limit,
                        prefix=settings.key_prefix, node_ttl=settings.node_ttl, metrics=metrics,
                        quota_memory=settings.limits.memory, inbox_bytes=settings.inbox_bytes)
    raise ValueError(f"unsupported bus URL scheme {scheme!r}: use memory://, redis://, rediss:// or redis+cluster://")
