"""Every row of the protocol's error table, and what bad input must never do."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from signaling import auth
from signaling.bus import BusUnavailable
from signaling.bus.memory import MemoryBus
from support import SECRET


class FaultyBus(MemoryBus):
    """A memory bus whose cluster can be switched off (`down`) or made to crash (`broken`)."""

    down = False
    broken = False

    @property
    def ready(self) -> bool:
        return not self.down

    def _check(self) -> None:
        if self.down:
            raise BusUnavailable("switched off by the test")
        if self.broken:
            raise RuntimeError("bug injected by the test")

    async def send(self, to: str, body: bytes, **kw: Any) -> Any:
        self._check()
        return await super().send(to, body, **kw)

    async def join(self, peer: str, room: str, **kw: Any) -> Any:
        self._check()
        return await super().join(peer, room, **kw)


async def test_bad_json(node, connect):
    alice = await connect(node, peer="alice")
    for frame in ("{", "not json", "[1,2]", '"text"', "42", "null", '{"type":"ping",}', "NaN"):
        await alice.send_raw(frame)
        err = await alice.expect("error", code="bad-json")
        assert err["message"] and "id" not in err


@pytest.mark.parametrize("frame", [
    {"type": 5},
    {"to": "bob"},
    {"type": "offer", "offer": {"type": "offer", "sdp": "x"}},  # neither to nor room
    {"type": "offer", "to": "bob", "room": "r", "offer": {}},  # both
    {"type": "offer", "to": "bob"},  # payload missing
    {"type": "offer", "to": "bob", "offer": "sdp-as-string"},
    {"type": "answer", "to": "bob", "answer": {"sdp": 1}},
    {"type": "candidate", "to": "bob"},
    {"type": "candidate", "to": "bob", "candidate": "a=candidate"},
    {"type": "bye", "to": "bob", "reason": 3},
    {"type": "message", "to": "bob"},
    {"type": "message", "to": "bad id with spaces", "data": 1},
    {"type": "message", "to": "x" * 65, "data": 1},
    {"type": "join"},
    {"type": "join", "room": ""},
    {"type": "leave", "room": ["r"]},
    {"type": "ping", "id": True},
    {"type": "ping", "id": {"nested": 1}},
])
async def test_bad_message_says_which_field(node, connect, frame):
    alice = await connect(node, peer="alice")
    await alice.send(**frame)
    err = await alice.expect("error", code="bad-message")
    assert err["message"]


async def test_bad_message_echoes_a_valid_id(node, connect):
    alice = await connect(node, peer="alice")
    await alice.send(type="offer", to="bob", id="x1")
    await alice.expect("error", code="bad-message", id="x1")


async def test_binary_frame_is_a_bad_message(node, connect):
    alice = await connect(node, peer="alice")
    await alice.ws.send_bytes(b'{"type":"ping"}')
    await alice.expect("error", code="bad-message")
    await alice.send(type="ping")
    await alice.expect("pong")


async def test_unknown_type(node, connect):
    alice = await connect(node, peer="alice")
    await alice.send(type="subscribe", id=9)
    await alice.expect("error", code="unknown-type", id=9)


async def test_peer_unavailable(node, connect):
    alice = await connect(node, peer="alice")
    await alice.send(type="offer", to="nobody", offer={"type": "offer", "sdp": "x"}, id=1)
    await alice.expect("error", code="peer-unavailable", id=1)


async def test_not_in_room_for_broadcast_and_leave(node, connect):
    alice = await connect(node, peer="alice")
    await alice.send(type="message", room="elsewhere", data=1, id=1)
    await alice.expect("error", code="not-in-room", id=1)
    await alice.send(type="leave", room="elsewhere", id=2)
    await alice.expect("error", code="not-in-room", id=2)


async def test_room_full_at_the_member_limit(make_node, connect):
    node = await make_node(room_limit=2)
    a, b, c = [await connect(node, peer=p) for p in "abc"]
    for client in (a, b):
        await client.send(type="join", room="r")
        await client.expect("joined")
    await c.send(type="join", room="r", id="j")
    await c.expect("error", code="room-full", id="j")
    await a.expect("peer-joined", peer="b")
    await a.silent()  # nobody hears of the refused join


async def test_forbidden_room_by_token_claim(make_node, connect):
    node = await make_node(jwt_secret=SECRET)
    token = auth.mint(SECRET, "alice", ttl=60, rooms=["team-*", "lobby"])
    alice = await connect(node, token=token)
    for room in ("lobby", "team-red"):
        await alice.send(type="join", room=room)
        await alice.expect("joined", room=room)
    await alice.send(type="join", room="admin", id=1)
    await alice.expect("error", code="forbidden", id=1)
    await alice.send(type="join", room="team", id=2)  # the prefix needs the dash too
    await alice.expect("error", code="forbidden", id=2)


async def test_forbidden_beyond_rooms_per_peer(make_node, connect):
    node = await make_node(rooms_per_peer=2)
    alice = await connect(node, peer="alice")
    for room in ("r1", "r2"):
        await alice.send(type="join", room=room)
        await alice.expect("joined")
    await alice.send(type="join", room="r3")
    await alice.expect("error", code="forbidden")


async def test_rate_limited_drops_the_message_and_recovers(make_node, connect):
    node = await make_node(rate=5, burst=3)
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    for i in range(5):
        await alice.send(type="message", to="bob", data=i, id=i)
    for i in range(3):
        await alice.expect("ack", id=i)
    for i in (3, 4):
        await alice.expect("error", code="rate-limited", id=i)
    for i in range(3):
        await bob.expect("message", data=i)
    await bob.silent(0.3)  # the dropped ones never arrive
    await alice.send(type="ping")  # refilled by now (5/s)
    await alice.expect("pong")


async def test_unavailable_when_the_bus_is_down_then_recovers(make_node, connect):
    bus = FaultyBus(node_id="n", grace=5, inbox_limit=10)
    node = await make_node(bus=bus, node_id="n")
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    bus.down = True
    await alice.send(type="message", to="bob", data=1, id=1)
    await alice.expect("error", code="unavailable", id=1)
    await alice.send(type="join", room="r", id=2)
    await alice.expect("error", code="unavailable", id=2)
    async with aiohttp.ClientSession() as http:
        async with http.get(node.replace("ws", "http") + "/readyz") as r:
            assert r.status == 503 and (await r.json())["error"] == "unavailable"
        async with http.get(node.replace("ws", "http") + "/ws") as r:
            assert r.status == 503  # no new connections while it cannot route
    bus.down = False
    await alice.send(type="message", to="bob", data=2, id=3)
    await alice.expect("ack", id=3)
    assert (await bob.expect("message"))["data"] == 2  # the refused message was never delivered


async def test_bad_input_never_disturbs_another_pair(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    vandal = await connect(node, peer="vandal")
    for junk in ("{", "[]", '{"type":"offer"}', '{"type":"x"}', "\x00", "9" * 5000):
        await vandal.send_raw(junk)
        await alice.send(type="message", to="bob", data=junk[:10])
        assert (await bob.expect("message"))["data"] == junk[:10]
    await vandal.ws.send_bytes(b"\xff\xfe")
    await vandal.expect("error")
