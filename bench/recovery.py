"""`python -m bench.recovery`: how fast two nodes recover when Redis restarts empty (issue 13).

    python -m bench.recovery --tree before=/work/wt-recovery-before --tree after=. --peers 20000 --repeat 2
    python -m bench.recovery --tree main=. --peers 2000            # a quick run, about 15 s a run

One run: a fresh redis-server (`--save "" --appendonly no`: no persistence) and two nodes
(`python -m signaling serve --redis-url ... --node-id n1|n2`, PYTHONPATH=<tree>, this
interpreter, the flags the benchmark suite gives our nodes, JWT auth on). PEERS clients
connect straight to the nodes, in pairs: peer a of each pair on n1, peer b on n2, spread
over load generator processes (bench/loadgen/recovery.js; at most 5,000 clients each,
under the open-file limit of 20,000 per process) with a source address each (127.0.0.2,
127.0.0.3, ...; each picks its local ports itself, see there). Each pair exchanges acked
messages (RATE msg/s overall) for the whole run. After STEADY seconds Redis is SIGKILLed
and at once restarted EMPTY on the same port: the restart (t = 0 below) is the instant the
new redis-server is spawned, right after the old one was reaped. Measured:

- readyz: per node, the time from the restart to the first 200 of the last unbroken run of
  200s of GET /readyz, polled every 20 ms (1 s timeout: no answer counts as not 200; 0 when
  it never stopped answering 200; "–" when it did not answer 200 at the end); unready: the
  total time it did not answer 200 (a poll stands for the time until the next one).
- reachable: after the restart, each peer's partner probes it (acked probes, at most one
  outstanding per peer, PROBE_INTERVAL ms apart at least, within PROBE_RATE probes/s in
  all: 20,000 peers probed every 100 ms would be 200,000 msg/s, ten times what two nodes
  carry on this machine). A peer is REACHABLE at the first moment it receives a message
  from its partner (probe or regular) that was sent after the restart; p50, p99 and max
  over the peers, and "all reachable" (the max, when every peer was reached within
  TIMEOUT). That is an upper bound; "last refused" is the lower bound of "all": when the
  last message (probe or regular) that came back as an error left (the truth lies between; the gap is at
  most a probing round, U / PROBE_RATE for U peers not yet reached).
- lost: acked messages (`delivered` or `queued`) that never reached their addressee by the
  end; duplicates: those that reached it twice or more. Clients closed by a node reconnect
  to it with `resume=<last seq>` as docs/PROTOCOL.md says (as signaling/static/client.js
  schedules it); "clients closed" counts those closed at least once, "resumed" the
  reconnects that got a welcome, "resumed: false" those whose welcome said the inbox could
  not fill the gap. A loss whose addressee never dropped, or stayed connected 2 s after the
  message left, or came back with resumed: true, breaks PROTOCOL.md whatever the grace
  (the column "lost with addressee connected..."); the JSON splits every loss further.
- also: clients closed before the restart (a run disturbed before it: reported, not
  hidden), the cores used by each node, Redis and the load generators every 0.5 s, and
  what each node logged (lease lost, peers registered again, ...) with its time.

Trees are run alternately (before, after, before, after for --repeat 2); each run starts
everything fresh. Every process is started in its own session, dies with this one, and
is stopped by its PID at the end, on a failure, on Ctrl-C and on SIGTERM; every wait is
bounded. Results go to --out (JSON) and a table to stdout; logs are kept on a failure or
with --keep-logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .loadgen_runner import Loadgen, _AsyncRecord, ensure_node_modules
from .procs import (
    INTERRUPTED,
    LIVE,
    Proc,
    _child_setup,
    _prctl,
    cpu_seconds,
    free_port,
    raise_fd_limit,
    stop_all,
    system_busy,
    wait_port,
)
from .servers import BENCH, JWT_SECRET, find_program, node_binary

RECOVERY_JS = BENCH / "loadgen" / "recovery.js"
PYTHON = sys.executable
PER_LOADGEN = 5000  # clients per load generator process (the open-file limit is 20,000 per process)
NODE_FLAGS = ["--rate", "1000000", "--burst", "1000000", "--byte-rate", "1e12", "--byte-burst", str(10**12),
              "--max-connections", "50000", "--backlog", "4096"]  # as bench/servers.py gives our nodes


class RecoveryLoadgen(Loadgen):
    """bench/loadgen/recovery.js instead of loadgen.js; its events are pumped by a task."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        super().__init__(config, workdir, name)
        self.seen: dict[str, dict[str, Any]] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.error: BaseException | None = None
        self.pump_task: asyncio.Task[None] | None = None
        self.last_tick: dict[str, Any] = {}

    async def start(self) -> None:
        self._log = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            # BENCH_LOADGEN_NODE_ARGS: flags for node itself, e.g. "--cpu-prof --cpu-prof-dir=DIR"
            node_binary(), *os.environ.get("BENCH_LOADGEN_NODE_ARGS", "").split(), str(RECOVERY_JS),
            str(self.config_path), cwd=BENCH, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
            preexec_fn=_child_setup if _prctl is not None else None, limit=1 << 26)
        LIVE[self.proc.pid] = _AsyncRecord(self)
        self.pump_task = asyncio.create_task(self._pump())

    def _flag(self, name: str) -> asyncio.Event:
        return self.arrived.setdefault(name, asyncio.Event())

    async def _pump(self) -> None:
        try:
            while True:
                event = await self.next_event(24 * 3600)
                name = event.get("event", "")
                if name == "tick":
                    self.last_tick = event
                self.seen[name] = event
                self._flag(name).set()
                if name == "result":
                    return
        except BaseException as exc:
            self.error = exc
            for flag in self.arrived.values():
                flag.set()
            self._flag("__error__").set()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def wait_for(self, name: str, timeout: float) -> dict[str, Any]:
        flag = self._flag(name)
        failed = self._flag("__error__")
        waits = [asyncio.ensure_future(flag.wait()), asyncio.ensure_future(failed.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if name in self.seen:
            return self.seen[name]
        if self.error is not None:
            raise RuntimeError(f"{self.name}: {self.error}")
        raise RuntimeError(f"{self.name}: no {name!r} within {timeout:.0f}s:\n{self.stderr_tail()}")

    async def stop(self, timeout: float = 5.0) -> None:
        if self.pump_task is not None and not self.pump_task.done():
            self.pump_task.cancel()
            try:
                await self.pump_task
            except BaseException:  # noqa: BLE001
                pass
        # one that has not printed its result is not going to exit by itself: SIGTERM at once
        await super().stop(timeout if "result" in self.seen else 0.2)


# -- processes -----------------------------------------------------------------------------

def start_redis(port: int, workdir: Path, tag: str) -> Proc:
    program = find_program("redis-server")
    if not program:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    proc = Proc(f"redis-{tag}", [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--protected-mode", "yes", "--maxclients", "50000"],
                workdir / f"redis-{port}-{tag}.log")
    return proc


def node_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "SIGNALING_JWT_SECRET": JWT_SECRET, "PYTHONPATH": str(tree)}


def check_tree(tree: Path) -> str:
    """The `signaling` package a node started on `tree` imports (must be the tree's own)."""
    done = subprocess.run([PYTHON, "-c", "import signaling; print(signaling.__file__)"], cwd=tree, env=node_env(tree),
                          capture_output=True, text=True, timeout=60, check=False)
    where = done.stdout.strip()
    if done.returncode != 0 or not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"bench.recovery: the tree {tree} does not provide `signaling` ({where or done.stderr})")
    return where


def start_node(tree: Path, node_id: str, redis_port: int, workdir: Path, log_level: str,
               extra: list[str]) -> tuple[Proc, int]:
    port = free_port()
    argv = [PYTHON, "-m", "signaling", "serve", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
            "--redis-url", f"redis://127.0.0.1:{redis_port}/0", *NODE_FLAGS, "--log-level", log_level,
            "--log-format", "json", *extra]
    return Proc(f"signaling-{node_id}", argv, workdir / f"signaling-{node_id}-{port}.log", env=node_env(tree),
                cwd=tree), port


async def http_status(port: int, path: str, timeout: float) -> int | None:
    try:
        async def get() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = await reader.readline()
                return int(head.split()[1])
            finally:
                writer.close()
        return await asyncio.wait_for(get(), timeout)
    except (TimeoutError, OSError, IndexError, ValueError):
        return None


async def wait_ready(proc: Proc, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if await http_status(port, "/readyz", 1.0) == 200:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail()}")


class CpuSampler:
    """Cores used by groups of processes (and by the whole machine) every `every` seconds;
    `groups` may be changed between samples (Redis restarted: a new pid)."""

    def __init__(self, groups: dict[str, list[int]], every: float = 0.5) -> None:
        self.groups, self.every = groups, every
        self.samples: list[tuple[int, dict[str, tuple[tuple[int, ...], float]], float]] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def _take(self) -> None:
        cpu = {name: (tuple(pids), sum(_cpu(p) for p in pids)) for name, pids in self.groups.items()}
        self.samples.append((time.monotonic_ns(), cpu, system_busy()))

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            try:
                await asyncio.wait_for(self._stop.wait(), self.every)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()
        try:
            await asyncio.wait_for(self.task, 3)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()

    def timeline(self, t0: int) -> list[dict[str, Any]]:
        """Per interval: its end in seconds from the restart, and the cores each group used."""
        out = []
        for (ta, ca, ba), (tb, cb, bb) in zip(self.samples, self.samples[1:]):
            dt = (tb - ta) / 1e9
            if dt <= 0:
                continue
            row: dict[str, Any] = {"t": round((tb - t0) / 1e9, 2), "machine": round((bb - ba) / dt, 2)}
            for name in cb:
                (pa, a), (pb, b) = ca.get(name, ((), math.nan)), cb[name]
                row[name] = round((b - a) / dt, 2) if pa == pb and not math.isnan(a) and not math.isnan(b) else None
            out.append(row)
        return out


class ReadyPoller:
    """GET /readyz on one node every `every` seconds: (monotonic ns when sent, status or None)."""

    def __init__(self, port: int, every: float = 0.02) -> None:
        self.port, self.every = port, every
        self.samples: list[tuple[int, int | None]] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            sent = time.monotonic_ns()
            self.samples.append((sent, await http_status(self.port, "/readyz", 1.0)))
            due += self.every
            delay = due - time.monotonic()
            if delay < 0:
                due, delay = time.monotonic(), 0
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()
        try:
            await asyncio.wait_for(self.task, 3)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()

    def figures(self, t_kill: int, t0: int) -> dict[str, Any]:
        after = [(t, s) for t, s in self.samples if t >= t_kill]
        unready, went_unready, flaps, prev_ok = 0, False, 0, True
        first_bad = None
        for (t, s), nxt in zip(after, after[1:] + [None]):
            ok = s == 200
            if not ok:
                went_unready = True
                first_bad = first_bad if first_bad is not None else t
                if nxt is not None:
                    unready += nxt[0] - t
            if ok and not prev_ok:
                flaps += 1
            prev_ok = ok
        ready_s: float | None
        if after and after[-1][1] != 200:
            ready_s = None  # still not ready at the end
        elif not went_unready:
            ready_s = 0.0
        else:
            i = len(after) - 1
            while i > 0 and after[i - 1][1] == 200:
                i -= 1
            ready_s = max(0.0, (after[i][0] - t0) / 1e9)
        gaps = [(b[0] - a[0]) / 1e6 for a, b in zip(after, after[1:])]
        answers: dict[str, int] = {}
        for _, s in after:
            answers[str(s)] = answers.get(str(s), 0) + 1
        return {"answers": answers, "ready_s": ready_s, "unready_s": unready / 1e9, "polls": len(after),
                "first_unready_s": (first_bad - t0) / 1e9 if first_bad is not None else None,
                "back_to_ready": flaps, "poll_gap_ms_max": max(gaps) if gaps else None}


# -- one run ----------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _node_events(log: Path, wall_go: float, wall_t0: float, wall_stop: float, limit: int = 100) -> dict[str, Any]:
    """What a node logged from the start of the traffic to its end (access log lines counted,
    not listed; t in seconds from the restart, before it if negative)."""
    events: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    access = 0
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {"events": [], "repeated": {}, "access": 0}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        ts = rec.get("ts")
        if not isinstance(ts, (int, float)) or ts < wall_go or ts > wall_stop:
            continue
        if rec.get("logger") == "aiohttp.access" or "path" in rec:
            access += 1
            continue
        msg = str(rec.get("msg", ""))[:200]
        key = re.sub(r"[0-9]+", "#", re.sub(r"\bwhile attaching \S+", "while attaching PEER", msg))[:80]
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= 10 and len(events) < limit:
            events.append({"t": round(ts - wall_t0, 3), "level": rec.get("level"), "msg": msg})
    return {"events": events, "repeated": {k: v for k, v in counts.items() if v > 10}, "access": access}


async def run_once(tree_name: str, tree: Path, args: argparse.Namespace, workdir: Path,
                   run_index: int) -> dict[str, Any]:
    peers = args.peers
    pairs = peers // 2
    k = args.loadgens or max(2, math.ceil(peers / PER_LOADGEN))
    tag = f"{run_index}-{tree_name}"
    rdir = workdir / tag
    rdir.mkdir(parents=True, exist_ok=True)
    redis_port = free_port()
    procs: list[Proc] = []
    gens: list[RecoveryLoadgen] = []
    pollers: list[ReadyPoller] = []
    sampler: CpuSampler | None = None
    redis = start_redis(redis_port, rdir, "first")
    procs.append(redis)
    row: dict[str, Any] = {"tree": tree_name, "path": str(tree), "source": tree_info(tree), "run": run_index,
                           "peers": peers, "pairs": pairs,
                           "loadgens": k, "rate": args.rate, "probe_rate": args.probe_rate,
                           "probe_interval_ms": args.probe_interval, "logs": str(rdir)}
    try:
        wait_port(redis_port, redis)
        nodes: list[tuple[Proc, int]] = []
        for node_id in ("n1", "n2"):
            nodes.append(start_node(tree, node_id, redis_port, rdir, args.node_log_level, args.node_arg))
            procs.append(nodes[-1][0])
        for proc, port in nodes:
            wait_port(port, proc, 30)
            await wait_ready(proc, port)
        endpoints = [f"ws://127.0.0.1:{port}" for _, port in nodes]
        per = [pairs // k + (1 if i < pairs % k else 0) for i in range(k)]
        offset = 0
        for i in range(k):
            config = {"endpoints": endpoints, "localAddress": f"127.0.0.{2 + i}", "idPrefix": f"r{run_index}",
                      "secret": JWT_SECRET, "pairs": per[i], "pairOffset": offset, "rate": args.rate / k,
                      "probeRate": args.probe_rate / k, "probeInterval": args.probe_interval,
                      "probeTimeout": args.probe_timeout, "concurrency": args.concurrency, "size": 200,
                      "settleSeconds": args.settle, "grace": args.grace}
            offset += per[i]
            gens.append(RecoveryLoadgen(config, rdir, f"loadgen-{i}"))
        c0 = time.monotonic()
        for lg in gens:
            await lg.start()
        connect_timeout = 60 + peers / 100
        await _gather_events(gens, "connected", connect_timeout, nodes, "connecting",
                             lambda: sum(1 for lg in gens if "connected" in lg.seen))
        row["connect_s"] = time.monotonic() - c0
        _log(f"    {tag}: {peers:,} clients connected in {row['connect_s']:.1f}s")

        pollers = [ReadyPoller(port) for _, port in nodes]
        groups = {"n1": [nodes[0][0].pid], "n2": [nodes[1][0].pid], "redis": [redis.pid],
                  "loadgens": [lg.pid for lg in gens]}
        sampler = CpuSampler(groups)
        wall_go = time.time()
        for lg in gens:
            await lg.send({"cmd": "go"})
        await _sleep_watching(args.steady, nodes)

        # -- the restart ------------------------------------------------------------------
        t_kill = time.monotonic_ns()
        redis.stop(5.0, sig=signal.SIGKILL)
        t0 = time.monotonic_ns()
        wall_t0 = time.time()
        redis = start_redis(redis_port, rdir, "restarted")
        procs.append(redis)
        groups["redis"] = [redis.pid]
        for lg in gens:
            await lg.send({"cmd": "restarted", "t": str(t0)})
        cpu_pids = {"n1": nodes[0][0].pid, "n2": nodes[1][0].pid, "redis": redis.pid,
                    **{lg.name: lg.pid for lg in gens}}
        cpu0 = {name: _cpu(pid) for name, pid in cpu_pids.items()}
        wait_port(redis_port, redis, 10)
        row["redis_down_s"] = (time.monotonic_ns() - t_kill) / 1e9
        row["redis_up_s"] = (time.monotonic_ns() - t0) / 1e9
        deadline = time.monotonic() + args.timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            _check_alive(nodes)
            for lg in gens:
                if lg.error is not None:
                    raise RuntimeError(f"{lg.name}: {lg.error}")
            all_reached = all("reached" in lg.seen for lg in gens)
            ready_now = all(p.samples and p.samples[-1][1] == 200 for p in pollers)
            if all_reached and ready_now:
                break
            if time.monotonic() - last_print > 2:
                last_print = time.monotonic()
                reached = sum(lg.last_tick.get("reached", 0) for lg in gens)
                down = sum(lg.last_tick.get("down", 0) for lg in gens)
                _log(f"    {tag}: t={(time.monotonic_ns() - t0) / 1e9:.1f}s reachable {reached:,}/{peers:,}, "
                     f"clients not connected {down:,}, "
                     f"readyz {[p.samples[-1][1] if p.samples else None for p in pollers]}")
            await asyncio.sleep(0.05)
        row["recovery_wait_s"] = (time.monotonic_ns() - t0) / 1e9
        cpu1 = {name: _cpu(pid) for name, pid in cpu_pids.items()}
        row["cpu_s_during_recovery"] = {name: round(cpu1[name] - cpu0[name], 3) for name in cpu_pids}
        await _sleep_watching(args.after, nodes)
        for p in pollers:
            await p.stop()
        await sampler.stop()
        row["cores_timeline"] = sampler.timeline(t0)
        wall_stop = time.time()
        for lg in gens:
            await lg.send({"cmd": "stop"})
        results = await _gather_events(gens, "result", args.settle * 3 + 60, nodes, "settling", None)
        _check_alive(nodes)
    finally:
        for p in pollers:
            await p.stop()
        if sampler is not None:
            await sampler.stop()
        for lg in gens:
            await lg.stop()
        for proc in sorted(procs, key=lambda p: p.name.startswith("redis")):  # the nodes before Redis
            proc.stop(5.0)

    # -- figures ------------------------------------------------------------------------------
    for (proc, _), poller in zip(nodes, pollers):
        row[proc.name.removeprefix("signaling-")] = poller.figures(t_kill, t0)
    readies = [row[n]["ready_s"] for n in ("n1", "n2")]
    row["readyz_all_s"] = None if any(r is None for r in readies) else max(readies)
    reached_ms: list[float | None] = [x for r in results for x in r["reachedMs"]]
    got = [x / 1000 for x in reached_ms if x is not None]
    sides = {"n1": [x / 1000 for r in results for x in r["reachedMs"][0::2] if x is not None],
             "n2": [x / 1000 for r in results for x in r["reachedMs"][1::2] if x is not None]}
    row["reachable"] = len(got)
    row["unreachable"] = peers - len(got)
    row["reach_p50_s"], row["reach_p99_s"] = _pct(got, 0.5), _pct(got, 0.99)
    row["reach_max_s"] = max(got) if got else None
    row["reach_all_s"] = row["reach_max_s"] if len(got) == peers else None
    refused = [x / 1000 for r in results for x in r["refusedMs"]]
    row["refused_p50_s"], row["refused_p99_s"] = _pct(refused, 0.5), _pct(refused, 0.99)
    row["refused_max_s"] = max(refused) if refused else None  # every peer was reachable after this, at the earliest
    row["reach_by_node"] = {n: {"p50_s": _pct(v, 0.5), "p99_s": _pct(v, 0.99), "max_s": max(v) if v else None,
                                "count": len(v)} for n, v in sides.items()}
    total = lambda key: sum(r.get(key, 0) for r in results)
    for key in ("sent", "acked", "queued", "refused", "unanswered", "delivered", "lost", "duplicates", "reordered",
                "probes", "probesAcked", "probesRefused", "reachedByProbe", "skipped", "stopped", "clientsClosed",
                "reconnects", "reconnectAttempts", "closedBeforeRestart", "portsTaken", "otherFrames", "resumedTrue",
                "resumedFalse", "notConnectedAtEnd"):
        row[_snake(key)] = total(key)
    row["clients_closed_by_node"] = {"n1": sum(r["clientsClosedBySide"][0] for r in results),
                                     "n2": sum(r["clientsClosedBySide"][1] for r in results)}
    for key in ("errors", "closes", "connectErrors"):
        merged: dict[str, int] = {}
        for r in results:
            for code, n in r.get(key, {}).items():
                merged[code] = merged.get(code, 0) + n
        row[_snake(key)] = merged
    gaps = [r["probeGapMs"] for r in results if r["probeGapMs"]["count"]]
    row["probe_gap_ms"] = {"p50_max": max((g["p50"] for g in gaps), default=None),
                           "p99_max": max((g["p99"] for g in gaps), default=None)}
    row["other_frame_samples"] = [x for r in results for x in r.get("otherSamples", [])][:5]
    details = [r["lostDetail"] for r in results if r["lost"]]
    row["lost_by"] = {key: sum(d[key] for d in details) for key in (
        "liveAck", "queuedAck", "noDrop", "resumedTrue", "resumedFalse", "stillDown", "downOverGrace", "upOver2s")}
    row["lost_breaking_protocol"] = sum(d["breach"] for d in details)
    row["lost_detail"] = details
    downs = [r["downMs"] for r in results if r["downMs"]["count"]]
    row["client_down_max_s"] = max((d["max"] for d in downs), default=None)
    row["client_down_max_s"] = row["client_down_max_s"] / 1000 if row["client_down_max_s"] is not None else None
    row["node_log"] = {name.removeprefix("signaling-"): _node_events(proc.log, wall_go, wall_t0, wall_stop)
                       for name, proc in ((p.name, p) for p, _ in nodes)}
    return row


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError):
        return float("nan")


def _check_alive(nodes: list[tuple[Proc, int]]) -> None:
    for proc, _ in nodes:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.poll()}:\n{proc.tail()}")


