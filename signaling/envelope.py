"""The node-to-node envelope: msgpack on a peer's pub/sub channel.

Envelopes are built inside the Redis scripts (Redis' built-in `cmsgpack`), so that a
delivery is stored and published in one round trip; this module reads them. The
client's JSON travels as the opaque `b` bytes, never decoded on the way.

    {"v": 1, "k": "d", "e": epoch, "s": seq, "b": body, "t": sent_ms}   deliver
    {"v": 1, "k": "r", "e": epoch}                                       replaced
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

VERSION = 1


class EnvelopeError(ValueError):
    """Not an envelope this node understands."""


@dataclass(slots=True)
class Envelope:
    kind: str  # "d": deliver, "r": the connection with epoch `epoch` was replaced
    epoch: int
    seq: str = ""
    body: bytes = b""
    sent_ms: float = 0.0


def pack(env: Envelope) -> bytes:
    """What the scripts build; used by tests and by the bus for its own notices."""
    out = {"v": VERSION, "k": env.kind, "e": env.epoch}
    if env.kind == "d":
        out.update({"s": env.seq, "b": env.body, "t": env.sent_ms})
    return msgpack.packb(out, use_bin_type=False)


def unpack(raw: bytes) -> Envelope:
    try:
        obj = msgpack.unpackb(raw, raw=True)
        version, kind, epoch = obj[b"v"], obj[b"k"], int(obj[b"e"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"not an envelope: {exc}") from None
    if version != VERSION:
        raise EnvelopeError(f"envelope version {version} (this node speaks {VERSION})")
    if kind == b"d":
        return Envelope("d", epoch, obj[b"s"].decode(), obj[b"b"], float(obj.get(b"t", 0)))
    if kind == b"r":
        return Envelope("r", epoch)
    raise EnvelopeError(f"unknown envelope kind {kind!r}")
