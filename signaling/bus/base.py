"""The `Bus`: how a node reaches peers wherever they are connected.

Contract (every implementation; tests/contract runs one suite over all of them):

- **Ownership.** `attach` claims a peer id cluster-wide for one connection and returns
  its `epoch`. The latest attach wins: the previous connection's mailbox gets
  `replaced()` and receives nothing more; a `detach` with a stale epoch does nothing.
- **Delivery.** `send` / `broadcast` / room events put the message in each recipient's
  inbox under a new `seq` (increasing per recipient) *before* returning; the result
  says `DELIVERED` (recipient connected: its mailbox gets `deliver(seq, body)`),
  `QUEUED` (recipient reconnecting: it gets the message when it attaches again within
  the grace) or `NO_PEER` (nobody has that id: nothing stored). An answer other than
  `NO_PEER`/`NOT_IN_ROOM` is a promise: the message reaches the recipient if it is
  connected or resumes within its grace. Messages from one sender to one recipient
  keep their order. A mailbox may see a seq twice after a resume; it drops seqs it
  has already passed (the session does).
- **Grace.** `detach(final=False)` keeps the peer, its rooms and its inbox for the
  grace period; `attach` within it (with `resume`) replays the inbox. When the grace
  runs out, or on `detach(final=True)`, the peer leaves every room (`peer-left` to the
  others) and its inbox is dropped.
- **Fencing.** `send` / `broadcast` / `join` / `leave` made for a connection name it
  (`origin` / `epoch`): a connection that no longer owns its peer id changes nothing;
  its sends answer `REPLACED` when a newer connection owns the id.
- **Failure.** An operation that cannot reach the cluster raises `BusUnavailable`
  and has no effect; `ready` is False until it can again. A send whose outcome cannot
  be known is never answered `BusUnavailable`: the bus tries it again until it knows,
  or raises `LeaseLost` (the node closes the connection without an answer).
- **Serving.** A node may act for its connections only while `serving` (on the Redis
  bus: while it holds its lease); when that ends every mailbox gets `fenced()`.
"""

from __future__ import annotations

import abc
from typing import Protocol

from ..outcome import Attached, Result
from ..quota import Snapshot


class BusUnavailable(Exception):
    """The bus cannot route right now (its backend is unreachable). Nothing was done."""


class LeaseLost(BusUnavailable):
    """This node may not serve any more (its lease ran out); what was under way may or
    may not have happened, so the connection gets no answer: it is being closed."""


class AttachRefused(Exception):
    """An attach that must not take the peer: `newer` when a connection whose handshake
    began later owns it, else the handshake took too long (its client has given up)."""

    def __init__(self, newer: bool) -> None:
        super().__init__("a newer connection owns this peer" if newer else "the handshake took too long")
        self.newer = newer


class Mailbox(Protocol):
    """A connection on this node, as the bus sees it. Both calls must not block."""

    def deliver(self, seq: str, body: bytes) -> None: ...

    def replaced(self) -> None: ...

    def lost(self) -> None:
        """The bus missed deliveries it cannot recover for this connection (its inbox
        bound was exceeded while the bus was reconnecting), or the connection no longer
        owns its peer in the cluster: close it so the client resumes and learns whether
        it must renegotiate."""

    def fenced(self) -> None:
        """The node lost the right to serve: close at once, write nothing more."""

    def quota(self) -> Snapshot:
        """The peer's quota as this connection has it now (for its successor elsewhere)."""

    def quota_report(self, snapshot: Snapshot, age: float) -> None:
        """What the connection this one replaced had left `age` seconds ago: never more now."""


class Bus(abc.ABC):
    node_id: str

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while the bus can route (its backend is connected)."""

    @property
    def serving(self) -> bool:
        """True while this node may act for its connections (see the module docstring)."""
        return True

    def local_peers(self) -> int:
        """Peers connected to this node."""
        return 0

    def expired_messages(self) -> int:
        """Messages dropped before a reconnecting peer got them (grace ran out, or the bound)."""
        return 0

    async def start(self) -> None:  # noqa: B027 - a hook: a bus with nothing to connect inherits the no-op
        """Connect; called once before the node accepts connections."""

    async def close(self) -> None:  # noqa: B027 - a hook, like start
        """Disconnect and stop background work; called once at shutdown."""

    @abc.abstractmethod
    async def attach(self, peer: str, mailbox: Mailbox, resume: str | None = None, *,
                     started: float | None = None) -> Attached:
        """Make `mailbox` the one connection of `peer`; see the module docstring.

        `started` (time.monotonic()) is when the connection's handshake began: an attach
        from a handshake older than the one that owns the peer, or one that took too long,
        raises AttachRefused."""

    @abc.abstractmethod
    async def detach(self, peer: str, epoch: int, *, final: bool, delivered: str | None = None,
                     quota: Snapshot | None = None) -> None:
        """Connection `epoch` of `peer` ended: for good (`final`) or into the grace.

        `delivered` is the last seq the connection wrote out, so a reconnect without
        `resume=` starts after it. `quota`: what the peer had left, for its next
        connection (`Attached.quota`) on whichever node (final or not).
        """

    async def trim(self, peer: str, epoch: int, seq: str) -> bool:
        """Connection `epoch` of `peer` certainly has every delivery up to `seq` (its
        client's WebSocket answered a ping sent after them): they may leave its inbox. A
        resume from before `seq` then has a gap (resumed: false), as after the bound.
        False if some of them must stay a while yet (ask again later)."""
        return True

    async def forget(self, peer: str, epoch: int) -> None:  # noqa: B027 - a hook: a bus with nothing to drop inherits the no-op
        """Connection `epoch` of `peer` was replaced: it gets nothing more (no detach)."""

    @abc.abstractmethod
    async def send(self, to: str, body: bytes, *, origin: tuple[str, int] | None = None) -> Result:
        """Put `body` in peer `to`'s inbox and deliver it: DELIVERED, QUEUED or NO_PEER
        (REPLACED when `origin`, the sending (peer, epoch), no longer owns its id)."""

    @abc.abstractmethod
    async def broadcast(self, sender: str, room: str, body: bytes, *, epoch: int | None = None) -> Result:
        """`body` to every member of `room` but `sender`: DELIVERED, QUEUED, NOT_IN_ROOM (or REPLACED)."""

    @abc.abstractmethod
    async def join(self, peer: str, room: str, *, room_limit: int, rooms_per_peer: int,
                   epoch: int | None = None) -> Result:
        """OK with `peers` (the others), ROOM_FULL or TOO_MANY_ROOMS; others get `peer-joined`."""

    @abc.abstractmethod
    async def leave(self, peer: str, room: str, *, epoch: int | None = None) -> Result:
        """OK or NOT_IN_ROOM; the others get `peer-left`."""
