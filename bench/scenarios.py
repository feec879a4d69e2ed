"""The scenarios: relay, offer, load sweep, idle, scaling, drain storm, and the profile.

Each run starts its servers fresh (or reuses one deployment across the points of a
sweep), drives them with one or more load generators, and returns one flat dict of
figures. CPU figures cover only the measured window (see loadgen_runner.Window).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import servers
from .loadgen_runner import Loadgen, Window
from .procs import Proc, rss_bytes
from .servers import Deployment, Target

Row = dict[str, Any]


@dataclass
class Settings:
    warmup: float = 2.0
    duration: float = 10.0
    sweep_warmup: float = 1.0
    sweep_duration: float = 4.0
    workdir: Path = Path("/tmp")
    quiet: bool = False


class Progress:
    """One status line while a generator runs (rewritten in place on a terminal)."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label, self.quiet = label, quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def hook(self, lg: Loadgen, event: dict[str, Any]) -> None:
        if self.quiet or event.get("event") not in ("tick", "connected", "measure-start", "steady"):
            return
        name = event["event"]
        if name == "tick":
            extra = f"resumed {event['resumed']}/{event.get('reconnecting', 0)}  " if "resumed" in event else ""
            text = f"    {self.label}: t={event['t']:.0f}s  {extra}delivered {event['delivered']:,}"
        else:
            text = f"    {self.label}: {name}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif name != "tick" or time.monotonic() - self._last > 5:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _chain(*hooks: Callable[[Loadgen, dict[str, Any]], Any]) -> Callable[[Loadgen, dict[str, Any]], None]:
    def run(lg: Loadgen, event: dict[str, Any]) -> None:
        for hook in hooks:
            hook(lg, event)
    return run


_run_counter = 0


def _prefix() -> str:
    global _run_counter
    _run_counter += 1
    return f"r{_run_counter:03d}"


def _check_alive(dep: Deployment) -> None:
    dead = [p for p in dep.nodes + ([dep.redis] if dep.redis else []) if not p.alive]
    if dead:
        raise RuntimeError("; ".join(f"{p.name} died (exit {p.popen.poll()}):\n{p.tail()}" for p in dead))


# -- pairs: relay, offer, sweep, scaling -------------------------------------------------------

async def pairs_run(dep: Deployment, st: Settings, *, pairs: int, kind: str = "candidate", size: int = 300,
                    loop: str = "closed", rate: float | None = None, warmup: float | None = None,
                    duration: float | None = None, label: str = "", on_window: Any = None) -> Row:
    warmup = st.warmup if warmup is None else warmup
    duration = st.duration if duration is None else duration
    config = {
        "mode": "pairs", "dialect": dep.target.dialect, "endpoints": dep.endpoints, "idPrefix": _prefix(),
        "secret": servers.JWT_SECRET if dep.target.dialect == "ours" else None,
        "pairs": pairs, "placement": "cross" if len(dep.endpoints) > 1 else "same", "kind": kind, "size": size,
        "loop": loop, "rate": rate, "warmup": warmup, "duration": duration,
    }
    lg = Loadgen(config, st.workdir, "loadgen")
    window = Window(dep.pids)
    progress = Progress(label, st.quiet)
    hooks = [window.hook, progress.hook] + ([on_window] if on_window else [])
    await lg.start()
    try:
        result = await lg.until("result", warmup + duration + 180, _chain(*hooks))
    finally:
        progress.done()
        await lg.stop()
    _check_alive(dep)
    server_cpu = sum(window.cpu(pid) for pid in dep.server_pids)
    redis_cpu = window.cpu(dep.redis.pid) if dep.redis else 0.0
    loadgen_cpu = window.cpu(lg.pid)
    delivered = result["delivered"]
    seconds = result["seconds"]
    ours = server_cpu + redis_cpu + loadgen_cpu
    row: Row = {
        "server": dep.target.key, "label": dep.target.label, "nodes": len(dep.nodes), "pairs": pairs, "kind": kind,
        "bytes": result["messageBytes"], "loop": loop, "offered": rate, "seconds": seconds,
        "delivered": delivered, "msgs_per_s": delivered / seconds if seconds else 0.0,
        "p50_ms": result["rttMs"]["p50"], "p90_ms": result["rttMs"]["p90"], "p99_ms": result["rttMs"]["p99"],
        "p999_ms": result["rttMs"]["p999"], "max_ms": result["rttMs"]["max"], "rtt_samples": result["rttMs"]["count"],
        "server_cpu_s": server_cpu, "redis_cpu_s": redis_cpu,
        "node_cpu_s": [window.cpu(pid) for pid in dep.server_pids],
        "us_per_msg": (server_cpu + redis_cpu) / delivered * 1e6 if delivered else None,
        "server_us_per_msg": server_cpu / delivered * 1e6 if delivered else None,
        "redis_us_per_msg": redis_cpu / delivered * 1e6 if delivered else None,
        "server_cores": (server_cpu + redis_cpu) / window.seconds,
        "loadgen_cpu_s": loadgen_cpu, "loadgen_cores": loadgen_cpu / window.seconds,
        "loadgen_us_per_msg": loadgen_cpu / delivered * 1e6 if delivered else None,
        "other_cores": max(0.0, (window.machine_busy - ours) / window.seconds),
        "machine_cores": window.machine_busy / window.seconds,
        "shed": result.get("shed", 0), "errors": result.get("errors", {}), "closes": result.get("closes", {}),
        "not_for_me": result.get("notForMe", 0), "in_flight_at_end": result.get("inFlightAtEnd", 0),
    }
    return row


