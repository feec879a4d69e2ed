"""Harness of the randomized fault test (tests/integration/test_fault_schedule.py).

- `FaultCluster`: `LocalCluster` (redis-server, N `signaling serve`, nginx) where every
  node reaches the one Redis through a `TcpProxy` of its own (tests/proxy_support.py),
  so one node's Redis link can be reset or black-holed alone; it remembers which nodes
  are SIGSTOPped and SIGCONTs them before stopping anything.
- `FaultPeer`: one peer id behaving like a good app behind nginx: it reconnects on
  1001/1006/1011 (or a dropped TCP connection, a handshake or welcome that does not come
  within `HANDSHAKE_TIMEOUT`, a 502/503/429 refusal) with `resume=<seq of the last frame
  it processed>` (or `welcome.seq` when it has processed none), with short back-off.
  It never sends anything twice: a message whose ack did not come is "unacked".
- `Traffic`: eight pairs exchanging numbered messages with receipts, and room members
  broadcasting numbered messages; one message in flight per sender.
- `FaultInjector`: faults drawn from a seeded RNG (node SIGKILL, SIGSTOP in three
  flavours, drain, Redis restarted empty, a node's Redis link cut or black-holed,
  client sockets aborted), one at a time or overlapping a little, each healed; every
  action goes to a timestamped fault log.
- `check`: the end-of-run accounting (`Report`), with a diagnostic per violation.

Times in reports are seconds since the test started (`t=12.345`), with the wall clock
next to them (`07:35:25,123`, the format of the node logs' timestamps). Each section
of a report lists 15 items; `SIGNALING_FAULT_SHOW=N` lists N.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy_support import TcpProxy
from signaling.launcher import LocalCluster, LocalNode, LocalRedis, free_port, http_status

SEED_ENV, SECONDS_ENV = "SIGNALING_FAULT_SEED", "SIGNALING_FAULT_SECONDS"
DEFAULT_SECONDS = 60.0

NODE_TTL, GRACE = 3.0, 30.0  # the shipped node TTL: a shorter lease is lost to CPU starvation on 2 cores
NODE_ARGS = ["--node-ttl", str(NODE_TTL), "--grace", str(GRACE), "--heartbeat", "5", "--rate", "2000",
             "--burst", "2000", "--drain-delay", "0.2", "--drain-window", "0.5",
             # a peer is away for seconds at most: the bound must never be what answers resumed: false
             "--inbox-limit", "4096", "--log-level", "debug"]

HANDSHAKE_TIMEOUT = 2.5  # upgrade + welcome; a SIGSTOPped node answers neither
ACK_TIMEOUT = 20.0  # a receipt not answered on a live connection within this is a violation
RECONNECT_CODES = {1001, 1006, 1011, 1012, 1013}
SEND_INTERVAL = (0.02, 0.05)


def fault_seed() -> int:
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1, 10**6)


def fault_seconds() -> float:
    value = os.environ.get(SECONDS_ENV)
    return float(value) if value else DEFAULT_SECONDS


# -- time ----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def wall(self, t: float) -> float:
        return self.wall0 + t

    def stamp(self, t: float | None) -> str:
        if t is None:
            return "t=?"
        wall = self.wall(t)
        return f"t={t:.3f} ({time.strftime('%H:%M:%S', time.localtime(wall))},{int(wall % 1 * 1000):03d})"


CLOCK = Clock()  # reset by the test when it starts


def _transport(ws: aiohttp.ClientWebSocketResponse | None) -> asyncio.Transport | None:
    if ws is None:
        return None
    conn = getattr(ws, "_conn", None) or ws._response.connection
    return conn.transport if conn is not None else None


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# -- the cluster -----------------------------------------------------------------------------

class FaultCluster(LocalCluster):
    """LocalCluster with a TcpProxy per node between the node and Redis."""

    def __init__(self, nodes: int = 3, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        self.proxies: dict[str, TcpProxy] = {}
        self._unassigned: list[TcpProxy] = []
        self.paused: set[str] = set()

    async def start(self, timeout: float = 30.0) -> None:
        try:
            self.redis = LocalRedis(free_port(), self.workdir / "redis.log")
            await self.redis.start()
            self.external_redis = self.redis.url  # LocalCluster.start must not start another
            for _ in range(self.size):
                self._unassigned.append(await TcpProxy(self.redis.port).start())
        except BaseException:
            await self.stop()
            raise
        await super().start(timeout)

    def _new_node(self) -> LocalNode:
        node = super()._new_node()
        if not self._unassigned:
            raise RuntimeError("FaultCluster has a Redis proxy only for the nodes it started with")
        proxy = self._unassigned.pop(0)
        self.proxies[node.node_id] = proxy
        at = node.argv.index("--redis-url") + 1
        node.argv[at] = f"redis://127.0.0.1:{proxy.port}/0"
        return node

    def node(self, node_id: str) -> LocalNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def pause(self, node: LocalNode) -> None:
        self.paused.add(node.node_id)
        node.signal(signal.SIGSTOP)

    def unpause(self, node: LocalNode) -> None:
        node.signal(signal.SIGCONT)
        self.paused.discard(node.node_id)

    async def redis_kill(self) -> None:
        assert self.redis is not None and self.redis.proc is not None
        self.redis.proc.kill()
        await asyncio.to_thread(self.redis.proc.wait, 5)

    @property
    def redis_running(self) -> bool:
        return self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is None

    async def heal_all(self) -> list[str]:
        """Undo whatever a fault left behind (a safety net: each fault heals itself).
        Returns what had to be healed."""
        done = []
        for node in self.nodes:
            if node.node_id in self.paused:
                self.unpause(node)
                done.append(f"SIGCONT {node.node_id}")
        for node_id, proxy in self.proxies.items():
            if proxy.stalled or proxy.blocked:
                proxy.heal()
                proxy.unblock()
                done.append(f"healed the Redis link of {node_id}")
        if not self.redis_running and self.redis is not None:
            await self.redis.start()
            done.append("started Redis")
        for node in self.nodes:
            if not node.running:
                await node.start()
                done.append(f"started {node.node_id}")
        return done

    async def stop(self) -> None:
        """Every process by PID, paused ones SIGCONTed first; bounded in time."""
        for node in self.nodes:
            if node.node_id in self.paused or node.running:
                node.signal(signal.SIGCONT)
        self.paused.clear()
        for proxy in self.proxies.values():
            proxy.heal()
        await asyncio.gather(*(node.stop(timeout=10) for node in self.nodes), return_exceptions=True)
        await self.nginx.stop()
        if self.redis is not None:
            await self.redis.stop()
        for proxy in [*self.proxies.values(), *self._unassigned]:
            with contextlib.suppress(Exception):
                await proxy.close()


# -- the clients -------------------------------------------------------------------------

@dataclass(eq=False)
class Sent:
    """One numbered message as its sender saw it."""

    stream: Stream
    n: int
    at: float
    conn: Conn
    outcome: str = "pending"  # acked | error:<code> | connection-lost | send-failed | pending
    answered_at: float | None = None
    queued: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def acked(self) -> bool:
        return self.outcome == "acked"

    def describe(self) -> str:
        extra = " queued" if self.queued else ""
        answered = f", answered {CLOCK.stamp(self.answered_at)}" if self.answered_at is not None else ""
        return (f"#{self.n} sent {CLOCK.stamp(self.at)} on {self.stream.sender.peer}'s conn {self.conn.index} "
                f"({self.conn.node}): {self.outcome}{extra}{answered}")


@dataclass(eq=False)
class Conn:
    """One WebSocket connection of a peer, from its welcome to its end."""

    peer: str
    index: int
    node: str
    resume: str | None  # the resume point it asked with (None: none asked)
    resumed: bool | None
    welcome_seq: str | None
    opened: float
    ws: aiohttp.ClientWebSocketResponse | None = field(default=None, repr=False)
    closed: float | None = None
    code: int | None = None
    ended_by: str = ""  # what ended it: "server close", "tcp drop", "aborted by the test"
    pending: dict[str, Sent] = field(default_factory=dict, repr=False)
    live: bool = True

    def describe(self) -> str:
        asked = f"resume={self.resume}" if self.resume is not None else "no resume"
        end = (f"until {CLOCK.stamp(self.closed)} code {self.code} ({self.ended_by})"
               if self.closed is not None else "still open")
        return (f"conn {self.index} on {self.node} welcomed {CLOCK.stamp(self.opened)} {asked} -> "
                f"resumed {self.resumed}{' welcome.seq ' + str(self.welcome_seq) if self.welcome_seq else ''}; {end}")


@dataclass
class Received:
    at: float
    sender: str  # `from`
    key: str  # the stream's key
    n: int
    seq: str
    conn: int


@dataclass
class Violation:
    kind: str
    at: float | None
    text: str
    group: str = ""  # violations with the same group are listed as one line (the first, and how many more)


LOST: dict[str, float] = {}  # peer -> when it last learned the cluster lost its data (resumed: false)


class FaultPeer:
    """One peer id that stays online through every fault, as a good app would."""

    def __init__(self, endpoint: str, peer: str, http: aiohttp.ClientSession, violations: list[Violation]) -> None:
        self.endpoint, self.peer, self.http = endpoint, peer, http
        self.violations = violations
        self.conn: Conn | None = None
        self.connections: list[Conn] = []
        self.connected = asyncio.Event()
        self.last_seq: str | None = None  # seq of the last frame processed
        self.received: list[Received] = []
        self.seqs: list[tuple[float, str, str]] = []  # (t, seq, frame type): every frame with a seq, in order
        self.events: list[tuple[float, dict[str, Any]]] = []  # room events received
        self.errors: list[tuple[float, dict[str, Any], int]] = []
        self.handshake_failures: list[tuple[float, str]] = []
        self.setup_done = False  # after it, a peer-joined is churn
        self.stopping = False
        self.rooms: dict[str, asyncio.Event] = {}  # rooms it is in: set while a member, clear while rejoining
        self.membership: dict[str, list[list[float | None]]] = {}  # room -> [[joined, lost or None], ...]
        self.lost_at: float | None = None  # its last welcome with resumed: false (the cluster lost its data)
        self._joined: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._rejoins: set[asyncio.Task[None]] = set()
        self._indices = itertools.count(1)

    def __repr__(self) -> str:
        return f"FaultPeer({self.peer})"

    @property
    def node(self) -> str | None:
        return self.conn.node if self.conn is not None and self.conn.live else None

    def resume_point(self) -> str | None:
        if self.last_seq is not None:
            return self.last_seq
        for conn in reversed(self.connections):  # protocol 1.1: welcome.seq before any frame was processed
            if conn.welcome_seq is not None:
                return conn.welcome_seq
        return None

    # -- connection --------------------------------------------------------------------
    async def start(self) -> FaultPeer:
        await self._connect_once(deadline=time.monotonic() + 20)
        self._task = asyncio.create_task(self._run(), name=f"peer {self.peer}")
        return self

    def _fail(self, why: str) -> None:
        self.handshake_failures.append((CLOCK.now(), why))

    async def _handshake(self) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any], str | None] | None:
        params = {"peer": self.peer}
        resume = self.resume_point()
        if resume is not None:
            params["resume"] = resume
        began = time.monotonic()
        try:
            ws = await asyncio.wait_for(
                self.http.ws_connect(f"{self.endpoint}/ws", params=params, heartbeat=None, autoping=True,
                                     max_msg_size=0), HANDSHAKE_TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            self._fail(f"refused {exc.status}")
            return None
        except TimeoutError:
            self._fail("no upgrade within the handshake timeout")
            return None
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(f"connect failed: {exc!r}")
            return None
        try:
            msg = await ws.receive(timeout=max(0.05, HANDSHAKE_TIMEOUT - (time.monotonic() - began)))
        except TimeoutError:
            self._fail("no welcome within the handshake timeout")
            self._abort_ws(ws)
            return None
        if msg.type is not aiohttp.WSMsgType.TEXT:
            self._fail(f"closed before the welcome: {msg.type.name} {ws.close_code} {msg.extra or ''}")
            self._abort_ws(ws)
            return None
        welcome = orjson.loads(msg.data)
        if welcome.get("type") != "welcome":
            self.violations.append(Violation("protocol", CLOCK.now(), f"{self.peer}: first frame is not a welcome: "
                                                                      f"{welcome}"))
            self._abort_ws(ws)
            return None
        return ws, welcome, resume

    @staticmethod
    def _abort_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
        transport = _transport(ws)
        if transport is not None:
            transport.abort()

    async def _connect_once(self, deadline: float) -> None:
        attempt = 0
        while not self.stopping:
            got = await self._handshake()
            if got is not None:
                ws, welcome, resume = got
                conn = Conn(self.peer, next(self._indices), str(welcome.get("node")), resume, welcome.get("resumed"),
                            welcome.get("seq"), CLOCK.now(), ws)
                self.connections.append(conn)
                self.conn = conn
                if welcome.get("resumed") is False and self.setup_done:
                    self._lost_rooms(conn)
                self.connected.set()
                return
            if time.monotonic() > deadline:
                raise ConnectionError(f"{self.peer} could not connect: {self.handshake_failures[-5:]}")
            attempt += 1
            await asyncio.sleep(min(0.05 * 2 ** min(attempt, 4), 0.5) * random.uniform(0.5, 1.5))

    async def _run(self) -> None:
        while not self.stopping:
            conn = self.conn
            assert conn is not None
            try:
                await self._read(conn)
            except Exception as exc:  # noqa: BLE001 - a harness bug must show, not hide as a loss
                self.violations.append(Violation("harness", CLOCK.now(), f"{self.peer}: reader failed: {exc!r}"))
            self._ended(conn)
            if self.stopping:
                return
            code = conn.code
            if code == 4409:
                self.violations.append(Violation(
                    "replaced", conn.closed,
                    f"{self.peer}: conn {conn.index} on {conn.node} closed with 4409 (replaced) at "
                    f"{CLOCK.stamp(conn.closed)}, but this client never has two connections: an abandoned "
                    f"handshake took the peer over"))
            elif code not in RECONNECT_CODES and code is not None:
                self.violations.append(Violation(
                    "close-code", conn.closed,
                    f"{self.peer}: conn {conn.index} on {conn.node} closed with unexpected code {code} "
                    f"at {CLOCK.stamp(conn.closed)}"))
            if code != 1001:
                await asyncio.sleep(random.uniform(0.0, 0.1))
            await self._connect_once(deadline=float("inf"))

    async def _read(self, conn: Conn) -> None:
        ws = conn.ws
        assert ws is not None
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                conn.closed = CLOCK.now()
                if msg.type is aiohttp.WSMsgType.CLOSE:  # the server's close frame
                    conn.code, conn.ended_by = msg.data, f"server close {msg.extra or ''}".strip()
                else:  # the TCP connection went away without a close frame
                    conn.code, conn.ended_by = 1006, conn.ended_by or f"tcp drop ({msg.type.name})"
                return
            self._frame(conn, orjson.loads(msg.data))

    def _frame(self, conn: Conn, frame: dict[str, Any]) -> None:
        now = CLOCK.now()
        kind = frame.get("type")
        seq = frame.get("seq")
        if seq is not None:  # processed on receipt
            self.seqs.append((now, seq, str(kind)))
            if kind == "message":
                data = frame.get("data")
                if isinstance(data, dict) and "k" in data:
                    self.received.append(Received(now, str(frame.get("from")), data["k"], data["n"], seq, conn.index))
                else:
                    self.violations.append(Violation("protocol", now, f"{self.peer}: unexpected message {frame}"))
            elif kind in ("peer-joined", "peer-left"):
                self.events.append((now, frame))
                rejoined = kind == "peer-joined" and str(frame.get("peer")) in LOST  # it rejoins: not churn
                if not rejoined and (kind == "peer-left" or self.setup_done):
                    self.violations.append(Violation(
                        "churn", now, f"{self.peer} got {frame} {CLOCK.stamp(now)} on conn {conn.index} ({conn.node})"))
            self.last_seq = seq
            return
        if kind == "ack" and str(frame.get("id", "")).startswith("join:"):
            return  # the receipt of a rejoin (its `joined` came just before)
        if kind == "ack":
            sent = conn.pending.pop(str(frame.get("id")), None)
            if sent is None:
                self.violations.append(Violation("protocol", now, f"{self.peer}: ack for nothing pending: {frame}"))
                return
            sent.outcome, sent.answered_at, sent.queued = "acked", now, bool(frame.get("queued"))
            sent.done.set()
        elif kind == "error" and str(frame.get("id", "")).startswith("join:"):
            future = self._joined.pop(str(frame["id"])[5:], None)  # a rejoin refused (unavailable): it retries
            if future is not None and not future.done():
                future.set_result(frame)
        elif kind == "error":
            self.errors.append((now, frame, conn.index))
            code = frame.get("code")
            sent = conn.pending.pop(str(frame.get("id")), None) if "id" in frame else None
            if sent is not None:
                sent.outcome, sent.answered_at = f"error:{code}", now
                sent.done.set()
            if code != "unavailable":  # (unavailable: the cluster cannot route right now; the sender moves on)
                what = f"{sent.stream.key} {sent.describe()}" if sent is not None else "no message of the test"
                self.violations.append(Violation(
                    "churn" if code == "peer-unavailable" else "error", now,
                    f"{self.peer} got {frame} {CLOCK.stamp(now)} on conn {conn.index} ({conn.node}) for {what}",
                    group=f"{code} {sent.stream.key if sent is not None else self.peer}"))
        elif kind == "joined":
            future = self._joined.pop(str(frame.get("room")), None)
            if future is not None and not future.done():
                future.set_result(frame)

        elif kind == "pong":
            pass
        else:
            self.violations.append(Violation("protocol", now, f"{self.peer}: unexpected frame {frame}"))

    def _ended(self, conn: Conn) -> None:
        conn.live = False
        if conn.closed is None:
            conn.closed = CLOCK.now()
        if conn.code is None:
            conn.code = 1006
        if self.conn is conn:
            self.connected.clear()
        for sent in conn.pending.values():  # their fate is unknown: they stay unacked, never resent
            sent.outcome = "connection-lost"
            sent.done.set()
        conn.pending.clear()

    def abort(self, why: str = "aborted by the test") -> bool:
        """Vanish without a close frame, as on network loss; the app reconnects."""
        conn = self.conn
        if conn is None or not conn.live:
            return False
        conn.ended_by = why
        transport = _transport(conn.ws)
        if transport is None:
            return False
        transport.abort()
        return True

    async def live(self, stop: asyncio.Event) -> Conn | None:
        while not stop.is_set():
            conn = self.conn
            if conn is not None and conn.live:
                return conn
            await wait_any(self.connected, stop, timeout=1.0)
        return None

    async def join(self, room: str) -> dict[str, Any]:
        conn = self.conn
        assert conn is not None and conn.ws is not None
        future = self._joined[room] = asyncio.get_running_loop().create_future()
        await conn.ws.send_str(orjson.dumps({"type": "join", "room": room}).decode())
        joined = await asyncio.wait_for(future, 5)
        self.membership.setdefault(room, []).append([CLOCK.now(), None])
        self.rooms.setdefault(room, asyncio.Event()).set()
        return joined

    def _lost_rooms(self, conn: Conn) -> None:
        """The server could not resume (Redis lost its data): as our clients do, rejoin every
        room; a member only from its new `joined` on, and its broadcasts wait for it."""
        self.lost_at = LOST[self.peer] = conn.opened
        for room, member in self.rooms.items():
            if member.is_set():
                member.clear()
                self.membership[room][-1][1] = conn.opened
                task = asyncio.create_task(self._rejoin(room, conn), name=f"rejoin {self.peer} {room}")
                self._rejoins.add(task)
                task.add_done_callback(self._rejoins.discard)

    async def _rejoin(self, room: str, conn: Conn) -> None:
        """Join `room` again on `conn` until the server says joined (`unavailable` while the
        cluster re-registers its peers: retry); a new connection that lost it again rejoins itself."""
        while conn.live and not self.stopping:
            future = self._joined[room] = asyncio.get_running_loop().create_future()
            try:
                assert conn.ws is not None
                await conn.ws.send_str(orjson.dumps({"type": "join", "room": room, "id": f"join:{room}"}).decode())
                await asyncio.wait_for(asyncio.shield(future), 5)
            except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError):
                await asyncio.sleep(0.25)
                continue
            if future.result().get("type") == "joined" and self.conn is conn and conn.live:
                self.membership[room].append([CLOCK.now(), None])
                self.rooms[room].set()
                return
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        self.stopping = True
        conn = self.conn
        if conn is not None and conn.ws is not None and not conn.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(), 3)
        for task in [*self._rejoins, *([self._task] if self._task is not None else [])]:
            task.cancel()
        await asyncio.gather(*self._rejoins, *([self._task] if self._task is not None else []),
                             return_exceptions=True)


@dataclass(eq=False)
class Stream:
    """Numbered messages from one sender, to one peer or to one room."""

    sender: FaultPeer
    to: str | None = None
    room: str | None = None
    recipients: list[str] = field(default_factory=list)  # who must process each acked message
    sent: list[Sent] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.sender.peer}>{self.to or '#' + str(self.room)}"

    async def run(self, stop: asyncio.Event, rng: random.Random, violations: list[Violation]) -> None:
        n = 0
        while not stop.is_set():
            if self.room is not None:  # as an app would: no broadcast to a room it must rejoin first
                await wait_any(self.sender.rooms[self.room], stop)
                if stop.is_set():
                    return
            conn = await self.sender.live(stop)
            if conn is None:
                return
            if self.room is not None and not self.sender.rooms[self.room].is_set():
                continue  # the connection it waited for said resumed: false: rejoin first
            ident = f"{self.key}:{n}"
            sent = Sent(self, n, CLOCK.now(), conn)
            self.sent.append(sent)
            frame: dict[str, Any] = {"type": "message", "data": {"k": self.key, "n": n}, "id": ident}
            frame["to" if self.to else "room"] = self.to or self.room
            conn.pending[ident] = sent
            try:
                assert conn.ws is not None
                await conn.ws.send_str(orjson.dumps(frame).decode())
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                if not sent.done.is_set():
                    conn.pending.pop(ident, None)
                    sent.outcome = "send-failed"
                    sent.done.set()
            n += 1  # never resent, whatever happens
            try:
                await asyncio.wait_for(sent.done.wait(), ACK_TIMEOUT)
            except TimeoutError:
                if conn.live and sent.outcome == "pending":  # a late answer still updates it
                    violations.append(Violation(
                        "unanswered", sent.at, f"{self.key} {sent.describe()}: no ack or error within "
                                               f"{ACK_TIMEOUT:.0f}s on a live connection"))
            await asyncio.sleep(rng.uniform(*SEND_INTERVAL))


class Traffic:
    """`pairs` pairs talking to each other; rooms whose first members broadcast."""

    def __init__(self, endpoint: str, http: aiohttp.ClientSession, seed: int, pairs: int = 8,
                 rooms: dict[str, tuple[list[int], int]] | None = None) -> None:
        self.violations: list[Violation] = []
        LOST.clear()
        self.peers = [FaultPeer(endpoint, f"p{i}", http, self.violations) for i in range(2 * pairs)]
        self.by_id = {p.peer: p for p in self.peers}
        # room -> (member indices, how many of them broadcast)
        self.room_spec = rooms if rooms is not None else {"ra": ([0, 2, 4, 6], 3), "rb": ([9, 11, 13, 15], 3)}
        self.members: dict[str, dict[str, float]] = {}  # room -> member -> t of its `joined`
        self.streams: list[Stream] = []
        self.seed = seed
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def setup(self) -> None:
        await asyncio.gather(*(p.start() for p in self.peers))
        for room, (indices, _) in self.room_spec.items():
            self.members[room] = {}
            for i in indices:
                await self.peers[i].join(room)
                self.members[room][self.peers[i].peer] = CLOCK.now()
        # every earlier member hears each later one join (a peer-joined after setup is churn)
        need: Counter[str] = Counter()
        for indices, _ in self.room_spec.values():
            for k, i in enumerate(indices):
                need[self.peers[i].peer] += len(indices) - 1 - k
        deadline = time.monotonic() + 5
        while any(len(p.events) < need[p.peer] for p in self.peers):
            if time.monotonic() > deadline:
                got = {p.peer: (len(p.events), need[p.peer]) for p in self.peers}
                raise AssertionError(f"peer-joined missing at setup (got, expected): {got}")
            await asyncio.sleep(0.02)
        for p in self.peers:
            p.setup_done = True
        for i, p in enumerate(self.peers):
            partner = self.peers[i ^ 1]
            self.streams.append(Stream(p, to=partner.peer, recipients=[partner.peer]))
        for room, (indices, broadcasters) in self.room_spec.items():
            for i in indices[:broadcasters]:
                sender = self.peers[i]
                self.streams.append(Stream(sender, room=room,
                                           recipients=[m for m in self.members[room] if m != sender.peer]))

    def start(self) -> None:
        for s in self.streams:
            rng = random.Random(f"{self.seed}:{s.key}")
            self._tasks.append(asyncio.create_task(s.run(self.stop, rng, self.violations), name=f"stream {s.key}"))

    async def finish(self, timeout: float) -> None:
        """Stop sending; every sender's last message gets its answer (or its connection ends)."""
        self.stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in done:
            if task.exception() is not None:
                self.violations.append(Violation("harness", CLOCK.now(), f"{task.get_name()} failed: "
                                                                         f"{task.exception()!r}"))
        if pending:
            self.violations.append(Violation("harness", CLOCK.now(), f"senders did not stop within {timeout}s: "
                                                                     f"{[t.get_name() for t in pending]}"))
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        for p in self.peers:
            p.stopping = True  # what happens from here on is not checked
        await asyncio.gather(*(p.close() for p in self.peers), return_exceptions=True)


