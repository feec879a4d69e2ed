"""One pub/sub connection to one Redis server, read without a task per message.

The Redis bus holds one `Subscriber` (a single Redis) or one per primary (Redis
Cluster, where channels are sharded: SSUBSCRIBE on the primary that owns the
channel's slot). The connection is a raw asyncio protocol with a hiredis reader: each
chunk Redis sends is parsed in C and every message in it is handed to `on_message`
right there, in order, with no await between (no task or timeout per message:
bench/results/tuning.md).

A subscription returns once Redis has confirmed it, so a message published after
`subscribe()` returns is never missed. When the connection drops (or a PING goes
unanswered), the task that owns it reconnects with jittered back-off, subscribes every
channel again and calls `on_reconnect`; messages that arrive meanwhile are held and
handed on after it, so the bus fills the gap before anything newer gets through.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
from redis.exceptions import RedisError

from .base import BusUnavailable
from .redis_url import Endpoint, RedisTarget
from .redis_wire import open_connection, pack, retrieved

log = logging.getLogger("signaling.bus.redis")

CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0  # a subscribe not confirmed, or a PING not answered, in this long: reconnect
PING_EVERY = 2.0  # when nothing has been heard for this long


class _Lost(Exception):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[tuple[bytes, Any]] = collections.deque()  # commands awaiting a reply
        self.loop = asyncio.get_running_loop()  # (kept: get_running_loop() is a getpid syscall)
        self.closed = self.loop.create_future()
        self.heard = 0  # chunks received: PING only a quiet connection
        self.out: list[bytes] = []  # commands not yet written (this loop turn)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def command(self, *args: Any, expect: bytes, key: Any = None) -> None:
        """Queue a command; the commands of one loop turn go out in one write (a connect
        storm subscribes hundreds of channels a turn)."""
        assert self.transport is not None
        self.pending.append((expect, key))
        self.out.append(pack(args))
        if len(self.out) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self.heard += 1
        self.reader.feed(data)
        sub = self.sub
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(f"unreadable reply: {exc}")
                return
            if reply is False:
                return
            if type(reply) is list and reply and reply[0] == sub.message_kind:
                sub.message(reply[1], reply[2])
            else:
                self.reply(reply)

    def reply(self, reply: Any) -> None:
        kind = reply[0] if type(reply) is list and reply else reply
        if kind == b"sunsubscribe" and (not self.pending or self.pending[0] != (b"sunsubscribe", reply[1])):
            # the cluster moved the channel's slot away: follow it from a fresh connection
            self.fail(f"Redis unsubscribed {reply[1]!r} (slot moved)")
            return
        if not self.pending:
            log.warning("unexpected reply on the pub/sub connection: %r", reply)
            return
        expect, key = self.pending.popleft()
        if isinstance(reply, hiredis.ReplyError):
            self.sub.refused(expect, key, str(reply))
        elif expect in (b"ping", b"auth", b"role"):
            if key is not None and not key.done():
                if expect == b"role" and reply[0] != b"master":
                    key.set_exception(_Lost(f"{self.sub.name} is a {reply[0].decode()}, not the primary"))
                elif expect != b"auth":
                    key.set_result(None)
        elif expect in (b"subscribe", b"ssubscribe"):
            self.sub.confirmed(key)

    def fail(self, why: str) -> None:
        if not self.closed.done():
            self.closed.set_result(why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(f"connection lost: {exc or 'closed by Redis'}")


class Subscriber:
    def __init__(self, locate: Callable[[], Awaitable[Endpoint]], target: RedisTarget, *, name: str, sharded: bool,
                 on_message: Callable[[bytes, bytes], None],
                 on_reconnect: Callable[[Subscriber], Awaitable[None]],
                 on_lost: Callable[[Subscriber], Awaitable[None]] | None = None,
                 require_primary: bool = False) -> None:
        self.locate, self.target, self.name, self.sharded = locate, target, name, sharded
        self.require_primary = require_primary  # Sentinel: never subscribe on a demoted primary
        self.endpoint: Endpoint | None = None  # where the current connection goes
        self.on_message, self.on_reconnect, self.on_lost = on_message, on_reconnect, on_lost
        self.channels: set[bytes] = set()  # what should be subscribed (restored on reconnect)
        self.up = False  # connected, every channel subscribed, recovery done
        self.message_kind = b"smessage" if sharded else b"message"
        self._sub, self._unsub = (b"ssubscribe", b"sunsubscribe") if sharded else (b"subscribe", b"unsubscribe")
        self._protocol: _Protocol | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}  # channel -> its confirmation
        self._held: list[tuple[bytes, bytes]] = []  # messages that wait for a recovery (see hold)
        self._holds = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry = asyncio.Event()  # set: try again now, without waiting out the back-off

    def start(self, *, recovering: bool = False) -> None:
        """`recovering`: channels it takes over may have missed messages (a failover moved
        them here), so its first connection recovers like a reconnect."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_forever(not recovering), name=f"bus-reader-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._protocol is not None:
            self._protocol.fail("closing")

    def retry_now(self) -> None:
        """Redis answers again (a command connection just reached it): reconnect without
        waiting out the back-off, which may have grown to seconds during the outage."""
        if not self.up:
            self._retry.set()

    def restart(self, why: str) -> None:
        """Drop the connection (the server is no longer the one to listen on): the reader
        connects again, to where `locate` says, and recovers as after any reconnect."""
        if self._protocol is not None:
            self._protocol.fail(why)

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe and wait for Redis to confirm; BusUnavailable if it cannot."""
        self.channels.add(channel)
        protocol = self._protocol
        if not self.up or protocol is None:
            raise BusUnavailable(f"pub/sub connection to {self.name} is reconnecting")
        waiter = self._waiter(channel)
        protocol.command(self._sub, channel, expect=self._sub, key=channel)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=REPLY_TIMEOUT)
        except (TimeoutError, _Lost) as exc:
            raise BusUnavailable(f"subscribe failed: {exc!r}") from exc

    async def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        protocol = self._protocol
        if protocol is not None and self.up and protocol.transport is not None and not protocol.transport.is_closing():
            protocol.command(self._unsub, channel, expect=self._unsub, key=channel)

    # -- called by the protocol ------------------------------------------------------
    def message(self, channel: bytes, data: bytes) -> None:
        if self._holds:
            self._held.append((channel, data))
            return
        try:
            self.on_message(channel, data)
        except Exception:
            log.exception("handling a message on %r failed", channel)

    def confirmed(self, channel: bytes) -> None:
        waiter = self._waiters.get(channel)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def refused(self, expect: bytes, key: Any, error: str) -> None:
        log.warning("Redis refused %s on %s: %s", expect.decode(), self.name, error)
        waiter = key if isinstance(key, asyncio.Future) else self._waiters.get(key) if key is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Lost(error))

    # -------------------------------------------------------------------------------
    def _waiter(self, channel: bytes) -> asyncio.Future[None]:
        waiter = self._waiters.get(channel)
        if waiter is None or waiter.done():
            waiter = self._waiters[channel] = (self._loop or asyncio.get_running_loop()).create_future()

            def forget(done: asyncio.Future[None]) -> None:
                if self._waiters.get(channel) is done:
                    del self._waiters[channel]
                if not done.cancelled():
                    done.exception()  # retrieved: a failure is reported by whoever awaited it
            waiter.add_done_callback(forget)
        return waiter

    async def _connect(self, first: bool) -> _Protocol:
        protocol: _Protocol | None = None
        held = False
        done: asyncio.Future[Any] | None = None
        try:  # whatever fails (cancel included), a half-made connection is closed, never left subscribed
            async with asyncio.timeout(CONNECT_TIMEOUT):
                endpoint = await self.locate()
                protocol = await open_connection(endpoint, self.target.tls, lambda: _Protocol(self))
            auth = self.target.auth()
            channels = sorted(self.channels)
            loop = asyncio.get_running_loop()
            pong: asyncio.Future[None] = loop.create_future()
            role: asyncio.Future[None] = loop.create_future()
            waiters = [pong, *(self._waiter(c) for c in channels)]
            if auth:
                protocol.command(*auth, expect=b"auth", key=pong)  # refused: fails the wait at once
            if self.require_primary:
                protocol.command("ROLE", expect=b"role", key=role)
                waiters.append(role)
            protocol.command("PING", expect=b"ping", key=pong)  # answered even with nothing to subscribe
            for channel in channels:  # one per command: sharded channels of one command share a slot
                protocol.command(self._sub, channel, expect=self._sub, key=channel)
            self._protocol = protocol
            if not first:
                self.hold()
                held = True
            done = asyncio.gather(*waiters)
            async with asyncio.timeout(REPLY_TIMEOUT):
                await asyncio.wait([done, protocol.closed], return_when=asyncio.FIRST_COMPLETED)
                if not done.done():
                    raise _Lost(protocol.closed.result())
                await done
            self.endpoint = endpoint
            if not first:
                log.info("pub/sub to %s reconnected; %d channels subscribed again", self.name, len(channels))
                await self.on_reconnect(self)
        except BaseException:
            if held:
                self._held = []  # the next connection fills the gap from the inboxes again
                self.release()
            if protocol is not None:
                protocol.fail("connect failed")
            if self._protocol is protocol:
                self._protocol = None
            raise
        finally:
            if done is not None:
                # retrieved whatever happens: the failure was raised above, or there was none (a
                # cancelled gather ends with a CancelledError *exception*, reported if never read)
                done.add_done_callback(retrieved)
                done.cancel()
        if held:
            self.release()
        return protocol

    def hold(self) -> None:
        """Keep messages back (in order) until the matching `release()`: a recovery is
        filling gaps from the inboxes, and nothing newer may overtake what it hands over."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if self._holds:
            return
        held, self._held = self._held, []
        for channel, data in held:
            self.message(channel, data)

    async def _watch(self, protocol: _Protocol) -> str:
        """Until the connection ends: PING it when it has been quiet, drop it when a PING
        goes unanswered."""
        loop = asyncio.get_running_loop()
        heard, quiet_since = protocol.heard, loop.time()
        while True:
            await asyncio.wait([protocol.closed], timeout=PING_EVERY)
            if protocol.closed.done():
                return str(protocol.closed.result())
            now = loop.time()
            if protocol.heard != heard:
                heard, quiet_since = protocol.heard, now
            elif now - quiet_since >= PING_EVERY + REPLY_TIMEOUT:
                protocol.fail(f"no answer to PING in {REPLY_TIMEOUT:.0f}s")
            elif not any(expect == b"ping" for expect, _ in protocol.pending):
                protocol.command("PING", expect=b"ping")

    async def _run_forever(self, first: bool) -> None:
        backoff = 0.05
        while True:
            protocol = None
            try:
                protocol = await self._connect(first)
                self.up, first, backoff = True, False, 0.05
                why = await self._watch(protocol)
                log.warning("pub/sub connection to %s lost: %s", self.name, why)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, _Lost, RedisError, BusUnavailable) as exc:
                if backoff == 0.05:  # the first failure in a row
                    log.warning("pub/sub connection to %s failed: %r; retrying", self.name, exc)
            except Exception:
                log.exception("pub/sub reader of %s failed; restarting it", self.name)
            finally:
                self.up = False
                if protocol is not None:
                    protocol.fail("reconnecting")
                    for waiter in list(self._waiters.values()):
                        if not waiter.done():
                            waiter.set_exception(_Lost("pub/sub connection lost"))
                self._protocol = None
            if self.on_lost is not None:
                with contextlib.suppress(Exception):
                    await self.on_lost(self)
            self._retry.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._retry.wait(), backoff * (1 + random.random()))
            backoff = min(backoff * 2, 2.0)
