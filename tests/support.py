"""Test helpers: a protocol client, free ports, node processes started and stopped by PID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-that-is-at-least-32-bytes-long"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this process: the kernel may give the same
    ephemeral port twice before the first taker binds it (two nodes of one cluster fixture
    got one port, and one log file, in a CI run; the test then killed both clients' node)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Client:
    """One WebSocket client speaking the protocol, with helpers to await frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession) -> None:
        self.ws, self.http = ws, http
        self.welcome: dict[str, Any] = {}
        self.last_seq: str | None = None

    @classmethod
    async def connect(cls, base: str, *, welcome: bool = True, headers: dict[str, str] | None = None,
                      **query: Any) -> Client:
        http = aiohttp.ClientSession()
        params = {k: str(v) for k, v in query.items() if v is not None}
        try:
            ws = await http.ws_connect(f"{base}/ws", params=params, headers=headers, heartbeat=None,
                                       autoping=True, max_msg_size=0, ssl=False)
        except BaseException:
            await http.close()
            raise
        client = cls(ws, http)
        if welcome:
            client.welcome = await client.expect("welcome")
        return client

    @property
    def peer(self) -> str:
        return self.welcome["peer"]

    async def send(self, **obj: Any) -> None:
        await self.ws.send_str(json.dumps(obj))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} "
                                 f"(close code {self.ws.close_code})")
        obj = json.loads(msg.data)
        if "seq" in obj:
            self.last_seq = obj["seq"]
        return obj

    async def expect(self, type: str, timeout: float = 3.0, **fields: Any) -> dict[str, Any]:
        obj = await self.recv(timeout)
        assert obj.get("type") == type, f"expected {type!r}, got {obj}"
        for key, value in fields.items():
            assert obj.get(key) == value, f"expected {key}={value!r} in {obj}"
        return obj

    async def silent(self, timeout: float = 0.3) -> None:
        """Assert nothing arrives within `timeout`."""
        try:
            msg = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {msg.type} {msg.data!r}")

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close; return the close code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await self.ws.receive(timeout=deadline - time.monotonic())
            if msg.type is aiohttp.WSMsgType.TEXT and not self.welcome:
                self.welcome = json.loads(msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                return msg.data  # the code the server sent
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
        raise AssertionError("the connection was not closed")

    async def drop(self) -> None:
        """Vanish without a close frame, as on network loss."""
        transport = self.ws._response.connection.transport if self.ws._response.connection else None
        if transport is not None:
            transport.abort()
        await self.http.close()

    async def close(self) -> None:
        if not self.ws.closed:
            try:
                await self.ws.close()
            except (aiohttp.ClientError, ConnectionError):
                pass  # the server already went away
        await self.http.close()


class NodeProcess:
    """`python -m signaling serve` as a real process, stopped by PID."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return self.base.replace("http", "ws", 1)

    def start(self, log_dir: Path) -> NodeProcess:
        self.log_path = log_dir / f"node-{self.port}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "signaling", "serve", *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        return self

    async def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc and self.proc.poll() is None, f"node exited early:\n{self.log()}"
                try:
                    async with http.get(f"{self.base}/readyz", ssl=False) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"node not ready:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


async def eventually(predicate: Any, timeout: float = 3.0, interval: float = 0.02) -> None:
    """Wait until `predicate()` is true (for state that settles just after a close)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class RedisServer:
    """A throwaway `redis-server` on a free port (no persistence), stopped by PID."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import shutil

        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run .ci/run (or apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _free_cluster_port() -> int:
    """A free port P below 55535 whose cluster bus port (P + 10000) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a Redis Cluster node")


class RedisClusterServers:
    """A real 3-primary Redis Cluster: redis-server processes joined by `redis-cli --cluster create`."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []
        self.primaries, self.replicas = primaries, replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> RedisClusterServers:
        import shutil

        for _ in range(self.primaries * (1 + self.replicas)):
            port = _free_cluster_port()
            workdir = self.directory / f"redis-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            self.servers.append(RedisServer(port, "--cluster-enabled", "yes", "--cluster-config-file",
                                            str(workdir / "nodes.conf"), "--dir", str(workdir),
                                            "--cluster-node-timeout", "1000",
                                            "--repl-diskless-sync-delay", "0").start())
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed (package redis-tools)"
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in self.servers],
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [subprocess.run([cli, "-p", str(s.port), "cluster", "info"], capture_output=True, text=True).stdout
                      for s in self.servers]
            links = [subprocess.run([cli, "-p", str(s.port), "info", "replication"], capture_output=True,
                                    text=True).stdout for s in self.servers]
            synced = all("role:master" in info or "master_link_status:up" in info for info in links)
            if all("cluster_state:ok" in st for st in states) and synced:  # replicas can take over
                return self
            time.sleep(0.1)
        raise AssertionError("the Redis Cluster did not become ready")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def primary_of(self, key: str) -> RedisServer:
        """The server that is primary for `key`'s slot right now."""
        import shutil

        cli = shutil.which("redis-cli") or "redis-cli"
        for s in self.servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            slot = int(subprocess.run([cli, "-p", str(s.port), "cluster", "keyslot", key],
                                      capture_output=True, text=True).stdout)
            for line in subprocess.run([cli, "-p", str(s.port), "cluster", "nodes"],
                                       capture_output=True, text=True).stdout.splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for span in fields[8:]:
                    lo, _, hi = span.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        port = int(fields[1].split(":")[1].split("@")[0])
                        return next(x for x in self.servers if x.port == port)
        raise AssertionError(f"no primary for {key!r}")

    def command_calls(self, command: str) -> int:
        """How often `command` ran, summed over every primary (INFO commandstats)."""
        import shutil

        total = 0
        for s in self.servers:
            out = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(s.port), "info", "commandstats"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith(f"cmdstat_{command}:"):
                    total += int(line.split("calls=")[1].split(",")[0])
        return total


async def join_all(clients: list[Client], room: str = "r") -> None:
    """Each client joins `room` in turn; every earlier member hears each later one join."""
    for i, client in enumerate(clients):
        await client.send(type="join", room=room)
        await client.expect("joined", room=room)
        for earlier in clients[:i]:
            await earlier.expect("peer-joined", room=room, peer=client.peer)


class RecordingMailbox:
    """A bus Mailbox for tests: records each delivery and what happened to the connection.
    `decode`: bodies parsed as JSON (else the bytes); `lost_is_error`: the bus calling
    `lost()` fails the test (where nothing may be missed)."""

    def __init__(self, *, decode: bool = True, lost_is_error: bool = True) -> None:
        self.decode, self.lost_is_error = decode, lost_is_error
        self.got: list[tuple[str, Any]] = []  # (seq, body)
        self.was_replaced = self.was_lost = self.was_fenced = False
        self.arrived = asyncio.Event()

    @property
    def bodies(self) -> list[Any]:
        return [body for _, body in self.got]

    def deliver(self, seq: str, body: bytes) -> None:
        self.got.append((seq, json.loads(body) if self.decode else body))
        self.arrived.set()

    def replaced(self) -> None:
        self.was_replaced = True

    def lost(self) -> None:
        self.was_lost = True
        if self.lost_is_error:
            raise AssertionError("the bus lost messages")

    def fenced(self) -> None:
        self.was_fenced = True

    async def wait(self, n: int, timeout: float = 2.0) -> list[Any]:
        """The first `n` bodies, once they have arrived (TimeoutError otherwise)."""
        async def enough() -> None:
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)
        return self.bodies
