"""One connected peer's WebSocket session as a protocol object: events in, bytes and
decisions out. No socket, no clock, no bus, no awaiting: `PeerSocket` (peer_socket.py)
moves the bytes and awaits; this module decides, in the manner of h11 and
python-websockets' `protocol.py`.

States, and every transition (each has a unit test in tests/unit/test_unit_session.py):

    ATTACHING --attached()--------------> OPEN       welcome, then what waited
    ATTACHING --close()-----------------> CLOSING    (a refused attach)
    OPEN      --close()-----------------> CLOSING    the frame being handled still gets its answer
    OPEN      --overflowed(), fenced()--> QUIET      cut off: not one more byte
    OPEN      --tick() unanswered-------> QUIET      (Action.ABORT: the socket is dropped)
    CLOSING   --quiet()-----------------> QUIET      the close frame is next
    any       --socket_gone()-----------> QUIET      the transport closed under us
    any       --end()-------------------> CLOSED     detach (or forget) the peer

Frames are written in the order they arise, so a delivery seen in ATTACHING waits for
the welcome. Liveness is a second, smaller machine driven by `tick()` every half
heartbeat: HEARD (a frame arrived since the last tick) -> SILENT (a ping goes out) ->
PINGED (unanswered at the next tick: Action.ABORT).

How a connection ends decides what happens to the peer: the client's own close frame,
1008 and 1009 end it for good (it leaves its rooms); every other end (network loss,
missed heartbeats, 1001 drain, 1011, 4401) keeps it reconnecting for the grace; 4409
hands it to the newer connection.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from . import core
from . import protocol as p
from .frames import PING, PING_FRAME, PONG, control_frame, text_frame
from .inbox import ZERO, seq_key
from .outcome import Attached
from .protocol import CloseCode
from .quota import Quota, Snapshot

FINAL_CLOSES = frozenset({CloseCode.POLICY, CloseCode.TOO_BIG})


class State(enum.Enum):
    ATTACHING = "attaching"  # upgraded; the bus has not answered the attach yet
    OPEN = "open"  # welcomed: frames both ways
    CLOSING = "closing"  # a close code is chosen; no new client frame is handled
    QUIET = "quiet"  # nothing more is written: the close frame is next, or the socket is gone
    CLOSED = "closed"  # over: the peer is detached (or forgotten)


class Liveness(enum.Enum):
    HEARD = "heard"  # a frame arrived since the last tick
    SILENT = "silent"  # none since the last tick
    PINGED = "pinged"  # a ping went out at the last tick and nothing has been heard since


class Action(enum.Enum):
    ABORT = "abort"  # drop the socket without a close handshake (it stopped answering)


@dataclass(frozen=True, slots=True)
class Closing:
    """Start the close handshake with `code`; `after_frame`: first let the client frame
    being handled finish (its receipt goes out: a delivered message is never left
    without its ack)."""

    code: CloseCode
    reason: str
    after_frame: bool


@dataclass(frozen=True, slots=True)
class Ending:
    """What the peer's end means for the bus."""

    code: CloseCode | int | None
    final: bool  # it leaves its rooms now; else it is reconnecting for the grace
    replaced: bool  # a newer connection owns the peer: forget this one, do not detach
    delivered: str | None  # the last seq written to the client


def close_code(code: int) -> CloseCode | int:
    try:
        return CloseCode(code)
    except ValueError:
        return code


