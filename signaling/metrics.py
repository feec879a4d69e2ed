"""Prometheus metrics of one node, on a registry of its own (several apps per process in tests)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .protocol import CLIENT_TYPES

CONTENT_TYPE = CONTENT_TYPE_LATEST


# close codes that get a label of their own: RFC 6455's and this protocol's; a client may
# close with any of 3000-4999, and each would be a series: those are "other"
_CLOSE_LABELS = {code: str(code) for code in (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
                                               4401, 4409)}


def close_label(code: int | None) -> str:
    if code is None:
        return "none"
    return _CLOSE_LABELS.get(int(code), "other")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("signaling_connections", "Open WebSocket connections on this node.", registry=r)
        self.peers = Gauge("signaling_peers", "Peers connected to this node (as the bus routes to them).",
                           registry=r)
        self.connects = Counter("signaling_connects", "Accepted WebSocket connections.", ["resumed"], registry=r)
        self.rejected = Counter("signaling_connections_rejected", "Connections refused before the upgrade.", ["reason"],
                                registry=r)
        self.closes = Counter("signaling_closes", "Connections ended, by close code.", ["code"], registry=r)
        # bumped for every message: plain tallies read at scrape time (a prometheus_client
        # Counter takes a lock per increment, a third of a microsecond)
        self.messages_in = LabeledCount("signaling_messages_in", "Client frames received, by type.", "type", r)
        self.messages_out = LabeledCount("signaling_messages_out", "Frames sent to clients, by kind.", "type", r)
        self.errors = LabeledCount("signaling_errors", "Protocol errors sent, by code.", "code", r)
        self.publish_latency = LatencyHistogram(
            "signaling_bus_publish_latency_seconds", "Cross-node publish to delivery latency.", r,
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.bus_reconnects = Counter("signaling_bus_reconnects", "Times the bus reconnected to its backend.",
                                      registry=r)
        self.queued = Counter("signaling_inbox_queued", "Messages queued for a reconnecting peer.", registry=r)
        self.expired = Gauge("signaling_inbox_expired",
                             "Queued messages dropped before their peer came back (grace or bound).", registry=r)
        self.replayed = Counter("signaling_inbox_replayed", "Inbox messages replayed on reconnect.", registry=r)
        self.replay_handed_in = Counter("signaling_replay_handed_in",
                                        "Acked messages handed in again after Redis lost its data set.", registry=r)
        self.replay_dropped = Counter("signaling_replay_dropped", "Acked messages let go by --replay-bytes before "
                                      "Redis had been seen alive for --replay-window.", registry=r)
        self.slow_consumers = Counter("signaling_slow_consumers", "Connections closed for falling behind.", registry=r)
        self.heartbeat_timeouts = Counter("signaling_heartbeat_timeouts",
                                          "Connections dropped for not answering a heartbeat ping.", registry=r)
        self.draining = Gauge("signaling_draining", "1 while this node drains.", registry=r)
        self.ready = Gauge("signaling_ready", "1 while /readyz answers 200.", registry=r)
        self.tally_in = self.messages_in.tally  # the hot path bumps these directly
        self.tally_out = self.messages_out.tally
        for kind in (*CLIENT_TYPES, "invalid"):
            self.tally_in[kind] += 0  # every type is exported from the start, at 0

    def out(self, kind: str) -> None:
        self.tally_out[kind] += 1

    def error(self, code: str) -> None:
        self.errors.tally[code] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LabeledCount(Collector):
    """A counter with one label, kept as a `collections.Counter` of label value -> count:
    bumping it is a dict update, with no lock (the node is one thread)."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.tally: Tally[str] = Tally()
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for label_value, count in sorted(self.tally.items()):
            family.add_metric([label_value], count)
        yield family


class LatencyHistogram(Collector):
    """A histogram observed for every cross-node message: a bucket count bumped in a list
    (a prometheus_client Histogram takes a lock per observation); cumulated at scrape time."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` holds value <= le
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets, total = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)
