"""The aiohttp application of one node: /ws, /healthz, /readyz, /metrics, the demo page.

Everything that can refuse a connection does so before the upgrade, with an HTTP
status and a JSON body: 503 while draining, when the node is full or when the bus is
down; 401 for auth; 400 for bad parameters; 426 for a plain HTTP request to /ws.

Behind a proxy the socket's peer is the proxy; `X-Forwarded-For` / `X-Real-IP` name the
client only when that peer is one of `--trusted-proxies` (see proxies.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from . import bus as buses
from .auth import AuthError
from .config import Settings
from .inbox import parse_resume
from .metrics import CONTENT_TYPE, Metrics
from .node import Node
from .peer_socket import PeerSocket
from .proxies import client_address

log = logging.getLogger("signaling.app")
STATIC = Path(__file__).parent / "static"

CLIENT = web.RequestKey("client", str)  # the client's address after trusted proxies (for the logs)


NODE = web.AppKey("node", Node)
BUS_CLOSE_TIMEOUT = 5.0


def _json_error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


# The middlewares are plain functions that hand back the handler's coroutine rather than
# coroutines awaiting it: a WebSocket's handler runs as long as the connection, and an
# awaiting middleware would keep its frame (a few hundred bytes) alive just as long.

@web.middleware
def forwarded(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Name the client for the access log, trusting proxy headers only from trusted proxies."""
    node = request.app[NODE]
    if node.trusted_proxies:
        client = client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                                request.headers.get("X-Real-IP"), node.trusted_proxies)
        if client:
            request[CLIENT] = client
    return handler(request)


@web.middleware
def json_errors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """HTTP errors answer with a JSON body, like every refusal of this service. (/ws
    answers its refusals itself, so its long-lived handler runs unwrapped.)"""
    if request.path == "/ws" and request.method == "GET":
        return handler(request)
    return _json_errors(request, handler)


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return _json_error(exc.status, exc.reason.lower().replace(" ", "-"), exc.text or exc.reason)


async def websocket(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    node = request.app[NODE]
    s = node.settings
    if node.draining:
        node.metrics.rejected.labels("draining").inc()
        return _json_error(503, "unavailable", "this node is draining; connect again")
    if not node.bus.ready:
        node.metrics.rejected.labels("bus").inc()
        return _json_error(503, "unavailable", "the cluster cannot route right now; retry later")
    if len(node.sessions) >= s.max_connections or node.connections.over_limit:
        node.metrics.rejected.labels("full").inc()
        return _json_error(503, "unavailable", "this node is at its connection limit; retry later")
    resume = request.query.get("resume")
    if resume is not None and parse_resume(resume, time.time()) is None:
        node.metrics.rejected.labels("bad-request").inc()
        return _json_error(400, "bad-request", "`resume` must be a seq this server sent")
    token = request.query.get("token")
    header = request.headers.get("Authorization", "")
    if not token and header[:7].lower() == "bearer ":
        token = header[7:].strip()
    try:
        identity = node.verifier.identify(token, request.query.get("peer"))
    except AuthError as exc:
        node.metrics.rejected.labels(exc.code).inc()
        return _json_error(exc.status, exc.code, exc.message)
    # uncompressed (signaling frames are small; the session writes frames itself), and text
    # frames as bytes: orjson reads them without a decode, and validates the UTF-8 itself
    # no aiohttp heartbeat (a timer per connection, and a callback per chunk received):
    # Node.heartbeat_forever pings the quiet ones, and the session answers pings itself
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=s.max_frame_bytes, autoping=False,
                               compress=False, decode_text=False)
    session = PeerSocket(node, ws, identity)
    node.sessions.add(session)
    task = asyncio.current_task(node.loop)
    assert task is not None
    node.tasks.add(task)
    try:
        try:
            await ws.prepare(request)  # (no can_prepare() first: it would check the handshake twice)
        except web.HTTPException:  # not a WebSocket handshake: nothing was written yet
            return _json_error(426, "upgrade-required", "this endpoint speaks WebSocket only")
        except ConnectionResetError:  # the client gave up before its upgrade was answered (a paused node)
            log.info("a client left before its upgrade was answered")
            # (not `ws`: aiohttp would finish it as an upgrade that never began; writing this
            # one fails quietly on the closed socket)
            return _json_error(503, "unavailable", "the client left before its upgrade was answered")
        session.upgraded(request.transport)
        await session.run(resume, started)
    finally:
        node.sessions.discard(session)
        node.tasks.discard(task)
        node.quotas.release(session.peer, time.monotonic())  # (acquired by the PeerSocket)
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app[NODE].settings.node_id})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    node.metrics.ready.set(1 if node.ready else 0)
    if node.ready:
        return web.json_response({"status": "ready", "node": node.settings.node_id})
    reason = "draining" if node.draining else "bus unavailable"
    return web.json_response({"error": "unavailable", "message": reason, "node": node.settings.node_id}, status=503)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    node.metrics.ready.set(1 if node.ready else 0)
    node.metrics.expired.set(node.bus.expired_messages())
    node.metrics.peers.set(node.bus.local_peers())
    return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _static(name: str, content_type: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = STATIC / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    return handler


def create_app(settings: Settings, bus: buses.Bus | None = None) -> web.Application:
    """The node's application. Without `bus`, one is made from `settings.redis_url`."""
    counters = Metrics()
    if bus is None:
        bus = buses.from_settings(settings, counters)
    node = Node(settings, bus, counters)
    app = web.Application(middlewares=[forwarded, json_errors],
                          handler_args={"keepalive_timeout": settings.keepalive_timeout})
    app[NODE] = node

    async def bus_lifecycle(app: web.Application) -> AsyncIterator[None]:
        node.loop = asyncio.get_running_loop()
        await bus.start()
        heartbeats = asyncio.create_task(node.heartbeat_forever(), name="heartbeats")
        yield
        heartbeats.cancel()
        node.expiries.close()
        try:
            await asyncio.wait_for(bus.close(), BUS_CLOSE_TIMEOUT)
        except TimeoutError:
            log.error("closing the bus took over %.0fs; left it", BUS_CLOSE_TIMEOUT)

    async def close_sessions(app: web.Application) -> None:
        if node.sessions and not node.draining:
            await node.drain()

    app.cleanup_ctx.append(bus_lifecycle)
    app.on_shutdown.append(close_sessions)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", _static("index.html", "text/html; charset=utf-8"))
    app.router.add_get("/client.js", _static("client.js", "text/javascript; charset=utf-8"))
    app.router.add_get("/client.d.ts", _static("client.d.ts", "text/plain; charset=utf-8"))
    return app
