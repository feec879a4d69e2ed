"""The Docker Compose stack, run for real: docker-compose.yml comes up with `--wait`,
serves /healthz over http and https and wss through nginx to peers on different
replicas, scales 3 -> 5 -> 2 -> 4 -> 2 under a stream of new connections (10/s) with
peers held open, without a failed or slow handshake and without losing a message, and
`docker compose down` leaves nothing behind.

The engine: this machine's Docker if it works, else the shared docker-engine.sh (see
tests/compose_support.py; its first run on a machine costs about five minutes). A
missing or broken engine fails the test: it never skips.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from cluster_support import AppPeer, StreamReport
from compose_support import Engine, HandshakeStream, Stack, distribution, log
from support import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SLOW_HANDSHAKE = 0.5  # seconds: the bound for every handshake while the replicas change
SCALES = (5, 2, 4, 2)  # from the compose file's 3 replicas


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    began = time.monotonic()
    engine = Engine.start()
    log(f"engine ready: {time.monotonic() - began:.1f} s")
    try:
        s = Stack(engine, tmp_path)
        try:
            yield s
        finally:
            s.down_quietly()
    finally:
        engine.stop()  # dockerd stopped by its PID, Docker's iptables rules and bridge removed


async def test_compose_stack_comes_up_scales_and_goes_down_without_a_failed_handshake(stack: Stack):
    steps: dict[str, float] = {}

    async def step(name: str, coro: Awaitable[Any]) -> Any:
        began = time.monotonic()
        out = await coro
        steps[name] = time.monotonic() - began
        log(f"{name}: {steps[name]:.1f} s")
        return out

    await step("build", stack.compose("build", "signaling", timeout=600))
    await step("up --wait", stack.compose("up", "-d", "--wait", "--wait-timeout", "180", timeout=240))
    assert len(await stack.replicas()) == 3

    connector = aiohttp.TCPConnector(ssl=stack.ssl_context(), limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        # /healthz over both; plain HTTP redirects everything else to https
        for base in (stack.http, stack.https):
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200, (base, r.status, await r.text())
        async with http.get(f"{stack.http}/", allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"].startswith("https://")

        await pair_on_different_replicas_talk(stack)

        # peers held open through the whole sequence, two pairs more after each scale-up
        # (least_conn puts them on the new replicas, so the scale-downs drain those too)
        held: list[AppPeer] = []
        talkers: list[asyncio.Task[int]] = []
        stop_talking = asyncio.Event()

        async def hold(pairs: int) -> None:
            base = len(held)
            new = [await AppPeer(stack.wss, f"held-{base + i}", http, stack.token(f"held-{base + i}")).start()
                   for i in range(2 * pairs)]
            held.extend(new)
            for i, p in enumerate(new):
                talkers.append(asyncio.create_task(p.talk(new[i ^ 1].peer, stop_talking, 0.2)))

        try:
            await hold(3)
            log(f"held peers by node: {Counter(p.node for p in held)}")
            await scale_under_traffic(stack, http, held, talkers, hold, stop_talking, steps, step)
        finally:
            await asyncio.gather(*(p.close() for p in held))

    await step("down", stack.compose("down", "-v", timeout=180))
    assert await stack.leftovers() == []
    log("step durations: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))


async def scale_under_traffic(stack: Stack, http: aiohttp.ClientSession, held: list[AppPeer],
                              talkers: list[asyncio.Task[int]], hold: Callable[[int], Awaitable[None]],
                              stop_talking: asyncio.Event, steps: dict[str, float],
                              step: Callable[..., Awaitable[Any]]) -> None:
    """3 -> 5 -> 2 -> 4 -> 2 under the handshake stream (held peers talking throughout,
    two pairs more after each scale-up), then the accounting."""
    stream = HandshakeStream(stack, http, rate=10.0)
    stop_stream = asyncio.Event()
    streaming = asyncio.create_task(stream.run(stop_stream))
    removed: set[str] = set()  # hostnames (node id prefixes) of removed replicas
    try:
        await asyncio.sleep(2)
        current = 3
        for n in SCALES:
            before = await stack.replicas()
            await step(f"scale {current} -> {n}", stack.compose(
                "up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", "--no-recreate",
                "--scale", f"signaling={n}", "signaling", timeout=180))
            after = await stack.replicas()
            assert len(after) == n, after
            removed |= set(before) - set(after)
            if n > current:
                await asyncio.sleep(2)  # nginx re-resolves within a second
                await hold(2)
                log(f"held peers by node: {Counter(p.node for p in held)}")
            current = n
            await asyncio.sleep(3)  # the stream runs on past the removed addresses' DNS validity
    finally:
        stop_stream.set()
        await streaming
        stop_talking.set()
        sent = dict(zip((p.peer for p in held), await asyncio.gather(*talkers, return_exceptions=True), strict=True))

    # the diagnostics the closing note asks for, printed before any assertion
    log("handshakes during the scale sequence: " + distribution([h.seconds for h in stream.results if not h.error]))
    for h in sorted(stream.results, key=lambda h: -h.seconds)[:5]:
        log(f"  slowest: {h.seconds * 1000:.1f} ms at +{h.started - stream.results[0].started:.1f} s {h.error}")
    log("step durations: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    log(f"stream handshakes by node: {Counter(h.node[:12] for h in stream.results)}")
    retries = await nginx_retries(stack)
    log(f"nginx: {retries}")

    assert not stream.failed, [(h.seconds, h.error) for h in stream.failed]
    assert not stream.slower_than(SLOW_HANDSHAKE), [h.seconds for h in stream.slower_than(SLOW_HANDSHAKE)]
    assert len(stream.results) >= 10 * sum(steps[k] for k in steps if k.startswith("scale")) * 0.8
    assert all(isinstance(n, int) for n in sent.values()), sent

    # nothing lost: every acked message reaches its recipient, drained or not
    by_id = {p.peer: p for p in held}
    partner = {p.peer: held[i ^ 1].peer for i, p in enumerate(held)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            len({d.n for d in by_id[partner[p]].deliveries if d.sender == p}) < sent[p] for p in sent):
        await asyncio.sleep(0.1)
    moves: Counter[str] = Counter()  # close code of a held peer's connection to a removed replica
    unexpected = []
    for p in held:
        report = StreamReport(sent[p.peer], [d for d in by_id[partner[p.peer]].deliveries if d.sender == p.peer],
                              p.resent)
        assert not report.lost, (p.peer, sorted(report.lost)[:20])
        assert p.refused_handshakes == 0, (p.peer, p.refused_handshakes)
        # a peer on a removed replica got 1001 and resumed on a replica still there
        for conn, following in zip(p.connections, p.connections[1:] + [None], strict=True):
            if conn.node[:12] in removed:
                moves[str(conn.code)] += 1
                if not (conn.code == 1001 and following is not None and following.resumed
                        and following.asked_resume and following.node != conn.node):
                    unexpected.append((p.peer, conn, following))
            elif following is not None:
                unexpected.append((p.peer, conn, following))  # only a drain may move a held peer
    log(f"held peers: {len(held)}, moves off removed replicas by close code: {dict(moves)}, "
        f"messages acked: {sum(sent.values())}, resent: {sum(len(p.resent) for p in held)}")
    assert not unexpected, unexpected
    assert sum(moves.values()) >= 6, "the scale-downs drained held peers"


async def pair_on_different_replicas_talk(stack: Stack) -> None:
    """Open connections until two are on different replicas, then a message each way."""
    clients: list[Client] = []
    try:
        for i in range(10):
            peer = f"pair-{i}"
            clients.append(await Client.connect(stack.wss, peer=peer, token=stack.token(peer)))
            nodes = {c.welcome["node"]: c for c in clients}
            if len(nodes) >= 2:
                break
        a, b = list(nodes.values())[:2]
        assert a.welcome["node"] != b.welcome["node"]
        await a.send(type="message", to=b.peer, data={"hello": b.peer}, id="m1")
        await a.expect("ack", id="m1", timeout=5)
        got = await b.expect("message", timeout=5)
        assert got["from"] == a.peer and got["data"] == {"hello": b.peer}
        await b.send(type="message", to=a.peer, data={"hello": a.peer}, id="m2")
        await b.expect("ack", id="m2", timeout=5)
        assert (await a.expect("message", timeout=5))["data"] == {"hello": a.peer}
        log(f"pair on {a.welcome['node']} and {b.welcome['node']} exchanged messages through nginx")
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def nginx_retries(stack: Stack) -> str:
    """From nginx's access log: /ws requests by upstream tries, those that waited out a
    connect timeout (504: an address that answers nothing), and second passes."""
    out = await stack.compose("logs", "--no-color", "--no-log-prefix", "nginx")
    tries: Counter[int] = Counter()
    timed_out: list[str] = []
    second_pass = 0
    statuses: Counter[int] = Counter()
    for line in out.splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else {}
        except ValueError:
            continue
        if entry.get("path") != "/ws":
            continue
        upstream = entry["upstream_status"]
        statuses[entry["status"]] += 1
        tries[upstream.count(",") + upstream.count(":") + 1] += 1
        second_pass += ":" in upstream
        if "504" in upstream:
            timed_out.append(f'{entry["status"]} <- {upstream} in {entry["duration"]} s')
    return (f"/ws statuses {dict(statuses)}; by upstream tries {dict(sorted(tries.items()))}; "
            f"second passes {second_pass}; "
            f"with a connect timeout {len(timed_out)}: {Counter(timed_out).most_common(6)}")
