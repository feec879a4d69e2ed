"""Authorization on every attach (issue 11, case 3): a peer that comes back with a token
that no longer grants a room it was in (resume on another node, a plain reconnect, a
takeover of its live connection) is taken out of that room: the others get `peer-left`,
it gets `left`, and it can neither receive nor send the room's broadcasts. Two real
nodes on one real Redis, HS256 tokens."""

from __future__ import annotations

import pytest

from signaling.auth import mint
from support import Client

SECRET = "s" * 40
OFFER = {"type": "offer", "sdp": "x"}


def token(sub: str, rooms: list[str] | None) -> str:
    return mint(SECRET, sub, ttl=600, rooms=rooms)


async def join(client: Client, room: str) -> None:
    await client.send(type="join", room=room, id=f"j-{room}")
    await client.expect("joined", room=room)
    await client.expect("ack", id=f"j-{room}")


@pytest.mark.parametrize("how", ["resume", "reconnect", "takeover"])
async def test_a_room_the_new_token_does_not_grant_is_left_on_attach(cluster, how):
    node1, node2 = await cluster(2, "--jwt-secret", SECRET, "--grace", "10")
    bob = await Client.connect(node1.ws_base, token=token("bob", None))
    alice = await Client.connect(node1.ws_base, token=token("alice", ["r1", "r2"]))
    again = None
    try:
        for room in ("r1", "r2"):
            await join(bob, room)
            await join(alice, room)
            await bob.expect("peer-joined", room=room, peer="alice")
        narrower = token("alice", ["r2"])
        if how == "takeover":
            again = await Client.connect(node2.ws_base, token=narrower)
        else:
            await alice.drop()
            resume = {"resume": alice.welcome["seq"]} if how == "resume" else {}
            again = await Client.connect(node2.ws_base, token=narrower, **resume)
        assert (await again.expect("left"))["room"] == "r1"
        assert (await bob.expect("peer-left"))["room"] == "r1"
        await bob.send(type="offer", room="r1", offer=OFFER, id="b1")
        await bob.expect("ack", id="b1")
        await bob.send(type="offer", room="r2", offer=OFFER, id="b2")
        await bob.expect("ack", id="b2")
        got = await again.expect("offer")
        assert got["room"] == "r2", f"alice got a broadcast of a room her token no longer grants: {got}"
        await again.send(type="offer", room="r1", offer=OFFER, id="a1")
        assert (await again.expect("error", id="a1"))["code"] == "not-in-room"
        await bob.silent(0.3)
    finally:
        for c in (alice, bob, again):
            if c is not None:
                await c.close()
