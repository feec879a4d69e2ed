"""Partitions, pauses, lost replies and skewed clocks under real processes (issue 10).

Each test reproduces one reported failure with real redis-server and node processes,
a TcpProxy where a node's own link to Redis must fail, SIGSTOP/SIGCONT where a node must
freeze, and libfaketime where its wall clock must be wrong. Clients are `GoodApp`s
(tests/partition_support.py): they reconnect with `resume` after 1001/1006/1011 and never
resend. The assertions are what a user would notice: every acked message is processed
exactly once and in order (unless a later welcome said `resumed: false`), no false
`peer-unavailable`, no 4409 to a peer's newest connection.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from partition_support import (
    GoodApp,
    HandshakeFailed,
    Lab,
    answers,
    assert_promises,
    settle,
    skewed_env,
    until,
    wait_ready_status,
    wall_clock_offset,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
async def lab(tmp_path, key_prefix):
    lab = Lab(tmp_path, key_prefix)
    try:
        yield lab
    finally:
        await lab.close()


async def talk(sender: GoodApp, to: str, numbers: range, pause: float = 0.05) -> None:
    """Numbered messages to `to`, one at a time, each waiting for its answer."""
    for n in numbers:
        await sender.send(n, to=to)
        await asyncio.sleep(pause)


async def received(recipient: GoodApp, sender: GoodApp, stream: str, n: int, timeout: float = 8.0) -> bool:
    """Wait (at most `timeout`) until `recipient` processed `sender`'s message `n` of `stream`;
    the promise checks that follow say what is wrong if it never comes."""
    return await settle(lambda: n in recipient.got(sender.peer, stream), timeout)


async def send_until_acked(sender: GoodApp, to: str, first: int, timeout: float = 10.0) -> int:
    """Send first, first+1, ... (a new number each time: never a resend) until one is acked; its number."""
    deadline = time.monotonic() + timeout
    n = first
    while True:
        await until(lambda: sender.online, timeout, f"{sender.peer} is not connected: {sender.story()}")
        if (await sender.send(n, to=to)).acked:
            return n
        assert time.monotonic() < deadline, f"no message from {sender.peer} to {to} was acked: " \
                                            f"{sender.outcomes(f'to-{to}')}"
        n += 1
        await asyncio.sleep(0.1)


async def talk_while_away(alice: GoodApp, bob: GoodApp, first: int) -> int:
    """alice talks to bob (every 0.1 s) until the cluster has acted on the absence of bob's
    node, and three messages more: an ack said `queued` (the others took it for dead) or
    bob's first connection ended (the node let him go itself). Returns the next number."""
    n, noticed = first, None
    while noticed is None or n < noticed + 3:
        assert n < first + 200, f"nobody acted on the node's absence: alice was told {alice.outcomes('to-bob')}"
        await alice.send(n, to="bob")
        n += 1
        if noticed is None and (any(s.outcome == "queued" for s in alice.sent.values())
                                or bob.conns[0].code is not None):
            noticed = n
        await asyncio.sleep(0.1)
    return n


# -- 1. a node taken for dead loses what was queued meanwhile ------------------------------

async def _queued_while_away(lab: Lab, away, back) -> None:
    """bob on A, alice on B; `away()` makes A look dead for longer than --node-ttl while alice
    talks to bob; `back()` ends it while she goes on. bob must process every acked message,
    in order. A's Redis link is 50 ms long each way: that widens the moment, in A's
    recovery, where a live delivery can overtake the repair from the inbox."""
    redis = lab.redis()
    link = await lab.proxy(redis, delay=0.05)
    node_a = await lab.node("A", f"redis://127.0.0.1:{link.port}/0")
    node_b = await lab.node("B", redis.url)
    bob = await lab.app("bob", node_a, reconnect_to=[node_b, node_a])
    alice = await lab.app("alice", node_b)
    await talk(alice, "bob", range(0, 3))
    assert await received(bob, alice, "to-bob", 2), "no delivery before the fault"
    await away(node_a, link)
    n = await talk_while_away(alice, bob, 3)
    await back(node_a, link)
    await talk(alice, "bob", range(n, n + 80), pause=0.02)  # a conversation goes on as A comes back
    last = await send_until_acked(alice, "bob", n + 80)
    await received(bob, alice, "to-bob", last)
    assert_promises([(alice, bob, "to-bob")], [alice, bob])


