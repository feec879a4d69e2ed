"""The pure core of one connected peer: frames in, effects out. No sockets, no clock.

`Peer.receive(frame, now)` validates a client frame, applies the connection's rate
limit, abuse meter and room grants, and returns what must happen as frozen effects:
`Reply` (a frame back to this client), `Send` / `Broadcast` / `protocol.Join` /
`protocol.Leave` (work for the bus), `Close`. The session performs them and feeds each bus
answer back through `Peer.settle(effect, result)`, which returns the receipt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import protocol as p
from .outcome import Outcome, Result
from .protocol import CloseCode, ErrorCode, ProtocolError, ReceiptId
from .quota import Limits, Quota

# -- effects ------------------------------------------------------------------------
# Value objects made per message: slotted, and not frozen only because a frozen
# dataclass's __init__ costs three times as much. Treat them as immutable.


@dataclass(slots=True)
class Reply:
    frame: bytes
    kind: str  # "ack", "error", "pong", "joined", "left": for metrics
    code: str | None = None  # the error code of an error


@dataclass(slots=True)
class Send:
    to: str
    body: bytes  # what the recipient gets, before its seq
    id: ReceiptId
    type: str


@dataclass(slots=True)
class Broadcast:
    room: str
    body: bytes
    id: ReceiptId
    type: str


@dataclass(slots=True)
class Close:
    code: CloseCode
    reason: str


# a join or leave the core accepts goes to the bus as it was parsed (protocol.Join / Leave)
Effect = Reply | Send | Broadcast | p.Join | p.Leave | Close
BusWork = Send | Broadcast | p.Join | p.Leave

# -- limits -------------------------------------------------------------------------


def room_allowed(grants: Iterable[str] | None, room: str) -> bool:
    """`grants` from the token's `rooms` claim (None: any room); `x*` is a prefix."""
    if grants is None:
        return True
    for grant in grants:
        if grant == room or (grant.endswith("*") and room.startswith(grant[:-1])):
            return True
    return False


# -- the peer -----------------------------------------------------------------------

class Peer:
    __slots__ = ("peer", "grants", "rooms", "quota", "kind")  # one per connection

    def __init__(self, peer: str, now: float, *, limits: Limits = Limits(), quota: Quota | None = None,
                 grants: Iterable[str] | None = None, rooms: Iterable[str] = ()) -> None:
        """`quota`: the peer's, shared with its other connections (else a new one from `limits`)."""
        self.peer = peer
        self.grants = None if grants is None else tuple(grants)
        # rooms this peer is in (the bus is the authority); a frozenset replaced on change:
        # most connections are in none, and the empty one is shared (a set is 216 bytes)
        self.rooms: frozenset[str] = frozenset(rooms)
        self.quota = quota if quota is not None else Quota(limits, now)
        self.kind = ""  # type of the last frame received ("invalid" when it had none): for metrics

    def receive(self, frame: str | bytes, now: float, *, binary: bool = False) -> Sequence[Effect]:
        """One client frame -> effects. Never raises on bad input."""
        self.kind = "invalid"
        if not self.quota.take(len(frame), now):
            return self._reject(ErrorCode.RATE_LIMITED, "over the message or byte rate; the message was dropped",
                                None if binary else p.peek_id(frame), now)
        if binary:
            return self._reject(ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text", None, now)
        try:
            msg = p.parse(frame)
        except ProtocolError as exc:
            return self._reject(exc.code, exc.message, exc.id, now)
        self.kind = msg.type if isinstance(msg, p.Relay) else type(msg).__name__.lower()
        if isinstance(msg, p.Relay):
            body = p.relayed_body(self.peer, msg)
            if msg.to is not None:
                return [Send(msg.to, body, msg.id, msg.type)]
            if msg.room not in self.rooms:
                return [self._error(ErrorCode.NOT_IN_ROOM, f"not in room {msg.room!r}", msg.id)]
            return [Broadcast(msg.room, body, msg.id, msg.type)]
        if isinstance(msg, p.Ping):
            return self._with_ack([Reply(p.PONG, "pong")], msg.id)
        if isinstance(msg, p.Join):
            if not room_allowed(self.grants, msg.room):
                return [self._error(ErrorCode.FORBIDDEN, f"the token does not allow room {msg.room!r}", msg.id)]
            return [msg]
        if msg.room not in self.rooms:  # Leave
            return [self._error(ErrorCode.NOT_IN_ROOM, f"not in room {msg.room!r}", msg.id)]
        return [msg]

    def settle(self, work: BusWork, result: Result) -> list[Reply]:
        """The bus's answer to `work` -> the replies this client gets."""
        outcome = result.outcome
        if outcome is Outcome.DELIVERED and work.id is None:
            return []  # a relay delivered without a receipt asked for: the common case, first
        if isinstance(work, (Send, Broadcast)):
            if outcome in (Outcome.DELIVERED, Outcome.QUEUED):
                return [Reply(p.ack(work.id, outcome is Outcome.QUEUED), "ack")] if work.id is not None else []
            if isinstance(work, Send):  # NO_PEER, a send's one other answer
                return [self._error(ErrorCode.PEER_UNAVAILABLE, f"peer {work.to!r} is not connected", work.id)]
            self.rooms = self.rooms - {work.room}  # NOT_IN_ROOM, a broadcast's one other answer
            return [self._error(ErrorCode.NOT_IN_ROOM, f"not in room {work.room!r}", work.id)]
        if isinstance(work, p.Join):
            if outcome is Outcome.OK:
                self.rooms = self.rooms | {work.room}
                return self._with_ack([Reply(p.joined(work.room, result.peers), "joined")], work.id)
            if outcome is Outcome.ROOM_FULL:
                return [self._error(ErrorCode.ROOM_FULL, f"room {work.room!r} is full", work.id)]
            return [self._error(ErrorCode.FORBIDDEN, "in too many rooms; leave one first", work.id)]
        # a leave
        self.rooms = self.rooms - {work.room}
        if outcome is Outcome.OK:
            return self._with_ack([Reply(p.left(work.room), "left")], work.id)
        return [self._error(ErrorCode.NOT_IN_ROOM, f"not in room {work.room!r}", work.id)]

    def unavailable(self, work: BusWork) -> list[Reply]:
        return [self._error(ErrorCode.UNAVAILABLE, "the cluster cannot route right now; retry later", work.id)]

    # ------------------------------------------------------------------------------
    def _error(self, code: ErrorCode, message: str, id: ReceiptId) -> Reply:
        return Reply(p.error(code, message, id), "error", code.value)

    def _reject(self, code: ErrorCode, message: str, id: ReceiptId, now: float) -> list[Effect]:
        """A frame the client should not have sent (invalid or over the rate): a strike."""
        out: list[Effect] = [self._error(code, message, id)]
        if self.quota.strike(now):
            out.append(Close(CloseCode.POLICY, "too many rejected messages"))
        return out

    @staticmethod
    def _with_ack(replies: list[Reply], id: ReceiptId) -> list[Reply]:
        if id is not None:
            replies.append(Reply(p.ack(id), "ack"))
        return replies
