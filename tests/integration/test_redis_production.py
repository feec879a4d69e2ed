"""Nodes on Redis as production runs it: TLS with a private CA, ACL users with only the
commands the node needs, Sentinel, and Cluster with credentials; failovers under traffic.

Every test runs real `signaling serve` processes on real redis-server / sentinel
processes (tests/redis_topologies.py). Under traffic, pairs of app-like clients (one on
each node) exchange numbered, acknowledged messages the whole time; an acknowledged
message that never reaches its addressee is lost, and none may be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cluster_support import AppPeer, StreamReport, stream_reports
from support import NodeProcess

FAST = ["--rate", "10000", "--burst", "10000", "--grace", "30"]


def _nodes(url: str, prefix: str, tmp_path: Path, *extra: str, n: int = 2) -> list[NodeProcess]:
    return [NodeProcess("--redis-url", url, "--key-prefix", prefix, "--node-id", f"{prefix}-{i}", *FAST,
                        *extra).start(tmp_path) for i in range(1, n + 1)]


async def _under_traffic(nodes: list[NodeProcess], event: Callable[[], Any], *, pairs: int = 4,
                         after: float = 2.0) -> tuple[dict[str, StreamReport], float, Any]:
    """Pairs (one peer on each node) talk; `event` runs in a thread after a second of it;
    traffic goes on `after` seconds more. Returns the reports, how long after the event the
    last message was acked, and what `event` returned."""
    async with aiohttp.ClientSession() as http:
        peers = [await AppPeer(nodes[i % 2].ws_base, f"p{i}", http).start() for i in range(2 * pairs)]
        partner = {p.peer: peers[i ^ 1].peer for i, p in enumerate(peers)}
        stop = asyncio.Event()
        talkers = [asyncio.create_task(p.talk(partner[p.peer], stop, 0.01)) for p in peers]
        try:
            await asyncio.sleep(1.0)
            result = await asyncio.to_thread(event)
            done = time.monotonic()
            await asyncio.sleep(after)
        finally:
            stop.set()
            sent = dict(zip(partner, await asyncio.wait_for(asyncio.gather(*talkers), 60), strict=True))
        last_ack = max(p.sent_at.get(p.last_acked, 0.0) for p in peers) - done
        reports = await stream_reports(peers, partner, sent)
    return reports, last_ack, result


def _check(reports: dict[str, StreamReport], what: str) -> None:
    total = sum(r.sent for r in reports.values())
    lost = {s: sorted(r.lost) for s, r in reports.items() if r.lost}
    repeats = sum(r.seq_repeats for r in reports.values())
    gap = max(r.longest_gap() for r in reports.values())
    print(f"\n{what}: {total} messages acked, {sum(map(len, lost.values()))} lost, {repeats} delivered twice; "
          f"longest time a stream went without a delivery {gap:.2f}s")
    assert not lost, f"acknowledged messages never delivered: {lost}"
    assert repeats == 0
    assert all(r.in_order for r in reports.values())


async def _relay_once(nodes: list[NodeProcess], connect: Any) -> None:
    alice = await connect(nodes[0].ws_base, peer="alice")
    bob = await connect(nodes[1].ws_base, peer="bob")
    await alice.send(type="message", to="bob", data="across", id=1)
    await alice.expect("ack", id=1)
    assert (await bob.expect("message"))["data"] == "across"
    await alice.close()
    await bob.close()


async def test_tls_with_a_private_ca_and_the_minimal_acl_user(redis_acl_tls, key_prefix, tmp_path, connect):
    nodes = _nodes(redis_acl_tls.url_for(key_prefix), key_prefix, tmp_path)
    try:
        for node in nodes:
            await node.wait_ready()
        await _relay_once(nodes, connect)
        assert "NOPERM" not in "".join(n.log() for n in nodes)
    finally:
        for node in nodes:
            node.stop()


async def test_a_redis_the_node_cannot_verify_keeps_it_unready_and_says_why(redis_acl_tls, redis_ca, key_prefix,
                                                                            tmp_path):
    from redis_topologies import PrivateCA

    other = PrivateCA(tmp_path / "other-ca", name="other")
    url = redis_acl_tls.url_for(key_prefix).replace(str(redis_ca.ca_cert), str(other.ca_cert))
    assert str(other.ca_cert) in url
    node = _nodes(url, key_prefix, tmp_path, n=1)[0]
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                assert node.proc is not None and node.proc.poll() is None, node.log()
                try:
                    async with http.get(f"{node.base}/readyz") as r:
                        assert r.status == 503
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
        assert "CERTIFICATE_VERIFY_FAILED" in node.log()
        assert redis_acl_tls.url_for(key_prefix).split("@")[0].split(":")[-1] not in node.log()  # no password
    finally:
        node.stop()


async def test_a_user_without_a_command_the_node_needs_is_reported(redis_acl, key_prefix, tmp_path):
    url = redis_acl.url_for(key_prefix, extra_rules=["-evalsha"])
    node = _nodes(url, key_prefix, tmp_path, n=1)[0]
    try:
        deadline, status = time.monotonic() + 10, None
        async with aiohttp.ClientSession() as http:
            while status is None:  # (the node listens once its bus gave up waiting to be ready)
                assert time.monotonic() < deadline, f"the node never answered:\n{node.log()}"
                assert node.proc is not None and node.proc.poll() is None, node.log()
                try:
                    async with http.get(f"{node.base}/readyz") as r:
                        status = r.status
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert status == 503
        assert "NOPERM" in node.log()
    finally:
        node.stop()


def _sentinel_failover(topology: Any, prefix: str) -> tuple[str, Callable[[], Any], Callable[[], Any]]:
    return "SENTINEL FAILOVER", topology.failover, lambda: None


def _sentinel_primary_killed(topology: Any, prefix: str) -> tuple[str, Callable[[], Any], Callable[[], Any]]:
    return "the Sentinel primary SIGKILLed", topology.kill_primary, topology.revive


def _cluster_primary_killed(topology: Any, prefix: str) -> tuple[str, Callable[[], Any], Callable[[], Any]]:
    victim = topology.primary_of(f"{prefix}:{{p:p1}}")  # p1's inbox is on it
    return f"cluster primary {victim.port} SIGKILLed", lambda: topology.kill_primary(victim.port), topology.revive


@pytest.mark.slow
@pytest.mark.parametrize("fixture, failure, extra", [
    ("redis_sentinel", _sentinel_failover, ()),
    ("redis_sentinel", _sentinel_primary_killed, ()),
    ("redis_cluster_secure", _cluster_primary_killed, ("--node-ttl", "6")),  # with ACL and TLS
], ids=["sentinel-failover", "sentinel-primary-killed", "cluster-primary-killed"])
async def test_a_failover_under_traffic_loses_nothing_acked(fixture, failure, extra, request, key_prefix, tmp_path,
                                                            connect):
    topology = request.getfixturevalue(fixture)
    what, event, restore = failure(topology, key_prefix)
    nodes = _nodes(topology.url_for(key_prefix), key_prefix, tmp_path, "--redis-replicas", "1", *extra)
    try:
        for node in nodes:
            await node.wait_ready()
        reports, last_ack, _ = await _under_traffic(nodes, event, after=3.0)
        _check(reports, what)
        assert last_ack > 1.0, "no message was acked well after the failover"
        for node in nodes:
            await node.wait_ready(10)
        await _relay_once(nodes, connect)
    finally:
        for node in nodes:
            node.stop()
        restore()