async def test_paused_node_loses_nothing_queued_meanwhile(lab):
    """Issue 10.1: SIGSTOP the node holding bob past --node-ttl; bob's client stays connected."""
    async def away(node, link):
        node.signal(signal.SIGSTOP)

    async def back(node, link):
        node.signal(signal.SIGCONT)

    await _queued_while_away(lab, away, back)


async def test_node_cut_off_from_redis_loses_nothing_queued_meanwhile(lab):
    """Issue 10.1, second form: the node's Redis link stalls (both ways) past --node-ttl, then heals."""
    async def away(node, link):
        link.stall("both")

    async def back(node, link):
        link.heal()

    await _queued_while_away(lab, away, back)


# -- 2. after an empty Redis restart, a stale node takes a peer back ----------------------

async def test_stale_node_does_not_take_a_peer_back_after_an_empty_redis_restart(lab):
    """Issue 10.2: bob's epoch on A is 4 when A freezes and Redis restarts empty; bob comes
    back on B (a fresh owner in the new Redis: epoch 1 today). When A wakes, bob's B
    connection must stay his: it keeps receiving, no 4409, no peer-unavailable for alice."""
    redis = lab.redis()
    node_a, node_b = await lab.node_pair(redis, grace=2)
    alice = await lab.app("alice", node_b)
    bob = await lab.app("bob", node_a, reconnect_to=[node_b])
    for _ in range(3):  # each new connection replaces the last (4409): with epochs counted from 1, A's is 4
        older = bob.current
        await bob.connect(node_a.ws_base)
        await until(lambda older=older: older.code == 4409, 5, lambda: f"no takeover on A: {bob.story()}")
    await talk(alice, "bob", range(0, 3))
    assert await received(bob, alice, "to-bob", 2), "no delivery before the fault"
    node_a.signal(signal.SIGSTOP)
    redis.kill()
    redis.start()  # the same port, nothing kept
    await wait_ready_status(node_b, 200, 15)
    bob.walk_away()  # the connection to the frozen A: neither read nor closed any more
    await bob.reconnect()  # to B: a fresh owner in the new Redis
    first = await send_until_acked(alice, "bob", 3)
    node_a.signal(signal.SIGCONT)
    # 4 s of conversation: past A's recovery and past a grace (2 s) that a wrong detach would start
    await talk(alice, "bob", range(first + 1, first + 81), pause=0.05)
    await received(bob, alice, "to-bob", max(alice.acked("to-bob")))
    assert_promises([(alice, bob, "to-bob")], [alice, bob])


# -- 3. a connection replaced with 4409 stays in its old node's table ----------------------

async def test_replaced_connection_is_not_acked_for_when_its_node_loses_redis(lab):
    """Issue 10.3: bob moves from A to B (A's connection gets 4409); later A loses Redis and
    carol, on A, sends to bob. She must not be acked for a message bob never gets."""
    redis = lab.redis()
    link = await lab.proxy(redis)
    node_a = await lab.node("A", f"redis://127.0.0.1:{link.port}/0")
    node_b = await lab.node("B", redis.url)
    bob = await lab.app("bob", node_a, reconnect_to=[node_b])
    on_a = bob.current
    await bob.connect(node_b.ws_base)
    await until(lambda: on_a.code == 4409, 5, lambda: f"bob's connection on A was not replaced: {bob.story()}")
    carol = await lab.app("carol", node_a, reconnect_to=[node_a, node_b])
    alice = await lab.app("alice", node_b)
    link.block()  # A alone loses Redis: its connections drop, new ones are refused
    link.cut()
    await wait_ready_status(node_a, 503, 10)
    sent = await carol.send(0, to="bob", timeout=10)
    assert sent.outcome != "pending", "carol's message got no answer (neither ack nor error)"
    await alice.send(0, to="bob")  # bob is alive and reachable on B all along
    await received(bob, alice, "to-bob", 0)
    await received(bob, carol, "to-bob", 0, timeout=3 if sent.acked else 0.5)
    assert_promises([(carol, bob, "to-bob"), (alice, bob, "to-bob")], [carol, bob, alice])


