"""Process-level tuning in signaling/server.py."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import uvloop
from aiohttp import web

from signaling.server import skip_redundant_nodelay


async def _nodelay_seen_by_handler() -> int:
    async def handler(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket")
        return web.Response(text=str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
            return int(await r.text())
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_accepted_connections_keep_tcp_nodelay_without_aiohttps_own_call(loop_factory):
    skip_redundant_nodelay()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(_nodelay_seen_by_handler()) == 1  # small frames go out at once
