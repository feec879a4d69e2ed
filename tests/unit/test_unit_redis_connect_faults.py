"""Connecting to a Redis that misbehaves: every failure releases its socket, and says so.

A scripted TCP server on 127.0.0.1 stands in for Redis and counts the connections it
holds open: an AUTH refused, a server still LOADING, a handshake never answered, a
connection reset in the middle of a reply. The command pipeline and the pub/sub reader
must each fail the work that waited (a command that never reached Redis as
CommandNotSent, one whose reply was cut as outcome unknown), close the socket at once,
and connect again on the next use, never holding more than one socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from signaling.bus.redis_pipeline import CommandNotSent, Pipeline
from signaling.bus.redis_subscriber import Subscriber
from signaling.bus.redis_url import Endpoint, parse

TIMEOUT = 0.5


class FakeRedis:
    """Answers by `mode`; `open` is how many client sockets it holds right now."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _command(self, reader: asyncio.StreamReader) -> list[bytes] | None:
        line = await reader.readline()
        if not line.startswith(b"*"):
            return None
        args = []
        for _ in range(int(line[1:])):
            await reader.readline()
            args.append((await reader.readline()).rstrip(b"\r\n"))
        return args

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while (command := await self._command(reader)) is not None:
                name = command[0].upper()
                if self.mode == "auth-refused" and name == b"AUTH":
                    writer.write(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
                elif self.mode == "loading":
                    writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                elif self.mode == "silent":
                    continue
                elif self.mode == "reset-mid-reply" and name == b"GET":
                    writer.write(b"$10\r\nhalf")
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()  # RST: linger 0
                    return
                elif name in (b"SUBSCRIBE", b"SSUBSCRIBE"):
                    writer.write(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(command[1]), command[1]))
                elif name == b"PING":
                    writer.write(b"+PONG\r\n")
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
            await reader.read()  # the client closed its side
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def all_closed(self, within: float = 2.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while self.open:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.open} client sockets still open {within}s after the failure")
            await asyncio.sleep(0.01)


def _url(fake: FakeRedis, auth: bool) -> str:
    return f"redis://{'user:secret@' if auth else ''}127.0.0.1:{fake.port}/0"


@pytest.mark.parametrize("mode", ["auth-refused", "loading", "silent"])
async def test_a_failed_handshake_fails_the_command_as_not_sent_and_releases_the_socket(mode):
    fake = await FakeRedis(mode).start()
    target = parse(_url(fake, auth=mode == "auth-refused"))
    pipeline = Pipeline.fixed(Endpoint("127.0.0.1", fake.port), target, {"f" * 40: "return 1"}, timeout=TIMEOUT)
    try:
        for _attempt in range(3):  # each use connects again; none leaves a socket behind
            with pytest.raises(CommandNotSent):
                await asyncio.wait_for(pipeline.call("GET", "k"), 5)
            await fake.all_closed()
        assert fake.accepted == 3 and fake.most_open == 1
    finally:
        await pipeline.close()
        await fake.stop()


async def test_a_reset_in_the_middle_of_a_reply_leaves_the_outcome_unknown_and_reconnects():
    fake = await FakeRedis("reset-mid-reply").start()
    pipeline = Pipeline.fixed(Endpoint("127.0.0.1", fake.port), parse(_url(fake, auth=False)), timeout=TIMEOUT)
    try:
        with pytest.raises(RedisConnectionError) as failure:
            await asyncio.wait_for(pipeline.call("GET", "k"), 5)
        assert not isinstance(failure.value, CommandNotSent)  # it reached Redis: it may have run
        await fake.all_closed()
        assert await asyncio.wait_for(pipeline.call("PING"), 5) == b"PONG"  # a new connection
        assert fake.accepted == 2 and fake.most_open == 1
    finally:
        await pipeline.close()
        await fake.stop()
    await fake.all_closed()


async def test_closing_while_connecting_releases_the_socket():
    fake = await FakeRedis("silent").start()
    pipeline = Pipeline.fixed(Endpoint("127.0.0.1", fake.port), parse(_url(fake, auth=False)), timeout=5.0)
    try:
        waiting = pipeline.call("GET", "k")
        while not fake.accepted:
            await asyncio.sleep(0.01)
        await pipeline.close()
        with pytest.raises(CommandNotSent):
            await waiting
        await fake.all_closed()
    finally:
        await fake.stop()


@pytest.mark.parametrize("mode", ["auth-refused", "loading", "silent"])
async def test_the_pub_sub_reader_never_keeps_a_half_made_connection(mode, monkeypatch):
    from signaling.bus import redis_subscriber

    monkeypatch.setattr(redis_subscriber, "REPLY_TIMEOUT", TIMEOUT)
    fake = await FakeRedis(mode).start()
    endpoint = Endpoint("127.0.0.1", fake.port)

    async def here() -> Endpoint:
        return endpoint

    async def nothing(_: Subscriber) -> None:
        return None

    got: list[bytes] = []
    sub = Subscriber(here, parse(_url(fake, auth=mode == "auth-refused")), name="fake", sharded=False,
                     on_message=lambda channel, data: got.append(data), on_reconnect=nothing)
    sub.channels.add(b"c")
    sub.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while fake.accepted < 3:  # it keeps trying (with back-off), one socket at a time
            assert asyncio.get_running_loop().time() < deadline, f"only {fake.accepted} attempts in 10 s"
            assert not sub.up
            await asyncio.sleep(0.01)
        assert fake.most_open == 1
    finally:
        await sub.close()
    await fake.all_closed()
    await fake.stop()
