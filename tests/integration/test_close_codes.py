"""Every row of the protocol's close-code table, and what each close means for the peer."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from signaling import auth
from support import SECRET, Client, eventually, join_all
from test_errors import FaultyBus


async def _in_room(node, connect, *peers, room="r"):
    clients = [await connect(node, peer=p) for p in peers]
    await join_all(clients, room)
    return clients


async def test_1000_client_close_is_for_good(node, connect):
    alice, bob = await _in_room(node, connect, "alice", "bob")
    await bob.ws.close(code=1000)
    await alice.expect("peer-left", peer="bob")


async def test_1001_drain_keeps_the_peer_reconnecting(make_node, connect):
    node = await make_node(grace=5)
    alice, bob = await _in_room(node, connect, "alice", "bob")
    drain = asyncio.ensure_future(make_node.nodes[node].drain())
    assert await alice.closed() == 1001
    assert await bob.closed() == 1001
    await drain
    bus = make_node.nodes[node].bus
    assert bus.directory.owner("alice")[1] is False  # reconnecting, not gone
    assert bus.directory.members("r") == ["alice", "bob"]  # no peer-left churn


async def test_1008_sustained_abuse_closes_for_good(make_node, connect):
    node = await make_node(abuse_strikes=5, abuse_window=10)
    alice, vandal = await _in_room(node, connect, "alice", "vandal")
    for _ in range(6):
        await vandal.send_raw("garbage")
    assert await vandal.closed() == 1008
    await alice.expect("peer-left", peer="vandal")


async def test_1009_frame_over_the_size_limit(make_node, connect):
    node = await make_node(max_frame_bytes=1024)
    alice, bob = await _in_room(node, connect, "alice", "bob")
    await alice.send(type="message", to="bob", data="x" * 900)  # under the limit: fine
    await bob.expect("message")
    await alice.send(type="message", to="bob", data="x" * 2000)
    assert await alice.closed() == 1009
    await bob.expect("peer-left", peer="alice")


async def test_1011_internal_error_keeps_the_peer_reconnecting(make_node, connect):
    bus = FaultyBus(node_id="n", grace=5, inbox_limit=10)
    node = await make_node(bus=bus, node_id="n")
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    bus.broken = True
    await alice.send(type="message", to="bob", data=1)
    assert await alice.closed() == 1011
    bus.broken = False
    await eventually(lambda: bus.directory.owner("alice") is not None and not bus.directory.owner("alice")[1])
    await bob.send(type="message", to="alice", data=2, id=1)
    await bob.expect("ack", id=1, queued=True)  # alice is in her grace, not gone


async def test_4401_token_expiring_during_the_session(make_node, connect):
    node = await make_node(jwt_secret=SECRET, grace=5)
    started = time.time()
    alice = await connect(node, token=auth.mint(SECRET, "alice", ttl=1.5, now=started))
    bob = await connect(node, token=auth.mint(SECRET, "bob", ttl=60))
    assert await alice.closed(timeout=5) == 4401
    assert time.time() - started < 4
    bus = make_node.nodes[node].bus
    await eventually(lambda: not bus.directory.owner("alice")[1])
    await bob.send(type="message", to="alice", data=1, id=1)
    await bob.expect("ack", id=1, queued=True)  # reconnect with a new token within the grace
    alice2 = await connect(node, token=auth.mint(SECRET, "alice", ttl=60))
    await alice2.expect("message", data=1)


async def test_4409_a_newer_connection_takes_over(node, connect):
    alice, bob = await _in_room(node, connect, "alice", "bob")
    bob2 = await connect(node, peer="bob")
    assert bob2.welcome["peer"] == "bob"
    assert await bob.closed() == 4409
    await alice.send(type="message", to="bob", data="for the new one", id=1)
    await alice.expect("ack", id=1)
    await bob2.expect("message", data="for the new one")
    await alice.silent()  # no peer-left / peer-joined churn
    await alice.send(type="message", room="r", data="still a member")
    await bob2.expect("message", data="still a member")


async def test_heartbeat_closes_a_client_that_stops_answering(make_node, connect):
    node = await make_node(heartbeat=0.4, grace=5)
    alice = await Client.connect(node, peer="alice")
    alice.ws._autoping = False  # a client that stops answering pings
    assert alice.welcome["heartbeat"] == 0.4
    started = time.monotonic()
    try:
        await alice.closed(timeout=5)  # raises unless the server closes it
    finally:
        await alice.close()
    assert time.monotonic() - started < 2.0  # ping at 0.4 s, no pong within 0.2 s
    bus = make_node.nodes[node].bus
    await eventually(lambda: bus.directory.owner("alice")[1] is False)  # dropped: reconnecting, not gone


async def test_a_quiet_client_that_answers_pings_stays_and_its_own_pings_get_pongs(make_node, connect):
    node = await make_node(heartbeat=0.2, grace=5)
    alice = await Client.connect(node, peer="alice")
    alice.ws._autoping = False  # read the control frames ourselves
    pings, deadline = 0, time.monotonic() + 1.2
    while time.monotonic() < deadline:  # six heartbeats of silence but for the pongs
        msg = await alice.ws.receive(timeout=1.0)
        assert msg.type is aiohttp.WSMsgType.PING, msg
        pings += 1
        await alice.ws.pong(msg.data)
    assert 3 <= pings <= 8  # about one per heartbeat while nothing else is heard
    await alice.ws.ping(b"are you there")
    msg = await alice.ws.receive(timeout=2)
    while msg.type is aiohttp.WSMsgType.PING:  # the server's own heartbeat may come first
        await alice.ws.pong(msg.data)
        msg = await alice.ws.receive(timeout=2)
    assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"are you there"
    await alice.send(type="ping")
    msg = await alice.ws.receive(timeout=2)
    while msg.type is aiohttp.WSMsgType.PING:
        await alice.ws.pong(msg.data)
        msg = await alice.ws.receive(timeout=2)
    assert msg.json()["type"] == "pong"
    await alice.close()


async def test_a_frame_being_handled_when_the_node_drains_still_gets_its_receipt(make_node, connect):
    from signaling.bus.memory import MemoryBus

    class SlowBus(MemoryBus):
        async def send(self, to, body, **kw):
            await asyncio.sleep(0.3)  # the drain starts while this message is in flight
            return await super().send(to, body, **kw)

    node = await make_node(bus=SlowBus(node_id="n", grace=5, inbox_limit=10), node_id="n")
    alice, _bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="message", to="bob", data="in flight", id=1)
    await asyncio.sleep(0.1)
    drain = asyncio.ensure_future(make_node.nodes[node].drain())
    await alice.expect("ack", id=1)  # delivered, so acked: the sender will not send it twice
    assert await alice.closed() == 1001
    await drain
