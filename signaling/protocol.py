"""The client wire format (docs/PROTOCOL.md): parse frames into messages, encode replies.

`parse()` turns one text frame into a frozen message object or raises `ProtocolError`
carrying the protocol error code; nothing here does I/O. Relayed messages keep the
client's object as it came (minus a client-supplied `from`/`seq`), so the recipient
receives exactly what the sender wrote.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

PEER_ID = re.compile(r"[A-Za-z0-9._\-:@]{1,64}")
MAX_ID_LENGTH = 128  # a receipt id is echoed back; keep it small


class ErrorCode(str, enum.Enum):  # noqa: UP042 - a StrEnum would print differently (str(), f-strings)
    BAD_JSON = "bad-json"
    BAD_MESSAGE = "bad-message"
    UNKNOWN_TYPE = "unknown-type"
    PEER_UNAVAILABLE = "peer-unavailable"
    NOT_IN_ROOM = "not-in-room"
    ROOM_FULL = "room-full"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    DRAINING = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TOKEN_EXPIRED = 4401
    REPLACED = 4409


# relayed type -> its payload field, and whether that field is required
RELAY_TYPES: dict[str, tuple[str, bool]] = {
    "offer": ("offer", True),
    "answer": ("answer", True),
    "candidate": ("candidate", True),
    "bye": ("reason", False),
    "message": ("data", True),
}
CONTROL_TYPES = frozenset({"join", "leave", "ping"})
CLIENT_TYPES = frozenset(RELAY_TYPES) | CONTROL_TYPES

ReceiptId = str | int | None


class ProtocolError(Exception):
    """A client frame the node refuses; `code` is the protocol's error code."""

    def __init__(self, code: ErrorCode, message: str, id: ReceiptId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(slots=True)
class Relay:
    """offer / answer / candidate / bye / message, addressed to one peer or a room."""

    type: str
    to: str | None
    room: str | None
    id: ReceiptId
    body: dict[str, Any]  # the client's object, `from`/`seq` removed
    frame: bytes | None = field(default=None, compare=False)  # the client's text, when it can be relayed as is


@dataclass(slots=True)
class Join:
    room: str
    id: ReceiptId


@dataclass(slots=True)
class Leave:
    room: str
    id: ReceiptId


@dataclass(slots=True)
class Ping:
    id: ReceiptId


ClientMessage = Relay | Join | Leave | Ping


def is_name(value: Any) -> TypeGuard[str]:
    """A valid peer id or room name: 1-64 of `A-Z a-z 0-9 . _ - : @`."""
    return isinstance(value, str) and PEER_ID.fullmatch(value) is not None


_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # digits stay, all else is a space
_TWENTY_DIGITS = b"0" * 20


def loads(frame: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no lone surrogates, nesting at most 1024 deep.

    Raises ValueError. Everything it accepts, `dumps` can encode again, so a relayed
    object reaches its recipient intact. orjson reads integers beyond 64 bits as
    floats; a frame that may hold one is read again, exactly (`_exact`)."""
    raw = _utf8(frame)
    return _exact(raw, orjson.loads(raw))


def _utf8(frame: str | bytes) -> bytes:
    # orjson refuses what this lets through
    return frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame


def _exact(raw: bytes, obj: Any) -> Any:
    """`obj` (orjson's reading of `raw`), or the standard library's exact reading when
    `raw` holds a run of 20 digits (an integer that may be beyond 64 bits; the run is
    found with a byte translation, several times cheaper than a regular expression)."""
    if _TWENTY_DIGITS in raw.translate(_DIGITS):
        try:
            return json.loads(raw)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    return obj


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def receipt_id(obj: dict[str, Any]) -> ReceiptId:
    """The message's `id` if it is a valid receipt id, else None (never echo junk)."""
    value = obj.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_ID_LENGTH):
        return value
    return None


def peek_id(frame: str | bytes) -> ReceiptId:
    """Best-effort receipt id of a frame that will not be processed (rate-limited)."""
    try:
        obj = loads(frame)
    except ValueError:
        return None
    return receipt_id(obj) if isinstance(obj, dict) else None


def parse(frame: str | bytes) -> ClientMessage:
    """One client text frame -> a message, or ProtocolError with the code to answer."""
    raw = _utf8(frame)
    try:
        obj = orjson.loads(raw)
        verbatim = _verbatim(obj)
        # a verbatim relay's values the node reads are strings and types (`to`, `room`, the
        # payload's shape), which orjson reads exactly, and its `id`: a float there may be
        # an integer beyond 64 bits. Anything else is read exactly when it may hold one.
        if not verbatim or type(obj.get("id")) is float:
            obj = _exact(raw, obj)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not a JSON object")
    rid = None
    if obj.get("id") is not None:  # `"id": null` means no receipt
        rid = receipt_id(obj)
        if rid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                f"`id` must be a string (at most {MAX_ID_LENGTH} characters) or an integer")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "`type` must be a string", rid)
    if kind in RELAY_TYPES:
        return _parse_relay(kind, obj, rid, raw if verbatim else None)
    if kind == "ping":
        return Ping(rid)
    if kind in ("join", "leave"):
        room = obj.get("room")
        if not is_name(room):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "`room` must be 1-64 characters of A-Z a-z 0-9 . _ - : @", rid)
        return Join(room, rid) if kind == "join" else Leave(room, rid)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:64]!r}", rid)


