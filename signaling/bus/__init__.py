"""Buses, chosen by URL: empty or `memory://` (one node, the default); every other form is
Redis (one server, Sentinel or Cluster: bus/redis_url.py lists them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import AttachRefused, Bus, BusUnavailable, LeaseLost, Mailbox

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["AttachRefused", "Bus", "BusUnavailable", "LeaseLost", "Mailbox", "from_settings"]

# (kept here, not imported from redis_url: the memory bus never imports the Redis modules)
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def from_settings(settings: Settings, metrics: Any = None) -> Bus:
    url = settings.redis_url
    scheme = url.partition("://")[0] if url else "memory"
    if scheme == "memory":
        from .memory import MemoryBus  # never imports redis

        return MemoryBus(node_id=settings.node_id, grace=settings.grace, inbox_limit=settings.inbox_limit,
                         inbox_bytes=settings.inbox_bytes)
    if scheme in REDIS_SCHEMES:
        from .redis import RedisBus

        return RedisBus(url, node_id=settings.node_id, grace=settings.grace, inbox_limit=settings.inbox_limit,
                        prefix=settings.key_prefix, node_ttl=settings.node_ttl, metrics=metrics,
                        quota_memory=settings.limits.memory, inbox_bytes=settings.inbox_bytes,
                        replicas=settings.redis_replicas, replay_window=settings.replay_window,
                        replay_bytes=settings.replay_bytes)
    raise ValueError(f"unsupported bus URL scheme {scheme!r}: use memory:// or one of "
                     f"{', '.join(s + '://' for s in REDIS_SCHEMES)}")
