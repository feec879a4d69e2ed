"""One connected peer's WebSocket on this node: moves bytes between the socket and its
`Session` (session.py, which decides everything) and awaits the bus.

The read loop feeds frames to the session and performs the core's effects in order (so
one sender's messages reach the bus in the order sent). Frames for the client are written
to the transport at once, in the order they arise: no queue, no writer task.
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
from .metrics import close_label
from .outcome import Attached, Outcome, Result
from .protocol import CloseCode
from .quota import Snapshot
from .session import Action, Closing, Session

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("signaling.session")

FRAME_WAIT = 2.0  # s: how long a close waits for the client frame being handled to get its answer


class PeerSocket:
    __slots__ = ("node", "ws", "identity", "session", "_transport", "_send_buffer", "_handled", "_closer", "ended",
                 "__weakref__")

    def __init__(self, node: Node, ws: web.WebSocketResponse, identity: Identity) -> None:
        self.node = node
        self.ws = ws
        self.identity = identity
        now = time.monotonic()
        self.session = Session(identity.peer, node.quotas.acquire(identity.peer, now), now, grants=identity.rooms)
        self._transport: asyncio.Transport | None = None  # the socket, once the upgrade is done
        self._send_buffer = node.settings.send_buffer
        self._handled: asyncio.Future[None] | None = None  # made only when a close waits for that frame
        self._closer: asyncio.Future[None] | None = None  # the close handshake, once started
        self.ended = False  # the connection is over (token expiry forgets it)

    @property
    def peer(self) -> str:
        return self.session.peer

    # -- Mailbox (called by the bus) -----------------------------------------------
    def deliver(self, seq: str, body: bytes) -> None:
        transport = self._writable()  # (before the session counts the seq as written)
        frame = self.session.deliver(seq, body)
        if frame is not None:
            self._send(transport, frame)  # type: ignore[arg-type]  # (not None: else no frame)
            self.node.metrics.tally_out["relayed"] += 1

    def replaced(self) -> None:
        self.close(CloseCode.REPLACED, "replaced by a newer connection")

    def lost(self) -> None:
        self.close(CloseCode.INTERNAL, "missed messages while the cluster reconnected; resume")

    def fenced(self) -> None:
        self._start_close(self.session.fenced())

    def quota(self) -> Snapshot:
        return self.session.quota(time.monotonic())

    def quota_report(self, snapshot: Snapshot, age: float) -> None:
        self.session.quota_report(snapshot, age, time.monotonic())

    # -- the node's side -----------------------------------------------------------
    def upgraded(self, transport: asyncio.Transport | None) -> None:
        """The 101 went out: frames are written straight to the request's transport from now
        (aiohttp's writer would copy and lock for each; ours are prebuilt, uncompressed)."""
        self._transport = transport
        if transport is None:  # (the client is gone already)
            self.session.socket_gone()

    def close(self, code: CloseCode, reason: str) -> None:
        """Close this connection with `code` (idempotent, non-blocking)."""
        self._start_close(self.session.close(code, reason))

    def tick(self) -> None:
        transport = self._writable()
        out = self.session.tick()
        if out is None:
            return
        if out is Action.ABORT:
            self.node.metrics.heartbeat_timeouts.inc()
            if transport is not None:
                transport.abort()  # the read loop ends; ws.close_code is 1006
            return
        self._write(out)

    # -- lifecycle -----------------------------------------------------------------
    async def run(self, resume: str | None, started: float) -> None:
        """Attach, then read frames until the connection ends, then detach. (One coroutine,
        not a reader called from here: each coroutine frame is kept for the connection's
        life, ~250 bytes a connection.) `started`: when the handshake began (monotonic)."""
        ws, session = self.ws, self.session
        try:
            revoked = self._start(await self.node.bus.attach(self.peer, self, resume, started=started))
            if revoked:
                await self._revoke(revoked)
            revoked = ()  # (the attach itself is no local: this frame lives as long as the connection)
            while True:
                msg = await ws.receive()
                if not session.received():
                    break
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    session.frame()
                    effects = session.core.receive(msg.data, time.monotonic(), binary=kind is WSMsgType.BINARY)
                    self.node.metrics.tally_in[session.core.kind] += 1
                    try:
                        await self._perform(effects)
                    finally:
                        reading = session.handled()
                        if self._handled is not None and not self._handled.done():
                            self._handled.set_result(None)
                    if not reading:
                        break
                elif kind is WSMsgType.PONG:
                    seq = session.pong(msg.data)
                    if seq is not None and await self.node.bus.trim(self.peer, session.epoch, seq):
                        session.trimmed(seq)
                elif kind is WSMsgType.PING:
                    frame = session.ping(msg.data)
                    if frame is not None:
                        self._write(frame)
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    if kind is WSMsgType.CLOSE:
                        session.client_closed()
                    elif kind is WSMsgType.ERROR and isinstance(getattr(msg.data, "code", None), int):
                        session.closed_by_server(msg.data.code)  # aiohttp closed it (1009 for size)
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
        """Welcome the client and hand it what waited; return the rooms to leave."""
        s, node = self.node.settings, self.node
        heartbeat = int(s.heartbeat) if float(s.heartbeat).is_integer() else s.heartbeat
        welcome = p.welcome(self.peer, s.node_id, node.ice_servers(self.peer), heartbeat, attached.resumed,
                            attached.seq)
        frames, revoked = self.session.attached(attached, welcome, time.monotonic())
        node.metrics.connects.labels(str(attached.resumed).lower()).inc()
        node.metrics.replayed.inc(len(attached.replay))
        if frames:
            node.metrics.out("welcome")
            node.metrics.tally_out["relayed"] += len(frames) - 1
            for frame in frames:
                self._write(frame)
        if self.identity.expires is not None:
            node.expiries.add(self, self.identity.expires)
        return revoked

    async def _revoke(self, rooms: tuple[str, ...]) -> None:
        """Leave `rooms` (the others get `peer-left`) and tell this client with `left`."""
        for room in rooms:
            try:
                await self.node.bus.leave(self.peer, room, epoch=self.session.epoch)
            except BusUnavailable:
                log.warning("bus unavailable while taking %s out of a room its token no longer grants", self.peer)
                self.close(CloseCode.INTERNAL, "cluster unavailable; reconnect later")
                return
            self._reply(core.Reply(p.left(room), "left"))

    def _start_close(self, closing: Closing | None) -> None:
        if closing is not None:
            self._closer = asyncio.ensure_future(self._close_socket(closing))

    async def _close_socket(self, closing: Closing) -> None:
        if closing.after_frame and self.session.handling:
            self._handled = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._handled, timeout=FRAME_WAIT)
        self.session.quiet()
        await self.ws.close(code=closing.code, message=closing.reason.encode())

    async def _finish(self) -> None:
        self.ended = True
        session = self.session
        quota = session.quota(time.monotonic())
        if self.identity.expires is not None and session.epoch:
            self.node.expiries.forget(self)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
        ending = session.end(self.ws.close_code)
        self.node.metrics.closes.labels(close_label(ending.code)).inc()  # (the client picks its code: bounded)
        if session.epoch and ending.replaced:
            await self.node.bus.forget(self.peer, session.epoch)  # the newer connection owns the peer now
        elif session.epoch:
            try:
                await self.node.bus.detach(self.peer, session.epoch, final=ending.final, delivered=ending.delivered,
                                           quota=quota)
            except BusUnavailable:
                log.warning("bus unavailable while detaching %s; its grace runs out on its own", self.peer)
        log.debug("closed %s code=%s final=%s", self.peer, ending.code, ending.final, extra={"peer": self.peer})

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
                    replies = self.session.core.unavailable(effect)
                else:
                    if result.outcome is Outcome.REPLACED:
                        self.replaced()  # a newer connection owns the peer: this one says nothing more
                        continue
                    if result.outcome is Outcome.QUEUED:
                        self.node.metrics.queued.inc()
                    replies = self.session.core.settle(effect, result)
                if not self.node.bus.serving:
                    continue  # the node may not act for the peer any more: the connection is closing
                for reply in replies:
                    self._reply(reply)

    def _bus_call(self, work: core.BusWork) -> Awaitable[Result]:
        """The bus's coroutine for `work` (returned, not awaited here: no coroutine of
        this method's own per message)."""
        bus, peer, epoch = self.node.bus, self.peer, self.session.epoch
        if isinstance(work, core.Send):
            return bus.send(work.to, work.body, origin=(peer, epoch))
        if isinstance(work, core.Broadcast):
            return bus.broadcast(peer, work.room, work.body, epoch=epoch)
        if isinstance(work, p.Join):
            s = self.node.settings
            return bus.join(peer, work.room, room_limit=s.room_limit, rooms_per_peer=s.rooms_per_peer, epoch=epoch)
        return bus.leave(peer, work.room, epoch=epoch)

    # -- writing ---------------------------------------------------------------------
    def _reply(self, reply: core.Reply) -> None:
        m = self.node.metrics
        m.out(reply.kind)
        if reply.code is not None:
            m.error(reply.code)
        self._write(self.session.reply(reply.frame))

    def _writable(self) -> asyncio.Transport | None:
        """The transport if it still takes writes (None before the upgrade, when the session
        writes nothing yet); a closing one the session learns is gone, so it produces no
        frame and counts no seq as written."""
        transport = self._transport
        if transport is not None and transport.is_closing():
            self.session.socket_gone()
            return None
        return transport

    def _write(self, frame: bytes | None) -> None:
        """Write a frame the session produced, if any and if the socket still takes it."""
        if frame is not None and (transport := self._writable()) is not None:
            self._send(transport, frame)

    def _send(self, transport: asyncio.Transport, frame: bytes) -> None:
        """Write to an open transport; past the send buffer, the session cuts the client off
        (a slow consumer)."""
        transport.write(frame)
        if transport.get_write_buffer_size() > self._send_buffer:
            self.node.metrics.slow_consumers.inc()
            self._start_close(self.session.overflowed())
