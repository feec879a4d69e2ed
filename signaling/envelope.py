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
    packed: bytes = msgpack.packb(out, use_bin_type=False)
    return packed


def unpack(raw: bytes) -> Envelope:
    """The envelope in `raw`; EnvelopeError for anything else (never another exception)."""
    try:
        obj = msgpack.unpackb(raw, raw=True)
        version, kind, epoch = obj[b"v"], obj[b"k"], int(obj[b"e"])
        if version != VERSION:
            raise EnvelopeError(f"envelope version {version} (this node speaks {VERSION})")
        if kind == b"d":
            body = obj[b"b"]
            if type(body) is not bytes:
                raise TypeError(f"body is a {type(body).__name__}")
            return Envelope("d", epoch, obj[b"s"].decode(), body, float(obj.get(b"t", 0)))
        if kind == b"r":
            return Envelope("r", epoch, successor=int(obj.get(b"n", 0)))
        if kind == b"q":
            quota = obj[b"q"]
            if type(quota) is not bytes:
                raise TypeError(f"quota is a {type(quota).__name__}")
            return Envelope("q", epoch, body=quota, sent_ms=float(obj[b"t"]))
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"not an envelope: {exc!r}") from None
    raise EnvelopeError(f"unknown envelope kind {kind!r}")
