"""Who is where: peers, their connection state and inbox, rooms. A pure state machine.

`Directory` is the single-node cluster state that the in-memory bus wraps; the Redis
bus keeps the same state in Redis and must answer every operation the same way (the
contract suite in tests/contract checks both). Time is passed in (`now`, seconds), so
every transition is tested without an event loop.

Peer lifecycle::

    absent --attach--> connected --detach(final=False)--> reconnecting --expire--> absent
                          ^   |                                |
                          |   +--detach(final=True)--> absent   |
                          +-----------------attach-------------+

Ownership: every attach gets a new `epoch`; the highest epoch owns the peer (the later
connection wins). A detach or delivery for an older epoch is ignored.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .inbox import Entry, Inbox, Seq, format_seq, parse_seq
from .outcome import Attached, Delivery, Outcome, Result
from .protocol import room_event


@dataclass
class PeerRecord:
    epoch: int
    node: str
    inbox: Inbox
    connected: bool = True
    deadline: float = 0.0  # when reconnecting: the end of the grace
    delivered: Seq = (0, 0)  # last seq the connection wrote out (a reconnect without `resume=` starts after it)
    rooms: set[str] = field(default_factory=set)
    born: int = 0  # epoch of the attach that created the record: expiry takes peers in this order


class Directory:
    def __init__(self, *, grace: float, inbox_limit: int, inbox_bytes: int = 1 << 62) -> None:
        self.grace = grace
        self.inbox_limit, self.inbox_bytes = inbox_limit, inbox_bytes
        self.peers: dict[str, PeerRecord] = {}  # peer id -> its record while connected or reconnecting
        self.rooms: dict[str, set[str]] = {}  # room name -> member peer ids
        self._epoch = 0
        # a min-heap of (deadline, peer, epoch), one per non-final detach; an entry whose
        # peer has since attached again is stale and skipped when it reaches the top
        self._deadlines: list[tuple[float, str, int]] = []
        self._stale = 0  # stale entries in _deadlines: past half of it, it is rebuilt
        self.expired_messages = 0  # inbox entries dropped before a reconnecting peer got them

    # -- connections ---------------------------------------------------------------
    def attach(self, peer: str, node: str, now: float, resume: str | None = None) -> Attached:
        self._epoch += 1
        record = self.peers.get(peer)
        if record is None:
            record = PeerRecord(self._epoch, node, Inbox(self.inbox_limit, self.inbox_bytes), born=self._epoch)
            record.delivered = record.inbox.last
            self.peers[peer] = record
            return Attached(self._epoch, None, False, [], frozenset(), format_seq(record.inbox.last))
        replaced = record.epoch if record.connected else None
        after = parse_seq(resume) if resume is not None else None
        if after is not None:
            resumed = record.inbox.covers(after)
            start = after if after <= record.inbox.last else record.inbox.last
        else:
            resumed = False
            start = record.delivered if not record.connected else record.inbox.last
        replay = record.inbox.after(start)
        record.epoch, record.node, record.connected, record.deadline = self._epoch, node, True, 0.0
        if replaced is None:  # it was reconnecting: its grace is over
            self._forget_deadline()
        record.delivered = replay[-1].seq if replay else record.inbox.last
        point = max(start, record.inbox.trimmed)  # a resume from here replays exactly what this connection gets
        return Attached(self._epoch, replaced, resumed, [_pair(e) for e in replay], frozenset(record.rooms),
                        format_seq(point))

    def detach(self, peer: str, epoch: int, now: float, *, final: bool, delivered: str | None = None) -> list[Delivery]:
        """The connection `epoch` ended. final: the peer leaves now; else it is reconnecting."""
        record = self.peers.get(peer)
        if record is None or record.epoch != epoch or not record.connected:
            return []
        if final:
            return self._remove(peer, now)
        record.connected = False
        record.deadline = now + self.grace
        heapq.heappush(self._deadlines, (record.deadline, peer, epoch))
        seq = parse_seq(delivered)
        if seq is not None:  # else: the connection wrote nothing beyond what it started with
            record.delivered = min(seq, record.inbox.last)
        return []

    def trim(self, peer: str, epoch: int, seq: str, now: float) -> bool:
        """Connection `epoch` of `peer` has read every delivery up to `seq` (see
        Inbox.trim_through); False if some must stay a while yet."""
        record = self.peers.get(peer)
        point = parse_seq(seq)
        if record is not None and record.epoch == epoch and record.connected and point is not None:
            return record.inbox.trim_through(point, now)
        return True

    def owner(self, peer: str) -> tuple[int, bool] | None:
        """(epoch, connected) of the peer, or None when absent."""
        record = self.peers.get(peer)
        return (record.epoch, record.connected) if record else None

    def expire(self, now: float) -> list[Delivery]:
        """End the grace of every reconnecting peer whose deadline has passed.

        Costs O(k log n) for k due among n entries: only due entries leave the heap."""
        due: list[tuple[int, str]] = []  # (born, peer)
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, peer, epoch = heapq.heappop(heap)
            record = self._live(deadline, peer, epoch)
            if record is None:
                self._stale -= 1
            else:
                due.append((record.born, peer))
        out: list[Delivery] = []
        # in creation order, as a scan of `peers` met them: the order of the deliveries is observable
        for _, peer in sorted(due):
            out += self._remove(peer, now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest grace end among reconnecting peers (None: no peer is reconnecting)."""
        heap = self._deadlines
        while heap and self._live(*heap[0]) is None:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    # -- messages ------------------------------------------------------------------
    def owns(self, sender: tuple[str, int] | None) -> bool:
        """True if `sender` (peer, epoch) is the peer's connected connection (or None: no fence)."""
        if sender is None:
            return True
        record = self.peers.get(sender[0])
        return record is not None and record.epoch == sender[1] and record.connected

    def send(self, to: str, body: bytes, now: float, sender: tuple[str, int] | None = None) -> Result:
        if not self.owns(sender):
            return Result(Outcome.REPLACED)
        record = self.peers.get(to)
        if record is None:
            return Result(Outcome.NO_PEER)
        delivery = self._store(to, record, body, now)
        if delivery is None:
            return Result(Outcome.QUEUED)
        return Result(Outcome.DELIVERED, (delivery,))

    def broadcast(self, sender: str, room: str, body: bytes, now: float, epoch: int | None = None) -> Result:
        if epoch is not None and not self.owns((sender, epoch)):
            return Result(Outcome.REPLACED)
        members = self.rooms.get(room)
        if not members or sender not in members:
            return Result(Outcome.NOT_IN_ROOM)
        deliveries, queued = self._fan_out(sender, members, body, now)
        return Result(Outcome.QUEUED if queued else Outcome.DELIVERED, deliveries)

    # -- rooms ---------------------------------------------------------------------
    def join(self, peer: str, room: str, now: float, *, room_limit: int, rooms_per_peer: int) -> Result:
        record = self.peers.get(peer)
        if record is None:
            return Result(Outcome.NO_PEER)
        members = self.rooms.get(room, set())
        others = sorted(members - {peer})
        if peer in members:  # joining again changes nothing and tells nobody
            return Result(Outcome.OK, peers=others)
        if len(record.rooms) >= rooms_per_peer:
            return Result(Outcome.TOO_MANY_ROOMS)
        if len(members) >= room_limit:
            return Result(Outcome.ROOM_FULL)
        deliveries, _ = self._fan_out(peer, members, room_event("peer-joined", room, peer), now)
        members.add(peer)
        self.rooms[room] = members
        record.rooms.add(room)
        return Result(Outcome.OK, deliveries, others)

    def leave(self, peer: str, room: str, now: float) -> Result:
        members = self.rooms.get(room)
        if not members or peer not in members:
            return Result(Outcome.NOT_IN_ROOM)
        return Result(Outcome.OK, self._leave(peer, room, now))

    def members(self, room: str) -> list[str]:
        return sorted(self.rooms.get(room, ()))

    # -- internals -----------------------------------------------------------------
    def _live(self, deadline: float, peer: str, epoch: int) -> PeerRecord | None:
        """The record a heap entry stands for, if its grace is still running."""
        record = self.peers.get(peer)
        if record is None or record.epoch != epoch or record.connected or record.deadline != deadline:
            return None
        return record

    def _forget_deadline(self) -> None:
        """A reconnecting peer attached again: its heap entry is stale. Rebuilding the heap
        once the stale outnumber the live keeps it within twice the reconnecting peers."""
        self._stale += 1
        if self._stale * 2 > len(self._deadlines):
            self._deadlines = [e for e in self._deadlines if self._live(*e) is not None]
            heapq.heapify(self._deadlines)
            self._stale = 0

    def _store(self, peer: str, record: PeerRecord, body: bytes, now: float) -> Delivery | None:
        seq, dropped = record.inbox.append(body, now)
        if not record.connected:
            # what never reached the peer, and now never will
            self.expired_messages += sum(1 for entry in dropped if entry.seq > record.delivered)
            return None
        return Delivery(peer, record.epoch, format_seq(seq), body)

    def _fan_out(self, sender: str, members: set[str], body: bytes, now: float) -> tuple[list[Delivery], bool]:
        out, queued = [], False
        for member in sorted(members):
            if member == sender:
                continue
            record = self.peers[member]
            delivery = self._store(member, record, body, now)
            if delivery is None:
                queued = True
            else:
                out.append(delivery)
        return out, queued

    def _leave(self, peer: str, room: str, now: float) -> list[Delivery]:
        members = self.rooms[room]
        members.discard(peer)
        self.peers[peer].rooms.discard(room)
        if not members:
            del self.rooms[room]
            return []
        deliveries, _ = self._fan_out(peer, members, room_event("peer-left", room, peer), now)
        return deliveries

    def _remove(self, peer: str, now: float) -> list[Delivery]:
        record = self.peers[peer]
        out: list[Delivery] = []
        for room in sorted(record.rooms):
            out += self._leave(peer, room, now)
        if not record.connected:
            self.expired_messages += sum(1 for e in record.inbox.entries if e.seq > record.delivered)
        del self.peers[peer]
        return out


def _pair(entry: Entry) -> tuple[str, bytes]:
    return format_seq(entry.seq), entry.body
