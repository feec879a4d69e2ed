"""Run one node as a process: listen (TCP or TLS), drain on SIGTERM/SIGINT, stop."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import signal
import ssl
from typing import Any

from aiohttp import web

from .app import BUS_CLOSE_TIMEOUT, CLIENT, NODE, create_app
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
        seen = _AsSeen(request, client) if client else request
        super().log(seen, response, time_taken)  # type: ignore[arg-type]  # _AsSeen passes for the request


GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collect the young generation every 10,000 allocations, not 700: a node holds ~100
    container objects per connection, and the default spent about half of a connection
    storm's CPU in the collector (bench/results/tuning.md). Cyclic garbage is still
    collected, in bigger, rarer batches."""
    gc.set_threshold(*GC_THRESHOLDS)


def skip_redundant_nodelay() -> None:
    """aiohttp sets TCP_NODELAY on every connection it accepts, two syscalls that asyncio's
    and uvloop's TCP transports have made already (tests/unit/test_unit_server.py checks)."""
    import aiohttp.base_protocol as proto

    proto.tcp_nodelay = lambda transport, value: None  # type: ignore[attr-defined]  # not exported; patched where called


def run(settings: Settings) -> None:
    """Serve on uvloop when it is installed (a faster event loop), else on asyncio's own."""
    tune_gc()
    skip_redundant_nodelay()
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
    # by the time aiohttp shuts down, the drain has ended every WebSocket; what is left are
    # plain HTTP requests (probes, metrics), which finish in well under this
    runner = web.AppRunner(app, access_log_class=ProxyAwareAccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=settings.keepalive_timeout)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    # not a web.TCPSite: every accepted connection goes through Connections first (counted
    # against --max-connections, and closed if its request head is late)
    tls = ssl_context(settings)
    listener = await loop.create_server(
        app[NODE].connections.protocol_factory(runner.server), settings.host, settings.port, ssl=tls,
        ssl_handshake_timeout=settings.header_timeout if tls else None, backlog=settings.backlog,
        reuse_address=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("asyncio tasks (SIGUSR1):\n%s", task_dump()))
    scheme = "wss" if settings.tls_enabled else "ws"
    log.info("node %s listening on %s://%s:%d/ws (bus: %s)", settings.node_id, scheme, settings.host,
             settings.port, settings.redis_url.partition("://")[0] or "memory")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopping: draining connections")
        began = loop.time()
        await app[NODE].drain()
        drained = loop.time()
        # a stop always ends: an orchestrator waits for the exit, and the drain above has
        # already handed every peer to the cluster (detached, inbox in the bus)
        listener.close()  # (what runner.cleanup() does first to the sites it knows)
        try:
            await asyncio.wait_for(runner.cleanup(), 2 * SHUTDOWN_TIMEOUT + BUS_CLOSE_TIMEOUT)
        except TimeoutError:
            log.error("shutdown overran; stopping anyway. asyncio tasks:\n%s", task_dump())
        loop.remove_signal_handler(signal.SIGUSR1)
        log.info("stopped (drain %.1fs, shutdown %.1fs)", drained - began, loop.time() - drained)


SHUTDOWN_TIMEOUT = 5.0  # per connection still open when aiohttp shuts down (twice: finish, then cancel)


def task_dump() -> str:
    """Every asyncio task and the chain of awaits it is suspended in: what a stuck node
    is waiting for. (Task.print_stack shows only a task's outermost coroutine.)"""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"{task!r}\n")
        awaiting: Any = task.get_coro()
        while awaiting is not None:
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
            if frame is not None:
                out.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}\n")
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    return out.getvalue()
