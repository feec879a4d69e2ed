"""One pub/sub connection to one Redis server, with its one reader task.

The Redis bus holds one `Subscriber` (a single Redis) or one per primary (Redis
Cluster, where channels are sharded: SSUBSCRIBE on the primary that owns the
channel's slot). A subscription returns once Redis has confirmed it, so a message
published after `subscribe()` returns is never missed. When the connection drops, the
reader reconnects with jittered back-off, subscribes every channel again, and calls
`on_reconnect` before it lets anything else through, so the bus can fill the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .base import BusUnavailable

log = logging.getLogger("signaling.bus.redis")


class Subscriber:
    def __init__(self, client: aioredis.Redis, *, name: str, sharded: bool,
                 on_message: Callable[[bytes, bytes], None],
                 on_reconnect: Callable[[Subscriber], Awaitable[None]],
                 on_lost: Callable[[Subscriber], Awaitable[None]] | None = None) -> None:
        self.client, self.name, self.sharded = client, name, sharded
        self.on_message, self.on_reconnect, self.on_lost = on_message, on_reconnect, on_lost
        self.channels: set[bytes] = set()  # what should be subscribed (restored on reconnect)
        self.up = False  # connected, every channel subscribed, recovery done
        self._pubsub: Any = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}  # channel -> its confirmation
        self._task: asyncio.Task[None] | None = None
        self._confirm = b"ssubscribe" if sharded else b"subscribe"
        self._kinds = (b"smessage", "smessage") if sharded else (b"message", "message")

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name=f"bus-reader-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe and wait for Redis to confirm; BusUnavailable if it cannot."""
        self.channels.add(channel)
        if not self.up or self._pubsub is None:
            raise BusUnavailable(f"pub/sub connection to {self.name} is reconnecting")
        waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
        try:
            await (self._pubsub.ssubscribe(channel) if self.sharded else self._pubsub.subscribe(channel))
            await asyncio.wait_for(asyncio.shield(waiter), timeout=3.0)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BusUnavailable(f"subscribe failed: {exc!r}") from exc
        finally:
            if self._waiters.get(channel) is waiter:
                del self._waiters[channel]

    async def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        if self._pubsub is not None and self.up:
            with contextlib.suppress(RedisError, OSError):
                await (self._pubsub.sunsubscribe(channel) if self.sharded else self._pubsub.unsubscribe(channel))

    async def _read_forever(self) -> None:
        backoff, first = 0.05, True
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                await pubsub.ping()  # connects, even with nothing to subscribe yet
                channels = sorted(self.channels)
                if channels:
                    await (pubsub.ssubscribe(*channels) if self.sharded else pubsub.subscribe(*channels))
                self._pubsub = pubsub
                if not first:
                    log.info("pub/sub to %s reconnected; %d channels subscribed again", self.name, len(channels))
                    await self.on_reconnect(self)
                self.up, first, backoff = True, False, 0.05
                while True:  # with health_check_interval, an idle connection is PINGed
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.up:
                    log.warning("pub/sub connection to %s lost: %s", self.name, exc)
            except Exception:
                log.exception("pub/sub reader of %s failed; restarting it", self.name)
            finally:
                self.up = False
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                self._pubsub = None
            if self.on_lost is not None:
                with contextlib.suppress(Exception):
                    await self.on_lost(self)
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, 2.0)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if isinstance(kind, str):
            kind = kind.encode()
        if kind == self._confirm:
            waiter = self._waiters.get(msg["channel"])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == self._kinds[0]:
            self.on_message(msg["channel"], msg["data"])
