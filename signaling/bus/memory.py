"""The embedded single-node bus: the `Directory` state machine plus this node's mailboxes.

Grace expiry runs on one timer, armed for the directory's earliest deadline: a mass
disconnect of n peers costs n heap pushes, not n timers each scanning every peer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..directory import Directory
from ..outcome import Attached, Delivery, Result
from ..quota import Snapshot
from .base import Bus, BusUnavailable, Mailbox


class MemoryBus(Bus):
    def __init__(self, *, node_id: str, grace: float, inbox_limit: int, inbox_bytes: int = 1 << 62,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.directory = Directory(grace=grace, inbox_limit=inbox_limit, inbox_bytes=inbox_bytes)
        self.clock = clock
        self._mailboxes: dict[str, tuple[int, Mailbox]] = {}  # peer id -> (epoch, its connection here)
        self._timer: asyncio.TimerHandle | None = None  # fires at the earliest grace end
        self._timer_at = float("inf")  # the deadline it is armed for

    @property
    def ready(self) -> bool:
        return True

    def local_peers(self) -> int:
        return len(self._mailboxes)

    def expired_messages(self) -> int:
        return self.directory.expired_messages

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")

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
            self._arm()

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

    def _arm(self) -> None:
        """Keep the timer on the earliest deadline; a later one leaves it as it is."""
        deadline = self.directory.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        # 10 ms late: the loop's clock and `self.clock` may disagree by a little
        delay = max(0.0, deadline - self.clock()) + 0.01
        self._timer, self._timer_at = asyncio.get_running_loop().call_later(delay, self._fire), deadline

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        try:
            self._dispatch(self.directory.expire(self.clock()))
        finally:  # a mailbox that raised must not stop the expiry of later deadlines
            self._arm()
