"""Helpers for the deployment tests: a test certificate, and a client that behaves like a
well-written app through a load balancer (reconnects with resume, resends what was not
acked) while recording every delivery for the loss / duplicate / gap accounting."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RECONNECT_CODES = {1001, 1006, 1011, 1012, 1013, 4401}  # close codes after which the app reconnects


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Delivery:
    at: float  # monotonic time it was processed
    sender: str
    n: int
    seq: str


@dataclass
class Connection:
    node: str
    resumed: bool
    asked_resume: bool
    opened: float
    closed: float | None = None
    code: int | None = None


class AppPeer:
    """One peer id that stays online through drains and restarts behind the endpoint.

    On a 1001 (or any drop) it reconnects at once through the endpoint with
    `resume=<last seq it processed>`, retrying refused handshakes (503 from a draining
    node, 502 while nginx has no live upstream, 429) every 50 ms. `send_numbered` sends
    numbered messages with receipts, one at a time, and sends again (same id, same
    number) a message whose connection ended before its ack came: whether such a message
    had arrived is unknowable to the sender, so its copy is recorded as a resend.
    """

    def __init__(self, endpoint: str, peer: str, http: aiohttp.ClientSession, token: str | None = None) -> None:
        self.endpoint, self.peer, self.http = endpoint, peer, http
        self.token = token  # sent as `?token=` on every (re)connection, where the nodes check JWTs
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.generation = 0  # bumped on every new connection
        self.last_seq: str | None = None
        self.connections: list[Connection] = []
        self.deliveries: list[Delivery] = []
        self.refused_handshakes = 0
        self.errors: list[dict[str, Any]] = []
        self.sent_at: dict[int, float] = {}  # number -> first send time
        self.resent: set[int] = set()  # numbers sent more than once (their ack never came)
        self.acked: set[int] = set()
        self.last_acked = -1
        self._acks: dict[str, asyncio.Future[bool]] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count()

    # -- connection ------------------------------------------------------------------
    async def start(self) -> AppPeer:
        await self._connect()
        self._task = asyncio.create_task(self._run())
        return self

    @property
    def node(self) -> str:
        return self.connections[-1].node

    async def _connect(self, deadline_s: float = 20.0) -> None:
        deadline = time.monotonic() + deadline_s
        params = {"peer": self.peer}
        if self.token is not None:
            params["token"] = self.token
        if self.last_seq is not None:
            params["resume"] = self.last_seq
        while True:
            try:
                ws = await self.http.ws_connect(f"{self.endpoint}/ws", params=params, heartbeat=None,
                                                autoping=True, max_msg_size=0)
            except (aiohttp.WSServerHandshakeError, aiohttp.ClientConnectionError, OSError):
                self.refused_handshakes += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            welcome = json.loads((await ws.receive(timeout=5)).data)
            assert welcome["type"] == "welcome", welcome
            self.ws = ws
            self.generation += 1
            self.connections.append(Connection(welcome["node"], welcome["resumed"], "resume" in params,
                                               time.monotonic()))
            self.connected.set()
            return

    async def _run(self) -> None:
        while not self._stopping:
            ws = self.ws
            assert ws is not None
            code = await self._read(ws)
            self.connected.clear()
            conn = self.connections[-1]
            conn.closed, conn.code = time.monotonic(), code
            for future in self._acks.values():  # their connection is gone: unknown fate
                if not future.done():
                    future.set_result(False)
            if self._stopping or code not in RECONNECT_CODES:
                return
            await self._connect()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                # The code the server sent. aiohttp's ws.close_code turns 1006 when its
                # close reply cannot be written because a proxy has already closed the
                # connection after relaying the server's close frame.
                return int(msg.data)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if "seq" in frame:
                self.last_seq = frame["seq"]  # processed: everything is processed on receipt
                if kind == "message":
                    self.deliveries.append(Delivery(time.monotonic(), frame["from"], frame["data"]["n"], frame["seq"]))
            elif kind == "ack":
                future = self._acks.get(str(frame["id"]))
                if future is not None and not future.done():
                    future.set_result(True)
            elif kind == "error":
                self.errors.append(frame)
                future = self._acks.get(str(frame.get("id")))
                if future is not None and not future.done():
                    future.set_result(False)
        return ws.close_code if ws.close_code is not None else 1006

    async def close(self) -> None:
        self._stopping = True
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except Exception:  # noqa: BLE001 - a failed reconnect shows as missing deliveries
                self._task.cancel()

    # -- sending ---------------------------------------------------------------------
    async def send(self, **obj: Any) -> None:
        await self.connected.wait()
        assert self.ws is not None
        await self.ws.send_str(json.dumps(obj))

    async def send_numbered(self, to: str, n: int, ack_timeout: float = 10.0) -> None:
        """Send message `n` to `to` until it is acked (see the class docstring)."""
        while True:
            await asyncio.wait_for(self.connected.wait(), 30)
            ws = self.ws
            assert ws is not None
            ident = f"{self.peer}:{n}:{next(self._ids)}"
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._acks[ident] = future
            if n in self.sent_at:
                self.resent.add(n)
            else:
                self.sent_at[n] = time.monotonic()
            try:
                await ws.send_str(json.dumps({"type": "message", "to": to, "data": {"n": n}, "id": ident}))
                ok = await asyncio.wait_for(future, ack_timeout)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                ok = False
            finally:
                self._acks.pop(ident, None)
            if ok:
                self.acked.add(n)
                self.last_acked = n
                return
            await asyncio.sleep(0.02)  # the connection ended (or an error): send it again

    async def talk(self, to: str, stop: asyncio.Event, interval: float) -> int:
        """Send 0, 1, 2, ... to `to` until `stop`; returns how many were sent (all acked)."""
        n = 0
        while not stop.is_set():
            await self.send_numbered(to, n)
            n += 1
            await asyncio.sleep(interval)
        return n


@dataclass
class StreamReport:
    """What one receiver got from one sender."""

    sent: int
    delivered: list[Delivery]
    resent: set[int]
    numbers: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.numbers = [d.n for d in self.delivered]

    @property
    def lost(self) -> set[int]:
        return set(range(self.sent)) - set(self.numbers)

    @property
    def copies(self) -> list[int]:
        """Numbers delivered more than once."""
        seen: set[int] = set()
        out = []
        for n in self.numbers:
            if n in seen:
                out.append(n)
            seen.add(n)
        return out

    @property
    def seq_repeats(self) -> int:
        """Deliveries of a seq already delivered: the server sending the same message twice."""
        seqs = [d.seq for d in self.delivered]
        return len(seqs) - len(set(seqs))

    @property
    def in_order(self) -> bool:
        deduped: list[int] = []
        for n in self.numbers:
            if not deduped or n != deduped[-1]:
                deduped.append(n)
        return deduped == sorted(set(deduped)) == list(range(len(deduped)))

    def longest_gap(self) -> float:
        times = [d.at for d in self.delivered]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def worst_latency(self, sent_at: dict[int, float]) -> float:
        first: dict[int, float] = {}
        for d in self.delivered:
            first.setdefault(d.n, d.at)
        return max((first[n] - sent_at[n] for n in first if n in sent_at), default=0.0)


async def stream_reports(peers: list[AppPeer], partner: dict[str, str], sent: dict[str, int],
                         timeout: float = 10.0) -> dict[str, StreamReport]:
    """Once talking stopped: wait (at most `timeout`) for every acked message to reach its
    recipient, close the peers, and report each sender's stream as its partner got it."""
    by_id = {p.peer: p for p in peers}

    def got(sender: str) -> int:
        return len({d.n for d in by_id[partner[sender]].deliveries if d.sender == sender})

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(got(s) < n for s, n in sent.items()):
        await asyncio.sleep(0.05)
    for p in peers:
        await p.close()
    return {s: StreamReport(n, [d for d in by_id[partner[s]].deliveries if d.sender == s], by_id[s].resent)
            for s, n in sent.items()}
