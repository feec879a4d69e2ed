"""Run one node as a process: listen (TCP or TLS), drain on SIGTERM/SIGINT, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiohttp import web

from .app import CLIENT, NODE, create_app
from .config import Settings
from .logs import AccessLogger

log = logging.getLogger("signaling.server")


class _AsSeen:
    """A request whose `remote` is the client a trusted proxy named (everything else as is)."""

    def __init__(self, request: web.BaseRequest, remote: str) -> None:
        self._request, self.remote = request, remote

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class ProxyAwareAccessLogger(AccessLogger):
    """The access log of `logs.AccessLogger`, with the client address behind a trusted proxy."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        client = request.get(CLIENT)
        super().log(_AsSeen(request, client) if client else request, response, time_taken)  # type: ignore[arg-type]


def run(settings: Settings) -> None:
    """Serve on uvloop when it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings))


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then drain and shut down."""
    stop = stop or asyncio.Event()
    if not settings.auth_enabled:
        log.warning(
            "*** OPEN MODE: no JWT key configured, so ANY client may connect as ANY peer id. "
            "Use this for local development only; set SIGNALING_JWT_SECRET or "
            "--jwt-public-key in production. ***"
        )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log_class=ProxyAwareAccessLogger,
                           shutdown_timeout=settings.drain_delay + settings.drain_window + 20)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context(settings),
                       backlog=settings.backlog, reuse_address=True)
    await site.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheme = "wss" if settings.tls_enabled else "ws"
    log.info("node %s listening on %s://%s:%d/ws (bus: %s)", settings.node_id, scheme, settings.host,
             settings.port, settings.redis_url.partition("://")[0] or "memory")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopping: draining connections")
        await app[NODE].drain()
        await runner.cleanup()
        log.info("stopped")
