"""Redis going away and coming back (empty) under real node processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp
import pytest

from support import NodeProcess, RecordingMailbox, RedisServer, join_all


@pytest.fixture
async def own_redis():
    server = RedisServer().start()
    yield server
    server.kill()


async def _ready(node: NodeProcess) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.base}/readyz") as r:
            return r.status


async def _wait_status(nodes: list[NodeProcess], status: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        if all([await _ready(n) == status for n in nodes]):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"nodes did not turn {status}"
        await asyncio.sleep(0.05)


async def test_redis_restart_empty_while_pairs_talk(own_redis, key_prefix, tmp_path, connect):
    nodes = []
    for i in (1, 2):
        nodes.append(NodeProcess("--redis-url", own_redis.url, "--key-prefix", key_prefix, "--node-id", f"node-{i}",
                                 "--grace", "30").start(tmp_path))
    try:
        for n in nodes:
            await n.wait_ready()
        n1, n2 = nodes
        alice, carol = await connect(n1.ws_base, peer="alice"), await connect(n1.ws_base, peer="carol")
        bob = await connect(n2.ws_base, peer="bob")
        await join_all([alice, bob, carol])
        await alice.send(type="message", to="bob", data="before")
        await alice.send(type="message", to="bob", data="before, unprocessed")
        before_seq = (await bob.expect("message", data="before"))["seq"]
        await bob.expect("message", data="before, unprocessed")  # its app had not processed this one

        # bob talks to alice across nodes the whole time; every answer is kept
        acked, refused = [], []
        stop = asyncio.Event()

        async def talk() -> None:
            i = 0
            while not stop.is_set():
                await bob.send(type="message", to="alice", data=i, id=i)
                reply = await bob.recv(timeout=5)
                (acked if reply["type"] == "ack" else refused).append(i)
                if reply["type"] == "error":
                    assert reply["code"] == "unavailable"
                i += 1
                await asyncio.sleep(0.01)

        talker = asyncio.ensure_future(talk())
        await asyncio.sleep(0.3)
        own_redis.kill()
        down = await _wait_status(nodes, 503, timeout=10)
        print(f"\nreadyz 503 {down:.2f}s after Redis died")
        # not even a peer on the same node: an ack promises the message is in the inbox
        await carol.send(type="message", to="alice", data="same node", id="c")
        await carol.expect("error", id="c", code="unavailable")
        await asyncio.sleep(0.5)
        restarted = time.monotonic()
        own_redis.start()  # same port, no persistence: it comes back EMPTY
        recovered = await _wait_status(nodes, 200, timeout=20)
        print(f"ready again {recovered:.2f}s after Redis restarted")
        await asyncio.sleep(0.5)
        stop.set()
        await talker
        assert refused, "the outage was not noticed by the sender"
        assert acked[-1] > refused[-1], "no message got through after the restart"

        # alice got every acked message, in order, and none that was refused
        got, carols = [], []
        while True:
            try:
                msg = await alice.recv(timeout=1)
            except TimeoutError:
                break
            if msg["from"] == "carol":
                carols.append(msg["data"])
            else:
                assert msg["type"] == "message", msg  # no peer-left / peer-joined churn
                got.append(msg["data"])
        assert got == acked
        assert carols == []

        # routing and rooms work again across nodes, without churn; for a node TTL after Redis
        # lost its data a broadcast is refused (unavailable: a room may still be partial)
        refused_broadcasts, deadline = 0, time.monotonic() + 3 + 2  # --node-ttl 3, and a margin
        while True:
            await bob.send(type="message", room="r", data="after", id=f"r{refused_broadcasts}")
            reply = await bob.recv(timeout=5)
            if reply["type"] == "ack":
                break
            assert reply["code"] == "unavailable" and time.monotonic() < deadline, reply
            refused_broadcasts += 1
            await asyncio.sleep(0.2)
        for x in (alice, carol):
            await x.expect("message", data="after")  # once: the refused ones were never delivered
        await alice.send(type="message", to="bob", data="back", id="b")
        await alice.expect("ack", id="b")
        await bob.expect("message", data="back")
        # the inbox from before the loss is gone: a resume from before its end says so
        await bob.drop()
        await asyncio.sleep(0.2)
        bob2 = await connect(n1.ws_base, peer="bob", resume=before_seq)
        assert bob2.welcome["resumed"] is False
        print(f"recovery measured: down {down:.2f}s, ready {recovered:.2f}s after restart "
              f"({time.monotonic() - restarted:.2f}s total)")
    finally:
        for n in nodes:
            n.stop()


async def test_lost_subscription_is_detected_and_restored_without_loss(own_redis, key_prefix, tmp_path, connect):
    """Redis cuts pub/sub clients off (client-output-buffer-limit pubsub, CLIENT KILL, a
    proxy restart): the node notices, subscribes again and fills the gap from the inbox."""
    import redis as redis_sync

    nodes = [NodeProcess("--redis-url", own_redis.url, "--key-prefix", key_prefix, "--node-id", f"k{i}",
                         "--rate", "10000", "--burst", "10000").start(tmp_path) for i in (1, 2)]
    admin = redis_sync.Redis.from_url(own_redis.url)
    try:
        for n in nodes:
            await n.wait_ready()
        alice, bob = await connect(nodes[0].ws_base, peer="alice"), await connect(nodes[1].ws_base, peer="bob")
        sent = 0
        for _round in range(5):
            for _ in range(20):
                await alice.send(type="message", to="bob", data=sent, id=sent)
                sent += 1
            killed = admin.client_kill_filter(_type="pubsub")  # mid-burst
            assert killed == 2  # both nodes' subscribers were cut off
            for _ in range(20):
                await alice.send(type="message", to="bob", data=sent, id=sent)
                sent += 1
            for _ in range(40):
                assert (await alice.recv())["type"] == "ack"  # a pub/sub blip does not stop sending
            for _ in range(100):  # both come back by themselves
                await asyncio.sleep(0.05)
                if len(admin.client_list(_type="pubsub")) == 2:
                    break
            else:
                raise AssertionError("the subscribers did not come back")
        got = []
        with contextlib.suppress(asyncio.TimeoutError):
            while len(got) < sent:
                got.append((await bob.expect("message", timeout=5))["data"])
        assert got == list(range(sent)), (len(got), nodes[1].log()[-3000:])  # exactly once, in order
        await bob.silent(0.3)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{nodes[1].base}/metrics") as r:
                text = await r.text()
        reconnects = [line for line in text.splitlines() if line.startswith("signaling_bus_reconnects_total")]
        assert float(reconnects[0].split()[-1]) >= 5
        assert "signaling_bus_publish_latency_seconds_count" in text
    finally:
        for n in nodes:
            n.stop()


async def test_reader_keeps_up_and_a_slow_consumer_is_cut_off_not_the_node(key_prefix, tmp_path, connect):
    """With a tight pub/sub output buffer limit in Redis, a client that stops reading must not
    slow the node's reader down (Redis would drop the whole node's subscription): its own
    bounded send queue overflows and it alone is closed with 1011, to resume from its inbox."""
    server = RedisServer(None, "--client-output-buffer-limit", "pubsub 256kb 128kb 2").start()
    nodes = [NodeProcess("--redis-url", server.url, "--key-prefix", key_prefix, "--node-id", f"s{i}",
                         "--rate", "100000", "--burst", "100000", "--byte-rate", "1e9", "--byte-burst", "1000000000",
                         "--send-buffer", "65536").start(tmp_path)
             for i in (1, 2)]
    try:
        for n in nodes:
            await n.wait_ready()
        alice = await connect(nodes[0].ws_base, peer="alice")
        carol = await connect(nodes[1].ws_base, peer="carol")
        slow = await connect(nodes[1].ws_base, peer="slow")  # never reads again
        blob = "x" * 8000
        for i in range(4000):  # 32 MB for a reader that stopped: more than any socket buffer holds
            await alice.send(type="message", to="slow", data=blob)
            if i % 20 == 0:
                await alice.send(type="message", to="carol", data=i // 20)
        got = [(await carol.expect("message", timeout=10))["data"] for _ in range(200)]
        assert got == list(range(200))  # the fast peer on the same node is unaffected
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{nodes[1].base}/metrics") as r:
                text = await r.text()
        value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                 if line and not line.startswith("#")}
        assert value["signaling_bus_reconnects_total"] == 0  # Redis never dropped the node's subscription
        assert value["signaling_slow_consumers_total"] >= 1
        assert await slow.closed(timeout=10) == 1011
    finally:
        for n in nodes:
            n.stop()
        server.kill()


async def test_scripts_flushed_under_the_bus_are_loaded_again(redis_server, key_prefix):
    """An operator's SCRIPT FLUSH (or a proxy to a fresh server) must not break delivery."""
    import redis as redis_sync

    from signaling.bus.redis import RedisBus
    from signaling.outcome import Outcome

    bus = RedisBus(redis_server.url, node_id="n1", grace=5, inbox_limit=10, prefix=key_prefix)
    await bus.start()
    try:
        box = RecordingMailbox(decode=False, lost_is_error=False)
        await bus.attach("bob", box)
        assert (await bus.send("bob", b'{"type":"message","data":1}')).outcome is Outcome.DELIVERED
        redis_sync.Redis.from_url(redis_server.url).script_flush()
        assert (await bus.send("bob", b'{"type":"message","data":2}')).outcome is Outcome.DELIVERED
        for _ in range(50):
            if len(box.bodies) == 2:
                break
            await asyncio.sleep(0.02)
        assert box.bodies == [b'{"type":"message","data":1}', b'{"type":"message","data":2}']
    finally:
        await bus.close()


