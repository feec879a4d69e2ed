"""The node-to-node envelope: msgpack on a peer's pub/sub channel.

Envelopes are built inside the Redis scripts (Redis' built-in `cmsgpack`), so that a
delivery is stored and published in one round trip; this module reads them. The
client's JSON travels as the opaque `b` bytes, never decoded on the way.

    {"v": 1, "k": "d", "e": epoch, "s": seq, "b": body, "t": sent_ms}   deliver
    {"v": 1, "k": "r", "e": epoch, "n": new epoch}                       replaced (by connection n)
    {"v": 1, "k": "q", "e": epoch, "q": quota, "t": at_ms}              quota the replaced one left
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

VERSION = 1


class EnvelopeError(ValueError):
    """Not an envelope this node understands."""


@dataclass(slots=True)
class Envelope:
    kind: str  # "d": deliver, "r": the connection with epoch `epoch` was replaced, "q": a quota for it
    epoch: int
    seq: str = ""
    body: bytes = b""  # "q": the packed quota.Snapshot
    sent_ms: float = 0.0  # "d": when it was published, "q": when the quota was read (Redis's clock)
    successor: int = 0  # "r": the epoch of the connection that replaced it (0: unknown)


def pack(env: Envelope) -> bytes:
    """What the scripts build; used by tests and by the bus for its own notices."""
    out = {"v": VERSION, "k": env.kind, "e": env.epoch}
    if env.kind == "d":
        out.update({"s": env.seq, "b": env.body, "t": env.sent_ms})
    elif env.kind == "q":
        out.update({"q": env.body, "t": env.sent_ms})
    elif env.successor:
        out["n"] = env.successor
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
        return Envelope("r", epoch, successor=int(obj.get(b"n", 0)))
    if kind == b"q":
        return Envelope("q", epoch, body=obj[b"q"], sent_ms=float(obj[b"t"]))
    raise EnvelopeError(f"unknown envelope kind {kind!r}")