# -- 4. split brain relays superseded frames -----------------------------------------------

async def test_woken_node_does_not_relay_frames_of_a_superseded_connection(lab):
    """Issue 10.4: alice's node A freezes with her message #3 unread in its socket; she gives
    up on it and carries on from B (#4...). When A wakes it must not relay #3 after #4."""
    redis = lab.redis()
    node_a, node_b = await lab.node_pair(redis)
    alice = await lab.app("alice", node_a, reconnect_to=[node_b])
    bob = await lab.app("bob", node_b)
    carol = await lab.app("carol", node_b)
    for app in (alice, bob, carol):
        await app.join("r")

    async def say(n: int) -> None:  # alice talks to bob, and to the room (bob and carol)
        await alice.send(n, to="bob")
        await alice.send(n, room="r")

    for n in range(3):
        await say(n)
    node_a.signal(signal.SIGSTOP)
    await alice.send_nowait(3, to="bob")  # into A's socket buffer: A reads it when it wakes
    await alice.send_nowait(3, room="r")
    n = 0
    while (await bob.send(n, to="alice")).outcome != "queued":  # the cluster took A for dead
        assert n < 100, f"A was not taken for dead: {bob.outcomes('to-alice')}"
        n += 1
        await asyncio.sleep(0.1)
    alice.abandon()
    await alice.reconnect()  # on B, resuming: she takes over her peer id
    for n in range(4, 7):
        await say(n)
    node_a.signal(signal.SIGCONT)
    await answers(node_a)  # A's loop has run: whatever it relays from its backlog is on its way
    await say(7)
    for app in (bob, carol):
        await received(app, alice, "room-r", 7)
    await received(bob, alice, "to-bob", 7)
    assert_promises([(alice, bob, "to-bob"), (alice, bob, "room-r"), (alice, carol, "room-r"),
                     (bob, alice, "to-alice")], [alice, bob, carol])


# -- 5. Redis wiped while the recipient's node is taken for dead ---------------------------

async def test_messages_queued_for_a_node_taken_for_dead_are_not_lost_silently_when_redis_is_wiped(lab):
    """Issue 10.5: messages acked `queued` for bob while his node A was frozen are wiped with
    Redis. Then bob must either get them or be told `resumed: false`, never `resumed: true`."""
    redis = lab.redis()
    node_a, node_b = await lab.node_pair(redis)
    bob = await lab.app("bob", node_a, reconnect_to=[node_b])
    carol = await lab.app("carol", node_a, reconnect_to=[node_b])  # after bob: A registers bob first
    alice = await lab.app("alice", node_b)
    await talk(alice, "bob", range(0, 3))
    assert await received(bob, alice, "to-bob", 2), "no delivery before the fault"
    node_a.signal(signal.SIGSTOP)
    n = await talk_while_away(alice, bob, 3)  # acked `queued`: the cluster took A for dead
    redis.kill()
    redis.start()  # the same port, nothing kept: the queued messages are gone
    await wait_ready_status(node_b, 200, 15)
    node_a.signal(signal.SIGCONT)
    m = 0  # until carol (on A, registered after bob) is reachable live, A has registered bob again
    while (await alice.send(m, to="carol")).outcome != "ack":
        assert m < 100, f"carol never became reachable: {alice.outcomes('to-carol')}; {carol.story()}"
        m += 1
        await asyncio.sleep(0.1)
    await until(lambda: bob.online, 10, lambda: f"bob is not connected: {bob.story()}")
    bob.abandon()  # a network blip: bob resumes from the last message he processed
    await bob.reconnect()
    last = await send_until_acked(alice, "bob", n)
    await received(bob, alice, "to-bob", last)
    assert_promises([(alice, bob, "to-bob"), (alice, carol, "to-carol")], [alice, bob, carol])


# -- 6. a lost Redis reply -------------------------------------------------------------------

