"""Every server the suite measures, and how to start it on 127.0.0.1.

A `Deployment` is the server processes (one or more nodes) plus the redis-server they
share, if any; its CPU is the sum over all of them, read from /proc/<pid>/stat.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc, free_port, http_status, wait_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVERS = BENCH / "servers"
JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"  # HS256; everything is local


@dataclass(frozen=True)
class Target:
    key: str  # short name used in results and on the command line
    label: str  # as the table shows it
    dialect: str  # what the load generator speaks: ours | raw | tutorial | socketio
    kind: str  # ours-memory | ours-redis | ws-tutorial | ws-relay | aiohttp | aiohttp-uvloop | socketio
    nodes: int = 1
    cross: bool = False  # pairs' two peers on different nodes

    @property
    def available(self) -> str | None:
        """None, or why this server cannot run on this machine."""
        if self.kind == "aiohttp-uvloop" and importlib.util.find_spec("uvloop") is None:
            return "uvloop is not installed (pip install '.[bench]')"
        if self.kind in ("ours-redis", "socketio") and not find_program("redis-server"):
            return "redis-server is not installed"
        return None


TARGETS = {t.key: t for t in [
    Target("ws-tutorial", "Node `ws` tutorial (broadcast)", "tutorial", "ws-tutorial"),
    Target("ws-relay", "raw Node `ws` relay", "raw", "ws-relay"),
    Target("aiohttp", "raw aiohttp relay", "raw", "aiohttp"),
    Target("aiohttp-uvloop", "raw aiohttp relay + uvloop", "raw", "aiohttp-uvloop"),
    Target("ours-memory", "signaling, 1 node, memory bus", "ours", "ours-memory"),
    Target("ours-1node", "signaling, 1 node + Redis", "ours", "ours-redis"),
    Target("ours-2nodes", "signaling, 2 nodes + Redis, cross-node", "ours", "ours-redis", nodes=2, cross=True),
    Target("socketio-1node", "Socket.IO + redis-adapter, 1 node", "socketio", "socketio"),
    Target("socketio-2nodes", "Socket.IO + redis-adapter, 2 nodes, cross-node", "socketio", "socketio", nodes=2,
           cross=True),
]}
REFERENCE = "ws-relay"  # every figure is also given as a ratio to this one


def find_program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def node_binary() -> str:
    found = shutil.which("node")
    if not found:
        raise RuntimeError("node is not installed (Node.js 18+ is needed for the load generator)")
    return found


@dataclass
class Deployment:
    target: Target
    nodes: list[Proc] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    redis: Proc | None = None

    @property
    def endpoints(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}" for port in self.ports]

    @property
    def server_pids(self) -> list[int]:
        return [p.pid for p in self.nodes]

    @property
    def pids(self) -> list[int]:
        return self.server_pids + ([self.redis.pid] if self.redis else [])

    def stop(self) -> None:
        for proc in self.nodes:
            proc.stop(3.0)
        if self.redis is not None:
            self.redis.stop(3.0)


def start_redis(workdir: Path) -> tuple[Proc, int]:
    program = find_program("redis-server")
    if not program:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = Proc("redis", [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--protected-mode", "yes", "--maxclients", "50000"],
                workdir / f"redis-{port}.log")
    wait_port(port, proc)
    return proc, port


def _our_node(index: int, redis_url: str, workdir: Path, extra: list[str]) -> tuple[Proc, int]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SIGNALING_JWT_SECRET": JWT_SECRET,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    argv = [sys.executable, "-m", "signaling", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--node-id", f"bench-{index}", "--rate", "1000000", "--burst", "1000000", "--byte-rate", "1e12", "--byte-burst", str(10**12),
            "--max-connections", "50000", "--backlog", "4096", "--log-level", "warning", *extra]
    if redis_url:
        argv += ["--redis-url", redis_url]
    proc = Proc(f"signaling-{index}", argv, workdir / f"signaling-{index}-{port}.log", env=env, cwd=ROOT)
    return proc, port


def start(target: Target, workdir: Path, nodes: int | None = None, extra: list[str] | None = None) -> Deployment:
    """Start `target` (with `nodes` nodes instead of its own count, for the scaling runs)."""
    n = nodes or target.nodes
    dep = Deployment(target)
    try:
        redis_url = ""
        if target.kind in ("ours-redis", "socketio"):
            dep.redis, rport = start_redis(workdir)
            redis_url = f"redis://127.0.0.1:{rport}/0"
        for i in range(n):
            if target.kind.startswith("ours"):
                proc, port = _our_node(i, redis_url, workdir, list(extra or []))
            elif target.kind.startswith("aiohttp"):
                port = free_port()
                argv = [sys.executable, str(SERVERS / "raw_aiohttp.py"), "--port", str(port)]
                if target.kind == "aiohttp-uvloop":
                    argv.append("--uvloop")
                proc = Proc(f"{target.kind}-{i}", argv, workdir / f"{target.kind}-{port}.log")
            else:
                port = free_port()
                script = {"ws-tutorial": "ws_tutorial.js", "ws-relay": "ws_relay.js", "socketio": "socketio_server.js"}
                argv = [node_binary(), str(SERVERS / script[target.kind]), "--port", str(port)]
                if target.kind == "socketio":
                    argv += ["--redis-url", redis_url]
                proc = Proc(f"{target.kind}-{i}", argv, workdir / f"{target.kind}-{port}.log", cwd=BENCH)
            dep.nodes.append(proc)
            dep.ports.append(port)
        for proc, port in zip(dep.nodes, dep.ports):
            wait_port(port, proc)
            if target.kind.startswith("ours"):
                _wait_ready(proc, port)
            elif target.kind == "socketio":
                _wait_log(proc, "listening")
    except BaseException:
        dep.stop()
        raise
    return dep


def _wait_ready(proc: Proc, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if http_status(port, "/readyz") == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")


def _wait_log(proc: Proc, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if text in proc.tail(50):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not log {text!r} within {timeout:.0f}s:\n{proc.tail()}")