class Session:
    __slots__ = ("peer", "core", "state", "liveness", "epoch", "written", "handling", "close_code", "_client_closed",
                 "_pending", "_last_seq", "_ping_seq", "_trimmed_to", "_spent", "__weakref__")  # one per connection

    def __init__(self, peer: str, quota: Quota, now: float, grants: Iterable[str] | None = None) -> None:
        self.peer = peer
        self.core = core.Peer(peer, now, grants=grants, quota=quota)
        self.state = State.ATTACHING
        self.liveness = Liveness.HEARD
        self.epoch = 0  # the bus's fence for this connection, once attached
        self.written: str | None = None  # the last seq written to the client
        self.handling = False  # a client frame is being handled (its bus work awaited)
        self.close_code: CloseCode | int | None = None  # an int: aiohttp's own close, with a code we do not name
        self._client_closed = False  # the client said goodbye first
        self._pending: list[tuple[str, bytes]] | None = None  # deliveries that arrived before the welcome
        self._last_seq = ZERO  # highest seq written: a later duplicate is dropped
        self._ping_seq: str | None = None  # the seq the ping out now confirms, when its pong comes
        self._trimmed_to: str | None = None  # the inbox has let go of everything up to it
        self._spent = (0.0, 0.0)  # the quota's spending when this connection attached (see quota_report)

    # -- the bus's side --------------------------------------------------------------
    def attached(self, attached: Attached, welcome: bytes, now: float) -> tuple[list[bytes], tuple[str, ...]]:
        """ATTACHING -> OPEN: the frames to write (`welcome`, then what waited in the inbox
        and what arrived meanwhile), and the rooms the peer kept that its token no longer
        grants (a resume, reconnect or takeover with a narrower token): leave them."""
        self.epoch = attached.epoch  # (even if closed meanwhile: the end detaches it)
        quota = self.core.quota
        if attached.quota is not None:
            quota.restrict(attached.quota, attached.quota_age, now)
        self._spent = quota.spent()
        if self.state is not State.ATTACHING:
            return [], ()  # closed while the bus answered
        revoked: tuple[str, ...] = ()
        if attached.rooms:
            revoked = tuple(sorted(r for r in attached.rooms if not core.room_allowed(self.core.grants, r)))
            self.core.rooms = self.core.rooms | (attached.rooms - set(revoked))
        self.state = State.OPEN
        frames = [text_frame(welcome)]
        for seq, body in attached.replay + (self._pending or []):
            frame = self.deliver(seq, body)
            if frame is not None:
                frames.append(frame)
        self._pending = None
        return frames, revoked

    def deliver(self, seq: str, body: bytes) -> bytes | None:
        """A message for the client -> its frame, or None: it waits for the welcome, or the
        connection no longer writes (it stays in the inbox for the next one), or the client
        has it already (an inbox replay and a live delivery overlapped)."""
        state = self.state
        if state is State.ATTACHING:
            if self._pending is None:
                self._pending = []
            self._pending.append((seq, body))
            return None
        if state is not State.OPEN and state is not State.CLOSING:
            return None
        key = seq_key(seq)
        if key <= self._last_seq:
            return None
        self._last_seq = key
        self.written = seq
        return text_frame(p.with_seq(body, seq))

    def reply(self, frame: bytes) -> bytes | None:
        """A frame of our own for the client (a receipt, an error, `left`), unless nothing
        more is written."""
        return text_frame(frame) if self.state is State.OPEN or self.state is State.CLOSING else None

    def fenced(self) -> Closing | None:
        """This node may no longer act for the peer (it lost its lease): not one more frame."""
        self.socket_gone()
        return self.close(CloseCode.DRAINING, "this node lost its place in the cluster; reconnect")

    def quota(self, now: float) -> Snapshot:
        return self.core.quota.snapshot(now)

    def quota_report(self, snapshot: Snapshot, age: float, now: float) -> None:
        """What the peer's quota had left on the connection this one replaced (another node)."""
        quota = self.core.quota
        spent_m, spent_b = quota.spent()
        quota.restrict(snapshot, age, now, (spent_m - self._spent[0], spent_b - self._spent[1]))

    # -- the client's side -----------------------------------------------------------
    def received(self) -> bool:
        """Something arrived (a data, control or close frame, or the socket's end): True if
        the connection reads it. Closing, a frame not yet handled stays unhandled (and
        unacked), never half-done."""
        self.liveness = Liveness.HEARD
        return self.state is State.OPEN

    def frame(self) -> None:
        """A data frame is being handled, until `handled()`."""
        self.handling = True

    def handled(self) -> bool:
        """The frame's effects are all done: True if the connection reads on."""
        self.handling = False
        return self.state is State.OPEN

    def ping(self, payload: bytes) -> bytes | None:
        """The client pinged: the pong echoing its payload."""
        return control_frame(PONG, payload) if self.state is State.OPEN or self.state is State.CLOSING else None

    def pong(self, payload: bytes) -> str | None:
        """The client answered a ping: the seq whose inbox entries it has certainly read (the
        bus may let them go, then `trimmed()`), or None."""
        seq = self._ping_seq
        if seq is None or payload != seq.encode():
            return None
        self._ping_seq = None
        return seq

    def trimmed(self, seq: str) -> None:
        self._trimmed_to = seq  # (else the next tick pings, and trims, again)

    def client_closed(self) -> None:
        """The client's close frame: the peer ends for good."""
        if self.close_code is None:
            self._client_closed = True

    def closed_by_server(self, code: int) -> None:
        """aiohttp closed the connection itself (1009: a frame over the size limit)."""
        if self.close_code is None:
            self.close_code = close_code(code)

    # -- the node's side -------------------------------------------------------------
    def close(self, code: CloseCode, reason: str) -> Closing | None:
        """Close with `code`: the handshake to start, or None if one has started already."""
        if self.close_code is not None or self.state is State.CLOSED:
            return None
        self.close_code = code
        # a slow consumer (1011) or a fenced node is cut off at once; otherwise the frame
        # being handled finishes first
        after = self.handling and code is not CloseCode.INTERNAL and self.state is not State.QUIET
        if self.state is not State.QUIET:
            self.state = State.CLOSING
        return Closing(code, reason, after)

    def overflowed(self) -> Closing | None:
        """The client left more unread than the send buffer allows: closed with 1011 (its peer
        resumes from the inbox, so nothing is lost and the node's memory stays bounded)."""
        self.socket_gone()
        return self.close(CloseCode.INTERNAL, "slow consumer: resume to get the rest")

    def quiet(self) -> None:
        """CLOSING -> QUIET: the close frame goes out next."""
        if self.state is not State.CLOSED:
            self.state = State.QUIET

    def socket_gone(self) -> None:
        """The transport is closing or closed: nothing can be written any more."""
        if self.state is not State.CLOSED:
            self.state = State.QUIET

    def tick(self) -> bytes | Action | None:
        """Half a heartbeat has passed: a connection heard from since the last tick is fine;
        one that was not gets a ping; one that did not answer that ping by the next tick is
        dropped (it vanished: its peer starts the grace). A ping also goes to a connection
        written to since its inbox was last trimmed: its pong, echoing the last seq written,
        lets the inbox go up to there."""
        if self.state is not State.OPEN:
            return None
        if self.liveness is Liveness.PINGED:
            self.state = State.QUIET
            return Action.ABORT
        heard = self.liveness is Liveness.HEARD
        self.liveness = Liveness.SILENT if heard else Liveness.PINGED
        written = self.written
        if written is None or written == self._trimmed_to or self._ping_seq is not None:
            return None if heard else PING_FRAME  # nothing (new) to confirm
        self._ping_seq = written
        return control_frame(PING, written.encode())

    def end(self, socket_code: int | None) -> Ending:
        """-> CLOSED: what the end means for the peer. `socket_code`: the close code the
        WebSocket ended with, when this side chose none."""
        self.state = State.CLOSED
        code = self.close_code if self.close_code is not None else socket_code
        final = self._client_closed or code in FINAL_CLOSES
        return Ending(code, final, code is CloseCode.REPLACED, self.written)
