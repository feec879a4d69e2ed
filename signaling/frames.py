"""WebSocket frames as a server writes them (RFC 6455 §5.2): bytes only, no socket.

Server frames are never masked, and ours never compressed, so a frame is a header and
the payload; the session writes them to the transport itself (a text frame a delivery).
"""

from __future__ import annotations

import struct

TEXT, PING, PONG = 0x1, 0x9, 0xA
_FIN = 0x80


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed text frame carrying `payload` (UTF-8 already)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN | TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN | TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN | TEXT, 127, n) + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    """A ping or pong: at most 125 bytes of payload (§5.5)."""
    if len(payload) > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    return bytes((_FIN | opcode, len(payload))) + payload


PING_FRAME = control_frame(PING, b"")
