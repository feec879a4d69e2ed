"""The protocol across nodes: real node processes on a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time

import redis

from signaling.inbox import parse_seq
from support import Client, eventually, join_all


async def test_relay_across_nodes_with_receipts(cluster, connect):
    n1, n2 = await cluster(2)
    alice, bob = await connect(n1.ws_base, peer="alice"), await connect(n2.ws_base, peer="bob")
    assert (alice.welcome["node"], bob.welcome["node"]) == ("node-1", "node-2")
    await alice.send(type="offer", to="bob", offer={"type": "offer", "sdp": "v=0"}, id=1)
    await alice.expect("ack", id=1)
    offer = await bob.expect("offer", **{"from": "alice"})
    assert parse_seq(offer["seq"]) is not None
    await bob.send(type="answer", to="alice", answer={"type": "answer", "sdp": "v=0"}, id="a")
    await bob.expect("ack", id="a")
    await alice.expect("answer", **{"from": "bob"})
    for i in range(3):
        await alice.send(type="candidate", to="bob", candidate={"candidate": f"c{i}"})
    for i in range(3):
        assert (await bob.expect("candidate"))["candidate"] == {"candidate": f"c{i}"}
    await alice.send(type="message", to="nobody", data=1, id=2)
    await alice.expect("error", code="peer-unavailable", id=2)


async def test_order_per_pair_across_nodes(cluster, connect):
    n1, n2 = await cluster(2, "--rate", "100000", "--burst", "10000")
    alice, bob = await connect(n1.ws_base, peer="alice"), await connect(n2.ws_base, peer="bob")
    for i in range(500):
        await alice.send(type="message", to="bob", data=i)
    got = [(await bob.expect("message"))["data"] for _ in range(500)]
    assert got == list(range(500))


async def test_room_spread_over_three_nodes(cluster, connect):
    nodes = await cluster(3)
    a, b, c = [await connect(n.ws_base, peer=p) for n, p in zip(nodes, "abc", strict=True)]
    await a.send(type="join", room="r")
    await a.expect("joined", peers=[])
    await b.send(type="join", room="r")
    await b.expect("joined", peers=["a"])
    await a.expect("peer-joined", peer="b")
    await c.send(type="join", room="r")
    await c.expect("joined", peers=["a", "b"])
    for x in (a, b):
        await x.expect("peer-joined", peer="c")
    await b.send(type="message", room="r", data="hello", id=1)
    await b.expect("ack", id=1)
    for x in (a, c):
        got = await x.expect("message", data="hello")
        assert got["from"] == "b" and got["room"] == "r"
    await b.silent()
    await c.close()
    for x in (a, b):
        await x.expect("peer-left", peer="c")
    await a.send(type="leave", room="r")
    await a.expect("left")
    await b.expect("peer-left", peer="a")


async def test_takeover_across_nodes(cluster, connect):
    n1, n2 = await cluster(2)
    alice = await connect(n1.ws_base, peer="alice")
    bob = await connect(n1.ws_base, peer="bob")
    await join_all([alice, bob])
    bob2 = await connect(n2.ws_base, peer="bob")
    assert bob2.welcome["node"] == "node-2"
    assert await bob.closed() == 4409
    await alice.send(type="message", to="bob", data=1, id=1)
    await alice.expect("ack", id=1)
    await bob2.expect("message", data=1)
    await alice.send(type="message", room="r", data=2)
    await bob2.expect("message", data=2)
    await alice.silent()  # no peer-left / peer-joined churn


async def test_racing_connections_one_owner_the_later_wins(cluster, connect):
    n1, n2 = await cluster(2)
    alice = await connect(n1.ws_base, peer="alice")
    for _ in range(5):
        first, second = await asyncio.gather(Client.connect(n1.ws_base, peer="bob", welcome=False),
                                             Client.connect(n2.ws_base, peer="bob", welcome=False))
        # exactly one of them is told it was replaced (maybe before its welcome); the other owns bob
        results = await asyncio.gather(first.closed(timeout=2), second.closed(timeout=2), return_exceptions=True)
        replaced = [r for r in results if r == 4409]
        owners = [c for c, r in zip((first, second), results, strict=True)
                  if isinstance(r, (AssertionError, asyncio.TimeoutError))]
        assert len(replaced) == 1 and len(owners) == 1, results
        await alice.send(type="message", to="bob", data="who", id=1)
        await alice.expect("ack", id=1)
        await owners[0].expect("message", data="who")
        for c in (first, second):
            await c.close()
        await asyncio.sleep(0.2)


async def test_drop_on_one_node_resume_on_another(cluster, connect):
    n1, n2 = await cluster(2)
    alice, bob = await connect(n1.ws_base, peer="alice"), await connect(n2.ws_base, peer="bob")
    await alice.send(type="message", to="bob", data=0)
    await bob.expect("message", data=0)
    last = bob.last_seq
    await bob.drop()
    acks = []
    for i in range(1, 30):
        await alice.send(type="message", to="bob", data=i, id=i)
        acks.append(await alice.expect("ack", id=i))
    bob2 = await connect(n1.ws_base, peer="bob", resume=last)
    assert bob2.welcome["resumed"] is True
    assert [(await bob2.recv())["data"] for _ in range(29)] == list(range(1, 30))
    await bob2.silent()


async def test_sigkill_a_node_mid_conversation_loses_nothing_acked(cluster, connect, redis_server, key_prefix):
    n1, n2 = await cluster(2, "--grace", "20", "--node-ttl", "1.5")
    alice = await connect(n1.ws_base, peer="alice")
    bob = await Client.connect(n2.ws_base, peer="bob")
    carol = await connect(n1.ws_base, peer="carol")
    await join_all([alice, bob, carol])
    for i in range(20):
        await alice.send(type="message", to="bob", data=i, id=i)
        await alice.expect("ack", id=i)
    for i in range(10):  # bob processes up to message 9, then its node dies
        processed = (await bob.expect("message", data=i))["seq"]
    killed = time.monotonic()
    n2.signal(signal.SIGKILL)
    n2.proc.wait()
    acked = list(range(20))
    for i in range(20, 40):  # alice keeps talking while bob is gone
        await alice.send(type="message", to="bob", data=i, id=i)
        ack = await alice.expect("ack", id=i)
        assert ack.get("queued") is True
        acked.append(i)
    # the cluster notices the dead node: bob becomes reconnecting
    r = redis.Redis.from_url(redis_server.url)
    state = f"{key_prefix}:{{p:bob}}:state"
    while r.hget(state, "connected") != b"0":
        assert time.monotonic() - killed < 10, "the dead node was not noticed"
        await asyncio.sleep(0.05)
    noticed = time.monotonic() - killed
    print(f"\nnode death noticed after {noticed:.2f}s")
    assert noticed < 5
    await carol.silent(0.2)  # no peer-left while bob is in his grace
    bob2 = await connect(n1.ws_base, peer="bob", resume=processed)
    assert bob2.welcome["resumed"] is True
    got = [(await bob2.recv())["data"] for _ in range(30)]
    assert got == acked[10:]  # exactly once, in order, nothing acked lost
    await bob2.silent()
    await bob.http.close()


async def test_killed_node_peers_leave_their_rooms_when_the_grace_runs_out(cluster, connect):
    n1, n2 = await cluster(2, "--grace", "1", "--node-ttl", "1")
    carol = await connect(n1.ws_base, peer="carol")
    bob = await Client.connect(n2.ws_base, peer="bob")
    await join_all([carol, bob])
    killed = time.monotonic()
    n2.signal(signal.SIGKILL)
    n2.proc.wait()
    await carol.expect("peer-left", room="r", peer="bob", timeout=8)
    elapsed = time.monotonic() - killed
    print(f"\npeer-left after {elapsed:.2f}s (node ttl 1 s + grace 1 s)")
    assert 1.0 <= elapsed < 5
    await carol.send(type="message", to="bob", data=1, id=1)
    await carol.expect("error", code="peer-unavailable", id=1)
    await bob.http.close()


async def test_on_redis_cluster_with_sharded_pubsub_only(redis_cluster, key_prefix, tmp_path, connect):
    from support import NodeProcess

    publish_before = redis_cluster.command_calls("publish")
    nodes = [NodeProcess("--redis-url", redis_cluster.url, "--key-prefix", key_prefix, "--node-id", f"c{i}")
             .start(tmp_path) for i in (1, 2, 3)]
    try:
        for n in nodes:
            await n.wait_ready()
        peers = [f"peer-{i}" for i in range(9)]  # spread over the three shards
        clients = [await connect(nodes[i % 3].ws_base, peer=p) for i, p in enumerate(peers)]
        for c in clients:
            await c.send(type="join", room="spread")
            await c.expect("joined")
        for i, c in enumerate(clients):
            for _ in range(len(clients) - 1 - i):
                await c.expect("peer-joined")
        for i, c in enumerate(clients):
            nxt = peers[(i + 1) % len(peers)]
            await c.send(type="message", to=nxt, data=f"{i}->{nxt}", id=i)
        for i, c in enumerate(clients):
            got = sorted([await c.recv(), await c.recv()], key=lambda m: m["type"])
            prev = (i - 1) % len(peers)
            assert got[0] == {"type": "ack", "id": i}
            assert got[1]["data"] == f"{prev}->{peers[i]}"
        await clients[0].send(type="message", room="spread", data="all", id="r")
        await clients[0].expect("ack", id="r")
        for c in clients[1:]:
            await c.expect("message", data="all")
        # a takeover across nodes, on the cluster too
        again = await connect(nodes[1].ws_base, peer="peer-0")
        assert await clients[0].closed() == 4409
        await clients[1].send(type="message", to="peer-0", data="to the new one", id="t")
        await clients[1].expect("ack", id="t")
        await again.expect("message", data="to the new one")
        assert redis_cluster.command_calls("spublish") > 0
        assert redis_cluster.command_calls("publish") == publish_before  # never broadcast to every shard
    finally:
        for n in nodes:
            n.stop()


async def test_redis_cluster_failover_is_followed(key_prefix, tmp_path, connect):
    """A primary dies; its replica takes over. The nodes follow the new topology: the peer
    whose channel lived there is reachable again without reconnecting."""
    from support import NodeProcess, RedisClusterServers

    servers = RedisClusterServers(tmp_path / "rc", primaries=3, replicas=1).start()
    # a node lease outlasts the failover (about 3 s here), whichever shard holds the leases:
    # a shorter one would close every connection, rightly, until the leases can be renewed
    nodes = [NodeProcess("--redis-url", servers.url, "--key-prefix", key_prefix, "--node-id", f"f{i}",
                         "--node-ttl", "8").start(tmp_path) for i in (1, 2)]
    try:
        for n in nodes:
            await n.wait_ready()
        alice, bob = await connect(nodes[0].ws_base, peer="alice"), await connect(nodes[1].ws_base, peer="bob")
        await alice.send(type="message", to="bob", data="before", id=0)
        await alice.expect("ack", id=0)
        await bob.expect("message", data="before")
        victim = servers.primary_of(f"{key_prefix}:{{p:bob}}")
        victim.kill()
        started = time.monotonic()
        i, answers = 1, []
        while True:  # keep trying until bob's shard is served again
            await alice.send(type="message", to="bob", data=i, id=i)
            reply = await alice.recv(timeout=10)
            answers.append(reply)
            if reply["type"] == "ack":
                break
            assert reply["code"] == "unavailable", reply  # never a false "peer-unavailable"
            assert time.monotonic() - started < 30, "the failover was not followed"
            i += 1
            await asyncio.sleep(0.2)
        print(f"\nfailover followed after {time.monotonic() - started:.2f}s")
        assert (await bob.expect("message", timeout=5))["data"] == i  # refused ones never arrive
        await bob.send(type="message", to="alice", data="back", id="b")
        await bob.expect("ack", id="b")
        await alice.expect("message", data="back")
    finally:
        for n in nodes:
            n.stop()
        servers.stop()


async def test_a_connection_lost_unprocessed_resumes_from_welcome_seq_on_another_node(cluster, connect,
                                                                                      redis_server, key_prefix):
    """Protocol 1.1: frames reached bob's socket on node 1, his app handled none, the
    connection died: resuming on node 2 from welcome.seq replays exactly those frames."""
    n1, n2 = await cluster(2)
    alice = await connect(n1.ws_base, peer="alice")
    old = await connect(n2.ws_base, peer="bob")
    await alice.send(type="message", to="bob", data="handled before", id=0)
    await alice.expect("ack", id=0)
    await old.expect("message", data="handled before")
    await old.drop()
    r = redis.Redis(port=redis_server.port)
    await eventually(lambda: r.hget(f"{key_prefix}:{{p:bob}}:state", "connected") == b"0")  # node 2 noticed
    await alice.send(type="message", to="bob", data="queued", id=1)
    await alice.expect("ack", id=1, queued=True)
    bob = await connect(n1.ws_base, peer="bob")  # a restarted app: no seq of its own
    point = bob.welcome["seq"]
    assert bob.welcome["resumed"] is False and point == old.last_seq
    await alice.send(type="message", to="bob", data="live", id=2)
    await alice.expect("ack", id=2)
    for data in ("queued", "live"):
        await bob.expect("message", data=data)  # reached the socket; the app handled none of it
    await bob.drop()
    again = await connect(n2.ws_base, peer="bob", resume=point)
    assert again.welcome["resumed"] is True and again.welcome["node"] == "node-2"
    assert [(await again.expect("message"))["data"] for _ in range(2)] == ["queued", "live"]
    await again.silent()
