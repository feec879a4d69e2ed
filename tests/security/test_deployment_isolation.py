"""Deployments that share a Redis server keep apart (issue 11): pub/sub channels are
global across a server's databases, so two clusters on db 0 and db 1 with the same key
prefix must not hear each other's traffic. Seen from a client: when alice's node in
deployment A dies, a message to her is `queued` (A has nobody listening for her), not
taken as delivered because the other deployment's alice is listening on that channel."""

from __future__ import annotations

import asyncio
import signal
import time

import redis

from support import Client


async def test_two_deployments_on_two_databases_of_one_redis_do_not_hear_each_other(processes, redis_server,
                                                                                       key_prefix):
    base = redis_server.url.rsplit("/", 1)[0]
    a1, a2 = (processes("--redis-url", f"{base}/0", "--key-prefix", key_prefix, "--node-id", f"a{i}") for i in (1, 2))
    b = processes("--redis-url", f"{base}/1", "--key-prefix", key_prefix, "--node-id", "b")
    for node in (a1, a2, b):
        await node.wait_ready()
    alice_a = await Client.connect(a1.ws_base, peer="alice")
    alice_b = await Client.connect(b.ws_base, peer="alice")  # the same id, in the other deployment
    bob_a = await Client.connect(a2.ws_base, peer="bob")
    r = redis.Redis.from_url(redis_server.url)

    def listening_for_alice() -> int:
        channels = [c for c in r.pubsub_channels(f"{key_prefix}*") if b"{p:alice}" in c]
        return sum(n for _, n in r.pubsub_numsub(*channels)) if channels else 0

    try:
        assert listening_for_alice() == 2
        a1.signal(signal.SIGKILL)  # her node dies; her state still says connected until its lease runs out
        deadline = time.monotonic() + 5
        while listening_for_alice() != 1:  # Redis has seen a1's connections close
            assert time.monotonic() < deadline, "Redis still lists a killed node's subscription"
            await asyncio.sleep(0.02)
        await bob_a.send(type="message", to="alice", data="for a", id="1")
        ack = await bob_a.expect("ack", id="1")
        assert ack.get("queued") is True, f"acked as delivered though nobody in deployment A heard it: {ack}"
        await alice_b.silent(0.3)
    finally:
        for c in (alice_a, alice_b, bob_a):
            await c.drop()
