"""Our Redis client layer (signaling.bus.redis_link) against redis-py's asyncio clients:
client CPU per command when many commands are in flight from one event loop, on one
Redis and on a 3-primary Redis Cluster (docs/CLUSTER.md cites bench/results/redis-clients.md).

    .venv/bin/python -m bench.redis_clients [--max-load 1.5] [--no-write]

The command is the bus's kind of write: EVALSHA of a small Lua script that XADDs a
300-byte body to `bench:{p:<i % 1000>}:inbox` (MAXLEN ~ 100), N = 20,000 of them per run,
in two patterns from one asyncio event loop:

- burst: all N issued at once, then awaited with one asyncio.gather;
- pairs: 200 concurrent tasks, each awaiting 100 commands one after the other (command j
  of task p is i = j * 200 + p: the commands in flight together name 200 distinct keys,
  spread over the cluster's primaries).

A client that raises for some commands (redis-py's default pools refuse a connection
beyond their max_connections with MaxConnectionsError, they do not wait) is shown as
failing, with the count, and no figures.

Each client and pattern runs once to warm up (connections made, scripts cached), then 5
times, interleaved with the other clients so that a change in machine load hits them all
alike; the figures are medians. The main figure is the client process's CPU time per
command (time.process_time delta / N): on a shared machine it moves far less than wall
time. redis-server's own CPU per command (utime + stime from /proc, every primary of the
cluster) is shown beside it. Every redis-server is started here and stopped by its PID
at the end, also on a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis.utils import HIREDIS_AVAILABLE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import support  # noqa: E402

from signaling.bus.redis_link import open_link  # noqa: E402
from signaling.bus.redis_url import parse  # noqa: E402

SCRIPT = "redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100, '*', 'b', ARGV[1]) return 1"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
N = 20_000
PAIRS, SEQUENTIAL = 200, 100  # the pairs pattern: PAIRS * SEQUENTIAL == N
assert PAIRS * SEQUENTIAL == N
KEYS = [f"bench:{{p:{i}}}:inbox" for i in range(1000)]
BODY = os.urandom(150).hex().encode()  # 300 bytes
REPEATS = 5
RESULTS = ROOT / "bench" / "results" / "redis-clients.md"
NOTES_HEADING = "## What it shows"
TICK = os.sysconf("SC_CLK_TCK")


# -- the servers, every one stopped by its PID ---------------------------------------------
STARTED: list[support.RedisServer] = []


class TrackedRedisServer(support.RedisServer):
    """A RedisServer remembered before it starts, so a start that fails half-way (or a
    cluster whose `redis-cli --cluster create` fails) is stopped too."""

    def start(self) -> TrackedRedisServer:
        STARTED.append(self)
        super().start()
        return self


support.RedisServer = TrackedRedisServer  # type: ignore[misc]  # RedisClusterServers makes its nodes by this name


def stop_all() -> None:
    for server in reversed(STARTED):
        server.stop()  # terminate, then kill, by the Popen's PID


def server_cpu(servers: list[support.RedisServer]) -> float:
    """utime + stime of these redis-server processes, in seconds."""
    total = 0
    for server in servers:
        assert server.proc is not None
        with open(f"/proc/{server.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICK


# -- the clients ---------------------------------------------------------------------------
class Subject:
    label: str
    topology: str  # "single" | "cluster"
    patterns: tuple[str, ...] = ("burst", "pairs")
    ours = False

    async def open(self) -> None: ...

    def issue(self, i: int) -> Awaitable[Any]:
        raise NotImplementedError

    async def close(self) -> None: ...

    async def burst(self) -> list[Any]:
        return await asyncio.gather(*[self.issue(i) for i in range(N)], return_exceptions=True)

    async def pairs(self) -> list[Any]:
        results: list[Any] = []

        async def pair(p: int) -> None:
            for j in range(SEQUENTIAL):
                try:
                    results.append(await self.issue(j * PAIRS + p))
                except Exception as exc:  # counted, and the pair goes on
                    results.append(exc)
        await asyncio.gather(*[pair(p) for p in range(PAIRS)])
        return results


class RedisPy(Subject):
    def __init__(self, label: str, topology: str, make: Callable[[], Any],
                 patterns: tuple[str, ...] = ("burst", "pairs")) -> None:
        self.label, self.topology, self.make, self.patterns = label, topology, make, patterns
        self.client: Any = None

    async def open(self) -> None:
        self.client = self.make()
        if self.topology == "cluster":
            await self.client.initialize()

    def issue(self, i: int) -> Awaitable[Any]:
        return self.client.evalsha(SHA, 1, KEYS[i % 1000], BODY)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class RedisPyPipeline(RedisPy):
    """Every command of the run in one `pipeline(transaction=False)`: a reference point,
    not a way a server that answers many independent callers can send its commands."""

    async def burst(self) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for i in range(N):
            pipe.evalsha(SHA, 1, KEYS[i % 1000], BODY)
        return await pipe.execute(raise_on_error=False)


class Ours(Subject):
    ours = True

    def __init__(self, label: str, topology: str, url: str) -> None:
        self.label, self.topology, self.url = label, topology, url
        self.link: Any = None

    async def open(self) -> None:
        async def noop() -> None:
            return None
        self.link = open_link(parse(self.url), {"S": SCRIPT}, on_message=lambda c, d: None, on_reconnect=noop,
                              on_changed=noop, on_unsettled=lambda: None)
        await self.link.start()
        assert self.link.sha("S") == SHA

    def issue(self, i: int) -> Awaitable[Any]:
        return self.link.script("S", [KEYS[i % 1000]], [BODY])

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()


# -- measuring -----------------------------------------------------------------------------
@dataclass
class Sample:
    cpu_us: float  # client CPU per command
    wall_ms: float
    server_us: float  # redis-server CPU per command (all primaries)
    errors: Counter[str]


@dataclass
class Row:
    subject: Subject
    pattern: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    @property
    def errors(self) -> tuple[int, str]:
        total: Counter[str] = Counter()
        for s in self.samples:
            total.update(s.errors)
        per_run = sum(total.values()) / max(1, len(self.samples))
        return round(per_run), ", ".join(f"{name}: {n / len(self.samples):.0f}" for name, n in total.most_common())


async def measure(subject: Subject, pattern: str, servers: list[support.RedisServer]) -> Sample:
    gc.collect()
    s0 = server_cpu(servers)
    c0, w0 = time.process_time(), time.perf_counter()
    results = await getattr(subject, pattern)()
    c1, w1 = time.process_time(), time.perf_counter()
    s1 = server_cpu(servers)
    errors: Counter[str] = Counter()
    for result in results:
        if result != 1:
            errors[type(result).__name__ if isinstance(result, BaseException) else f"reply {result!r}"] += 1
    if len(results) != N:
        errors["missing replies"] += N - len(results)
    return Sample((c1 - c0) / N * 1e6, (w1 - w0) * 1e3, (s1 - s0) / N * 1e6, errors)


async def run(single: support.RedisServer, cluster: support.RedisClusterServers, repeats: int,
              only: str | None) -> list[Row]:
    cluster_seed = cluster.servers[0]
    subjects: list[Subject] = [
        RedisPy("redis-py Redis, default ConnectionPool (max 100)", "single",
                lambda: redis.asyncio.Redis(host="127.0.0.1", port=single.port)),
        RedisPy("redis-py Redis, ConnectionPool(max_connections=200)", "single",
                lambda: redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(
                    host="127.0.0.1", port=single.port, max_connections=200)), patterns=("pairs",)),
        RedisPy("redis-py Redis, BlockingConnectionPool(max_connections=16)", "single",
                lambda: redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool(
                    host="127.0.0.1", port=single.port, max_connections=16, timeout=120))),
        RedisPyPipeline("redis-py pipeline(transaction=False), all N in one", "single",
                        lambda: redis.asyncio.Redis(host="127.0.0.1", port=single.port), patterns=("burst",)),
        Ours("ours, SingleLink", "single", single.url),
        RedisPy("redis-py RedisCluster (default, max 100 per node)", "cluster",
                lambda: redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster_seed.port)),
        RedisPy("redis-py RedisCluster(max_connections=200)", "cluster",
                lambda: redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster_seed.port, max_connections=200),
                patterns=("pairs",)),
        Ours("ours, ClusterLink", "cluster", cluster.url),
    ]
    if only:
        subjects = [s for s in subjects if re.search(only, s.label) or s.ours]
    # a client of its own for each pattern: what one pattern did to a client's pool (redis-py's
    # cluster client reacts to MaxConnectionsError) must not change the other's figures
    rows = [Row(copy.copy(s), p) for s in subjects for p in s.patterns]
    subjects = [row.subject for row in rows]
    servers_of = {"single": [single], "cluster": cluster.servers}
    try:
        for subject in subjects:
            await subject.open()
        for repeat in range(-1, repeats):  # -1: the warm-up, not kept
            for row in rows:
                sample = await measure(row.subject, row.pattern, servers_of[row.subject.topology])
                if repeat >= 0:
                    row.samples.append(sample)
                errors = sum(sample.errors.values())
                print(f"  {'warm-up' if repeat < 0 else f'run {repeat + 1}'}: {row.subject.label} / {row.pattern}:"
                      f" {sample.cpu_us:.1f} µs CPU/cmd, {sample.wall_ms:.0f} ms"
                      + (f", {errors} errors {dict(sample.errors)}" if errors else ""), flush=True)
    finally:
        for subject in subjects:
            try:
                await subject.close()
            except Exception as exc:  # closing one must not keep the others open
                print(f"closing {subject.label}: {exc!r}", file=sys.stderr)
    return rows


# -- reporting -----------------------------------------------------------------------------
def table(rows: list[Row]) -> list[str]:
    ours = {(r.subject.topology, r.pattern): r.median("cpu_us") for r in rows if r.subject.ours}
    lines = [("| client | topology | pattern | µs CPU / command | wall ms (N = 20,000) | redis-server µs CPU / command"
              " | CPU vs ours | errors per run |"),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        errors, detail = row.errors
        cpu, wall, srv = row.median("cpu_us"), row.median("wall_ms"), row.median("server_us")
        reference = ours.get((row.subject.topology, row.pattern)) or ours.get((row.subject.topology, "burst"))
        if errors:  # figures over mostly refused commands would mislead
            figures = "— | — | — | fails"
        else:
            ratio = "1" if row.subject.ours else f"{cpu / reference:.1f}×" if reference else "?"
            figures = f"{cpu:.1f} | {wall:.0f} | {srv:.1f} | {ratio}"
        lines.append(f"| {row.subject.label} | {row.subject.topology} | {row.pattern} | {figures} |"
                     f" {f'{errors:,} of {N:,} ({detail})' if errors else '0'} |")
    return lines


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                     platform.processor())
    server = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"], check=True,
                            capture_output=True, text=True).stdout.split()[2].removeprefix("v=")
    return (f"{os.cpu_count()} cores ({model}), shared; Python {platform.python_version()} on asyncio's own event loop;"
            f" redis-py {importlib.metadata.version('redis')} with hiredis {importlib.metadata.version('hiredis')}"
            f" (parser in use: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}); redis-server {server},"
            " everything on 127.0.0.1")


def write(rows: list[Row], load_before: str, load_after: str, repeats: int) -> None:
    notes = ""
    if RESULTS.exists():  # the hand-written reading of the figures is kept across runs
        text = RESULTS.read_text()
        if NOTES_HEADING in text:
            notes = text[text.index(NOTES_HEADING):]
    body = [
        "# Our Redis client layer against redis-py",
        "",
        "Written by `.venv/bin/python -m bench.redis_clients` (bench/redis_clients.py); cited in docs/CLUSTER.md.",
        "",
        "**The command**: EVALSHA of `" + SCRIPT + "` with a 300-byte ARGV on key `bench:{p:<i % 1000>}:inbox` (a"
        " hash tag, so it routes on a cluster), N = 20,000 per run from one asyncio event loop, in two patterns:"
        " **burst**, all N issued at once then awaited with one `asyncio.gather`; **pairs**, 200 concurrent tasks"
        " each awaiting 100 commands one after the other (command j of task p is i = j * 200 + p, so the commands"
        " in flight together name 200 distinct keys). *single* is one redis-server, *cluster* a 3-primary Redis"
        " Cluster (no replicas). A client that raises for any command is shown as failing, with no figures.",
        "",
        (f"**The machine**: {machine()}. Load average (1, 5, 15 min) {load_before} at the start and {load_after}"
        " at the end: other work shared the cores, so the figures are the client process's CPU time per command"
        f" (time.process_time delta / N), medians of {repeats} runs after one warm-up run, the clients"
        " interleaved run by run. Wall time is shown, but it moves with the load. \"CPU vs ours\" divides by our"
        " link's figure for the same topology and pattern (for the one-pipeline reference: by ours, burst)."),
        "",
        *table(rows),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(body) + ("\n" + notes if notes else ""))


def wait_for_load(limit: float | None, patience: float) -> None:
    if limit is None:
        return
    deadline = time.monotonic() + patience
    while float(loadavg().split()[0]) > limit and time.monotonic() < deadline:
        print(f"load {loadavg()}: waiting for the 1-minute load to fall below {limit}", flush=True)
        time.sleep(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--only", help="a regex on the client labels (ours is always run)")
    parser.add_argument("--max-load", type=float, help="wait (up to --patience s) for a 1-minute load below this")
    parser.add_argument("--patience", type=float, default=1800)
    parser.add_argument("--no-write", action="store_true", help=f"print only, do not write {RESULTS.name}")
    args = parser.parse_args()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the finally below: the servers are stopped
    signal.signal(signal.SIGTERM, terminated)

    wait_for_load(args.max_load, args.patience)
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-clients-"))
    try:
        single = support.RedisServer().start()
        cluster = support.RedisClusterServers(workdir).start()
        for server in [single, *cluster.servers]:  # redis-py's EVALSHA needs it loaded (ours loads on connect)
            assert redis.Redis(port=server.port).script_load(SCRIPT) == SHA
        load_before = loadavg()
        print(f"load average {load_before}; {machine()}", flush=True)
        rows = asyncio.run(run(single, cluster, args.repeats, args.only))
        load_after = loadavg()
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nload average {load_before} at the start, {load_after} at the end\n")
    print("\n".join(table(rows)))
    if not args.no_write:
        write(rows, load_before, load_after, args.repeats)
        print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
