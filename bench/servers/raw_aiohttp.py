"""A raw aiohttp relay by peer id: the Python ceiling for one hop.

Connect to /?peer=ID; a text frame {"to": ID, ...} is forwarded unchanged to that peer.
Sends {"type":"welcome"} on connect (the load generator times "connected until welcome").

    python bench/servers/raw_aiohttp.py --port 9000 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import WSMsgType, web

try:
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency of the project
    from json import loads

WELCOME = '{"type":"welcome"}'


def make_app() -> web.Application:
    peers: dict[str, web.WebSocketResponse] = {}  # peer id -> its socket

    async def handler(request: web.Request) -> web.StreamResponse:
        peer = request.query.get("peer")
        if not peer:
            raise web.HTTPBadRequest(text="peer required")
        ws = web.WebSocketResponse(autoping=True, compress=False)
        await ws.prepare(request)
        peers[peer] = ws
        await ws.send_str(WELCOME)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                try:
                    to = loads(msg.data)["to"]
                except (ValueError, KeyError, TypeError):
                    continue
                target = peers.get(to)
                if target is not None and not target.closed:
                    await target.send_str(msg.data)
        finally:
            if peers.get(peer) is ws:
                del peers[peer]
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def serve(host: str, port: int, backlog: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=backlog, reuse_address=True).start()
    print(f"raw-aiohttp listening on {host}:{port} ({type(asyncio.get_running_loop()).__module__})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (fails if it is not installed)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.run(serve(args.host, args.port, args.backlog))
    else:
        asyncio.run(serve(args.host, args.port, args.backlog))


if __name__ == "__main__":
    main()