@pytest.mark.parametrize("bob_on", ["A", "B", "B-pinged"], ids=["same-node", "cross-node", "cross-node-trimmed"])
async def test_send_whose_redis_reply_is_lost_is_delivered_once_and_acked(lab, bob_on):
    """Issue 10.6: Redis runs alice's SEND (it is in bob's inbox, and published) but its
    reply never reaches A: A's command connection drops while the reply is held; A's pub/sub
    connection stays up. bob must process the message exactly once, and alice must not be
    told `unavailable` for it (an ack, late or not, is the truth). `B-pinged`: bob's node
    pings him every 0.25 s, and his pongs let his inbox go of what he has read (TRIM), while
    alice's retry still has to find her first try there (a duplicate in fault seed 709411)."""
    import redis.asyncio as aioredis

    redis = lab.redis()
    link = await lab.command_link(redis)
    pinged = bob_on == "B-pinged"  # (and A's lease outlasts the wait below, so A retries)
    node_a = await lab.node("A", f"redis://127.0.0.1:{link.port}/0", ttl=5 if pinged else 1)
    node_b = await lab.node("B", redis.url, extra=("--heartbeat", "0.5") if pinged else ())
    alice = await lab.app("alice", node_a, reconnect_to=[node_a, node_b])
    bob = await lab.app("bob", node_a if bob_on == "A" else node_b, reconnect_to=[node_a, node_b])
    await talk(alice, "bob", range(0, 3))
    assert await received(bob, alice, "to-bob", 2), "no delivery before the fault"
    direct = aioredis.Redis(port=redis.port)
    try:
        inbox = f"{lab.prefix}:{{p:bob}}:inbox"
        before = await direct.xlen(inbox)
        link.hold_replies()
        sent = await alice.send_nowait(3, to="bob")
        deadline = time.monotonic() + 5
        while await direct.xlen(inbox) == before:  # Redis has run the SEND
            assert time.monotonic() < deadline, "the SEND never reached Redis"
            await asyncio.sleep(0.02)
    finally:
        await direct.aclose()
    await received(bob, alice, "to-bob", 3, timeout=3)  # published: it reaches bob's node
    if pinged:
        await asyncio.sleep(1.5)  # bob's pongs would have let message 3 go from his inbox by now
    link.drop_commands()  # the held reply is lost with A's command connection
    await settle(lambda: sent.outcome not in ("pending", "unacked"), 10)
    last = await send_until_acked(alice, "bob", 4)
    await received(bob, alice, "to-bob", last)
    copies = [d.seq for d in bob.deliveries if d.sender == "alice" and d.n == 3]
    wrong = []
    if len(copies) != 1:  # it is in bob's inbox, and bob stayed connected
        wrong.append(f"bob processed message 3 {len(copies)} times (seqs {copies}); it is in his inbox once")
    if sent.outcome.startswith("error") or sent.outcome == "pending":  # an ack, or its connection ended first
        wrong.append(f"alice was told {sent.outcome} for message 3, which Redis stored for bob")
    assert_promises([(alice, bob, "to-bob")], [alice, bob], also=wrong)


# -- 7. clocks --------------------------------------------------------------------------------

@pytest.mark.parametrize("offsets", [("0", "+30s", "-30s"), ("0", "+4s", "0")], ids=["30s-apart", "4s-ahead"])
async def test_wall_clocks_apart_do_not_flap_connected_peers(lab, offsets):
    """Issue 10.7: three nodes whose wall clocks disagree (libfaketime), --node-ttl 3, --grace 5.
    A ring of peers, one per node, talks for 10+ s: every ack is immediate (not `queued`),
    everything arrives, and nobody is told peer-left or peer-unavailable."""
    redis = lab.redis()
    nodes = [await lab.node(f"N{i}", redis.url, ttl=3, grace=5, env=skewed_env(offset))
             for i, offset in enumerate(offsets)]
    for node, offset in zip(nodes, offsets, strict=True):  # the skew is real, or this test proves nothing
        expected = 0.0 if offset == "0" else float(offset.rstrip("s"))
        seen = await wall_clock_offset(node)
        assert abs(seen - expected) < 1.5, f"node {node.base} should run {offset} off, its clock is {seen:+.1f}s off"
    peers = [await lab.app(f"p{i}", node) for i, node in enumerate(nodes)]
    for app in peers:
        await app.join("r")
    ring = [(peers[i], peers[(i + 1) % 3]) for i in range(3)]
    await asyncio.gather(*(talk(a, b.peer, range(0, 100), pause=0.1) for a, b in ring))  # 10+ s
    for a, b in ring:
        await received(b, a, f"to-{b.peer}", max(a.acked(f"to-{b.peer}"), default=0))
    late = [f"{a.peer} was told {a.outcomes(f'to-{b.peer}')} for {b.peer}, who stayed connected (every ack "
            f"should be immediate)" for a, b in ring if any(s.outcome != "ack" for s in a.sent.values())]
    assert_promises([(a, b, f"to-{b.peer}") for a, b in ring], peers, peer_left=True, also=late)


