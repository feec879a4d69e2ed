"""The embedded single-node bus: the `Directory` state machine plus this node's mailboxes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Callable

from ..directory import Attached, Delivery, Directory, Result
from ..quota import Snapshot
from .base import Bus, BusUnavailable, Mailbox


class MemoryBus(Bus):
    def __init__(self, *, node_id: str, grace: float, inbox_limit: int, inbox_bytes: int = 1 << 62,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.directory = Directory(grace=grace, inbox_limit=inbox_limit, inbox_bytes=inbox_bytes)
        self.clock = clock
        self._mailboxes: dict[str, tuple[int, Mailbox]] = {}  # peer id -> (epoch, its connection here)
        self._timers: set[asyncio.TimerHandle] = set()  # grace expiry checks

    @property
    def ready(self) -> bool:
        return True

    def local_peers(self) -> int:
        return len(self._mailboxes)

    def expired_messages(self) -> int:
        return self.directory.expired_messages

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def attach(self, peer: str, mailbox: Mailbox, resume: str | None = None, *,
                     started: float | None = None) -> Attached:
        attached = self.directory.attach(peer, self.node_id, self.clock(), resume)
        previous = self._mailboxes.get(peer)
        self._mailboxes[peer] = (attached.epoch, mailbox)
        if previous is not None and previous[1] is not mailbox:
            previous[1].replaced()
        return attached

    async def detach(self, peer: str, epoch: int, *, final: bool, delivered: str | None = None,
                     quota: Snapshot | None = None) -> None:  # (one node: its quota table has it)
        current = self._mailboxes.get(peer)
        if current is not None and current[0] == epoch:
            del self._mailboxes[peer]
        self._dispatch(self.directory.detach(peer, epoch, self.clock(), final=final, delivered=delivered))
        if not final:
            self._expire_later(self.directory.grace)

    async def trim(self, peer: str, epoch: int, seq: str) -> bool:
        return self.directory.trim(peer, epoch, seq, self.clock())

    async def send(self, to: str, body: bytes, *, origin: tuple[str, int] | None = None) -> Result:
        return self._dispatched(self.directory.send(to, body, self.clock(), origin))

    async def broadcast(self, sender: str, room: str, body: bytes, *, epoch: int | None = None) -> Result:
        return self._dispatched(self.directory.broadcast(sender, room, body, self.clock(), epoch))

    async def join(self, peer: str, room: str, *, room_limit: int, rooms_per_peer: int,
                   epoch: int | None = None) -> Result:
        if epoch is not None and not self.directory.owns((peer, epoch)):
            raise BusUnavailable("this connection does not own its peer id")
        return self._dispatched(self.directory.join(peer, room, self.clock(), room_limit=room_limit,
                                                    rooms_per_peer=rooms_per_peer))

    async def leave(self, peer: str, room: str, *, epoch: int | None = None) -> Result:
        if epoch is not None and not self.directory.owns((peer, epoch)):
            raise BusUnavailable("this connection does not own its peer id")
        return self._dispatched(self.directory.leave(peer, room, self.clock()))

    # ------------------------------------------------------------------------------
    def _dispatched(self, result: Result) -> Result:
        self._dispatch(result.deliveries)
        return result

    def _dispatch(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            current = self._mailboxes.get(d.peer)
            if current is not None and current[0] == d.epoch:
                current[1].deliver(d.seq, d.body)

    def _expire_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._dispatch(self.directory.expire(self.clock()))

        timer = loop.call_later(delay + 0.01, fire)
        self._timers.add(timer)
