"""Reconnect grace: the per-peer inbox, `seq`, `resume=<seq>` and `welcome.resumed`."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from support import eventually, join_all


async def _away(node, make_node, peer="bob"):
    bus = make_node.nodes[node].bus
    await eventually(lambda: bus.directory.owner(peer) is not None and bus.directory.owner(peer)[1] is False)


async def test_drop_queue_and_resume_exactly_once_in_order(make_node, connect):
    node = await make_node(grace=10)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="message", to="bob", data="before", id=0)
    await alice.expect("ack", id=0)
    await bob.expect("message", data="before")
    last = bob.last_seq
    await bob.drop()
    await _away(node, make_node)
    for i in range(1, 6):
        await alice.send(type="message", to="bob", data=i, id=i)
        await alice.expect("ack", id=i, queued=True)
    bob2 = await connect(node, peer="bob", resume=last)
    assert bob2.welcome["resumed"] is True
    for i in range(1, 6):
        await bob2.expect("message", data=i)
    await alice.send(type="message", to="bob", data="newer", id=9)
    await alice.expect("ack", id=9)  # connected again: not queued
    await bob2.expect("message", data="newer")
    await bob2.silent()


async def test_resume_replays_what_was_sent_but_not_processed(make_node, connect):
    node = await make_node(grace=10)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    seqs = []
    for i in range(6):
        await alice.send(type="message", to="bob", data=i)
        seqs.append((await bob.expect("message", data=i))["seq"])
    await bob.drop()  # bob only processed 0..2 before its app died
    await _away(node, make_node)
    bob2 = await connect(node, peer="bob", resume=seqs[2])
    assert bob2.welcome["resumed"] is True
    got = [await bob2.recv() for _ in range(3)]
    assert [m["data"] for m in got] == [3, 4, 5]
    assert [m["seq"] for m in got] == seqs[3:]  # the same seqs: the client can deduplicate
    await bob2.silent()


async def test_frames_read_but_not_processed_come_again_though_pongs_confirmed_them(make_node, connect):
    """PROTOCOL.md: a resume from the last seq *processed* gets every message after it. The
    node lets a connected peer's inbox go of what its WebSocket answered pings after (a
    pong every 0.1 s here), but never of what arrived within the last TRIM_HORIZON
    seconds: an app that dies with frames read and unprocessed gets them again."""
    node = await make_node(grace=10, heartbeat=0.2)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    seqs = []
    for i in range(6):
        await alice.send(type="message", to="bob", data=i)
        seqs.append((await bob.expect("message", data=i))["seq"])
    # reading for a second: its WebSocket answers the node's pings, each confirming seqs[5]
    # (not `silent`: aiohttp's receive timeout restarts with every ping answered)
    reading = asyncio.ensure_future(bob.ws.receive())
    await asyncio.sleep(1.0)
    assert not reading.done(), reading.result()
    reading.cancel()
    await bob.drop()  # its app only processed 0..2
    await _away(node, make_node)
    bob2 = await connect(node, peer="bob", resume=seqs[2])
    assert bob2.welcome["resumed"] is True
    assert [(await bob2.recv())["data"] for _ in range(3)] == [3, 4, 5]


async def test_reconnect_without_resume_gets_what_was_queued_since_the_drop(make_node, connect):
    node = await make_node(grace=10)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="message", to="bob", data="seen")
    await bob.expect("message", data="seen")
    await bob.drop()
    await _away(node, make_node)
    await alice.send(type="message", to="bob", data="queued", id=1)
    await alice.expect("ack", id=1, queued=True)
    bob2 = await connect(node, peer="bob")
    assert bob2.welcome["resumed"] is False  # it did not ask to resume
    await bob2.expect("message", data="queued")
    await bob2.silent()


async def test_rooms_are_kept_through_the_grace_without_churn(make_node, connect):
    node = await make_node(grace=10)
    alice, bob, carol = [await connect(node, peer=p) for p in ("alice", "bob", "carol")]
    await join_all([alice, bob, carol])
    last = bob.last_seq
    await bob.drop()
    await _away(node, make_node)
    await alice.send(type="message", room="r", data="while away", id=1)
    await alice.expect("ack", id=1, queued=True)
    await carol.expect("message", data="while away")
    bob2 = await connect(node, peer="bob", resume=last)
    assert bob2.welcome["resumed"] is True
    await bob2.expect("message", data="while away", room="r")
    for c in (alice, carol):
        await c.silent()  # no peer-left / peer-joined for bob
    await carol.send(type="message", room="r", data="after")
    await bob2.expect("message", data="after")


async def test_resumed_false_when_the_inbox_bound_was_exceeded(make_node, connect):
    node = await make_node(grace=10, inbox_limit=3)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="message", to="bob", data=0)
    await bob.expect("message", data=0)
    last = bob.last_seq
    await bob.drop()
    await _away(node, make_node)
    for i in range(1, 6):
        await alice.send(type="message", to="bob", data=i, id=i)
        await alice.expect("ack", id=i, queued=True)
    bob2 = await connect(node, peer="bob", resume=last)
    assert bob2.welcome["resumed"] is False  # 1 and 2 were pushed out: renegotiate
    assert [(await bob2.recv())["data"] for _ in range(3)] == [3, 4, 5]  # what is left still arrives


async def test_grace_expiry_leaves_rooms_and_forgets_the_peer(make_node, connect):
    node = await make_node(grace=0.5)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await join_all([alice, bob])
    await bob.send(type="ping")
    await bob.expect("pong")
    await bob.drop()
    await alice.expect("peer-left", room="r", peer="bob", timeout=3)
    await alice.send(type="message", to="bob", data=1, id=1)
    await alice.expect("error", code="peer-unavailable", id=1)
    bob2 = await connect(node, peer="bob", resume="1-0")
    assert bob2.welcome["resumed"] is False
    await bob2.send(type="message", room="r", data="x", id=2)
    await bob2.expect("error", code="not-in-room", id=2)


async def test_resume_with_an_unknown_future_seq_is_not_resumed(make_node, connect):
    node = await make_node(grace=10)
    _alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await bob.drop()
    await _away(node, make_node)
    ahead = int(time.time() * 1000) + 3_600_000  # an hour ahead: a skewed clock, not a forgery (400, tests/security)
    bob2 = await connect(node, peer="bob", resume=f"{ahead}-0")
    assert bob2.welcome["resumed"] is False


async def test_takeover_with_resume_replays_and_closes_the_old_socket(make_node, connect):
    node = await make_node(grace=10)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    for i in range(3):
        await alice.send(type="message", to="bob", data=i)
    first = (await bob.expect("message", data=0))["seq"]
    bob2 = await connect(node, peer="bob", resume=first)  # e.g. the app restarted on a new network
    assert bob2.welcome["resumed"] is True
    assert [(await bob2.recv())["data"] for _ in range(2)] == [1, 2]
    assert await bob.closed() == 4409


async def test_malformed_resume_is_refused_before_the_upgrade(node):
    async with aiohttp.ClientSession() as http:
        async with http.get(node.replace("ws", "http") + "/ws", params={"resume": "yesterday"}) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "bad-request"