# -- 8. a client's own abandoned handshake; noise in the logs -------------------------------

async def test_abandoned_handshake_does_not_take_over_the_clients_newer_connection(lab):
    """Issue 10.8: bob's handshake hangs on A (A's Redis link is stalled); he gives up after
    1 s and is welcomed on B. When A's link heals, the stale handshake must not complete
    and take bob over: his B connection keeps receiving, and is never closed with 4409."""
    redis = lab.redis()
    link = await lab.proxy(redis)
    node_a = await lab.node("A", f"redis://127.0.0.1:{link.port}/0")
    node_b = await lab.node("B", redis.url)
    alice = await lab.app("alice", node_b)
    bob = GoodApp("bob", [node_b.ws_base])
    lab.apps.append(bob)
    link.stall("both")
    with pytest.raises(HandshakeFailed):  # the upgrade or the welcome never comes: bob gives up
        await bob.connect(node_a.ws_base, timeout=1.0)
    await bob.connect(node_b.ws_base)
    link.heal()
    await wait_ready_status(node_a, 200, 10)
    await talk(alice, "bob", range(0, 40), pause=0.05)  # 2 s: long after A's stale handshake resumed
    await received(bob, alice, "to-bob", max(alice.acked("to-bob"), default=0))
    assert_promises([(alice, bob, "to-bob")], [alice, bob])


async def test_node_logs_stay_clean_through_redis_loss_and_a_pause(lab):
    """Issue 10.8, the noise: Redis killed and restarted under the nodes (A reaches it through
    a TCP proxy, which accepts while Redis is down, as a load balancer does), and a handshake
    left on a frozen node, must leave no unretrieved exception, traceback or ERROR in the logs."""
    redis = lab.redis()
    link = await lab.proxy(redis)
    # leases (0.8 x 10 s) that outlast the outage below, so the sockets stay open through it
    # and the sends meanwhile are answered (with a 1 s TTL the nodes close them after 0.8 s)
    node_a = await lab.node("A", f"redis://127.0.0.1:{link.port}/0", ttl=10)
    node_b = await lab.node("B", redis.url, ttl=10)
    alice = await lab.app("alice", node_a, reconnect_to=[node_a, node_b])
    _bob = await lab.app("bob", node_b, reconnect_to=[node_b, node_a])
    await talk(alice, "bob", range(0, 3))
    redis.kill()
    for node in (node_a, node_b):
        await wait_ready_status(node, 503, 10)
    await talk(alice, "bob", range(3, 6))  # refused meanwhile (unavailable)
    await asyncio.sleep(1.5)  # several reconnect attempts (the first comes after 50-100 ms)
    redis.start()
    for node in (node_a, node_b):
        await wait_ready_status(node, 200, 15)
    await send_until_acked(alice, "bob", 6)
    node_a.signal(signal.SIGSTOP)
    carol = GoodApp("carol", [node_b.ws_base])
    lab.apps.append(carol)
    with pytest.raises(HandshakeFailed):  # carol gives up on the frozen node
        await carol.connect(node_a.ws_base, timeout=1.0)
    await carol.connect(node_b.ws_base)
    node_a.signal(signal.SIGCONT)
    await answers(node_a)
    await lab.close()  # stops the nodes (SIGTERM): every log line is written
    noise = [f"{name}: {line}" for name, node in (("A", node_a), ("B", node_b)) for line in node.log().splitlines()
             if "never retrieved" in line or "Traceback" in line or " ERROR " in line]
    assert not noise, "node logs:\n" + "\n".join(noise)