async def test_acked_messages_redis_had_not_passed_on_survive_its_empty_restart(own_redis, key_prefix, tmp_path,
                                                                                connect):
    """A message acked as delivered can still be in Redis's output buffer to the recipient's
    node when Redis dies; an empty restart takes it along. The sender's node keeps what it
    acked until Redis has had time to pass it on, and hands it in again after the loss.
    Here the recipient's node is paused while 6 MB go to it, so the kernel's socket buffers
    fill and the rest waits in Redis, which is then SIGKILLed and restarted empty."""
    common = ("--redis-url", own_redis.url, "--key-prefix", key_prefix, "--grace", "30", "--node-ttl", "6",
              "--rate", "100000", "--burst", "100000", "--byte-rate", "1e9", "--byte-burst", "100000000",
              "--inbox-bytes", "33554432")
    n1 = NodeProcess(*common, "--node-id", "node-1").start(tmp_path)
    n2 = NodeProcess(*common, "--node-id", "node-2").start(tmp_path)
    try:
        await n1.wait_ready()
        await n2.wait_ready()
        alice = await connect(n1.ws_base, peer="alice")
        bob = await connect(n2.ws_base, peer="bob")
        await alice.send(type="message", to="bob", data="hello", id="h")
        await alice.expect("ack", id="h")
        await bob.expect("message", data="hello")

        pad, count = "x" * 60_000, 100
        n2.signal(signal.SIGSTOP)
        try:
            for i in range(count):
                await alice.send(type="message", to="bob", data={"i": i, "pad": pad}, id=i)
            for i in range(count):
                reply = await alice.recv(timeout=5)
                assert reply == {"type": "ack", "id": i}, reply  # delivered: bob is connected
            own_redis.kill()
            own_redis.start()  # same port, no persistence: it comes back EMPTY
        finally:
            n2.signal(signal.SIGCONT)

        got: list[int] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            try:
                msg = await bob.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            assert msg["type"] == "message", msg  # bob's connection stayed up: no churn, no close
            got.append(msg["data"]["i"])
        assert got == list(range(count)), (f"bob got {len(got)} of {count} acked messages "
                                           f"(missing {sorted(set(range(count)) - set(got))[:10]}...)")
        with pytest.raises(TimeoutError):
            await bob.recv(timeout=1)  # and none twice
    finally:
        n1.stop()
        n2.stop()
