"""A node process on SIGTERM (the deploy and scale-down path), and the client address it
logs behind a proxy: X-Forwarded-For / X-Real-IP only from --trusted-proxies."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from support import Client, NodeProcess


async def test_sigterm_readyz_503_during_the_drain_delay_then_1001_spread_over_the_window(processes):
    node = processes("--node-id", "d1", "--drain-delay", "1.0", "--drain-window", "1.2")
    await node.wait_ready()
    clients = [await Client.connect(node.ws_base, peer=f"c{i}") for i in range(4)]
    try:
        node.signal(signal.SIGTERM)
        sigterm = time.monotonic()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.base}/readyz") as r:
                assert r.status == 503 and (await r.json())["message"] == "draining"
            async with http.get(f"{node.base}/healthz") as r:
                assert r.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await Client.connect(node.ws_base, peer="late")
        assert refused.value.status == 503  # a load balancer retries it on another node
        # open connections still carry messages during the delay
        await clients[0].send(type="message", to="c1", data="still here", id=1)
        await clients[0].expect("ack", id=1)
        await clients[1].expect("message", data="still here")

        async def closed_at(c: Client) -> float:
            assert await c.closed(timeout=10) == 1001
            return time.monotonic() - sigterm

        times = sorted(await asyncio.gather(*(closed_at(c) for c in clients)))
        print(f"\n1001 closes at {', '.join(f'{t:.2f}' for t in times)} s after SIGTERM (delay 1.0, window 1.2)")
        assert times[0] >= 0.95  # nobody is closed before the delay is over
        assert times[-1] - times[0] >= 0.6  # spread (4 closes, 0.3 s apart), not a thundering herd
        assert times[-1] < 1.0 + 1.2 + 0.5
        assert await asyncio.to_thread(node.proc.wait, 15) == 0
        assert "first close in 1.0s" in node.log()
    finally:
        for c in clients:
            await c.close()


async def test_drain_without_delay_closes_at_once_like_before(processes):
    node = processes("--node-id", "d2")
    await node.wait_ready()
    client = await Client.connect(node.ws_base, peer="a")
    try:
        began = time.monotonic()
        node.signal(signal.SIGTERM)
        assert await client.closed(timeout=5) == 1001
        assert time.monotonic() - began < 0.9
        assert await asyncio.to_thread(node.proc.wait, 15) == 0
    finally:
        await client.close()


async def request(node: NodeProcess, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.base}/healthz", headers=headers) as r:
            assert r.status == 200


async def test_forwarded_headers_name_the_client_only_from_trusted_proxies(processes):
    untrusting = processes("--node-id", "u")
    elsewhere = processes("--node-id", "e", "--trusted-proxies", "10.0.0.0/8")
    trusting = processes("--node-id", "t", env={"SIGNALING_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"})
    for node in (untrusting, elsewhere, trusting):
        await node.wait_ready()
    spoof = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.77"}
    await request(untrusting, spoof)
    await request(elsewhere, spoof)  # the peer (127.0.0.1) is not one of its proxies
    await request(trusting, {"X-Forwarded-For": "203.0.113.9, 10.1.2.3"})  # client, then a proxy of ours
    await request(trusting, {"X-Forwarded-For": "203.0.113.66, 198.51.100.5"})  # a spoofed hop before the real client
    await request(trusting, {"X-Real-IP": "192.0.2.44"})
    await request(trusting, {"X-Forwarded-For": "not-an-address"})
    for node in (untrusting, elsewhere, trusting):
        node.stop()
    for node in (untrusting, elsewhere):
        log = node.log()
        assert "127.0.0.1 GET /healthz 200" in log and "203.0.113" not in log
    log = trusting.log()
    assert "203.0.113.9 GET /healthz 200" in log
    assert "198.51.100.5 GET /healthz 200" in log and "203.0.113.66" not in log
    assert "192.0.2.44 GET /healthz 200" in log
    assert log.count("127.0.0.1 GET /healthz 200") == 1  # the unparsable header: the proxy's own address