async def _sleep_watching(seconds: float, nodes: list[tuple[Proc, int]]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _check_alive(nodes)
        await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))


async def _gather_events(gens: list[RecoveryLoadgen], name: str, timeout: float, nodes: list[tuple[Proc, int]],
                         what: str, progress: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    waits = [asyncio.ensure_future(lg.wait_for(name, timeout)) for lg in gens]
    try:
        last = time.monotonic()
        while not all(w.done() for w in waits):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {name!r} from every load generator within {timeout:.0f}s")
            _check_alive(nodes)
            for w in waits:
                if w.done() and w.exception() is not None:
                    raise w.exception()  # type: ignore[misc]
            if progress is not None and time.monotonic() - last > 5:
                last = time.monotonic()
                _log(f"    {what}: {progress()}/{len(gens)} load generators done")
            await asyncio.sleep(0.1)
        return [w.result() for w in waits]
    finally:
        for w in waits:
            w.cancel()


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------------

def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


COLUMNS = [("tree", "tree"), ("run", "run"), ("n1 readyz s", "n1.ready_s"), ("n2 readyz s", "n2.ready_s"),
           ("n1 unready s", "n1.unready_s"), ("n2 unready s", "n2.unready_s"), ("all reachable s", "reach_all_s"),
           ("last refused s", "refused_max_s"),
           ("p50 reach s", "reach_p50_s"), ("p99 reach s", "reach_p99_s"), ("max reach s", "reach_max_s"),
           ("unreachable", "unreachable"), ("clients closed before the restart", "closed_before_restart"),
           ("acked", "acked"), ("acked lost", "lost"),
           ("lost with addressee connected ≥ 2 s after, or resumed: true", "lost_breaking_protocol"),
           ("duplicates", "duplicates"),
           ("clients closed", "clients_closed"), ("resumed", "reconnects"), ("resumed: false", "resumed_false"),
           ("refused", "refused")]


def _get(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        out.append("| " + " | ".join(_f(_get(row, path)) for _, path in COLUMNS) + " |")
    return "\n".join(out)


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tree: the median of every figure over its runs (None if any run lacks it), and
    the sums of lost and duplicates (a loss in any run must show)."""
    out = []
    for tree in dict.fromkeys(r["tree"] for r in rows if "error" not in r):
        runs = [r for r in rows if r["tree"] == tree and "error" not in r]
        merged: dict[str, Any] = {"tree": tree, "run": f"median of {len(runs)}"}
        for _, path in COLUMNS[2:]:
            values = [_get(r, path) for r in runs]
            if path in ("lost", "lost_breaking_protocol", "duplicates", "unreachable"):
                merged[path] = sum(v or 0 for v in values)
            elif all(isinstance(v, (int, float)) for v in values) and values:
                m = statistics.median(values)
                merged[path] = round(m) if all(isinstance(v, int) for v in values) else m
            else:
                merged[path] = None
        flat: dict[str, Any] = {}
        for path, value in merged.items():
            target = flat
            parts = path.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
        out.append(flat)
    return out


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": os.cpu_count(), "cpu": cpu,
            "memory_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "node": version(["node", "--version"]),
            "redis": version([find_program("redis-server") or "redis-server", "--version"]),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}


def tree_info(tree: Path) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *argv], capture_output=True, text=True, check=False)
        return done.stdout.strip()
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "signaling")
    return {"path": str(tree), "commit": head, "uncommitted_in_signaling": dirty.splitlines() if dirty else []}


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH",
                        help="a source tree to run the nodes from (repeat: the trees are run alternately)")
    parser.add_argument("--peers", type=int, default=20000, help="connected clients, half on each node (default 20000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tree (default 1)")
    parser.add_argument("--rate", type=float, default=2000.0, help="regular acked messages per second overall "
                        "(default 2000)")
    parser.add_argument("--probe-rate", type=float, default=5000.0,
                        help="probe budget after the restart, probes per second overall (default 5000)")
    parser.add_argument("--probe-interval", type=float, default=100.0, help="ms between probes to one peer, at least "
                        "(default 100)")
    parser.add_argument("--probe-timeout", type=float, default=1000.0,
                        help="ms after which an unanswered probe is given up and the next one may leave (default 1000)")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of traffic before the restart (default 5)")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of traffic after recovery (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds after the restart to wait for every peer to be reachable (default 120)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds, at the end, for clients to reconnect and acked messages to arrive (default 20)")
    parser.add_argument("--grace", type=float, default=15.0,
                        help="the nodes' reconnect grace (their default, 15 s; pass --node-arg=--grace=N to change "
                        "it): a loss whose addressee was down longer is reported apart")
    parser.add_argument("--loadgens", type=int, help=f"load generator processes (default: one per {PER_LOADGEN:,} "
                        "clients, at least 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="connects in flight per load generator at start")
    parser.add_argument("--node-log-level", default="warning",
                        help="the nodes' --log-level (default warning, as the suite runs them: at info every "
                        "request is logged, about 12%% of a node's CPU in a reconnect storm; info also tells when "
                        "the pub/sub connection resubscribed)")
    parser.add_argument("--node-arg", action="append", default=[], help="one more flag for every node (repeat)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/recovery.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs even when nothing failed")
    args = parser.parse_args(argv)
    trees = []
    for spec in args.tree:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--tree {spec!r}: expected NAME=PATH")
        if not (Path(path) / "signaling").is_dir():
            parser.error(f"--tree {spec!r}: {path} has no signaling/ package")
        trees.append((name, Path(path).resolve()))
    if len({n for n, _ in trees}) != len(trees):
        parser.error("--tree names must differ")
    args.trees = trees
    if args.peers < 2 or args.peers % 2:
        parser.error("--peers must be even (pairs), at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or BENCH / "results" / "recovery.json"
    fd_limit = raise_fd_limit()
    k = args.loadgens or max(2, math.ceil(args.peers / PER_LOADGEN))
    if math.ceil(args.peers / k) > fd_limit - 500 or args.peers // 2 > fd_limit - 500:
        raise SystemExit(f"bench.recovery: {args.peers:,} clients need more open files per process than the limit "
                         f"({fd_limit:,}): use more --loadgens")
    if k > 250:
        raise SystemExit("bench.recovery: at most 250 load generators (one source address each)")
    ensure_node_modules()
    workdir = Path(tempfile.mkdtemp(prefix="signaling-recovery-"))
    info = {"machine": machine(), "fd_limit": fd_limit, "trees": {}, "argv": sys.argv[1:],
            "settings": {k_: v for k_, v in vars(args).items() if k_ not in ("trees", "tree", "out")}}
    for name, path in args.trees:
        info["trees"][name] = {**tree_info(path), "imports": check_tree(path)}
    results: dict[str, Any] = {"meta": info, "runs": [], "failures": []}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))

    async def body() -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def interrupt(signum: int) -> None:
            INTERRUPTED.append(signum)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt, sig)
        index = 0
        for r in range(args.repeat):
            for name, path in args.trees:
                index += 1
                _log(f"[{index}/{args.repeat * len(args.trees)}] {name} ({path}): {args.peers:,} peers, Redis restart")
                t = time.monotonic()
                try:
                    row = await run_once(name, path, args, workdir, index)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failed run is reported; the others go on
                    message = f"{type(exc).__name__}: {exc}"
                    _log(f"    FAILED: {message}")
                    if os.environ.get("BENCH_DEBUG"):
                        traceback.print_exc()
                    results["failures"].append({"tree": name, "run": index, "error": message[:4000]})
                else:
                    results["runs"].append(row)
                    _log(f"    readyz n1 {_f(row['n1']['ready_s'])}s n2 {_f(row['n2']['ready_s'])}s, all reachable "
                         f"{_f(row['reach_all_s'])}s (p50 {_f(row['reach_p50_s'])}, p99 {_f(row['reach_p99_s'])}), "
                         f"lost {row['lost']} of {row['acked']:,} acked, duplicates {row['duplicates']}, "
                         f"closed {row['clients_closed']:,}, resumed {row['reconnects']:,}  "
                         f"({time.monotonic() - t:.0f} s)")
                save()

    code = 0
    try:
        asyncio.run(body())
    except (KeyboardInterrupt, asyncio.CancelledError):
        _log("\nbench.recovery: interrupted; stopping every process started")
        results["interrupted"] = True
        code = 130
    finally:
        stop_all()
        results["meta"]["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        results["summary"] = medians(results["runs"]) if args.repeat > 1 else []
        save()
    print(table(results["runs"] + results["summary"]))
    for f in results["failures"]:
        print(f"FAILED {f['tree']} run {f['run']}: {f['error'].splitlines()[0]}")
    _log(f"bench.recovery: wrote {out}")
    if code == 0 and not results["failures"] and not args.keep_logs:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        _log(f"bench.recovery: logs kept in {workdir}")
    if code == 0 and results["failures"]:
        code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
