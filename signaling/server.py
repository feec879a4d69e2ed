"""Run one node as a process: listen (TCP or TLS), drain on SIGTERM/SIGINT, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from .app import NODE, create_app
from .config import Settings
from .logs import AccessLogger

log = logging.getLogger("signaling.server")


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
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=settings.drain_window + 20)
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