async def with_deployment(target: Target, st: Settings, body: Callable[[Deployment], Any], nodes: int | None = None,
                          extra: list[str] | None = None) -> Any:
    dep = await asyncio.to_thread(servers.start, target, st.workdir, nodes, extra)
    try:
        return await body(dep)
    finally:
        await asyncio.to_thread(dep.stop)


async def idle_cores(dep: Deployment, seconds: float = 3.0) -> float:
    """CPU the deployment burns with no traffic (heartbeats, sweepers, timers), in cores."""
    from .procs import Sample

    a = Sample.take(dep.pids)
    await asyncio.sleep(seconds)
    b = Sample.take(dep.pids)
    return sum(b.cpu[p] - a.cpu[p] for p in dep.pids) / (b.at - a.at)


# -- idle ------------------------------------------------------------------------------------

PER_LOADGEN = 7000  # connections per generator process (each process is bound by RLIMIT_NOFILE too)


async def idle_run(dep: Deployment, st: Settings, count: int, label: str = "") -> Row:
    await asyncio.sleep(1.0)  # let the fresh server settle before the baseline
    node_rss0 = sum(rss_bytes(p.pid) for p in dep.nodes)
    redis_rss0 = rss_bytes(dep.redis.pid) if dep.redis else 0
    k = max(1, -(-count // PER_LOADGEN))
    shares = [count // k + (1 if i < count % k else 0) for i in range(k)]
    prefix = _prefix()
    gens, offset = [], 0
    for i, share in enumerate(shares):
        config = {"mode": "idle", "dialect": dep.target.dialect, "endpoints": dep.endpoints, "idPrefix": prefix,
                  "secret": servers.JWT_SECRET if dep.target.dialect == "ours" else None,
                  "count": share, "offset": offset, "concurrency": 128}
        offset += share
        gens.append(Loadgen(config, st.workdir, f"loadgen-idle-{i}"))
    progress = Progress(label, st.quiet)
    try:
        for lg in gens:
            await lg.start()
        for lg in gens:
            await lg.until("prepared", 60)
        cpu0 = {pid: _cpu(pid) for pid in dep.pids}
        t0 = time.monotonic()
        for lg in gens:
            await lg.send({"cmd": "go"})
        connected = [await lg.until("connected", 600, progress.hook) for lg in gens]
        cpu1 = {pid: _cpu(pid) for pid in dep.pids}
        elapsed = time.monotonic() - t0
        await asyncio.sleep(2.0)
        node_rss1 = sum(rss_bytes(p.pid) for p in dep.nodes)
        redis_rss1 = rss_bytes(dep.redis.pid) if dep.redis else 0
        _check_alive(dep)
        for lg in gens:
            await lg.send({"cmd": "stop"})
        for lg in gens:
            await lg.until("result", 120)
    finally:
        progress.done()
        for lg in gens:
            await lg.stop()
    ready = sum(c["ready"] for c in connected)
    failed = sum(c["failed"] for c in connected)
    start = min(int(c["startMono"]) for c in connected)
    end = max(int(c["endMono"]) for c in connected)
    span = (end - start) / 1e9
    errors: Counter[str] = Counter()
    for c in connected:
        errors.update(c.get("errors", {}))
    connect_cpu = sum(cpu1[p] - cpu0[p] for p in dep.pids)
    return {
        "server": dep.target.key, "label": dep.target.label, "connections": count, "ready": ready, "failed": failed,
        "loadgens": k, "connect_seconds": span, "connect_rate": ready / span if span else None,
        "connect_wall_s": elapsed,
        "node_rss_before": node_rss0, "node_rss_after": node_rss1,
        "redis_rss_before": redis_rss0, "redis_rss_after": redis_rss1,
        "node_kib_per_conn": (node_rss1 - node_rss0) / 1024 / ready if ready else None,
        "redis_kib_per_conn": (redis_rss1 - redis_rss0) / 1024 / ready if ready and dep.redis else None,
        "connect_cpu_us_per_conn": connect_cpu / ready * 1e6 if ready else None,
        "errors": dict(errors),
    }


def _cpu(pid: int) -> float:
    from .procs import cpu_seconds

    return cpu_seconds(pid)


# -- drain storm -----------------------------------------------------------------------------

async def drain_run(st: Settings, targets: int = 5000, senders: int = 100, rate: float = 1000.0,
                    label: str = "drain") -> Row:
    target = servers.TARGETS["ours-1node"]

    async def body(dep: Deployment) -> Row:
        config = {"mode": "drain", "dialect": "ours", "endpoints": dep.endpoints, "idPrefix": _prefix(),
                  "secret": servers.JWT_SECRET, "targets": targets, "senders": senders, "rate": rate,
                  "steady": 2, "after": 2, "timeout": 60, "concurrency": 128}
        lg = Loadgen(config, st.workdir, "loadgen-drain")
        progress = Progress(label, st.quiet)
        await lg.start()
        try:
            await lg.until("connected", 300, progress.hook)
            await lg.until("steady", 60, progress.hook)
            drained = dep.nodes[0]
            t = time.monotonic_ns()
            drained.send_signal(signal.SIGTERM)
            await lg.send({"cmd": "drained", "t": str(t)})
            exit_at = asyncio.create_task(asyncio.to_thread(_wait_exit, drained, 90.0))
            result = await lg.until("result", 200, progress.hook)
            exited = await exit_at
        finally:
            progress.done()
            await lg.stop()
        return {
            "server": "ours-3nodes", "label": "signaling, 3 nodes + Redis: drain node 1", "connections": targets,
            "senders": senders, "rate": rate, "all_resumed": result["allResumed"], "resumed": result["resumed"],
            "resumed_true": result["resumedTrue"], "gave_up": result["gaveUp"], "retries": result["retries"],
            "seconds_to_all_resumed": result["secondsToAllResumed"],
            "seconds_to_first_close": result["secondsToFirstClose"],
            "node_exit_seconds": (exited - t) / 1e9 if exited else None,
            "sent": result["sent"], "acked": result["acked"], "refused": result["refused"],
            "unanswered": result["unanswered"], "delivered": result["delivered"], "lost": result["lost"],
            "duplicates": result["duplicates"], "errors": result.get("errors", {}), "closes": result.get("closes", {}),
            "queued_acks": result.get("queuedAcks", 0), "lost_detail": result.get("lostDetail"),
        }

    return await with_deployment(target, st, body, nodes=3)


def _wait_exit(proc: Proc, timeout: float) -> int | None:
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic_ns()


# -- profile ---------------------------------------------------------------------------------

def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


async def profile_run(target: Target, st: Settings, outdir: Path, pairs: int = 200, label: str = "") -> Row:
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install '.[bench]')")
    outdir.mkdir(parents=True, exist_ok=True)

    async def body(dep: Deployment) -> Row:
        spies: list[tuple[Proc, Path]] = []

        def on_window(lg: Loadgen, event: dict[str, Any]) -> None:
            if event.get("event") != "measure-start":
                return
            for i, node in enumerate(dep.nodes):
                out = outdir / f"{target.key}-node{i}.txt"
                spies.append((Proc(f"py-spy-{i}", [spy, "record", "--pid", str(node.pid), "--duration",
                                                   str(int(st.duration)), "--rate", "200",
                                                   "--format", "raw", "--output", str(out)],
                                   st.workdir / f"py-spy-{target.key}-{i}.log"), out))

        row = await pairs_run(dep, st, pairs=pairs, label=label, on_window=on_window)
        for proc, _ in spies:
            await asyncio.to_thread(proc.popen.wait, st.duration + 30)
            proc.stop()
        row["profiles"] = [str(out) for _, out in spies if out.exists()]
        return row

    return await with_deployment(target, st, body)