def _verbatim(obj: Any) -> bool:
    """A relayed message whose text goes out as it came (with `from` spliced in): one
    that carries no `from` or `seq` of its own to strip."""
    if type(obj) is not dict:
        return False
    kind = obj.get("type")
    return type(kind) is str and kind in RELAY_TYPES and "from" not in obj and "seq" not in obj


def _parse_relay(kind: str, obj: dict[str, Any], rid: ReceiptId, raw: bytes | None) -> Relay:
    """`raw`: the client's text when it is relayed as it came (see `_verbatim`)."""
    to, room = obj.get("to"), obj.get("room")
    if to is not None:
        if room is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "give exactly one of `to` and `room`", rid)
        if not is_name(to):
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                "`to` must be a peer id: 1-64 characters of A-Z a-z 0-9 . _ - : @", rid)
    elif room is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "give exactly one of `to` and `room`", rid)
    elif not is_name(room):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "`room` must be 1-64 characters of A-Z a-z 0-9 . _ - : @", rid)
    field_name, required = RELAY_TYPES[kind]
    if field_name not in obj:
        if required:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"`{kind}` needs `{field_name}`", rid)
    else:
        problem = _check_payload(kind, obj[field_name])
        if problem:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, problem, rid)
    if raw is None:  # it carries a `from`/`seq` of its own: only the server says who sent it and its seq
        obj = {k: v for k, v in obj.items() if k != "from" and k != "seq"}
    return Relay(kind, to, room, rid, obj, raw)


def _check_payload(kind: str, value: Any) -> str | None:
    if kind in ("offer", "answer"):
        # RTCSessionDescriptionInit: {type, sdp}
        if not isinstance(value, dict):
            return f"`{kind}` must be an object (RTCSessionDescriptionInit)"
        if not isinstance(value.get("type", ""), str) or not isinstance(value.get("sdp", ""), str):
            return f"`{kind}.type` and `{kind}.sdp` must be strings"
    elif kind == "candidate":
        # RTCIceCandidateInit, or null for end-of-candidates
        if value is not None and not isinstance(value, dict):
            return "`candidate` must be an object (RTCIceCandidateInit) or null"
        if isinstance(value, dict) and not isinstance(value.get("candidate", ""), str):
            return "`candidate.candidate` must be a string"
    elif kind == "bye":
        if not isinstance(value, str):
            return "`reason` must be a string"
    return None


# -- what the server sends ----------------------------------------------------------


def relayed_body(sender: str, msg: Relay) -> bytes:
    """The frame a recipient gets, before its `seq` is added: the object plus `from`.

    When the client's object holds no `from` or `seq` of its own, its text is relayed
    as it came, with `from` spliced in front (no re-encoding, and big numbers or
    escapes stay exactly as the client wrote them); otherwise it is encoded again
    without them."""
    frame = msg.frame
    if frame is not None:  # `sender` is a checked peer id (auth): nothing in it to escape
        if frame[0] != 0x7B:  # '{' after leading white space
            frame = frame.lstrip()
        return b"".join((b'{"from":"', sender.encode(), b'",', frame[1:]))
    body = dict(msg.body)
    body["from"] = sender
    return stored(dumps(body))


def stored(encoded: bytes) -> bytes:
    """An exact-size copy of orjson's output, for bytes that are kept (an inbox entry):
    orjson hands out a 4 KiB allocation whatever the length."""
    return bytes(memoryview(encoded))


def room_event(kind: str, room: str, peer: str) -> bytes:
    return stored(dumps({"type": kind, "room": room, "peer": peer}))


def with_seq(body: bytes, seq: str) -> bytes:
    """Stamp `seq` into an encoded server object without decoding it again."""
    return b'{"seq":"' + seq.encode() + b'",' + body[1:]  # bodies always hold `type`


def error(code: ErrorCode, message: str, id: ReceiptId = None) -> bytes:
    out: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if id is not None:
        out["id"] = id
    return dumps(out)


def ack(id: ReceiptId, queued: bool = False) -> bytes:
    return dumps({"type": "ack", "id": id, "queued": True} if queued else {"type": "ack", "id": id})


def welcome(peer: str, node: str, ice_servers: list[dict[str, Any]], heartbeat: float, resumed: bool,
            seq: str = "0-0") -> bytes:
    """`seq` (protocol 1.1): the connection's resume point before it has processed anything."""
    return dumps({
        "type": "welcome",
        "peer": peer,
        "node": node,
        "iceServers": ice_servers,
        "heartbeat": heartbeat,
        "resumed": resumed,
        "seq": seq,
    })


def joined(room: str, peers: Sequence[str]) -> bytes:
    return dumps({"type": "joined", "room": room, "peers": peers})


def left(room: str) -> bytes:
    return dumps({"type": "left", "room": room})


PONG = b'{"type":"pong"}'
