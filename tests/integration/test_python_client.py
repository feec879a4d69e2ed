"""signaling.client against real nodes: receipts, rooms and presence, exactly-once
delivery across a network cut and a drain, resync when the inbox overflowed, re-sends
of frames a dead connection left unacknowledged, takeover, token renewal."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from proxy_support import TcpProxy
from signaling.auth import mint
from signaling.client import Ack, Backoff, SignalingClient, SignalingError, State
from support import SECRET, Client, NodeProcess, eventually, free_port

FAST = Backoff(initial=0.05, max=0.2)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """clients(url, **options) -> a SignalingClient, closed after the test."""
    made: list[SignalingClient] = []

    def make(url: Any, **options: Any) -> SignalingClient:
        options.setdefault("backoff", FAST)
        client = SignalingClient(url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def proxies() -> AsyncIterator[Any]:
    made: list[TcpProxy] = []

    async def make(base: str) -> TcpProxy:
        proxy = await TcpProxy(int(base.rsplit(":", 1)[1])).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()


@pytest.fixture
async def scripted_node() -> AsyncIterator[Any]:
    """scripted_node(handler) -> the ws URL of a node whose /ws is `handler` (a test plays the server)."""
    servers: list[TestServer] = []

    async def start(handler: Any) -> str:
        app = web.Application()
        app.router.add_get("/ws", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"ws://127.0.0.1:{server.port}/ws"

    yield start
    for server in servers:
        await server.close()


def collect(client: SignalingClient, *events: str) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    for event in events:
        client.on(event, lambda payload, event=event: seen.append((event, payload)))
    return seen


async def test_receipts_errors_and_events(make_node, clients):
    base = await make_node()
    alice = clients(f"{base}/ws", peer="alice")
    bob = clients(f"{base}/ws", peer="bob")
    welcome = await alice.connect(timeout=5)
    assert welcome["peer"] == "alice" and welcome["resumed"] is False and alice.node == "test-node-1"
    await bob.connect(timeout=5)
    got = collect(bob, "message")

    ack = await alice.message({"hi": 1}, to="bob")
    assert isinstance(ack, Ack) and ack.queued is False and ack.id.startswith("~")
    await eventually(lambda: got)
    message = got[0][1]
    assert message["from"] == "alice" and message["data"] == {"hi": 1} and message["id"] == ack.id
    assert bob.last_seq == message["seq"]

    with pytest.raises(SignalingError) as failed:
        await alice.message("x", to="nobody")
    assert failed.value.code == "peer-unavailable" and failed.value.id is not None
    with pytest.raises(SignalingError) as failed:
        await alice.message("x", room="not-mine")
    assert failed.value.code == "not-in-room"

    # an app handler may await a send: acks are read while handlers run
    async def answer(m: dict[str, Any]) -> None:
        await bob.message({"re": m["data"]}, to=m["from"])

    bob.on("message", answer)
    reply = asyncio.ensure_future(alice.wait_for("message", timeout=5))
    await alice.message("ping", to="bob")
    assert (await reply)["data"] == {"re": "ping"}


async def test_rooms_and_presence(make_node, clients):
    base = await make_node()
    alice, bob = clients(f"{base}/ws", peer="alice"), clients(f"{base}/ws", peer="bob")
    await alice.connect(timeout=5)
    await bob.connect(timeout=5)
    seen = collect(alice, "peer-joined", "peer-left", "presence")
    assert await alice.join("r") == []
    assert await bob.join("r") == ["alice"]
    await eventually(lambda: ("peer-joined", {"type": "peer-joined", "room": "r", "peer": "bob",
                                              "seq": alice.last_seq}) in seen)
    assert alice.rooms == {"r": {"bob"}}
    assert await bob.join("r") == ["alice"]  # idempotent, and nobody hears of it
    await bob.message("to the room", room="r")
    await bob.leave("r")
    await eventually(lambda: any(e == "peer-left" for e, _ in seen))
    assert alice.rooms == {"r": set()}
    assert [p["peers"] for e, p in seen if e == "presence"] == [[], ["bob"], []]
    assert [e for e, _ in seen if e in ("peer-joined", "peer-left")] == ["peer-joined", "peer-left"]

    # a client that closes leaves for good: the room hears it at once
    await bob.join("r")
    await eventually(lambda: alice.rooms["r"] == {"bob"})
    await bob.close()
    await eventually(lambda: alice.rooms["r"] == set())


async def test_exactly_once_in_order_across_a_network_cut(make_node, clients, proxies):
    base = await make_node()
    proxy = await proxies(base)
    receiver = clients(f"{proxy.ws_base}/ws", peer="receiver")
    sender = clients(f"{base}/ws", peer="sender")
    await receiver.connect(timeout=5)
    await sender.connect(timeout=5)
    got: list[Any] = []
    receiver.on("message", lambda m: got.append(m["data"]))
    seen = collect(receiver, "welcome", "resync", "close")

    for i in range(3):
        await sender.message(i, to="receiver")
    await eventually(lambda: len(got) == 3)

    proxy.block()
    proxy.cut()  # the connection vanishes: the node keeps the peer for its grace
    await eventually(lambda: receiver.state is State.RECONNECTING)
    await asyncio.sleep(0.2)
    acks = [await sender.message(i, to="receiver") for i in range(3, 8)]
    assert [a.queued for a in acks] == [True] * 5
    proxy.unblock()
    await eventually(lambda: len(got) == 8, timeout=5)
    await asyncio.sleep(0.2)
    assert got == list(range(8))
    welcomes = [p for e, p in seen if e == "welcome"]
    assert welcomes[-1]["resumed"] is True
    assert not [e for e, _ in seen if e == "resync"]
    assert [p["code"] for e, p in seen if e == "close"][0] == 1006


async def test_resync_when_the_inbox_overflowed(make_node, clients, proxies):
    base = await make_node(inbox_limit=2)
    proxy = await proxies(base)
    receiver = clients(f"{proxy.ws_base}/ws", peer="receiver")
    sender = clients(f"{base}/ws", peer="sender")
    await receiver.connect(timeout=5)
    await sender.connect(timeout=5)
    await receiver.join("r")
    await sender.join("r")
    got: list[Any] = []
    receiver.on("message", lambda m: got.append(m["data"]))
    seen = collect(receiver, "resync", "joined")
    await eventually(lambda: receiver.rooms["r"] == {"sender"})

    proxy.block()
    proxy.cut()
    await eventually(lambda: receiver.state is State.RECONNECTING)
    await asyncio.sleep(0.2)
    for i in range(5):
        await sender.message(i, to="receiver")
    proxy.unblock()
    await eventually(lambda: any(e == "resync" for e, _ in seen), timeout=5)
    assert receiver.welcome["resumed"] is False
    await eventually(lambda: any(e == "joined" for e, _ in seen))  # the client joined again
    assert got == [3, 4]  # what the bounded inbox still held
    assert receiver.rooms == {"r": {"sender"}}


async def test_a_connection_lost_before_its_app_handled_anything_resumes_from_welcome_seq(make_node, clients,
                                                                                           proxies, connect):
    # protocol 1.1: a restarted app takes over its peer (no seq of its own), the replay
    # reaches the socket but the app handles none of it, the connection dies: it resumes
    # from welcome.seq and gets exactly those frames, once, without a resync (resuming from
    # "0-0" would say resumed: false here, the bound having pushed out what came before)
    base = await make_node(inbox_limit=2)
    old_life = await connect(base, peer="bob")
    alice = clients(f"{base}/ws", peer="alice")
    await alice.connect(timeout=5)
    await alice.message(0, to="bob")
    await old_life.expect("message", data=0)
    await old_life.drop()  # bob's first app is gone; he is reconnecting
    for i in (1, 2):
        assert (await alice.message(i, to="bob")).queued
    proxy = await proxies(base)
    bob = clients(f"{proxy.ws_base}/ws", peer="bob")
    handling = asyncio.Event()
    got: list[Any] = []

    async def slow(message: dict[str, Any]) -> None:
        await handling.wait()  # the app is busy: frames wait in the client, unprocessed
        got.append(message["data"])

    bob.on("message", slow)
    seen = collect(bob, "welcome", "resync")
    first = await bob.connect(timeout=5)
    assert first["resumed"] is False and first["seq"] == old_life.last_seq
    await eventually(lambda: bob._dedupe.highest is not None)  # frame 1 reached the client
    proxy.cut()  # the connection dies before the app handled anything
    await eventually(lambda: bob.welcome is not first, timeout=5)  # (its event waits behind the busy app)
    handling.set()
    await eventually(lambda: len(got) == 2)
    await asyncio.sleep(0.2)
    assert got == [1, 2]
    assert seen[-1][1]["resumed"] is True and not [e for e, _ in seen if e == "resync"]


async def test_a_frame_left_unacknowledged_is_sent_again_with_its_id(clients, scripted_node):
    """A scripted node: the first connection swallows a frame and vanishes, the second
    acks it. The client sends it again, same id, after the new welcome; `resume` says
    what it processed."""
    connections: list[dict[str, Any]] = []

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        seen: dict[str, Any] = {"query": dict(request.query), "frames": []}
        connections.append(seen)
        await sock.send_str(json.dumps({"type": "welcome", "peer": "p", "node": f"n{len(connections)}",
                                        "iceServers": [], "heartbeat": 25, "resumed": len(connections) > 1}))
        if len(connections) == 1:
            await sock.send_str(json.dumps({"seq": "5-0", "type": "message", "from": "q", "data": 1}))
        async for msg in sock:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            seen["frames"].append(frame)
            if len(connections) == 1:
                request.transport.abort()  # gone before the ack
                break
            await sock.send_str(json.dumps({"type": "ack", "id": frame["id"]}))
        return sock

    client = clients(await scripted_node(ws), peer="p")
    await client.connect(timeout=5)
    await eventually(lambda: client.last_seq == "5-0")
    ack = await asyncio.wait_for(client.message("important", to="q"), 5)
    first, second = connections[0]["frames"][0], connections[1]["frames"][0]
    assert first == second and ack.id == first["id"]
    assert connections[1]["query"] == {"peer": "p", "resume": "5-0"}
    await client.close()


async def test_a_rejoin_refused_while_the_cluster_reregisters_is_retried(clients, scripted_node):
    """A scripted node: the client joins r1; its next connection cannot resume (Redis lost
    its data) and its first rejoin is refused `unavailable`, as for a node TTL after such a
    loss. The client joins again after a back-off and reports no error."""
    joins: list[tuple[int, float]] = []  # (connection, monotonic time)
    connections = 0

    async def ws(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        conn = connections
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(json.dumps({"type": "welcome", "peer": "p", "node": "n", "iceServers": [],
                                        "heartbeat": 25, "resumed": False, "seq": "0-0"}))
        async for msg in sock:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["type"] != "join":
                continue
            joins.append((conn, time.monotonic()))
            if conn == 1:
                await sock.send_str(json.dumps({"type": "joined", "room": "r1", "peers": []}))
                await sock.send_str(json.dumps({"type": "ack", "id": frame["id"]}))
                await sock.close(code=1001)  # the node lost its lease
            elif len(joins) == 2:
                await sock.send_str(json.dumps({"type": "error", "code": "unavailable", "message": "busy",
                                                "id": frame["id"]}))
            else:
                await sock.send_str(json.dumps({"type": "joined", "room": "r1", "peers": ["bob"]}))
                await sock.send_str(json.dumps({"type": "ack", "id": frame["id"]}))
        return sock

    client = clients(await scripted_node(ws), peer="p")
    errors = collect(client, "error")
    await client.connect(timeout=5)
    await client.join("r1")
    await eventually(lambda: client.rooms.get("r1") == {"bob"}, timeout=5)
    assert [c for c, _ in joins] == [1, 2, 2]
    assert joins[2][1] - joins[1][1] >= 0.2  # after a back-off
    assert errors == []  # a refused rejoin is retried, not reported
    await client.close()


async def test_a_drain_moves_the_client_to_another_node(cluster, clients):
    nodes = await cluster(2)
    mover = clients([f"{n.ws_base}/ws" for n in nodes], peer="mover")
    sender = clients(f"{nodes[1].ws_base}/ws", peer="sender")
    await mover.connect(timeout=5)
    await sender.connect(timeout=5)
    got: list[Any] = []
    mover.on("message", lambda m: got.append(m["data"]))
    closes = collect(mover, "close")
    assert mover.node == "node-1"
    for i in range(40):
        if i == 10:
            nodes[0].signal(15)  # SIGTERM: node-1 drains; its sockets close with 1001
        await sender.message(i, to="mover")
        await asyncio.sleep(0.01)
    await eventually(lambda: len(got) == 40, timeout=10)
    await asyncio.sleep(0.2)
    assert got == list(range(40))
    assert mover.node == "node-2" and mover.welcome["resumed"] is True
    assert closes[0][1]["code"] == 1001 and closes[0][1]["delay"] == 0


async def test_a_newer_connection_takes_over_and_the_old_client_stops(make_node, clients):
    base = await make_node()
    old = clients(f"{base}/ws", peer="same")
    await old.connect(timeout=5)
    closed = asyncio.ensure_future(old.wait_for("closed", timeout=5))
    newer = await Client.connect(base, peer="same")
    try:
        assert (await closed)["code"] == 4409
        assert old.state is State.CLOSED
        with pytest.raises(SignalingError) as failed:
            await old.message("x", to="same")
        assert failed.value.code == "closed"
    finally:
        await newer.close()


async def test_a_new_token_after_4401_and_a_refused_one(make_node, clients):
    base = await make_node(jwt_secret=SECRET)
    minted: list[float] = []

    async def provider() -> str:
        minted.append(time.time())
        return mint(SECRET, "alice", ttl=1.5 if len(minted) == 1 else 300)

    alice = clients(f"{base}/ws", token_provider=provider)
    await alice.connect(timeout=5)
    assert alice.peer == "alice"
    await alice.join("r")
    closes = collect(alice, "close")
    await alice.wait_for("welcome", timeout=8)  # after the 4401
    assert [p["code"] for _, p in closes] == [4401]
    assert len(minted) == 2 and alice.welcome["resumed"] is True and "r" in alice.rooms

    refused = clients(f"{base}/ws", token="not-a-jwt")
    with pytest.raises(SignalingError) as failed:
        await refused.connect(timeout=5)
    assert failed.value.code == "token"
    assert refused.state is State.CLOSED


async def test_connect_retries_until_a_node_answers(clients, tmp_path):
    port = free_port()
    client = clients(f"ws://127.0.0.1:{port}/ws", peer="early")
    closes = collect(client, "close")
    attempt = asyncio.ensure_future(client.connect(timeout=20))
    # refused, refused, ... (not the state at a fixed moment: a retry may be under way then)
    await eventually(lambda: len(closes) >= 2, timeout=5)
    assert all(payload["reconnect"] for _, payload in closes) and not attempt.done()
    node = NodeProcess(port=port)
    try:
        node.start(tmp_path)
        welcome = await attempt
        assert welcome["peer"] == "early"
    finally:
        node.stop()
