"""A crafted `resume` (issue 11, case 1): a value no server ever sent is refused before
the upgrade, never reaches Redis, and neither the node's readiness nor the peer's live
connection notices; a forged "recent" seq cannot make the cluster believe Redis lost
its data. Two real nodes on one real Redis."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
import redis

from support import Client


async def ready(http: aiohttp.ClientSession, node) -> int:
    async with http.get(f"{node.base}/readyz") as r:
        return r.status


async def handshake_status(base: str, **query: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{base}/ws", params=query, heartbeat=None)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, {}
        # upgraded: the server took the value; read what it says
        msg = await ws.receive(timeout=3)
        await ws.close()
        return 101, {"frame": msg.data, "close": ws.close_code}


async def gone(sender: Client, peer: str, within: float = 3.0) -> None:
    """Messages to `peer` are soon refused with `peer-unavailable` (until its node has
    handled the close, they may still be taken)."""
    deadline = asyncio.get_running_loop().time() + within
    for attempt in itertools.count():
        await sender.send(type="offer", to=peer, offer={"type": "offer", "sdp": "y"}, id=f"g{attempt}")
        reply = await sender.recv()
        if reply.get("code") == "peer-unavailable":
            return
        assert reply["type"] == "ack", reply
        assert asyncio.get_running_loop().time() < deadline, f"{peer} still takes messages {within}s after leaving"
        await asyncio.sleep(0.05)


BAD = [
    "0-18446744073709551615",          # the largest stream id: XRANGE '(' of it is an error in Redis
    "18446744073709551615-0",
    "99999999999999-0",                # year 5138: a seq from the future
    "1-9007199254740993",              # beyond 2^53: Lua's numbers cannot compare it
    "00000000000000000000000001-1",    # padded: compares equal to 1-1 in Lua, not in Redis
]


@pytest.mark.parametrize("resume", BAD)
async def test_a_resume_no_server_sent_is_refused_before_the_upgrade_and_harms_nobody(cluster, resume):
    node1, node2 = await cluster(2)
    alice = await Client.connect(node1.ws_base, peer="alice")
    bob = await Client.connect(node2.ws_base, peer="bob")
    try:
        status, seen = await handshake_status(node2.ws_base, peer="alice", resume=resume)
        assert status == 400, f"resume={resume!r} was taken: {seen}"
        async with aiohttp.ClientSession() as http:
            assert await ready(http, node2) == 200
            assert await ready(http, node1) == 200
        # alice's live connection still gets what is sent to her, from either node
        await bob.send(type="offer", to="alice", offer={"type": "offer", "sdp": "x"}, id="1")
        await bob.expect("ack", id="1")
        got = await alice.expect("offer", timeout=2)
        assert got["from"] == "bob"
        await alice.close()  # a clean close: she is gone for good (once her node has seen it), not a ghost
        await gone(bob, "alice")
    finally:
        await alice.close()
        await bob.close()


async def test_a_forged_recent_seq_does_not_make_the_cluster_think_redis_lost_its_data(cluster, redis_server):
    """A resume "younger than the grace" for an id Redis does not know is how a node
    notices Redis lost its data; a client must not be able to fake that evidence (it puts
    every node in a mode where broadcasts and unknown peers answer `unavailable`). Only a
    seq older than Redis's data set is evidence; the cluster here runs past its first grace."""
    node1, node2 = await cluster(2, "--grace", "2")
    await asyncio.sleep(2.2)  # the data set is older than a grace: no seq of a lost one can be that recent
    bob = await Client.connect(node1.ws_base, peer="bob")
    carol = await Client.connect(node2.ws_base, peer="carol")
    try:
        for c in (bob, carol):
            await c.send(type="join", room="r", id="j")
            await c.expect("joined")
            await c.expect("ack", id="j")
        await bob.expect("peer-joined")
        seconds, micros = redis.Redis.from_url(redis_server.url).time()
        forged = f"{seconds * 1000 + micros // 1000 - 1000}-0"
        mallory = await Client.connect(node2.ws_base, peer="mallory", resume=forged)
        assert mallory.welcome["resumed"] is False
        await mallory.close()
        await bob.send(type="offer", room="r", offer={"type": "offer", "sdp": "x"}, id="b")
        await bob.expect("ack", id="b")
        assert (await carol.expect("offer"))["from"] == "bob"
        await carol.send(type="offer", to="nobody", offer={"type": "offer", "sdp": "x"}, id="n")
        assert (await carol.expect("error", id="n"))["code"] == "peer-unavailable"
    finally:
        await bob.close()
        await carol.close()


@pytest.mark.parametrize("owner", ["node-1", "node-gone"])
async def test_the_sweeper_repairs_a_peer_no_live_node_holds(cluster, redis_server, key_prefix, owner):
    """Whatever left it there, a peer Redis says is connected to a node that does not hold
    it (a live node without its connection, or a node that is gone) is no ghost for long:
    its grace runs, then it leaves its rooms and messages to it are refused."""
    node1, node2 = await cluster(2, "--grace", "1")
    bob = await Client.connect(node2.ws_base, peer="bob")
    try:
        await bob.send(type="join", room="r", id="j")
        await bob.expect("joined")
        await bob.expect("ack", id="j")
        r = redis.Redis.from_url(redis_server.url)
        tag = f"{key_prefix}:{{p:ghost}}"
        r.hset(f"{tag}:state", mapping={"epoch": 1, "started": 0, "node": owner, "connected": 1,
                                        "deadline": 0, "delivered": "0-0"})
        r.sadd(f"{tag}:rooms", "r")
        r.sadd(f"{key_prefix}:{{r:r}}:members", "ghost")
        left = await bob.expect("peer-left", timeout=8)
        assert left["peer"] == "ghost"
        await bob.send(type="offer", to="ghost", offer={"type": "offer", "sdp": "x"}, id="g")
        assert (await bob.expect("error", id="g"))["code"] == "peer-unavailable"
        assert not r.exists(f"{tag}:state")
    finally:
        await bob.close()


async def test_the_sweeper_repairs_ghosts_on_redis_cluster(redis_cluster, key_prefix, processes):
    """The same walk, shard by shard, on Redis Cluster."""
    nodes = [processes("--redis-url", redis_cluster.url, "--key-prefix", key_prefix, "--node-id", f"c{i}",
                       "--grace", "1") for i in (1, 2)]
    for node in nodes:
        await node.wait_ready()
    bob = await Client.connect(nodes[1].ws_base, peer="bob")
    try:
        await bob.send(type="join", room="r", id="j")
        await bob.expect("joined")
        await bob.expect("ack", id="j")
        host, port = redis_cluster.url.partition("://")[2].split(",")[0].rsplit(":", 1)
        r = redis.RedisCluster(host=host, port=int(port))
        tag = f"{key_prefix}:{{p:ghost}}"
        r.hset(f"{tag}:state", mapping={"epoch": 1, "started": 0, "node": "node-gone", "connected": 1,
                                        "deadline": 0, "delivered": "0-0"})
        r.sadd(f"{tag}:rooms", "r")
        r.sadd(f"{key_prefix}:{{r:r}}:members", "ghost")
        assert (await bob.expect("peer-left", timeout=8))["peer"] == "ghost"
        assert not r.exists(f"{tag}:state")
        r.close()
    finally:
        await bob.close()
