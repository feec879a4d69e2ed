"""Quotas per peer id (issue 11, case 2): reconnecting buys nothing. A client that sends
as fast as it can and reconnects (cleanly, by dropping, or by taking over its own live
connection on the other node) gets no more messages through than one connection that
never left: `burst + rate * elapsed`. Strikes carry over too. Two real nodes, one Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from support import Client

RATE, BURST = 20, 30
OFFER = {"type": "offer", "sdp": "x"}


async def flood(client: Client, n: int, start: int) -> tuple[int, int]:
    """Send n messages at once, read their receipts: (acked, rate-limited)."""
    for i in range(start, start + n):
        await client.send(type="offer", to="bob", offer=OFFER, id=i)
    acked = limited = 0
    while acked + limited < n:
        frame = await client.recv(timeout=5)
        if frame["type"] == "ack":
            acked += 1
        elif frame["type"] == "error":
            assert frame["code"] == "rate-limited", frame
            limited += 1
    return acked, limited


@pytest.mark.parametrize("how", ["close", "drop", "takeover"])
async def test_reconnecting_buys_no_messages(cluster, how):
    nodes = await cluster(2, "--rate", str(RATE), "--burst", str(BURST), "--abuse-strikes", "100000")
    bob = await Client.connect(nodes[0].ws_base, peer="bob")
    clients: list[Client] = []
    try:
        began = time.monotonic()
        acked = 0
        client = await Client.connect(nodes[0].ws_base, peer="mallory")
        clients.append(client)
        for round_ in range(10):
            got, limited = await flood(client, BURST + 10, round_ * 1000)
            acked += got
            nxt = nodes[(round_ + 1) % 2].ws_base
            if how == "close":
                await client.close()
            elif how == "drop":
                await client.drop()
            client = await Client.connect(nxt, peer="mallory")  # takeover: the old one is still open
            clients.append(client)
            await asyncio.sleep(0.1)  # as a client in a hurry would, and so the elapsed time is not ~0
        elapsed = time.monotonic() - began
        allowed = BURST + RATE * elapsed
        assert acked <= allowed + 2, \
            f"{acked} messages got through in {elapsed:.1f}s; one connection gets {allowed:.0f}"
        assert acked >= BURST, f"only {acked} got through"
    finally:
        for c in clients + [bob]:
            await c.close()


async def test_abuse_strikes_follow_the_peer_across_reconnects(cluster):
    nodes = await cluster(2, "--abuse-strikes", "6", "--abuse-window", "30")
    clients = []
    try:
        for i in range(2):  # 3 strikes on each of two connections, on both nodes
            client = await Client.connect(nodes[i % 2].ws_base, peer="mallory")
            clients.append(client)
            for _ in range(3):
                await client.send_raw("not json")
            for _ in range(3):
                assert (await client.recv())["code"] == "bad-json"
            await client.close()
        client = await Client.connect(nodes[0].ws_base, peer="mallory")
        clients.append(client)
        await client.send_raw("not json")  # the 7th within the window: abuse, whatever the connection
        assert (await client.recv())["code"] == "bad-json"
        assert await client.closed() == 1008
    finally:
        for c in clients:
            await c.close()
