"""The pipeline's watchdog: a Redis that stops answering is given up on, a slow one is not.

A scripted TCP server on 127.0.0.1 stands in for Redis (no redis-server needed): it
answers `+PONG` to every command after a delay, or never.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from signaling.bus.redis_pipeline import Pipeline
from signaling.bus.redis_url import Endpoint, parse

TIMEOUT = 0.4


async def _server(delay: float | None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = True  # the connection's PING is answered at once: the watchdog is what is tested
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"*"):  # one command (its bulk strings follow)
                    for _ in range(int(line[1:]) * 2):
                        await reader.readline()
                    if handshake:
                        handshake = False
                        writer.write(b"+PONG\r\n")
                    elif delay is not None:
                        await asyncio.sleep(delay)
                        writer.write(b"+PONG\r\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_silent_redis_fails_what_is_in_flight_within_one_and_a_half_timeouts():
    server, port = await _server(delay=None)
    batcher = Pipeline.fixed(Endpoint("127.0.0.1", port), parse("redis://127.0.0.1/0"), timeout=TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(batcher.call("PING"), 5)
        waited = time.monotonic() - started
        assert TIMEOUT <= waited <= 1.5 * TIMEOUT + 0.3
    finally:
        await batcher.close()
        server.close()


async def test_a_slow_redis_that_keeps_answering_is_kept():
    server, port = await _server(delay=0.6 * TIMEOUT)  # each reply slower than half the timeout
    batcher = Pipeline.fixed(Endpoint("127.0.0.1", port), parse("redis://127.0.0.1/0"), timeout=TIMEOUT)
    try:
        for _ in range(6):  # about 1.5 s of back-to-back slow replies: several watchdog checks
            assert await asyncio.wait_for(batcher.call("PING"), 5) == b"PONG"
    finally:
        await batcher.close()
        server.close()
