"""What routing answers: the outcome of a bus operation, the deliveries it made, and what
an attach returns. Shared by the pure core, the directory and every bus, so none of them
depends on another for its types."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .quota import Snapshot


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # in the inbox, and the recipient is connected
    QUEUED = "queued"  # in the inbox; the recipient is reconnecting
    NO_PEER = "no-peer"  # neither connected nor reconnecting: nothing stored
    NOT_IN_ROOM = "not-in-room"
    ROOM_FULL = "room-full"
    TOO_MANY_ROOMS = "too-many-rooms"
    OK = "ok"
    REPLACED = "replaced"  # the sending connection no longer owns its peer id: nothing was done


@dataclass(slots=True)
class Delivery:
    """One message for one connected peer; the bus hands it to that peer's connection."""

    peer: str
    epoch: int
    seq: str
    body: bytes


@dataclass(slots=True)
class Attached:
    epoch: int
    replaced: int | None  # epoch of the connection this one took over, if any
    resumed: bool
    replay: list[tuple[str, bytes]]  # (seq, body) to send before anything newer
    rooms: frozenset[str]
    seq: str = "0-0"  # the connection's resume point: a resume from it replays all it was given
    quota: Snapshot | None = None  # the peer's quota as its last connection left it (a bus that carries it)
    quota_age: float = 0.0  # seconds since that snapshot


@dataclass(slots=True)
class Result:
    outcome: Outcome
    deliveries: Sequence[Delivery] = ()
    peers: Sequence[str] = ()  # join: the others already in the room
