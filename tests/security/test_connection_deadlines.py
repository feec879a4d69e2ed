"""Half-sent requests are cut, and count against `--max-connections` (issue 11, case 5).

Every phase of a connection has a deadline: a new connection's first request line and
headers (a WebSocket handshake's, a TLS handshake included) within `--header-timeout`
of its accept, however steadily it trickles bytes; a kept-alive connection's next
request within `--keepalive-timeout` of the previous response. Every open TCP
connection counts against `--max-connections`: beyond it an upgrade gets the documented
503, beyond `--connection-headroom` more a new connection is closed at once, and the
WebSockets already open carry on. Against real `signaling serve` processes.

The new settings go through the environment, which a node that lacks them ignores, so
on such a node these tests fail on its behaviour rather than on an unknown flag.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time

import aiohttp
import pytest

from cluster_support import make_cert
from support import Client, NodeProcess

pytestmark = pytest.mark.timeout(60)

WS_REQUEST = (b"GET /ws?peer=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef") + b"\r\n\r\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def settings(**values: object) -> dict[str, str]:
    return {f"SIGNALING_{name.upper()}": str(value) for name, value in values.items()}


class Raw:
    """One TCP connection driven byte by byte, with the time it was opened."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.received = b""

    @classmethod
    async def open(cls, node: NodeProcess, *, tls: ssl.SSLContext | None = None) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=tls)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed(self, timeout: float) -> float:
        """Read until the server closes the connection; seconds since it was opened.
        Anything the server wrote on the way is kept in `received`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open {time.monotonic() - self.opened:.1f}s after it was opened "
                                     f"(received {self.received[:200]!r})")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                return time.monotonic() - self.opened
            self.received += chunk

    def still_open(self) -> bool:
        """Nothing has told this end the server closed (the loop feeds an EOF as it comes)."""
        return not self.reader.at_eof() and not self.writer.transport.is_closing()

    async def response(self, timeout: float = 3.0) -> bytes:
        """One HTTP response with a Content-Length body (head and body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return head + await asyncio.wait_for(self.reader.readexactly(length), timeout)

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def raw_connections():
    """Raw connections opened by the test, aborted after it."""
    opened: list[Raw] = []

    async def open(node: NodeProcess, **kwargs: object) -> Raw:
        conn = await Raw.open(node, **kwargs)  # type: ignore[arg-type]  # Raw.open's own keywords
        opened.append(conn)
        return conn

    yield open
    for conn in opened:
        conn.close()


def fresh_http() -> aiohttp.ClientSession:
    """A client session whose connections close after each response (none left open to count)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=5))


async def status_of(node: NodeProcess, path: str) -> int:
    async with fresh_http() as http, http.get(f"{node.base}{path}", ssl=False) as r:
        return r.status


async def text_of(node: NodeProcess, path: str) -> str:
    async with fresh_http() as http, http.get(f"{node.base}{path}", ssl=False) as r:
        return await r.text()


async def handshake_refusal(node: NodeProcess, peer: str) -> tuple[int, dict]:
    """The answer to a WebSocket handshake that must be refused before the upgrade."""
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
    async with fresh_http() as http, http.get(f"{node.base}/ws", params={"peer": peer}, headers=headers) as r:
        assert r.status != 101, f"{peer} was upgraded: the node is not full"
        return r.status, await r.json()


async def answers_ping(client: Client, id: str) -> None:
    await client.send(type="ping", id=id)
    await client.expect("pong")
    await client.expect("ack", id=id)


async def test_half_sent_request_lines_are_cut_at_the_header_deadline(processes, raw_connections):
    node = processes(env=settings(header_timeout=1))
    await node.wait_ready()
    sockets = [await raw_connections(node) for _ in range(20)]
    for conn in sockets:
        await conn.send(b"GET /healthz HT")  # part of a request line, and nothing more, ever
    lifetimes = await asyncio.gather(*(conn.closed(timeout=4.0) for conn in sockets))
    assert all(0.9 <= t <= 2.5 for t in lifetimes), f"closed after {sorted(round(t, 2) for t in lifetimes)}s"
    assert all(conn.received == b"" for conn in sockets)  # cut, not answered
    assert await status_of(node, "/readyz") == 200


async def test_a_trickled_websocket_handshake_is_cut_at_the_header_deadline(processes, raw_connections):
    """One byte every 50 ms keeps any per-read timeout happy; the deadline is on the whole head."""
    node = processes(env=settings(header_timeout=1))
    await node.wait_ready()
    conn = await raw_connections(node)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for byte in WS_REQUEST:
            try:
                await conn.send(bytes([byte]))
            except ConnectionError:
                return
            sent += 1
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        lifetime = await conn.closed(timeout=4.0)
    finally:
        sender.cancel()
    assert 0.9 <= lifetime <= 2.5, f"closed after {lifetime:.2f}s"
    assert conn.received == b"", f"answered: {conn.received[:100]!r}"  # no 101, no response at all
    assert sent < len(WS_REQUEST), "the whole handshake went out before the cut"


async def test_the_tls_handshake_spends_from_the_header_deadline(processes, raw_connections, tmp_path):
    cert, key = make_cert(tmp_path)
    node = processes("--tls-cert", str(cert), "--tls-key", str(key), env=settings(header_timeout=1))
    await node.wait_ready()
    silent = await raw_connections(node)  # TCP only: never says ClientHello
    trust = ssl.create_default_context(cafile=str(cert))
    half = await raw_connections(node, tls=trust)  # TLS done, then half a request line
    await half.send(b"GET /healthz HT")
    assert 0.9 <= await silent.closed(timeout=4.0) <= 2.5
    assert 0.9 <= await half.closed(timeout=4.0) <= 2.5
    assert half.received == b""
    assert await status_of(node, "/readyz") == 200


@pytest.mark.parametrize("then", ["idle", "trickle"])
async def test_a_kept_alive_connection_is_closed_after_the_keepalive_timeout(processes, raw_connections, then):
    """After a response, an idle connection and one trickling its next request head are closed alike."""
    node = processes(env=settings(keepalive_timeout=1))
    await node.wait_ready()
    conn = await raw_connections(node)
    await conn.send(HEALTHZ)
    response = await conn.response()
    assert response.startswith(b"HTTP/1.1 200"), response
    answered = time.monotonic()
    sender = None
    if then == "trickle":
        async def trickle() -> None:
            for byte in HEALTHZ:
                try:
                    await conn.send(bytes([byte]))
                except ConnectionError:
                    return
                await asyncio.sleep(0.1)
        sender = asyncio.create_task(trickle())
    try:
        await conn.closed(timeout=4.0)
    finally:
        if sender is not None:
            sender.cancel()
    idle = time.monotonic() - answered
    assert 0.9 <= idle <= 2.5, f"closed {idle:.2f}s after the response"
    assert conn.received == b""  # the second request was never answered


async def test_half_open_sockets_count_against_max_connections(processes, raw_connections):
    """6 connections allowed, 3 more for probes and refusals: one WebSocket and five half-sent
    requests fill the node; the next handshake gets 503 while /readyz still answers 200, the
    connections beyond the headroom are closed at once, the WebSocket carries on, and once the
    header deadline has cut the half-sent requests a new handshake is upgraded."""
    node = processes(env=settings(max_connections=6, connection_headroom=3, header_timeout=2))
    await node.wait_ready()
    alice = await Client.connect(node.ws_base, peer="alice")
    try:
        half_sent = [await raw_connections(node) for _ in range(5)]
        for conn in half_sent:
            await conn.send(b"GET /ws?peer=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await answers_ping(alice, "1")  # (the node has taken all five in by now)

        status, body = await handshake_refusal(node, "bob")
        assert (status, body["error"]) == (503, "unavailable"), body
        assert await status_of(node, "/readyz") == 200  # full is not unready
        await answers_ping(alice, "2")  # (and has seen bob's and the probe's connections close)

        headroom = [await raw_connections(node) for _ in range(3)]
        for conn in headroom:
            await conn.send(b"GET /healthz HT")
        beyond = await raw_connections(node)
        assert await beyond.closed(timeout=1.0) < 1.0 and beyond.received == b""  # at once, unanswered
        assert all(conn.still_open() for conn in half_sent + headroom), "cut before their header deadline"
        await answers_ping(alice, "3")

        lifetimes = await asyncio.gather(*(conn.closed(timeout=5.0) for conn in half_sent + headroom))
        assert all(1.9 <= t <= 3.5 for t in lifetimes), f"closed after {sorted(round(t, 2) for t in lifetimes)}s"
        carol = await Client.connect(node.ws_base, peer="carol")
        try:
            await answers_ping(carol, "1")
        finally:
            await carol.close()
        await answers_ping(alice, "4")  # upgraded well before the deadline: never cut by it
        assert await status_of(node, "/readyz") == 200
        metrics = await text_of(node, "/metrics")
        for reason, count in (("full", 1), ("overflow", 1), ("header-timeout", 8)):
            assert f'signaling_connections_rejected_total{{reason="{reason}"}} {count}.0' in metrics, metrics
    finally:
        await alice.close()
