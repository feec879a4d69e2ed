"""RESP on raw asyncio connections: what the command pipeline and the pub/sub reader share.

Both talk to Redis through an `asyncio.Protocol` of their own with a hiredis reader
(replies parsed in C as bytes arrive, no task per reply); this module packs commands
and opens those connections.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from .redis_url import Endpoint

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


async def open_connection(endpoint: Endpoint, tls: ssl.SSLContext | None, factory: Callable[[], P]) -> P:
    """Connect (TCP, TLS when `tls`, or a unix socket); the caller bounds the time. A
    connection that fails or is cancelled part-way is closed by asyncio itself."""
    loop = asyncio.get_running_loop()
    if endpoint.path:
        _, protocol = await loop.create_unix_connection(factory, endpoint.path, ssl=tls,
                                                        server_hostname="localhost" if tls else None)
    else:
        _, protocol = await loop.create_connection(factory, endpoint.host, endpoint.port, ssl=tls)
    return protocol


def retrieved(future: asyncio.Future[Any]) -> None:
    """Done-callback for a future whose failure is reported elsewhere (or not at all): read
    its exception so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def copy_outcome(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """Done-callback: `target` gets `source`'s result, exception or cancellation (unless it
    is settled already)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