# -- faults ------------------------------------------------------------------------------

@dataclass
class FaultEvent:
    at: float
    fault: int
    text: str


KINDS = {  # kind -> weight
    "kill": 2, "stop": 3, "drain": 2, "redis-restart": 1, "link-cut": 2, "link-stall": 2, "client-abort": 2,
}
NODE_OUT = {"kill", "stop", "drain"}  # at most one node out of service at a time


class FaultInjector:
    def __init__(self, cluster: FaultCluster, traffic: Traffic, seed: int) -> None:
        self.cluster, self.traffic, self.seed = cluster, traffic, seed
        self.rng = random.Random(seed)
        self.log: list[FaultEvent] = []
        self.counts: Counter[str] = Counter()
        self.failures: list[Violation] = []
        self._running: dict[asyncio.Task[None], tuple[str, str | None]] = {}
        self._ids = itertools.count(1)

    def note(self, fault: int, text: str) -> None:
        self.log.append(FaultEvent(CLOCK.now(), fault, text))

    def around(self, start: float, end: float, before: float = 2.0) -> str:
        """The faults that were going on in [start - before, end], by their first log line."""
        spans: dict[int, list[FaultEvent]] = defaultdict(list)
        for e in self.log:
            if e.fault:
                spans[e.fault].append(e)
        hits = [f"[{f}] {events[0].text}" for f, events in sorted(spans.items())
                if events[0].at <= end and events[-1].at >= start - before]
        return "; ".join(hits) if hits else "no fault"

    def describe_log(self) -> str:
        return "\n".join(f"  {CLOCK.stamp(e.at)} [{e.fault}] {e.text}" for e in self.log) or "  (none)"

    async def run(self, seconds: float) -> None:
        end = CLOCK.now() + seconds
        node_ids = [n.node_id for n in self.cluster.nodes]
        while CLOCK.now() < end:
            # every draw is made in the same order whatever happens, so a seed replays the schedule
            kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            drawn = node_ids[self.rng.randrange(len(node_ids))]
            params = {
                "down": self.rng.uniform(0.3, 2.0),
                "pause": self.rng.uniform(NODE_TTL + 0.5, NODE_TTL + 3.0),
                "flavour": self.rng.choice(["stay", "leave", "half"]),
                "stall": self.rng.uniform(1.0, 6.0),
                "direction": self.rng.choice(["both", "both", "down", "up"]),
                "clients": self.rng.randint(1, 4),
                "sub": self.rng.randrange(1 << 30),
            }
            overlap = self.rng.random() < 0.25
            gap = self.rng.uniform(0.3, 1.5)
            if not overlap:
                await self._wait_running()
            await asyncio.sleep(max(0.0, min(gap, end - CLOCK.now())))
            if CLOCK.now() >= end:
                break
            target = self._free_target(kind, drawn, node_ids)
            if target is False:  # too much at once: this one waits for the others to heal
                await self._wait_running()
                await asyncio.sleep(max(0.0, min(gap, end - CLOCK.now())))
                if CLOCK.now() >= end:
                    break
                target = self._free_target(kind, drawn, node_ids)
            fault = next(self._ids)
            self.counts[kind] += 1
            task = asyncio.create_task(self._fault(fault, kind, target, params), name=f"fault {fault} {kind}")
            self._running[task] = (kind, target if isinstance(target, str) else None)
            task.add_done_callback(self._running.pop)
        await self._wait_running()

    def _free_target(self, kind: str, target: str, node_ids: list[str]) -> str | None | bool:
        """The node for a node fault (the drawn one, or the next free one); False if it must wait."""
        busy_nodes = {t for k, t in self._running.values() if t is not None}
        if kind == "client-abort":
            return None
        if kind == "redis-restart":
            return False if any(k == "redis-restart" for k, _ in self._running.values()) else None
        if kind in NODE_OUT and any(k in NODE_OUT for k, _ in self._running.values()):
            return False
        start = node_ids.index(target)
        for node_id in node_ids[start:] + node_ids[:start]:
            if node_id not in busy_nodes:
                return node_id
        return False

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()

    async def _wait_running(self) -> None:
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _fault(self, fault: int, kind: str, target: str | None, p: dict[str, Any]) -> None:
        c = self.cluster
        sub = random.Random(p["sub"])  # choices that depend on who is where right now
        try:
            if kind == "kill":
                node = c.node(target)
                self.note(fault, f"SIGKILL {target} (pid {node.pid}); down for {p['down']:.2f}s")
                await node.kill()
                await asyncio.sleep(p["down"])
                await node.start()
                self.note(fault, f"{target} started again (pid {node.pid}), ready")
            elif kind == "stop":
                node = c.node(target)
                self.note(fault, f"SIGSTOP {target} (pid {node.pid}) for {p['pause']:.2f}s; its clients {p['flavour']}")
                paused_at = CLOCK.now()
                c.pause(node)
                if p["flavour"] != "stay":
                    await asyncio.sleep(sub.uniform(0.0, 0.5))
                    on_it = sorted((x for x in self.traffic.peers if x.node == target), key=lambda x: x.peer)
                    leaving = on_it if p["flavour"] == "leave" else sub.sample(on_it, len(on_it) // 2)
                    for peer in leaving:
                        peer.abort(f"aborted by fault {fault} (its node {target} is paused)")
                    self.note(fault, f"aborted the sockets of {[x.peer for x in leaving]} (on paused {target}); "
                                     f"staying: {[x.peer for x in on_it if x not in leaving]}")
                    await asyncio.sleep(max(0.0, p["pause"] - (CLOCK.now() - paused_at)))
                else:
                    await asyncio.sleep(p["pause"])
                c.unpause(node)
                self.note(fault, f"SIGCONT {target}")
            elif kind == "drain":
                node = c.node(target)
                self.note(fault, f"SIGTERM {target} (pid {node.pid}): drain")
                code = await node.drain(timeout=15)
                if code is None:
                    self.failures.append(Violation("drain", CLOCK.now(), f"{target} did not exit within 15 s of "
                                                                         f"SIGTERM (fault {fault}); SIGKILLed"))
                    await node.kill()
                self.note(fault, f"{target} exited with {code}; down for {p['down']:.2f}s")
                await asyncio.sleep(p["down"])
                await node.start()
                self.note(fault, f"{target} started again (pid {node.pid}), ready")
            elif kind == "redis-restart":
                self.note(fault, f"SIGKILL redis (pid {c.redis.proc.pid}); restarted empty in {p['down']:.2f}s")
                await c.redis_kill()
                await asyncio.sleep(p["down"])
                await c.redis.start()
                self.note(fault, f"redis started again, empty (pid {c.redis.proc.pid})")
            elif kind == "link-cut":
                proxy = c.proxies[target]
                proxy.cut()
                self.note(fault, f"cut the Redis link of {target} (every connection reset)")
                await asyncio.sleep(p["down"] / 2)
            elif kind == "link-stall":
                proxy = c.proxies[target]
                proxy.stall(p["direction"])
                self.note(fault, f"black-holed the Redis link of {target} ({p['direction']}) for {p['stall']:.2f}s")
                await asyncio.sleep(p["stall"])
                proxy.heal()
                self.note(fault, f"healed the Redis link of {target}")
            elif kind == "client-abort":
                peers = sub.sample(self.traffic.peers, p["clients"])
                aborted = [x.peer for x in peers if x.abort(f"aborted by fault {fault}")]
                self.note(fault, f"aborted the client sockets of {aborted}")
                await asyncio.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - a node that does not come back is a finding
            self.failures.append(Violation("fault", CLOCK.now(), f"fault {fault} ({kind} {target}) failed: {exc!r}"))
            self.note(fault, f"FAILED: {exc!r}")

    def summary(self) -> str:
        return ", ".join(f"{k} {self.counts[k]}" for k in KINDS if self.counts[k])


# -- waiting and checking ------------------------------------------------------------------


async def readyz(cluster: FaultCluster, http: aiohttp.ClientSession) -> dict[str, int | None]:
    codes = await asyncio.gather(*(http_status(http, f"{n.base}/readyz") for n in cluster.nodes))
    return {n.node_id: code for n, code in zip(cluster.nodes, codes, strict=True)}


async def wait_until(what: str, predicate: Callable[[], Awaitable[bool] | bool], timeout: float,
                     diagnose: Callable[[], Awaitable[str] | str]) -> Violation | None:
    """Wait for `predicate`; after `timeout`, a violation that says what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        spent = time.monotonic() - began
        if value:
            return None
        if time.monotonic() > deadline:
            detail = diagnose()
            if asyncio.iscoroutine(detail):
                detail = await detail
            return Violation("quiescence", CLOCK.now(), f"not within {timeout:.0f}s: {what}: {detail}")
        await asyncio.sleep(max(0.1, 2 * spent))  # (the tail check is O(messages): long runs poll less often)


@dataclass
class Report:
    seed: int
    seconds: float
    faults: str
    fault_count: int
    acked: int = 0
    unacked: int = 0
    errored: int = 0
    error_codes: Counter[str] = field(default_factory=Counter)
    delivered: int = 0
    excused: int = 0
    lost: list[tuple[float, str]] = field(default_factory=list)  # (first send, a run of lost numbers)
    duplicated: list[str] = field(default_factory=list)
    seq_repeats: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    errored_delivered: list[str] = field(default_factory=list)  # informational
    other: list[Violation] = field(default_factory=list)
    lost_count: int = 0
    first_at: dict[str, float] = field(default_factory=dict)  # kind -> t of its first instance

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.seq_repeats or self.out_of_order or self.phantom or self.other)

    def summary(self) -> str:
        kinds = Counter(v.kind for v in self.other)
        more = "".join(f" {k}={kinds[k]}" for k in sorted(kinds))
        codes = f" ({', '.join(f'{k} {v}' for k, v in self.error_codes.most_common())})" if self.error_codes else ""
        return (f"faults seed={self.seed} seconds={self.seconds:g} faults={self.fault_count} ({self.faults}) "
                f"acked={self.acked} delivered={self.delivered} lost={self.lost_count} "
                f"duplicated={len(self.duplicated)} seq_repeats={len(self.seq_repeats)} "
                f"out_of_order={len(self.out_of_order)} excused={self.excused} unacked={self.unacked} "
                f"errored={self.errored}{codes} errored_but_delivered={len(self.errored_delivered)}{more}")


def _expected(stream: Stream, traffic: Traffic, sent: Sent) -> list[str]:
    """Who must process `sent`: its addressee, or every member in its room when it was sent
    (a member that had to rejoin after the cluster lost its data is one from its new `joined` on)."""
    if stream.to:
        return [stream.to]
    room = str(stream.room)

    def member(m: str) -> bool:
        return any(start is not None and start < sent.at and (end is None or end > sent.at)
                   for start, end in traffic.by_id[m].membership.get(room, ()))
    return [m for m in stream.recipients if member(m)]


def tails_missing(traffic: Traffic) -> list[tuple[Stream, Sent, str]]:
    """(stream, sent, recipient) of every acked message not processed there and not excused."""
    got: dict[str, dict[str, set[int]]] = {p.peer: defaultdict(set) for p in traffic.peers}
    for p in traffic.peers:
        for r in p.received:
            got[p.peer][r.key].add(r.n)
    out = []
    for s in traffic.streams:
        for sent in s.sent:
            if not sent.acked:
                continue
            for rcpt in _expected(s, traffic, sent):
                if sent.n not in got[rcpt][s.key] and not _excused(traffic.by_id[rcpt], sent):
                    out.append((s, sent, rcpt))
    return out


def _excused(recipient: FaultPeer, sent: Sent) -> Conn | None:
    """A welcome with resumed: false after the ack: the server said it lost the gap."""
    assert sent.answered_at is not None
    for conn in recipient.connections:
        if conn.resumed is False and conn.opened > sent.answered_at:
            return conn
    return None


def _runs(stream: Stream, sents: list[Sent]) -> list[list[Sent]]:
    """Lost messages of one stream at one recipient, cut where a number between two of
    them was processed there."""
    index = {x.n: i for i, x in enumerate(stream.sent)}
    runs: list[list[Sent]] = []
    for sent in sents:
        if runs and all(not x.acked for x in stream.sent[index[runs[-1][-1].n] + 1:index[sent.n]]):
            runs[-1].append(sent)
        else:
            runs.append([sent])
    return runs


def _conn_at(peer: FaultPeer, t: float) -> str:
    for conn in peer.connections:
        if conn.opened <= t and (conn.closed is None or t <= conn.closed):
            return f"conn {conn.index} ({conn.node})"
    return "no connection"


def _describe_run(rcpt: str, stream: Stream, run: list[Sent], view: list[Received],
                  recipient: FaultPeer | None = None, injector: FaultInjector | None = None) -> str:
    first, last = run[0], run[-1]
    numbers = f"#{first.n}" if first is last else f"#{first.n}..#{last.n} ({len(run)} acked)"
    outcomes = Counter("acked queued" if x.queued else "acked delivered" for x in run)
    conns = sorted({(x.conn.index, x.conn.node) for x in run})
    when = CLOCK.stamp(first.at) if first is last else f"{CLOCK.stamp(first.at)} .. {CLOCK.stamp(last.at)}"
    when += f" (acked {CLOCK.stamp(first.answered_at)}{' ..' if first is not last else ''})"
    return (f"{rcpt} never processed {stream.key} {numbers}: sent {when} on {stream.sender.peer}'s "
            f"{', '.join(f'conn {i} ({node})' for i, node in conns)}, answered "
            f"{', '.join(f'{v} {k}' for k, v in sorted(outcomes.items()))}"
            + (f"; {rcpt} was on {_conn_at(recipient, first.at)}" if recipient is not None else "")
            + f"; {_context(view, first.n, last.n)}"
            + (f"; faults then: {injector.around(first.at, last.answered_at or last.at)}" if injector else ""))


def _context(view: list[Received], n: int, last: int | None = None) -> str:
    last = n if last is None else last
    before = [r for r in view if r.n < n][-1:]
    after = [r for r in view if r.n > last][:1]
    parts = [f"#{r.n} seq {r.seq} {CLOCK.stamp(r.at)} conn {r.conn}" for r in before + after]
    return "neighbours processed: " + ("; ".join(parts) if parts else "none")


def check(traffic: Traffic, injector: FaultInjector, seed: int, seconds: float,
          extra: Iterable[Violation] = ()) -> Report:
    rep = Report(seed, seconds, injector.summary(), sum(injector.counts.values()))
    rep.other = [*traffic.violations, *injector.failures, *extra]
    views: dict[str, dict[str, list[Received]]] = {}  # recipient -> stream key -> what it processed, in order
    for p in traffic.peers:
        views[p.peer] = defaultdict(list)
        for r in p.received:
            views[p.peer][r.key].append(r)
    for s in traffic.streams:
        by_n = {x.n: x for x in s.sent}
        for sent in s.sent:
            if sent.acked:
                rep.acked += 1
            elif sent.outcome.startswith("error:"):
                rep.errored += 1
                rep.error_codes[sent.outcome[6:]] += 1
            else:
                rep.unacked += 1
        for rcpt in s.recipients:
            view = views[rcpt][s.key]
            rep.delivered += len(view)
            counts = Counter(r.n for r in view)
            for r in view:
                if r.sender != s.sender.peer:
                    rep.phantom.append(f"{rcpt} processed {s.key} #{r.n} (seq {r.seq}) with from={r.sender}")
                if r.n not in by_n:
                    rep.phantom.append(f"{rcpt} processed {s.key} #{r.n} (seq {r.seq}) {CLOCK.stamp(r.at)}, "
                                       f"a number never sent")
            for n, count in sorted(counts.items()):
                if count > 1:
                    copies = [r for r in view if r.n == n]
                    sent = by_n.get(n)
                    rep.duplicated.append(
                        f"{rcpt} processed {s.key} #{n} {count} times: "
                        + "; ".join(f"seq {r.seq} {CLOCK.stamp(r.at)} conn {r.conn}" for r in copies)
                        + (f" [{sent.describe()}]" if sent else ""))
                    rep.first_at.setdefault("duplicated", copies[1].at)
            for prev, cur in itertools.pairwise(view):
                if cur.n < prev.n:  # (the same number again is a duplicate, reported as such)
                    a, b = by_n.get(prev.n), by_n.get(cur.n)
                    rep.out_of_order.append(
                        f"{rcpt} processed {s.key} #{cur.n} (seq {cur.seq} {CLOCK.stamp(cur.at)} conn {cur.conn}) "
                        f"after #{prev.n} (seq {prev.seq} {CLOCK.stamp(prev.at)} conn {prev.conn}); "
                        f"sender: [{a.describe() if a else '?'}] [{b.describe() if b else '?'}]; faults then: "
                        f"{injector.around(b.at if b else cur.at, cur.at)}")
                    rep.first_at.setdefault("out_of_order", cur.at)
            for sent in s.sent:
                if sent.outcome.startswith("error:") and counts.get(sent.n):
                    rep.errored_delivered.append(f"{rcpt} processed {s.key} {sent.describe()}")
        processed = {rcpt: {r.n for r in views[rcpt][s.key]} for rcpt in s.recipients}
        missing: dict[str, list[Sent]] = defaultdict(list)
        for sent in s.sent:
            if not sent.acked:
                continue
            for rcpt in _expected(s, traffic, sent):
                if sent.n in processed[rcpt]:
                    continue
                if _excused(traffic.by_id[rcpt], sent) is not None:
                    rep.excused += 1
                    continue
                missing[rcpt].append(sent)
        for rcpt, sents in missing.items():
            rep.lost_count += len(sents)
            for run in _runs(s, sents):
                rep.lost.append((run[0].at, _describe_run(rcpt, s, run, views[rcpt][s.key], traffic.by_id[rcpt],
                                                          injector)))
    recipient_of: dict[str, set[str]] = defaultdict(set)
    for s in traffic.streams:
        for rcpt in s.recipients:
            recipient_of[rcpt].add(s.key)
    for p in traffic.peers:
        for r in p.received:
            if r.key not in recipient_of[p.peer]:
                rep.phantom.append(f"{p.peer} processed {r.key} #{r.n} (seq {r.seq}) {CLOCK.stamp(r.at)}, "
                                   f"a stream it does not receive")
        seen: dict[str, tuple[float, str]] = {}
        for at, seq, kind in p.seqs:
            if seq in seen:
                rep.seq_repeats.append(f"{p.peer} processed seq {seq} twice: {kind} {CLOCK.stamp(at)}, first "
                                       f"{seen[seq][1]} {CLOCK.stamp(seen[seq][0])}")
                rep.first_at.setdefault("seq_repeats", at)
            else:
                seen[seq] = (at, kind)
    rep.lost.sort()
    if rep.lost:
        rep.first_at["lost"] = rep.lost[0][0]
    for v in rep.other:
        if v.at is not None:
            rep.first_at.setdefault(v.kind, v.at)
    return rep


def _section(title: str, items: list[str], limit: int = int(os.environ.get("SIGNALING_FAULT_SHOW", "15"))) -> str:
    if not items:
        return ""
    shown = "\n".join(f"  {x}" for x in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n{title} ({len(items)}):\n{shown}{more}"


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def log_excerpt(paths: dict[str, Path], around: float, before: float = 1.5, after: float = 1.5,
                limit: int = 25) -> str:
    """Lines of the node logs whose timestamp is within [around - before, around + after]
    (`around` on the test's clock), each prefixed with its node: the `limit` nearest to
    `around`, in time order; a message a node repeats is shown once, with its count.
    (Access-log lines are left out: the WebSocket ones are written when a socket ends.)"""
    lo, hi, at = CLOCK.wall(around - before), CLOCK.wall(around + after), CLOCK.wall(around)
    found: dict[tuple[str, str], list[float | str | int]] = {}  # (node, message) -> [first wall, line, count]
    for name, path in paths.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _LOG_TIME.match(line)
            if not m or " aiohttp.access" in line:
                continue
            wall = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            if lo <= wall <= hi:
                key = (name, line[m.end():])
                if key in found:
                    found[key][2] += 1  # type: ignore[operator]  # [wall, line, count]: the count
                else:
                    found[key] = [wall, f"    {name}: {line[:300]}", 1]
    nearest = sorted(found.values(), key=lambda x: abs(float(x[0]) - at))[:limit]
    shown = [f"{line}  (x{count} in this window)" if count > 1 else str(line)
             for _, line, count in sorted(nearest, key=lambda x: float(x[0]))]
    if len(found) > limit:
        shown.append(f"    ... {len(found) - limit} more distinct lines in [{CLOCK.stamp(around - before)}, "
                     f"{CLOCK.stamp(around + after)}]")
    return "\n".join(shown) or "    (no node log lines then)"


def diagnostic(rep: Report, traffic: Traffic, injector: FaultInjector, logs: dict[str, Path]) -> str:
    parts = []
    parts.append(_section(f"LOST: {rep.lost_count} acked messages never processed by a recipient that was not told "
                          f"resumed: false after the ack; runs of consecutive numbers, by time",
                          [x for _, x in rep.lost]))
    parts.append(_section("DUPLICATED: processed more than once by one recipient", rep.duplicated))
    parts.append(_section("SEQ REPEATED: one seq processed twice by one recipient", rep.seq_repeats))
    parts.append(_section("OUT OF ORDER: a sender's numbers not strictly increasing at a recipient", rep.out_of_order))
    parts.append(_section("PHANTOM: processed something never sent, or from the wrong sender", rep.phantom))
    by_kind: dict[str, list[str]] = defaultdict(list)
    groups: dict[tuple[str, str], list[Violation]] = defaultdict(list)
    for v in rep.other:
        if v.group:
            if (v.kind, v.group) not in groups:
                by_kind[v.kind].append("")  # its place: filled in below
            groups[(v.kind, v.group)].append(v)
        else:
            by_kind[v.kind].append(v.text)
    for (kind, _), members in groups.items():
        last = members[-1]
        more = (f" [and {len(members) - 1} more like it, the last {CLOCK.stamp(last.at)}]"
                if len(members) > 1 else "")
        by_kind[kind][by_kind[kind].index("")] = members[0].text + more
    for kind, texts in sorted(by_kind.items()):
        total = sum(1 for v in rep.other if v.kind == kind)
        parts.append(_section(f"{kind.upper()}: {total} in all, listed", texts))
    parts.append(_section("(informational) refused with an error but processed anyway", rep.errored_delivered, 5))
    involved = set()
    for text in [x for _, x in rep.lost] + rep.out_of_order + rep.duplicated + [v.text for v in rep.other]:
        first = text.split(" ", 1)[0].rstrip(":")
        if first in traffic.by_id:
            involved.add(first)
    for peer in sorted(involved, key=lambda x: int(x[1:]) if x[1:].isdigit() else 0)[:6]:
        p = traffic.by_id.get(peer)
        if p is not None:
            parts.append(f"\nconnections of {peer}:\n" + "\n".join(f"  {c.describe()}" for c in p.connections))
    parts.append(f"\nfault log:\n{injector.describe_log()}")
    for kind, at in sorted(rep.first_at.items(), key=lambda kv: kv[1]):
        parts.append(f"\nnode logs around the first {kind} ({CLOCK.stamp(at)}):\n{log_excerpt(logs, at)}")
    parts.append(f"\nreplay: {SEED_ENV}={rep.seed} {SECONDS_ENV}={rep.seconds:g} "
                 f".venv/bin/pytest tests/integration/test_fault_schedule.py -s")
    return "\n".join(x for x in parts if x)


def peers_state(traffic: Traffic) -> str:
    out = []
    for p in traffic.peers:
        last = p.connections[-1].describe() if p.connections else "never connected"
        fails = p.handshake_failures[-2:]
        out.append(f"  {p.peer}: {'connected' if p.node else 'DISCONNECTED'}; last {last}; "
                   f"recent handshake failures {[(round(t, 2), w) for t, w in fails]}")
    return "\n".join(out)


def print_flush(*args: Any) -> None:
    print(*args, flush=True)
    sys.stdout.flush()
