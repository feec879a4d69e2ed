"""Every row of the protocol's message tables, over real WebSockets against a running app."""

from __future__ import annotations

import pytest

from signaling.inbox import parse_seq
from support import join_all

RELAYED = [
    ("offer", {"offer": {"type": "offer", "sdp": "v=0\r\n"}}),
    ("answer", {"answer": {"type": "answer", "sdp": "v=0\r\n"}}),
    ("candidate", {"candidate": {"candidate": "candidate:1 1 udp 1 198.18.0.1 5000 typ host", "sdpMid": "0",
                                 "sdpMLineIndex": 0}}),
    ("candidate", {"candidate": None}),
    ("bye", {"reason": "hung up"}),
    ("bye", {}),
    ("message", {"data": {"muted": True, "chat": ["any", "json", 1, None]}}),
]


async def test_welcome_names_peer_node_ice_heartbeat(node, connect):
    alice = await connect(node, peer="alice")
    assert alice.welcome == {"type": "welcome", "peer": "alice", "node": "test-node-1", "iceServers": [],
                             "heartbeat": 25, "resumed": False, "seq": "0-0"}  # a new peer: nothing before


async def test_open_mode_assigns_a_random_id_when_none_is_asked(node, connect):
    a, b = await connect(node), await connect(node)
    assert a.peer != b.peer
    await a.send(type="message", to=b.peer, data="hi")
    assert (await b.expect("message"))["from"] == a.peer


@pytest.mark.parametrize(("kind", "payload"), RELAYED)
async def test_relay_by_to_stamps_from_and_seq_and_keeps_the_object(node, connect, kind, payload):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    sent = {"type": kind, "to": "bob", "from": "mallory", "extra": {"kept": True}, **payload}
    await alice.send(**sent)
    got = await bob.expect(kind)
    assert got.pop("from") == "alice"  # the client-supplied `from` is overwritten
    assert parse_seq(got.pop("seq")) is not None
    sent.pop("from")
    assert got == sent
    await alice.silent()  # no receipt without `id`


async def test_receipt_ack_carries_the_id_string_or_integer(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="offer", to="bob", offer={"type": "offer", "sdp": "x"}, id="o-1")
    await alice.expect("ack", id="o-1")
    await alice.send(type="answer", to="bob", answer={"type": "answer", "sdp": "y"}, id=7)
    assert await alice.recv() == {"type": "ack", "id": 7}
    await bob.expect("offer")
    await bob.expect("answer")


async def test_order_per_sender_and_seq_increasing(make_node, connect):
    node = await make_node(rate=10_000, burst=1_000)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    for i in range(200):
        await alice.send(type="message", to="bob", data=i)
    seqs = []
    for i in range(200):
        got = await bob.expect("message", data=i)
        seqs.append(parse_seq(got["seq"]))
    assert seqs == sorted(seqs) and len(set(seqs)) == 200


async def test_ping_gets_pong(node, connect):
    alice = await connect(node, peer="alice")
    await alice.send(type="ping")
    assert await alice.recv() == {"type": "pong"}
    await alice.send(type="ping", id=3)
    assert await alice.recv() == {"type": "pong"}
    assert await alice.recv() == {"type": "ack", "id": 3}


async def test_join_answers_others_and_tells_them(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="join", room="r1")
    assert await alice.recv() == {"type": "joined", "room": "r1", "peers": []}
    await bob.send(type="join", room="r1", id="j")
    assert await bob.recv() == {"type": "joined", "room": "r1", "peers": ["alice"]}
    assert await bob.recv() == {"type": "ack", "id": "j"}
    event = await alice.expect("peer-joined", room="r1", peer="bob")
    assert parse_seq(event["seq"]) is not None


async def test_join_twice_is_harmless_and_silent_for_others(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="join", room="r")
    await alice.expect("joined")
    await bob.send(type="join", room="r")
    await bob.expect("joined")
    await alice.expect("peer-joined")
    await bob.send(type="join", room="r")
    await bob.expect("joined", peers=["alice"])
    await alice.silent()


async def test_leave_answers_left_and_tells_the_others(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    for c in (alice, bob):
        await c.send(type="join", room="r")
        await c.expect("joined")
    await alice.expect("peer-joined")
    await bob.send(type="leave", room="r")
    assert await bob.recv() == {"type": "left", "room": "r"}
    await alice.expect("peer-left", room="r", peer="bob")


async def test_room_broadcast_reaches_every_other_member_once(node, connect):
    a, b, c, outsider = [await connect(node, peer=p) for p in ("a", "b", "c", "outsider")]
    for client in (a, b, c):
        await client.send(type="join", room="call")
        await client.expect("joined")
    await a.expect("peer-joined", peer="b")
    await a.expect("peer-joined", peer="c")
    await b.expect("peer-joined", peer="c")
    await a.send(type="offer", room="call", offer={"type": "offer", "sdp": "x"}, id=1)
    await a.expect("ack", id=1)
    for client in (b, c):
        got = await client.expect("offer", room="call")
        assert got["from"] == "a"
    await a.silent()
    await outsider.silent()


async def test_clean_close_leaves_rooms_with_peer_left(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await join_all([alice, bob])
    await bob.close()
    await alice.expect("peer-left", room="r", peer="bob")
    await alice.send(type="message", to="bob", data=1)
    await alice.expect("error", code="peer-unavailable")
