"""Helpers for the partition tests (tests/integration/test_partitions.py).

`GoodApp` is a client that behaves like a well-written app and records what its user
would notice: every frame it processed, every welcome (and whether it said `resumed`),
every close code, every answer to its own messages. `violations` turns those records
into the cluster's promises, and `Lab` starts and stops (by PID) everything a test uses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from proxy_support import TcpProxy
from support import NodeProcess, RedisServer

RECONNECT_CODES = {1001, 1006, 1011}  # a good app reconnects with resume after these


class HandshakeFailed(Exception):
    """No welcome from a node: refused (HTTP status), unreachable, or no answer in time."""


async def until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str] | str,
                interval: float = 0.02) -> None:
    """Wait until `predicate()` holds; else fail saying `what` (a string or a callable for late detail)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout}s: {what() if callable(what) else what}")
        await asyncio.sleep(interval)


async def settle(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Wait until `predicate()` holds, at most `timeout`; whether it did (the caller's
    assertions then say what went wrong, with more to say than a timeout)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


@dataclass
class Conn:
    """One WebSocket connection of a GoodApp."""

    index: int
    node: str  # the ws base it went to
    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    welcome: dict[str, Any]
    opened: float
    code: int | None = None  # close code once it ended
    abandoned: bool = False  # the app gave up on it itself (aborted it, or walked away from it)
    reader: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """Vanish without a close frame, as an app that gives up on a dead link does."""
        conn = self.ws._response.connection
        if conn is not None and conn.transport is not None:
            conn.transport.abort()


@dataclass
class Sent:
    """One numbered message and what its sender was told about it."""

    stream: str
    n: int
    conn: int  # index of the connection it went out on
    at: float
    outcome: str = "pending"  # "ack", "queued" (ack with queued: true), "error:<code>", "unacked"
    answered_at: float | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked(self) -> bool:
        return self.outcome in ("ack", "queued")


@dataclass
class Delivery:
    """A numbered message the app processed."""

    sender: str
    stream: str
    n: int
    seq: str
    conn: int
    at: float


class GoodApp:
    """A peer id kept online like a good app would: on 1001/1006/1011 it reconnects, to
    the first node of `self.nodes` that welcomes it, with `resume=<seq of the last frame
    it processed>` (or the last welcome's `seq`, PROTOCOL 1.1). It never sends a message
    again: one whose ack did not come is recorded as unacked."""

    def __init__(self, peer: str, nodes: list[str]) -> None:
        self.peer = peer
        self.nodes = list(nodes)  # where to reconnect, in order of preference (a test may change it)
        self.conns: list[Conn] = []
        self.last_seq: str | None = None
        self.deliveries: list[Delivery] = []
        self.events: list[dict[str, Any]] = []  # every other frame: room events, joined, pong, ...
        self.errors: list[dict[str, Any]] = []
        self.sent: dict[tuple[str, int], Sent] = {}
        self._by_id: dict[str, Sent] = {}
        self._stopping = False
        self._reconnector: asyncio.Task[None] | None = None
        self.reconnect_failures: list[str] = []

    # -- connecting ------------------------------------------------------------------
    @property
    def current(self) -> Conn | None:
        return self.conns[-1] if self.conns else None

    @property
    def online(self) -> bool:
        return self.current is not None and self.current.code is None and not self.current.abandoned

    async def connect(self, node: str, *, timeout: float = 3.0, resume: bool = True) -> Conn:
        """One attempt: upgrade and welcome within `timeout`, else HandshakeFailed (the
        half-open socket is aborted, never closed cleanly)."""
        params = {"peer": self.peer}
        if resume and self.last_seq is not None:
            params["resume"] = self.last_seq
        http = aiohttp.ClientSession()
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(timeout):
                ws = await http.ws_connect(f"{node}/ws", params=params, heartbeat=None, autoping=True,
                                           max_msg_size=0)
                msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise HandshakeFailed(f"{node}: closed before the welcome ({msg.type}, code {ws.close_code})")
            welcome = json.loads(msg.data)
            if welcome.get("type") != "welcome":
                raise HandshakeFailed(f"{node}: first frame was not a welcome: {welcome}")
        except (TimeoutError, aiohttp.ClientError, OSError, HandshakeFailed) as exc:
            if ws is not None and ws._response.connection is not None:
                ws._response.connection.transport.abort()
            await http.close()
            if isinstance(exc, HandshakeFailed):
                raise
            raise HandshakeFailed(f"{node}: {type(exc).__name__} {exc}") from None
        conn = Conn(len(self.conns), node, ws, http, welcome, time.monotonic())
        if welcome.get("seq") is not None:
            self.last_seq = welcome["seq"]  # PROTOCOL 1.1: this connection's resume point
        self.conns.append(conn)
        conn.reader = asyncio.create_task(self._read(conn))
        return conn

    async def reconnect(self, deadline_s: float = 20.0) -> Conn:
        """Connect again, resuming (one reconnect at a time: joins one already under way)."""
        if self._reconnector is not None and not self._reconnector.done():
            await asyncio.wait([self._reconnector])
            if self.online:
                assert self.current is not None
                return self.current
        return await self._reconnect(deadline_s)

    async def _reconnect(self, deadline_s: float = 20.0) -> Conn:
        """Try `self.nodes` in turn (refusals are expected during outages) until one welcomes us."""
        deadline = time.monotonic() + deadline_s
        while True:
            for node in list(self.nodes):
                try:
                    return await self.connect(node, timeout=2.0)
                except HandshakeFailed as exc:
                    last = str(exc)
            if time.monotonic() > deadline:
                self.reconnect_failures.append(last)
                raise HandshakeFailed(f"{self.peer} could not reconnect: {last}")
            await asyncio.sleep(0.1)

    def abandon(self) -> Conn:
        """Give up on the current connection (its node froze): abort its socket, no close frame."""
        conn = self._give_up()
        conn.abort()
        return conn

    def walk_away(self) -> Conn:
        """Stop using the current connection without ending it: no close frame, no RST,
        so its node goes on believing in it (a half-open TCP connection whose end was lost)."""
        conn = self._give_up()
        if conn.reader is not None:
            conn.reader.cancel()  # what arrives there from now on is never processed
        return conn

    def _give_up(self) -> Conn:
        conn = self.current
        assert conn is not None
        conn.abandoned = True
        self._unanswered(conn)
        return conn

    def _unanswered(self, conn: Conn) -> None:
        """Messages sent on `conn` that got no answer there: their fate is unknown (never resent)."""
        for sent in self._by_id.values():
            if sent.conn == conn.index and sent.outcome == "pending":
                sent.outcome = "unacked"
                sent.answered.set()

    async def close(self) -> None:
        self._stopping = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
        for conn in self.conns:
            if conn.code is None and not conn.abandoned:
                try:
                    await asyncio.wait_for(conn.ws.close(), 2)
                except (TimeoutError, aiohttp.ClientError, ConnectionError):
                    conn.abort()
            if conn.reader is not None:
                conn.reader.cancel()
                await asyncio.gather(conn.reader, return_exceptions=True)
            await conn.http.close()

    # -- reading -----------------------------------------------------------------------
    async def _read(self, conn: Conn) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            self._process(conn, json.loads(msg.data))
        code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
        conn.code = code if isinstance(code, int) and code else 1006
        self._unanswered(conn)
        if (not conn.abandoned and not self._stopping and conn is self.current
                and conn.code in RECONNECT_CODES):
            self._reconnector = asyncio.create_task(self._reconnect())

    def _process(self, conn: Conn, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("ack", "error"):
            if kind == "error":
                self.errors.append(frame)
            sent = self._by_id.get(str(frame.get("id")))
            if sent is not None:
                sent.outcome = ("queued" if frame.get("queued") else "ack") if kind == "ack" \
                    else f"error:{frame.get('code')}"
                sent.answered_at = time.monotonic()
                sent.answered.set()
            return
        if "seq" in frame:
            self.last_seq = frame["seq"]  # processed on receipt
            data = frame.get("data")
            if kind == "message" and isinstance(data, dict) and "n" in data:
                self.deliveries.append(Delivery(frame.get("from"), data.get("s"), data["n"], frame["seq"],
                                                conn.index, time.monotonic()))
                return
        self.events.append(frame)  # room events, joined, pong, ...

    # -- sending -----------------------------------------------------------------------
    async def send(self, n: int, *, to: str | None = None, room: str | None = None, stream: str | None = None,
                   timeout: float = 5.0) -> Sent:
        """Send numbered message `n` with an id and wait (up to `timeout`) for its answer."""
        sent = await self.send_nowait(n, to=to, room=room, stream=stream)
        try:
            await asyncio.wait_for(sent.answered.wait(), timeout)
        except TimeoutError:
            pass  # still pending: a late answer is recorded when it comes
        return sent

    async def send_nowait(self, n: int, *, to: str | None = None, room: str | None = None,
                          stream: str | None = None) -> Sent:
        # as an app would: a node that lost its lease closed the socket (1001); the app is
        # reconnecting, and sends once it is back
        await until(lambda: self.online, 10, lambda: f"{self.peer} is not connected: {self.story()}")
        conn = self.current
        assert conn is not None
        stream = stream or (f"to-{to}" if to else f"room-{room}")
        sent = Sent(stream, n, conn.index, time.monotonic())
        self.sent[(stream, n)] = sent
        ident = f"{stream}:{n}"
        self._by_id[ident] = sent
        frame: dict[str, Any] = {"type": "message", "data": {"s": stream, "n": n}, "id": ident}
        frame.update({"to": to} if to else {"room": room})
        try:
            await conn.ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            sent.outcome = "unacked"
            sent.answered.set()
        return sent

    async def join(self, room: str, timeout: float = 5.0) -> None:
        conn = self.current
        assert conn is not None
        await conn.ws.send_str(json.dumps({"type": "join", "room": room}))
        await until(lambda: any(e.get("type") == "joined" and e.get("room") == room for e in self.events),
                    timeout, f"{self.peer} was not told it joined {room}")

    # -- what the user saw ---------------------------------------------------------------
    def got(self, sender: str, stream: str) -> list[int]:
        return [d.n for d in self.deliveries if d.sender == sender and d.stream == stream]

    def acked(self, stream: str) -> list[int]:
        return sorted(s.n for s in self.sent.values() if s.stream == stream and s.acked)

    def outcomes(self, stream: str) -> str:
        """What the sender was told, compactly: "0-12 ack, 13-28 queued, 29 error:unavailable"."""
        told = [(s.n, s.outcome) for s in sorted(self.sent.values(), key=lambda s: s.n) if s.stream == stream]
        return runs(told)

    def story(self) -> str:
        """The connections of this app, for failure messages."""
        parts = []
        for c in self.conns:
            parts.append(f"#{c.index} on {c.welcome.get('node')} resumed={c.welcome.get('resumed')} "
                         f"code={c.code}{' (abandoned)' if c.abandoned else ''}")
        return f"{self.peer}: [" + "; ".join(parts) + "]"


def runs(pairs: list[tuple[int, str]]) -> str:
    """[(0, "ack"), (1, "ack"), (2, "queued")] -> "0-1 ack, 2 queued"."""
    out: list[str] = []
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1] == (pairs[j][0] + 1, pairs[i][1]):
            j += 1
        span = f"{pairs[i][0]}" if i == j else f"{pairs[i][0]}-{pairs[j][0]}"
        out.append(f"{span} {pairs[i][1]}")
        i = j + 1
    return ", ".join(out)


def numbers_text(ns: list[int]) -> str:
    """[0, 1, 2, 5, 3] -> "0-2, 5, 3" (order kept)."""
    return runs([(n, "") for n in ns]).replace(" ,", ",").strip() or "nothing"


def violations(sender: GoodApp, recipient: GoodApp, stream: str) -> list[str]:
    """The delivery promise for one sender's stream at one recipient:
    every acked message processed exactly once, in increasing order, unless the recipient
    was later welcomed with `resumed: false`; a message refused with an error never arrives."""
    out: list[str] = []
    got = [d for d in recipient.deliveries if d.sender == sender.peer and d.stream == stream]
    got_ns = [d.n for d in got]
    dupes = sorted({n for n in got_ns if got_ns.count(n) > 1})
    if dupes:
        seqs = {n: [d.seq for d in got if d.n == n] for n in dupes}
        out.append(f"{recipient.peer} processed {stream} messages {dupes} from {sender.peer} more than once "
                   f"(seqs {seqs})")
    late = [(a, b) for a, b in itertools.pairwise(got_ns) if b < a]
    if late:
        out.append(f"{recipient.peer} processed {stream} from {sender.peer} out of order: {numbers_text(got_ns)} "
                   f"(e.g. #{late[0][1]} after #{late[0][0]})")
    missing = []
    for n in sender.acked(stream):
        if n in got_ns:
            continue
        acked_at = sender.sent[(stream, n)].answered_at or 0.0
        if any(c.welcome.get("resumed") is False and c.opened > acked_at for c in recipient.conns):
            continue  # the recipient was told it must renegotiate
        missing.append(n)
    if missing:
        out.append(f"{recipient.peer} never processed {stream} messages {numbers_text(missing)} that "
                   f"{sender.peer} was acked ({sender.outcomes(stream)}), and was never welcomed with "
                   f"resumed:false after; it processed {numbers_text(got_ns)}")
    refused = [s.n for s in sender.sent.values() if s.stream == stream and s.outcome.startswith("error:")]
    delivered_refused = [n for n in refused if n in got_ns]
    if delivered_refused:
        out.append(f"{recipient.peer} processed {stream} messages {delivered_refused} although {sender.peer} was "
                   f"told {[sender.sent[(stream, n)].outcome for n in delivered_refused]}")
    return out


def app_violations(*apps: GoodApp, peer_left: bool = False) -> list[str]:
    """No false `peer-unavailable`; no 4409 to a peer's newest connection; (optionally) no `peer-left`."""
    out = []
    for app in apps:
        false_absent = [str(e.get("id")) for e in app.errors if e.get("code") == "peer-unavailable"]
        if false_absent:
            shown = ", ".join(false_absent[:5]) + (", ..." if len(false_absent) > 5 else "")
            out.append(f"{app.peer} was told peer-unavailable {len(false_absent)} times (ids {shown})")
        newest = app.current
        if newest is not None and newest.code == 4409:
            out.append(f"{app.peer}'s newest connection was closed with 4409 (replaced): {app.story()}")
        if app.reconnect_failures:
            out.append(f"{app.peer} could not reconnect: {app.reconnect_failures}")
        if peer_left:
            left = [e.get("peer") for e in app.events if e.get("type") == "peer-left"]
            if left:
                out.append(f"{app.peer} was told peer-left {len(left)} times (about {sorted(set(left))})")
    return out


def assert_promises(flows: list[tuple[GoodApp, GoodApp, str]], apps: list[GoodApp], *,
                    peer_left: bool = False, also: list[str] | None = None) -> None:
    """Every promise at once, so a failure lists all that broke (`also`: the test's own findings)."""
    problems = list(also or []) + [v for s, r, stream in flows for v in violations(s, r, stream)]
    problems += app_violations(*apps, peer_left=peer_left)
    assert not problems, "\n".join(problems + [a.story() for a in apps])


class Lab:
    """Everything one test starts: its own redis-servers, proxies, node processes and
    apps; `close()` stops each by PID (a paused node is continued first)."""

    def __init__(self, tmp_path: Path, key_prefix: str) -> None:
        self.tmp_path, self.prefix = tmp_path, key_prefix
        self.redises: list[RedisServer] = []
        self.proxies: list[TcpProxy] = []
        self.nodes: list[NodeProcess] = []
        self.apps: list[GoodApp] = []

    def redis(self) -> RedisServer:
        server = RedisServer().start()
        self.redises.append(server)
        return server

    async def proxy(self, redis: RedisServer, delay: float = 0.0) -> TcpProxy:
        """A link to `redis` a test can cut or stall (and slow down by `delay` each way)."""
        proxy = await TcpProxy(redis.port, delay=delay).start()
        self.proxies.append(proxy)
        return proxy

    async def command_link(self, redis: RedisServer) -> TcpProxy:
        """A link to `redis` whose command connections alone a test can hold or drop."""
        proxy = await TcpProxy(redis.port).start()
        self.proxies.append(proxy)
        return proxy

    async def node(self, node_id: str, redis_url: str, *, ttl: float = 1, grace: float = 10,
                   extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess("--redis-url", redis_url, "--key-prefix", self.prefix, "--node-id", node_id,
                           "--node-ttl", str(ttl), "--grace", str(grace), "--rate", "1000", "--burst", "1000",
                           *extra, env=env)
        self.nodes.append(node)
        node.start(self.tmp_path)
        await node.wait_ready()
        return node

    async def node_pair(self, redis: RedisServer, **kw: Any) -> tuple[NodeProcess, NodeProcess]:
        """Nodes "A" and "B" on `redis`, directly."""
        return await self.node("A", redis.url, **kw), await self.node("B", redis.url, **kw)

    async def app(self, peer: str, node: NodeProcess, *, reconnect_to: list[NodeProcess] | None = None) -> GoodApp:
        app = GoodApp(peer, [n.ws_base for n in (reconnect_to or [node])])
        self.apps.append(app)
        await app.connect(node.ws_base)
        return app

    async def close(self) -> None:
        """Idempotent: a test may stop everything early to read complete logs."""
        for app in self.apps:
            await app.close()
        for proxy in self.proxies:
            proxy.heal()  # so a draining node is not held up by a stalled link
        for node in self.nodes:
            stop_node(node)
        for proxy in self.proxies:
            await proxy.close()
        for server in self.redises:
            server.kill()
        self.apps, self.proxies, self.redises = [], [], []


def stop_node(node: NodeProcess, timeout: float = 3.0) -> None:
    """SIGCONT (it may be paused), SIGTERM, and SIGKILL if it has not exited in `timeout`."""
    proc = node.proc
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def ready_status(node: NodeProcess) -> int:
    """/readyz of a node (0 when it does not answer within a second)."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.base}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status
    except (TimeoutError, aiohttp.ClientError):
        return 0


def libfaketime() -> str:
    """Path of Debian's libfaketime (package `faketime`); a clear failure, never a skip, without it."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    assert found, "libfaketime is not installed: apt-get install -y faketime (.ci/run does)"
    return found[0]


def skewed_env(offset: str) -> dict[str, str] | None:
    """Environment for a node whose wall clock is `offset` ("+30s", "-4s") off; None for "0".
    Only the wall clock: monotonic time stays true, as on a real machine with a wrong clock."""
    if offset == "0":
        return None
    return {"LD_PRELOAD": libfaketime(), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def wall_clock_offset(node: NodeProcess) -> float:
    """How far the node's wall clock is from ours, read from its HTTP `Date` header (seconds)."""
    from email.utils import parsedate_to_datetime

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.base}/healthz") as r:
            theirs = parsedate_to_datetime(r.headers["Date"]).timestamp()
    return theirs - time.time()


async def answers(node: NodeProcess, timeout: float = 10.0) -> None:
    """Wait until `node` serves HTTP again (after SIGCONT: its event loop has run since)."""
    deadline = time.monotonic() + timeout
    while await ready_status(node) == 0:
        assert time.monotonic() < deadline, f"{node.base} does not answer HTTP"
        await asyncio.sleep(0.05)


async def wait_ready_status(node: NodeProcess, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await ready_status(node)) != status:
        assert time.monotonic() < deadline, f"{node.base}/readyz did not turn {status} within {timeout}s (got {got})"
        await asyncio.sleep(0.05)
