"""The deployed topology for real: nginx (rendered from nginx/) in front of three
`signaling serve` processes on a real redis-server, started by the launcher. Offer /
answer across nodes, a rolling restart under traffic, draining a node, scaling."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from cluster_support import AppPeer, stream_reports
from signaling.launcher import LocalCluster
from support import Client

FAST = ["--rate", "2000", "--burst", "2000"]  # the load tests send faster than the default per-connection limit


async def test_peers_on_different_nodes_complete_offer_answer_and_candidates(tmp_path):
    async with LocalCluster(3, workdir=tmp_path, node_args=FAST) as cluster:
        alice = await Client.connect(cluster.endpoint, peer="alice")
        bob = await Client.connect(cluster.endpoint, peer="bob")
        try:
            # least_conn: the second connection goes to a node without one
            assert alice.welcome["node"] != bob.welcome["node"], (alice.welcome, bob.welcome)
            assert {alice.welcome["node"], bob.welcome["node"]} <= {n.node_id for n in cluster.nodes}
            offer = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
            await alice.send(type="offer", to="bob", offer=offer, id=1)
            await alice.expect("ack", id=1)
            got = await bob.expect("offer", offer=offer)
            assert got["from"] == "alice" and got["seq"]
            answer = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}
            await bob.send(type="answer", to="alice", answer=answer, id="a1")
            await bob.expect("ack", id="a1")
            assert (await alice.expect("answer", answer=answer))["from"] == "bob"
            candidates = [{"candidate": f"candidate:{i} 1 udp 2122260223 127.0.0.1 {50000 + i} typ host",
                           "sdpMid": "0", "sdpMLineIndex": 0} for i in range(3)]
            for c in candidates:
                await alice.send(type="candidate", to="bob", candidate=c)
                await bob.send(type="candidate", to="alice", candidate=c)
            await alice.send(type="candidate", to="bob", candidate=None)  # end of candidates
            for c in candidates:
                assert (await bob.expect("candidate"))["candidate"] == c
                assert (await alice.expect("candidate"))["candidate"] == c
            assert (await bob.expect("candidate"))["candidate"] is None
            await alice.silent()
            await bob.silent()
        finally:
            await alice.close()
            await bob.close()


@pytest.mark.slow
async def test_rolling_restart_under_traffic_loses_nothing_and_duplicates_nothing(tmp_path):
    pairs, interval = 6, 0.025
    args = [*FAST, "--drain-delay", "0.5", "--drain-window", "1", "--grace", "15"]
    async with LocalCluster(3, workdir=tmp_path, node_args=args) as cluster, aiohttp.ClientSession() as http:
        peers = [await AppPeer(cluster.endpoint, f"p{i}", http).start() for i in range(2 * pairs)]
        partner = {p.peer: peers[i ^ 1].peer for i, p in enumerate(peers)}
        by_id = {p.peer: p for p in peers}
        assert len({p.node for p in peers}) == 3, Counter(p.node for p in peers)
        stop = asyncio.Event()
        talkers = [asyncio.create_task(p.talk(partner[p.peer], stop, interval)) for p in peers]
        restarts = []
        try:
            await asyncio.sleep(1.0)
            for node in cluster.nodes:  # one at a time: drain (SIGTERM), start again, let it settle
                began = time.monotonic()
                assert await node.drain(timeout=30) == 0, node.log()[-12000:]
                await node.start()
                restarts.append(time.monotonic() - began)
                await asyncio.sleep(1.0)
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            sent = dict(zip((p.peer for p in peers), await asyncio.gather(*talkers), strict=True))
        reports = await stream_reports(peers, partner, sent)  # every acked message reaches its recipient

    total = sum(sent.values())
    lost = sum(len(r.lost) for r in reports.values())
    seq_repeats = sum(r.seq_repeats for r in reports.values())
    copies = [n for r in reports.values() for n in r.copies]
    resends = sum(len(r.resent) for r in reports.values())
    gap = max(r.longest_gap() for r in reports.values())
    latency = max(r.worst_latency(by_id[s].sent_at) for s, r in reports.items())
    reconnects = sum(len(p.connections) - 1 for p in peers)
    print(f"\nrolling restart of 3 nodes ({', '.join(f'{t:.1f}s' for t in restarts)} each), {len(peers)} peers: "
          f"{total} messages sent and acked, {lost} lost, {seq_repeats} delivered twice by the server, "
          f"{len(copies)} copies from {resends} resends of unacked messages; {reconnects} reconnects, "
          f"{sum(p.refused_handshakes for p in peers)} handshakes refused and retried; "
          f"longest delivery gap {gap * 1000:.0f} ms, worst send-to-delivery {latency * 1000:.0f} ms")
    assert total > 1000
    assert lost == 0, {s: sorted(r.lost)[:10] for s, r in reports.items() if r.lost}
    assert seq_repeats == 0
    for s, r in reports.items():
        assert r.in_order, s
        # The server delivers every message it accepted exactly once (no seq twice), and
        # a drain lets the frame it is handling finish and send its ack before the 1001,
        # so no sender is left guessing: not even a resend arrives twice.
        assert r.copies == [], (s, r.copies, r.resent)
    for p in peers:
        assert len(p.connections) >= 2, f"{p.peer} was never moved"
        assert all(c.resumed for c in p.connections if c.asked_resume), p.connections
        assert all(c.code == 1001 for c in p.connections[:-1]), [c.code for c in p.connections]
        assert not p.errors, p.errors
    assert gap < 5.0


async def test_draining_one_node_moves_its_clients_to_the_others(tmp_path):
    args = [*FAST, "--drain-delay", "1", "--drain-window", "1"]
    async with LocalCluster(3, workdir=tmp_path, node_args=args) as cluster, aiohttp.ClientSession() as http:
        peers = [await AppPeer(cluster.endpoint, f"c{i}", http).start() for i in range(9)]
        spread = Counter(p.node for p in peers)
        assert sorted(spread.values()) == [3, 3, 3], spread  # least_conn with shared counts
        target = cluster.nodes[1]
        victims = [p for p in peers if p.node == target.node_id]
        others = [p for p in peers if p.node != target.node_id]
        for i, p in enumerate(victims):  # each has processed a message: it reconnects with resume
            await others[i].send_numbered(p.peer, 0)
        await asyncio.sleep(0.2)
        assert all(p.last_seq for p in victims)
        sigterm = time.monotonic()
        await target.drain(wait=False)
        # during the drain delay: out of the load balancer, its open connections still work
        await asyncio.sleep(0.3)
        async with http.get(f"{target.base}/readyz") as r:
            assert r.status == 503 and (await r.json())["message"] == "draining"
        async with http.get(f"{target.base}/healthz") as r:
            assert r.status == 200  # alive: liveness must not kill a draining node
        await victims[0].send_numbered(others[0].peer, 0, ack_timeout=0.9)
        assert victims[0].connections[-1].node == target.node_id and len(victims[0].connections) == 1
        newcomer = await AppPeer(cluster.endpoint, "newcomer", http).start()
        assert newcomer.node != target.node_id  # its 503 made nginx try another node
        # then the 1001s, spread over the window, and every victim resumes elsewhere
        assert await target.wait(30) == 0
        for p in victims:
            await asyncio.wait_for(p.connected.wait(), 10)
        closes = sorted(p.connections[0].closed - sigterm for p in victims)
        print(f"\n1001 closes at {', '.join(f'{t:.2f}s' for t in closes)} after SIGTERM "
              f"(drain delay 1 s, window 1 s); moved to {[p.node for p in victims]}")
        assert closes[0] >= 0.9  # not before the delay
        assert closes[-1] - closes[0] >= 0.4  # spread over the window, not all at once
        for p in victims:
            assert [c.code for c in p.connections[:-1]] == [1001]
            assert p.node != target.node_id and p.connections[-1].resumed is True
        assert all(len(p.connections) == 1 for p in others)  # nobody else was disturbed
        # and they are reachable where they landed
        for i, p in enumerate(victims):
            await others[i].send_numbered(p.peer, 1)
        await asyncio.sleep(0.3)
        for i, p in enumerate(victims):
            assert [(d.sender, d.n) for d in p.deliveries] == [(others[i].peer, 0), (others[i].peer, 1)]
        assert [(d.sender, d.n) for d in others[0].deliveries] == [(victims[0].peer, 0)]
        for p in [*peers, newcomer]:
            await p.close()


async def test_scale_up_reaches_the_new_node_and_scale_down_drains_it(tmp_path):
    async with LocalCluster(2, workdir=tmp_path, node_args=FAST) as cluster, aiohttp.ClientSession() as http:
        peers = [await AppPeer(cluster.endpoint, f"s{i}", http).start() for i in range(4)]
        assert Counter(p.node for p in peers) == {"node-1": 2, "node-2": 2}
        added = await cluster.add_node()
        assert added.node_id == "node-3"
        # nginx reloaded: new clients go to the node with the fewest connections, the new one
        newcomers = []
        deadline = time.monotonic() + 10
        while not any(p.node == "node-3" for p in newcomers):
            assert time.monotonic() < deadline, [p.node for p in newcomers]
            newcomers.append(await AppPeer(cluster.endpoint, f"n{len(newcomers)}", http).start())
        on_new = [p for p in newcomers if p.node == "node-3"]
        await peers[0].send_numbered(on_new[0].peer, 0)
        await asyncio.sleep(0.2)
        assert on_new[0].last_seq
        assert await cluster.remove_node(added) == 0
        for p in on_new:
            await asyncio.wait_for(p.connected.wait(), 10)
            assert p.node in ("node-1", "node-2") and [c.code for c in p.connections[:-1]] == [1001]
        assert on_new[0].connections[-1].resumed is True
        rendered = (cluster.nginx.workdir / "conf.d" / "signaling.conf").read_text()
        assert added.address not in rendered and all(n.address in rendered for n in cluster.nodes)
        late = [await AppPeer(cluster.endpoint, f"late{i}", http).start() for i in range(4)]
        assert {p.node for p in late} <= {"node-1", "node-2"}
        await peers[0].send_numbered(on_new[0].peer, 1)
        await asyncio.sleep(0.2)
        assert [d.n for d in on_new[0].deliveries] == [0, 1]
        for p in [*peers, *newcomers, *late]:
            await p.close()
