"""What every connection on one node shares: settings, bus, verifier, metrics, quotas, the
connection table, token expiries, the heartbeat tick and draining.

Connections are typed by what the node asks of them (`Connection`), so this module
never imports the session that implements them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from typing import Any, Protocol

from . import bus as buses
from .auth import Verifier, ice_servers
from .config import Settings
from .connections import Connections
from .expiry import Expiries
from .metrics import Metrics
from .protocol import CloseCode
from .quota import Quotas

log = logging.getLogger("signaling.node")


class Connection(Protocol):
    """One WebSocket connection, as the node drives it."""

    ended: bool

    def tick(self) -> None:
        """Half a heartbeat has passed."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Close with `code` (idempotent, non-blocking)."""


class Node:
    """What every connection on this node shares."""

    def __init__(self, settings: Settings, bus: buses.Bus, metrics: Metrics) -> None:
        self.settings = settings
        self.bus = bus
        self.verifier = Verifier(settings)
        self.metrics = metrics
        self.limits = settings.limits
        self.quotas = Quotas(self.limits, capacity=settings.max_connections)  # per peer id, see quota.py
        self.sessions: set[Connection] = set()  # connections on this node, upgraded or upgrading
        # every TCP connection, counted from accept once server.py listens through it
        self.connections = Connections(settings.max_connections, settings.connection_headroom,
                                       settings.header_timeout, lambda why: metrics.rejected.labels(why).inc())
        self.tasks: set[asyncio.Task[Any]] = set()  # handler tasks of those connections
        self.cleanups: set[asyncio.Future[None]] = set()  # session endings still running (detach)
        self.loop: asyncio.AbstractEventLoop | None = None  # once serving (get_running_loop() is a syscall)
        metrics.connections.set_function(lambda: len(self.sessions))  # read at scrape time
        self.draining = False
        self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        self._static_ice = json.loads(settings.ice_servers)
        self.expiries: Expiries[Connection] = Expiries(
            lambda session: session.close(CloseCode.TOKEN_EXPIRED, "token expired"), time.time)

    @property
    def ready(self) -> bool:
        return self.bus.ready and not self.draining

    def ice_servers(self, peer: str) -> list[dict[str, Any]]:
        s = self.settings
        return ice_servers(self._static_ice, s.turn_urls, s.turn_secret, s.turn_ttl, peer, time.time())

    async def heartbeat_forever(self) -> None:
        """Ticks every half `heartbeat`: see session.Session.tick."""
        while True:
            await asyncio.sleep(self.settings.heartbeat / 2)
            for session in list(self.sessions):
                session.tick()
            self.quotas.prune(time.monotonic())

    async def drain(self) -> None:
        """Leave the load balancer (/readyz 503 and new upgrades refused with 503), wait
        `drain_delay` seconds for it to notice while open connections carry on, then close
        every socket with 1001, spread over `drain_window` seconds (so the clients do not
        all reconnect at once), and wait for the sessions to end. Each peer enters its
        grace and resumes wherever the load balancer sends it."""
        self.draining = True
        self.metrics.draining.set(1)
        if self.settings.drain_delay:
            log.info("draining: /readyz answers 503; first close in %.1fs", self.settings.drain_delay)
            await asyncio.sleep(self.settings.drain_delay)
        sessions = list(self.sessions)
        log.info("draining %d connections over %.1fs", len(sessions), self.settings.drain_window)
        step = self.settings.drain_window / len(sessions) if sessions else 0.0
        for session in sessions:
            session.close(CloseCode.DRAINING, "node draining; reconnect")
            if step:
                await asyncio.sleep(step)
        pending = self.tasks | self.cleanups
        if pending:
            _, late = await asyncio.wait(pending, timeout=15.0)
            if late:
                log.warning("draining: %d sessions still open after 15s", len(late))
        if self.cleanups:
            _, late = await asyncio.wait(set(self.cleanups), timeout=5.0)
            if late:
                log.warning("draining: %d session cleanups still running after 5s", len(late))
        log.info("drained")
