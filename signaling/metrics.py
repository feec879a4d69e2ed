"""Prometheus metrics of one node, on a registry of its own (several apps per process in tests)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .protocol import CLIENT_TYPES

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("signaling_connections", "Open WebSocket connections on this node.", registry=r)
        self.peers = Gauge("signaling_peers", "Peers connected to this node (as the bus routes to them).", registry=r)
        self.connects = Counter("signaling_connects", "Accepted WebSocket connections.", ["resumed"], registry=r)
        self.rejected = Counter("signaling_connections_rejected", "Connections refused before the upgrade.", ["reason"], registry=r)
        self.closes = Counter("signaling_closes", "Connections ended, by close code.", ["code"], registry=r)
        self.messages_in = Counter("signaling_messages_in", "Client frames received, by type.", ["type"], registry=r)
        self.messages_out = Counter("signaling_messages_out", "Frames sent to clients, by kind.", ["type"], registry=r)
        self.errors = Counter("signaling_errors", "Protocol errors sent, by code.", ["code"], registry=r)
        self.publish_latency = Histogram(
            "signaling_bus_publish_latency_seconds", "Cross-node publish to delivery latency.", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.bus_reconnects = Counter("signaling_bus_reconnects", "Times the bus reconnected to its backend.", registry=r)
        self.queued = Counter("signaling_inbox_queued", "Messages queued for a reconnecting peer.", registry=r)
        self.expired = Gauge("signaling_inbox_expired", "Queued messages dropped before their peer came back (grace or bound).", registry=r)
        self.replayed = Counter("signaling_inbox_replayed", "Inbox messages replayed on reconnect.", registry=r)
        self.slow_consumers = Counter("signaling_slow_consumers", "Connections closed for falling behind.", registry=r)
        self.heartbeat_timeouts = Counter("signaling_heartbeat_timeouts",
                                          "Connections dropped for not answering a heartbeat ping.", registry=r)
        self.draining = Gauge("signaling_draining", "1 while this node drains.", registry=r)
        self.ready = Gauge("signaling_ready", "1 while /readyz answers 200.", registry=r)

        # the hot path's series, looked up once (a label lookup per message costs more than the increment)
        self._in = {kind: self.messages_in.labels(kind) for kind in (*CLIENT_TYPES, "invalid")}
        self._out: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}
        self.relayed_out = self.messages_out.labels("relayed")

    def message_in(self, kind: str) -> None:
        (self._in.get(kind) or self._in["invalid"]).inc()

    def out(self, kind: str) -> None:
        child = self._out.get(kind)
        if child is None:
            child = self._out[kind] = self.messages_out.labels(kind)
        child.inc()

    def error(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self.errors.labels(code)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
