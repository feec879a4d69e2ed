"""One connected peer on this node: WebSocket frames in and out, nothing else.

The read loop feeds frames to the pure `core.Peer` and performs its effects in order
(so one sender's messages reach the bus in the order sent). Frames for the client are
written to its transport at once, in the order they arise: no queue, no writer task
(frames are uncompressed, so writing one is a header and a `transport.write`).

Slow-consumer policy: a client that leaves more than `send_buffer` bytes unread
(beyond what the kernel's socket buffer holds) is closed with 1011; its peer enters
the grace and resumes from its inbox, so nothing is lost, and the node's memory stays
bounded.

How a connection ends decides what happens to the peer: the client's own close frame,
1008 and 1009 end it for good (it leaves its rooms); every other end (network loss,
missed heartbeats, 1001 drain, 1011, 4401) keeps it reconnecting for the grace; 4409
hands it to the newer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from . import core
from . import protocol as p
from .auth import Identity
from .bus import AttachRefused, BusUnavailable, LeaseLost
from .frames import PING, PING_FRAME, PONG, control_frame, text_frame
from .inbox import ZERO, seq_key
from .metrics import close_label
from .outcome import Attached, Outcome, Result
from .protocol import CloseCode
from .quota import Snapshot

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("signaling.session")

_FINAL_CLOSES = frozenset({CloseCode.POLICY, CloseCode.TOO_BIG})


def _close_code(code: int) -> CloseCode | int:
    try:
        return CloseCode(code)
    except ValueError:
        return code


class Session:
    __slots__ = ("node", "ws", "peer", "identity", "core", "epoch", "started", "_pending", "_last_seq",
                 "_written", "_send_buffer", "_transport", "_closing", "_stopped", "_handling", "_handled",
                 "_client_closed", "ended", "_closer", "heard", "pinged", "_spent", "_ping_seq", "_trimmed_to",
                 "__weakref__")  # one per connection: keep it small

    def __init__(self, node: Node, ws: web.WebSocketResponse, identity: Identity) -> None:
        self.node = node
        self.ws = ws
        self.peer = identity.peer
        self.identity = identity
        s = node.settings
        now = time.monotonic()
        self.core = core.Peer(identity.peer, now, grants=identity.rooms, quota=node.quotas.acquire(identity.peer, now))
        self._spent = (0.0, 0.0)  # the quota's spending when this connection attached (see quota_report)
        self._ping_seq: str | None = None  # last seq written before the ping out now (its pong confirms it)
        self._trimmed_to: str | None = None  # the inbox has let go of everything up to it
        self.epoch = 0
        self.started = False
        self._pending: list[tuple[str, bytes]] | None = None  # deliveries that arrived before the welcome
        self._last_seq = ZERO  # highest seq queued to this client: later duplicates are dropped
        self._written: str | None = None  # last seq written to the socket
        self._send_buffer = s.send_buffer
        self._transport: asyncio.Transport | None = None  # the socket, once the upgrade is done
        self._closing: CloseCode | int | None = None  # an int: aiohttp's own close, with a code we do not name
        self._stopped = False  # the close frame is next: nothing more is written
        self._handling = False  # a client frame is being handled
        self._handled: asyncio.Future[None] | None = None  # made only when a close waits for that frame
        self._client_closed = False
        self.ended = False  # the connection is over (token expiry forgets it)
        self.heard = False  # a frame arrived since the last heartbeat tick
        self.pinged = False  # a ping went out at the last tick and nothing has been heard since
        self._closer: asyncio.Future[None] | None = None  # the close handshake, once started

    # -- Mailbox (called by the bus) -----------------------------------------------
    def deliver(self, seq: str, body: bytes) -> None:
        if not self.started:
            if self._pending is None:
                self._pending = []
            self._pending.append((seq, body))
            return
        if self._stopped:
            return  # closing: it stays in the inbox for the next connection
        key = seq_key(seq)
        if key <= self._last_seq:
            return  # seen already (replay and live delivery overlapped)
        self._last_seq = key
        if self._write(p.with_seq(body, seq)):
            self._written = seq
            self.node.metrics.tally_out["relayed"] += 1

    def replaced(self) -> None:
        self.close(CloseCode.REPLACED, "replaced by a newer connection")

    def lost(self) -> None:
        self.close(CloseCode.INTERNAL, "missed messages while the cluster reconnected; resume")

    def fenced(self) -> None:
        self._stopped = True  # not one more frame: this node may no longer act for the peer
        self.close(CloseCode.DRAINING, "this node lost its place in the cluster; reconnect")

    def quota(self) -> Snapshot:
        return self.core.quota.snapshot(time.monotonic())

    def quota_report(self, snapshot: Snapshot, age: float) -> None:
        quota = self.core.quota
        spent_m, spent_b = quota.spent()
        quota.restrict(snapshot, age, time.monotonic(), (spent_m - self._spent[0], spent_b - self._spent[1]))

    # -- lifecycle -----------------------------------------------------------------
    async def run(self, resume: str | None, started: float) -> None:
        """Attach, then read frames until the connection ends, then detach. (One coroutine,
        not a reader called from here: each coroutine frame is kept for the connection's
        life, ~250 bytes a connection.) `started`: when the handshake began (monotonic)."""
        ws = self.ws
        try:
            revoked = self._start(await self.node.bus.attach(self.peer, self, resume, started=started))
            if revoked:
                await self._revoke(revoked)
            revoked = ()  # (the attach itself is no local: this frame lives as long as the connection)
            while True:
                msg = await ws.receive()
                self.heard = True
                if self._closing is not None:
                    break  # closing: a frame not yet handled stays unhandled (and unacked), never half-done
                if msg.type is WSMsgType.TEXT:
                    effects = self.core.receive(msg.data, time.monotonic())
                elif msg.type is WSMsgType.BINARY:
                    effects = self.core.receive(msg.data, time.monotonic(), binary=True)
                elif msg.type is WSMsgType.PONG:
                    if self._ping_seq is not None and msg.data == self._ping_seq.encode():
                        await self._confirmed(self._ping_seq)
                    continue
                elif msg.type is WSMsgType.PING:
                    self._write_frame(control_frame(PONG, msg.data))  # pong, echoing its payload
                    continue
                else:
                    if msg.type is WSMsgType.CLOSE and self._closing is None:
                        self._client_closed = True  # the client said goodbye first
                    elif msg.type is WSMsgType.ERROR and isinstance(getattr(msg.data, "code", None), int):
                        self._closing = self._closing or _close_code(msg.data.code)  # aiohttp closed it (1009)
                    break  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp closed it: 1009 for size)
                self.node.metrics.tally_in[self.core.kind] += 1
                self._handling = True
                try:
                    await self._perform(effects)
                finally:
                    self._handling = False
                    if self._handled is not None and not self._handled.done():
                        self._handled.set_result(None)
                if self._closing is not None:
                    break
        except AttachRefused as exc:
            log.info("handshake of %s refused: %s", self.peer, exc)
            if exc.newer:
                self.close(CloseCode.REPLACED, "replaced by a newer connection")
            else:
                self.close(CloseCode.INTERNAL, "the handshake took too long; reconnect")
        except BusUnavailable:
            log.warning("bus unavailable while attaching %s", self.peer)
            self.close(CloseCode.INTERNAL, "cluster unavailable; reconnect later")
        except Exception:
            log.exception("session of %s failed", self.peer)
            self.close(CloseCode.INTERNAL, "internal error")
        finally:
            # the peer's detach must happen even if this handler is cancelled (a shutdown),
            # so it runs in a task of its own that a cancel cannot reach
            cleanup = asyncio.ensure_future(self._finish())
            self.node.cleanups.add(cleanup)
            cleanup.add_done_callback(self.node.cleanups.discard)
            await asyncio.shield(cleanup)

    def _start(self, attached: Attached) -> tuple[str, ...]:
        """Welcome the client and hand it what waited; return the rooms it kept that its
        token no longer grants (a resume, reconnect or takeover with a narrower token)."""
        self.epoch = attached.epoch
        quota = self.core.quota
        if attached.quota is not None:
            quota.restrict(attached.quota, attached.quota_age, time.monotonic())
        self._spent = quota.spent()
        revoked: tuple[str, ...] = ()
        if attached.rooms:
            revoked = tuple(sorted(r for r in attached.rooms if not core.room_allowed(self.core.grants, r)))
            self.core.rooms = self.core.rooms | (attached.rooms - set(revoked))
        s = self.node.settings
        ice = self.node.ice_servers(self.peer)
        heartbeat = int(s.heartbeat) if float(s.heartbeat).is_integer() else s.heartbeat
        self._reply(core.Reply(p.welcome(self.peer, s.node_id, ice, heartbeat, attached.resumed, attached.seq),
                               "welcome"))
        self.node.metrics.connects.labels(str(attached.resumed).lower()).inc()
        self.node.metrics.replayed.inc(len(attached.replay))
        self.started = True
        for seq, body in attached.replay + (self._pending or []):
            self.deliver(seq, body)
        self._pending = None
        if self.identity.expires is not None:
            self.node.expiries.add(self, self.identity.expires)
        return revoked

    async def _revoke(self, rooms: tuple[str, ...]) -> None:
        """Leave `rooms` (the others get `peer-left`) and tell this client with `left`."""
        for room in rooms:
            try:
                await self.node.bus.leave(self.peer, room, epoch=self.epoch)
            except BusUnavailable:
                log.warning("bus unavailable while taking %s out of a room its token no longer grants", self.peer)
                self.close(CloseCode.INTERNAL, "cluster unavailable; reconnect later")
                return
            self._reply(core.Reply(p.left(room), "left"))

    def close(self, code: CloseCode, reason: str) -> None:
        """Close this connection with `code` (idempotent, non-blocking)."""
        if self._closing is not None:
            return
        self._closing = code
        self._closer = asyncio.ensure_future(self._close_socket(code, reason))

    async def _close_socket(self, code: CloseCode, reason: str) -> None:
        """Finish the frame being handled (its receipt goes out: a delivered message is
        never left without its ack), then say goodbye. A slow consumer (1011) is cut
        off at once."""
        if code is not CloseCode.INTERNAL and not self._stopped:
            with contextlib.suppress(asyncio.TimeoutError):
                if self._handling:
                    self._handled = asyncio.get_running_loop().create_future()
                    await asyncio.wait_for(self._handled, timeout=2.0)
        self._stopped = True
        await self.ws.close(code=code, message=reason.encode())

    async def _finish(self) -> None:
        self.ended = True
        quota = self.core.quota.snapshot(time.monotonic())
        if self.identity.expires is not None and self.started:
            self.node.expiries.forget(self)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
        code = self._closing if self._closing is not None else self.ws.close_code
        final = self._client_closed or code in _FINAL_CLOSES
        self.node.metrics.closes.labels(close_label(code)).inc()  # (the client picks its code: bounded)
        if self.epoch and code is CloseCode.REPLACED:
            await self.node.bus.forget(self.peer, self.epoch)  # the newer connection owns the peer now
        elif self.epoch:
            try:
                await self.node.bus.detach(self.peer, self.epoch, final=final, delivered=self._written, quota=quota)
            except BusUnavailable:
                log.warning("bus unavailable while detaching %s; its grace runs out on its own", self.peer)
        log.debug("closed %s code=%s final=%s", self.peer, code, final, extra={"peer": self.peer})

    # -- handling a frame ------------------------------------------------------------
    async def _perform(self, effects: Sequence[core.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, core.Reply):
                self._reply(effect)
            elif isinstance(effect, core.Close):
                self.close(effect.code, effect.reason)
            else:
                try:
                    result = await self._bus_call(effect)
                except LeaseLost:
                    continue  # its outcome is unknown, and the connection is closing: no answer
                except BusUnavailable:
                    replies = self.core.unavailable(effect)
                else:
                    if result.outcome is Outcome.REPLACED:
                        self.replaced()  # a newer connection owns the peer: this one says nothing more
                        continue
                    if result.outcome is Outcome.QUEUED:
                        self.node.metrics.queued.inc()
                    replies = self.core.settle(effect, result)
                if not self.node.bus.serving:
                    continue  # the node may not act for the peer any more: the connection is closing
                for reply in replies:
                    self._reply(reply)

    def _bus_call(self, work: core.BusWork) -> Awaitable[Result]:
        """The bus's coroutine for `work` (returned, not awaited here: no coroutine of
        this method's own per message)."""
        bus = self.node.bus
        if isinstance(work, core.Send):
            return bus.send(work.to, work.body, origin=(self.peer, self.epoch))
        if isinstance(work, core.Broadcast):
            return bus.broadcast(self.peer, work.room, work.body, epoch=self.epoch)
        if isinstance(work, p.Join):
            s = self.node.settings
            return bus.join(self.peer, work.room, room_limit=s.room_limit, rooms_per_peer=s.rooms_per_peer,
                            epoch=self.epoch)
        return bus.leave(self.peer, work.room, epoch=self.epoch)

    # -- writing ---------------------------------------------------------------------
    def _reply(self, reply: core.Reply) -> None:
        m = self.node.metrics
        m.out(reply.kind)
        if reply.code is not None:
            m.error(reply.code)
        self._write(reply.frame)

    async def _confirmed(self, seq: str) -> None:
        """The client's WebSocket answered a ping written after `seq`: it has read every
        frame up to it, so the inbox need not keep them (bounded Redis memory per
        connected peer; a resume from before it reads `resumed: false`, as after the bound)."""
        self._ping_seq = None
        if await self.node.bus.trim(self.peer, self.epoch, seq):
            self._trimmed_to = seq  # else the next tick pings (and trims) again

    def tick(self) -> None:
        """One heartbeat tick (every half `heartbeat`): a connection heard from since the
        last tick is fine; one that was not gets a ping; one that did not answer that
        ping by the next tick is dropped (it vanished: it starts its grace). A ping also
        goes to a connection that was written to since its inbox was last trimmed: its
        pong, echoing the last seq written, lets the inbox go up to there."""
        if not self.started or self._closing is not None:
            return
        written = self._written
        # the seq a ping should confirm: the last one written, unless trimmed to or being confirmed
        confirm = None if written is None or written == self._trimmed_to or self._ping_seq is not None else written
        if self.heard:
            self.heard = self.pinged = False
            if confirm is not None and self._write_frame(control_frame(PING, confirm.encode())):
                self._ping_seq = confirm
        elif not self.pinged:
            if confirm is not None:
                self.pinged = self._write_frame(control_frame(PING, confirm.encode()))
                self._ping_seq = confirm if self.pinged else None
            else:
                self.pinged = self._write_frame(PING_FRAME)
        else:
            self.node.metrics.heartbeat_timeouts.inc()
            self._stopped = True
            if self._transport is not None:
                self._transport.abort()  # the read loop ends; ws.close_code is 1006

    def upgraded(self, transport: asyncio.Transport | None) -> None:
        """The 101 went out: frames are written straight to the request's transport from now
        (aiohttp's writer would copy and lock for each; ours are prebuilt, uncompressed)."""
        self._transport = transport

    def _write(self, payload: bytes) -> bool:
        """Write one text frame now; False if the connection cannot take it."""
        return self._write_frame(text_frame(payload))

    def _write_frame(self, frame: bytes) -> bool:
        if self._stopped:
            return False
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(frame)
        if transport.get_write_buffer_size() > self._send_buffer:
            self.node.metrics.slow_consumers.inc()
            self._stopped = True  # nothing more: the client resumes from its inbox
            self.close(CloseCode.INTERNAL, "slow consumer: resume to get the rest")
        return True
