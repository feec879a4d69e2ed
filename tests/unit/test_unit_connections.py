"""signaling/connections.py: the count, the capacity and the header deadline, driven through
fake transports and fake aiohttp protocols; then once over real sockets on both event loops."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from signaling.config import ConfigError, Settings, parse_args
from signaling.connections import Connections

DEADLINE = 0.05


class FakeTransport:
    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol, self.state = protocol, "open"

    def close(self) -> None:
        self._end("closed")

    def abort(self) -> None:
        self._end("aborted")

    def _end(self, how: str) -> None:
        if self.state == "open":
            self.state = how
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class FakeHandler:
    """What Connections uses of aiohttp's RequestHandler."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.transport: FakeTransport | None = None
        self._request_count = 0  # request heads parsed (aiohttp's own count)

    def connection_made(self, transport: Any) -> None:
        self.calls.append("made")
        self.transport = transport

    def connection_lost(self, exc: Any) -> None:
        self.calls.append("lost")

    def data_received(self, data: bytes) -> None:
        self.calls.append(f"data {data!r}")

    def eof_received(self) -> None:
        self.calls.append("eof")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def force_close(self) -> None:
        self.calls.append("force_close")
        assert self.transport is not None
        self.transport.close()


class FakeServer:
    """What Connections uses of aiohttp's web.Server: its protocol factory."""

    def __init__(self) -> None:
        self.handlers: list[FakeHandler] = []

    def __call__(self) -> FakeHandler:
        self.handlers.append(FakeHandler())
        return self.handlers[-1]


def guard(limit: int = 10, headroom: int = 0,
          header_timeout: float = DEADLINE) -> tuple[Connections, FakeServer, Any, list[str]]:
    closed: list[str] = []
    connections = Connections(limit, headroom, header_timeout, closed.append)
    server = FakeServer()
    return connections, server, connections.protocol_factory(server), closed


def made(accept: Any) -> tuple[Any, FakeTransport]:
    protocol = accept()
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_connection_counts_from_accept_to_close():
    connections, server, accept, _ = guard()
    protocol = accept()
    assert connections.open == 1  # before it is even made (a TLS handshake counts)
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    transport.close()
    await settle()
    assert connections.open == 0 and server.handlers[0].calls == ["made", "lost"]


async def test_bytes_go_straight_to_aiohttps_protocol():
    _, server, accept, _ = guard()
    protocol, _ = made(accept)
    handler = server.handlers[0]
    assert protocol.data_received == handler.data_received  # no call of ours per chunk
    protocol.data_received(b"GET"), protocol.eof_received(), protocol.pause_writing(), protocol.resume_writing()
    assert handler.calls == ["made", "data b'GET'", "eof", "pause", "resume"]


async def test_over_limit_counts_the_connection_that_asks():
    connections, _, accept, _ = guard(limit=2, headroom=5)
    made(accept), made(accept)
    assert not connections.over_limit  # the second of two allowed asks: fine
    made(accept)
    assert connections.over_limit


async def test_beyond_the_headroom_a_connection_is_closed_at_once_unread():
    connections, server, accept, closed = guard(limit=2, headroom=1)
    for _ in range(3):
        made(accept)
    protocol, transport = made(accept)
    assert transport.state == "aborted" and len(server.handlers) == 3  # no aiohttp protocol made for it
    assert connections.open == 3 and closed == ["overflow"]
    protocol.connection_lost(None)
    assert connections.open == 3


async def test_a_connection_without_a_request_head_is_closed_at_its_deadline():
    connections, server, accept, closed = guard()
    _, transport = made(accept)
    await asyncio.sleep(DEADLINE * 3)
    assert server.handlers[0].calls == ["made", "force_close", "lost"] and transport.state == "closed"
    assert connections.open == 0 and closed == ["header-timeout"]


async def test_a_request_head_in_time_keeps_the_connection_open():
    connections, server, accept, closed = guard()
    made(accept)
    handler = server.handlers[0]
    handler._request_count = 1  # its head parsed, its handler (say a WebSocket) running
    await asyncio.sleep(DEADLINE * 3)
    assert "force_close" not in handler.calls and connections.open == 1 and closed == []


async def test_a_tls_handshake_that_outlasts_the_deadline_stops_counting_and_is_closed_if_it_ends():
    connections, server, accept, closed = guard()
    protocol = accept()  # asyncio is still in the TLS handshake: not made yet
    await asyncio.sleep(DEADLINE * 3)
    assert connections.open == 0 and closed == ["header-timeout"]
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)  # the handshake ended after all: too late
    assert transport.state == "aborted" and server.handlers[0].calls == []
    await settle()
    assert connections.open == 0 and server.handlers[0].calls == []


# -- over real sockets ---------------------------------------------------------------

async def _serve_and_probe() -> dict[str, Any]:
    async def hello(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(msg.data * 2)
            return ws
        return web.Response(text="hello" * 20_000)  # more than one chunk

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/ws", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    connections = Connections(limit=1, headroom=1, header_timeout=0.2)
    assert runner.server is not None
    listener = await asyncio.get_running_loop().create_server(connections.protocol_factory(runner.server),
                                                              "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    seen: dict[str, Any] = {}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HT")
        seen["cut"] = await asyncio.wait_for(reader.read(), 3)  # b"" once the deadline closes it
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as other:
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                seen["body"] = len(await r.read())
            async with other.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                seen["during"] = (connections.open, connections.over_limit)  # the kept-alive one and the WebSocket
                await asyncio.sleep(0.3)  # past the deadline: an upgraded connection is not cut
                await ws.send_str("ab")
                seen["echo"] = (await ws.receive(timeout=3)).data
        writer.close()
    finally:
        listener.close()
        await runner.cleanup()
    await asyncio.sleep(0.05)
    seen["open"] = connections.open
    return seen


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_real_connections_on_both_event_loops(loop_factory):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        seen = runner.run(_serve_and_probe())
    assert seen == {"cut": b"", "body": 100_000, "during": (2, True), "echo": "abab", "open": 0}


# -- settings --------------------------------------------------------------------------

def test_the_settings_and_their_defaults():
    s = parse_args(["--header-timeout", "2.5", "--keepalive-timeout", "7", "--connection-headroom", "0"])
    assert (s.header_timeout, s.keepalive_timeout, s.connection_headroom) == (2.5, 7.0, 0)
    d = Settings().check()
    assert (d.header_timeout, d.keepalive_timeout, d.connection_headroom) == (10.0, 15.0, 100)


@pytest.mark.parametrize("name", ["header_timeout", "keepalive_timeout"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_timeouts_must_be_positive_and_finite(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be positive and finite"):
        Settings(**{name: value}).check()


@pytest.mark.parametrize("value", [-1, float("nan")])
def test_headroom_must_be_zero_or_more(value):
    with pytest.raises(ConfigError, match="--connection-headroom must be zero or more"):
        Settings(connection_headroom=value).check()
