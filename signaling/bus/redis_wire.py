"""RESP on raw asyncio connections: what the batcher and the pub/sub reader share.

Both talk to Redis through an `asyncio.Protocol` of their own with a hiredis reader
(replies parsed in C as bytes arrive, no task per reply); this module packs commands
and opens those connections from the options of a `redis://` URL.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable, TypeVar

from redis.asyncio.connection import parse_url

P = TypeVar("P", bound=asyncio.Protocol)


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulk(args)


def bulk(args: tuple[Any, ...]) -> bytes:
    """Arguments as RESP bulk strings, without the array header: the pieces a hot path
    caches and joins into a command of its own (see RedisBus._packed_send)."""
    out = []
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif not isinstance(arg, (bytes, bytearray)):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def options(url: str) -> dict[str, Any]:
    """host/port (or a unix path), credentials, db and TLS from a redis:// URL."""
    return parse_url(url)


def auth_command(o: dict[str, Any]) -> tuple[Any, ...] | None:
    if not o.get("password"):
        return None
    return ("AUTH", o["username"], o["password"]) if o.get("username") else ("AUTH", o["password"])


async def open_connection(o: dict[str, Any], factory: Callable[[], P]) -> P:
    """Connect (TCP, TLS for rediss://, or a unix socket); the caller bounds the time."""
    loop = asyncio.get_running_loop()
    if o.get("path"):
        _, protocol = await loop.create_unix_connection(factory, o["path"])
    else:
        cls = o.get("connection_class")
        context = ssl.create_default_context() if cls is not None and cls.__name__ == "SSLConnection" else None
        _, protocol = await loop.create_connection(factory, o.get("host", "localhost"), o.get("port", 6379),
                                                   ssl=context)
    return protocol


def retrieved(future: asyncio.Future[Any]) -> None:
    """Done-callback for a future whose failure is reported elsewhere (or not at all): read
    its exception so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
