"""`python -m bench`: run the benchmark suite and write bench/results/RESULTS.md and plots.

    python -m bench                 # the full suite (about 20 minutes on 2 cores)
    python -m bench --quick         # a few-second smoke run into bench/results/quick/
    python -m bench --scenarios relay --servers ours-1node,ws-relay --duration 5
    python -m bench --report-only   # redraw RESULTS.md and the plots from results.json

See bench/README.md for what each scenario does and how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import report, scenarios, servers
from .loadgen_runner import ensure_node_modules
from .procs import INTERRUPTED, raise_fd_limit, stop_all
from .scenarios import Settings

RESULTS = servers.BENCH / "results"
SCENARIOS = ("relay", "offer", "sweep", "idle", "scaling", "drain", "profile")
RELAY_TARGETS = ["ws-tutorial", "ws-relay", "aiohttp", "aiohttp-uvloop", "ours-memory", "ours-1node", "ours-2nodes",
                 "socketio-1node", "socketio-2nodes"]
OFFER_TARGETS = ["ws-tutorial", "ws-relay", "aiohttp", "ours-memory", "ours-2nodes", "socketio-2nodes"]
SWEEP_TARGETS = ["ws-relay", "aiohttp", "ours-memory", "ours-2nodes", "socketio-2nodes"]
SWEEP_RATES = [1000, 2500, 5000, 10000, 20000, 40000]
IDLE_TARGETS = ["ws-relay", "aiohttp", "ours-1node", "socketio-1node"]
SCALING_TARGETS = {"ours-1node": "signaling + Redis (a channel per peer)",
                   "socketio-1node": "Socket.IO + redis-adapter (every node gets every message)"}
SCALING_NODES = [2, 4, 8]
SCALING_RATE = 2000
PROFILE_TARGETS = ["ours-memory", "ours-1node", "ours-2nodes"]


class Step:
    def __init__(self, scenario: str, label: str, run: Callable[[], Awaitable[Any]], seconds: float,
                 key: str) -> None:
        self.scenario, self.label, self.run, self.seconds, self.key = scenario, label, run, seconds, key


def build_plan(args: argparse.Namespace, st: Settings, out: Path) -> list[Step]:
    chosen = set(args.scenarios.split(",")) if args.scenarios else set(SCENARIOS)
    unknown = chosen - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s): {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    only = set(args.servers.split(",")) if args.servers else None
    if only and only - set(servers.TARGETS):
        raise SystemExit(f"bench: unknown server(s): {', '.join(sorted(only - set(servers.TARGETS)))} "
                         f"(known: {', '.join(servers.TARGETS)})")

    def pick(keys: list[str]) -> list[servers.Target]:
        return [servers.TARGETS[k] for k in keys if only is None or k in only]

    plan: list[Step] = []
    per_run = st.warmup + st.duration + 3
    if args.quick:
        for t in pick(["ws-relay", "ours-1node"]):
            plan.append(Step("relay", f"relay P=1 {t.key}", _relay(t, st, [1], 1), per_run, t.key))
        return plan
    if "relay" in chosen:
        for t in pick(RELAY_TARGETS):
            plan.append(Step("relay", f"relay P=1,200 {t.key}", _relay(t, st, [1, 200], args.repeat), 2 * per_run,
                             t.key))
    if "offer" in chosen:
        for t in pick(OFFER_TARGETS):
            plan.append(Step("offer", f"offer 4 KB P=50 {t.key}", _offer(t, st, args.repeat), per_run, t.key))
    if "sweep" in chosen:
        for t in pick(SWEEP_TARGETS):
            plan.append(Step("sweep", f"load sweep {t.key}", _sweep(t, st),
                             len(SWEEP_RATES) * (st.sweep_warmup + st.sweep_duration + 1.5), t.key))
    if "idle" in chosen:
        for t in pick(IDLE_TARGETS):
            for n in args.idle_counts:
                plan.append(Step("idle", f"idle {n:,} {t.key}", _idle(t, st, n), 8 + n / 1500, t.key))
    if "scaling" in chosen:
        for key in SCALING_TARGETS:
            if only is not None and key not in only:
                continue
            for n in SCALING_NODES:
                plan.append(Step("scaling", f"scaling {n} nodes {key}",
                                 _scaling(servers.TARGETS[key], st, n), per_run + n + 4, key))
        if only is None or "ours-1node" in only:  # the control: 8 nodes' per-node rate on 2 nodes
            rate = SCALING_RATE * 2 / SCALING_NODES[-1]
            plan.append(Step("scaling", f"scaling control: 2 nodes at {rate:,.0f} msg/s ours-1node",
                             _scaling(servers.TARGETS["ours-1node"], st, 2, rate=rate), per_run + 6, "ours-1node"))
    if "drain" in chosen and (only is None or "ours-1node" in only):
        plan.append(Step("drain", f"drain storm {args.drain_connections:,}", _drain(st, args.drain_connections), 40,
                         "ours-1node"))
    if "profile" in chosen:
        for t in pick(PROFILE_TARGETS):
            plan.append(Step("profile", f"profile relay P=200 {t.key}", _profile(t, st, out / "profiles"), per_run,
                             t.key))
    return plan


def _median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rows) == 1:
        return rows[0]
    merged = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            merged[key] = statistics.median(values)
    merged["runs"] = len(rows)
    return merged


def _relay(t: servers.Target, st: Settings, pairs: list[int], repeat: int) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        async def body(dep: servers.Deployment) -> list[dict[str, Any]]:
            rows = []
            for p in pairs:
                runs = [await scenarios.pairs_run(dep, st, pairs=p, label=f"{t.key} P={p}") for _ in range(repeat)]
                rows.append(_median_rows(runs))
            return rows
        return await scenarios.with_deployment(t, st, body)
    return run


def _offer(t: servers.Target, st: Settings, repeat: int) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        async def body(dep: servers.Deployment) -> list[dict[str, Any]]:
            runs = [await scenarios.pairs_run(dep, st, pairs=50, kind="offer", size=4096, label=f"{t.key} offer")
                    for _ in range(repeat)]
            return [_median_rows(runs)]
        return await scenarios.with_deployment(t, st, body)
    return run


def _sweep(t: servers.Target, st: Settings) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        async def body(dep: servers.Deployment) -> list[dict[str, Any]]:
            rows = []
            for rate in SWEEP_RATES:
                row = await scenarios.pairs_run(dep, st, pairs=200, loop="open", rate=rate, warmup=st.sweep_warmup,
                                                duration=st.sweep_duration, label=f"{t.key} {rate:,} msg/s")
                rows.append(row)
                if row["msgs_per_s"] < 0.5 * rate:  # far past saturation: the next points say nothing new
                    break
            return rows
        return await scenarios.with_deployment(t, st, body)
    return run


def _idle(t: servers.Target, st: Settings, n: int) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        async def body(dep: servers.Deployment) -> list[dict[str, Any]]:
            return [await scenarios.idle_run(dep, st, n, label=f"idle {n:,} {t.key}")]
        return await scenarios.with_deployment(t, st, body)
    return run


def _scaling(t: servers.Target, st: Settings, nodes: int, rate: float = SCALING_RATE) -> Callable[[], Awaitable[Any]]:
    """One scaling point; with a `rate` other than SCALING_RATE it is the control run
    (`control` in its row): the same per-node rate as a bigger deployment, on fewer nodes."""
    async def run() -> list[dict[str, Any]]:
        async def body(dep: servers.Deployment) -> list[dict[str, Any]]:
            await asyncio.sleep(1.0)
            idle = await scenarios.idle_cores(dep, 3.0)
            row = await scenarios.pairs_run(dep, st, pairs=200, loop="open", rate=rate,
                                            label=f"{t.key} x{nodes}")
            row["design"] = SCALING_TARGETS[t.key]
            row["control"] = rate != SCALING_RATE
            row["idle_cores"] = idle
            cpu = row["server_cpu_s"] + row["redis_cpu_s"]
            row["net_us_per_msg"] = (cpu - idle * row["seconds"]) / row["delivered"] * 1e6 if row["delivered"] else None
            return [row]
        return await scenarios.with_deployment(t, st, body, nodes=nodes)
    return run


def _drain(st: Settings, connections: int) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        return [await scenarios.drain_run(st, targets=connections)]
    return run


def _profile(t: servers.Target, st: Settings, outdir: Path) -> Callable[[], Awaitable[Any]]:
    async def run() -> list[dict[str, Any]]:
        row = await scenarios.profile_run(t, st, outdir, label=f"profile {t.key}")
        row["hotspots"] = [report.summarise_profile(Path(p)) for p in row.get("profiles", [])]
        return [row]
    return run


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def machine_info(fd_limit: int) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import aiohttp
        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "missing"
    try:
        import uvloop
        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = "not installed"
    commit = _version(["git", "-C", str(servers.ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(servers.ROOT), "status", "--porcelain", "signaling"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": os.cpu_count(), "cpu": cpu,
        "kernel": platform.release(), "python": platform.python_version(), "aiohttp": aiohttp_version,
        "uvloop": uvloop_version, "node": _version(["node", "--version"]),
        "redis": _version([servers.find_program("redis-server") or "redis-server", "--version"]),
        "commit": commit + (" (with uncommitted changes in signaling/)" if dirty else ""),
        "fd_limit": fd_limit, "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


async def execute(plan: list[Step], results: dict[str, Any], save: Callable[[], None]) -> None:
    total = sum(s.seconds for s in plan)
    started = time.monotonic()
    done_estimate = 0.0
    for i, step in enumerate(plan, 1):
        if INTERRUPTED:
            raise asyncio.CancelledError()
        elapsed = time.monotonic() - started
        left = max(0.0, total - done_estimate) * (elapsed / done_estimate if done_estimate > 30 else 1.0)
        print(f"[{i}/{len(plan)}] {step.label}  (elapsed {elapsed / 60:.1f} min, about {left / 60:.1f} min left)",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            rows = await step.run()
        except Exception as exc:  # one failed run must not lose the others: it is reported in RESULTS.md
            message = f"{type(exc).__name__}: {exc}"
            print(f"    FAILED: {message}", file=sys.stderr, flush=True)
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
            results["failures"].append({"scenario": step.scenario, "step": step.label, "error": message[:2000]})
        else:
            results["rows"].setdefault(step.scenario, []).extend(rows)
            for row in rows:
                print("    " + report.one_line(step.scenario, row), file=sys.stderr, flush=True)
        done_estimate += step.seconds
        print(f"    ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: relay P=1 for 1 s against the raw relay and our node (a few seconds)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results, or "
                        "bench/results/quick with --quick)")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--servers", help=f"comma-separated subset of {','.join(servers.TARGETS)}")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 10; 1 with --quick)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (default 2; 0.5 with --quick)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per relay/offer point; the median is reported")
    parser.add_argument("--idle-counts", default="5000,20000",
                        help="idle connection counts (capped by the open-file limit; default 5000,20000)")
    parser.add_argument("--drain-connections", type=int, default=5000)
    parser.add_argument("--no-plots", action="store_true", help="write RESULTS.md without the PNG plots")
    parser.add_argument("--report-only", action="store_true", help="redraw RESULTS.md and plots from results.json")
    parser.add_argument("--update", action="store_true",
                        help="keep the other scenarios' rows of the existing results.json; replace only those run now")
    parser.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs even when nothing failed")
    args = parser.parse_args(argv)
    args.idle_counts = [int(x) for x in args.idle_counts.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "results.json"
    if args.report_only:
        results = json.loads(data_path.read_text())
        report.write(results, out, plots=not args.no_plots)
        print(f"bench: wrote {out / 'RESULTS.md'}", file=sys.stderr)
        return 0

    fd_limit = raise_fd_limit()
    # one node process holds every idle connection: stay under the open-file limit
    cap = fd_limit - 200
    if not args.quick and any(n > cap for n in args.idle_counts) and (
            not args.scenarios or "idle" in args.scenarios.split(",")):
        print(f"bench: the open-file limit is {fd_limit} (hard), so idle runs hold at most {cap:,} connections "
              "on one node", file=sys.stderr)
    args.idle_counts = [min(n, cap) for n in args.idle_counts]
    st = Settings(warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0),
                  duration=args.duration if args.duration is not None else (1.0 if args.quick else 10.0),
                  quiet=args.quiet)
    workdir = Path(tempfile.mkdtemp(prefix="signaling-bench-"))
    st.workdir = workdir
    results: dict[str, Any] = {"meta": machine_info(fd_limit), "rows": {}, "failures": [], "quick": args.quick,
                               "settings": {"warmup": st.warmup, "duration": st.duration, "repeat": args.repeat,
                                            "sweep_rates": SWEEP_RATES, "scaling_rate": SCALING_RATE,
                                            "idle_counts": args.idle_counts}}

    if args.update and data_path.exists():
        previous = json.loads(data_path.read_text())
        chosen = set(args.scenarios.split(",")) if args.scenarios else set(SCENARIOS)
        results["rows"] = {k: v for k, v in previous.get("rows", {}).items() if k not in chosen}
        results["failures"] = [f for f in previous.get("failures", []) if f["scenario"] not in chosen]
        before = previous.get("meta", {})
        results["meta"]["earlier"] = before
        results["meta"]["updated"] = sorted(chosen)
        # where each scenario's rows come from, across any number of updates
        source = {k: v for k, v in before.items() if k in ("date", "commit", "loadavg_start")}
        results["meta"]["sources"] = {
            **{k: before.get("sources", {}).get(k, source) for k in previous.get("rows", {}) if k not in chosen},
            **{k: {"date": results["meta"].get("date"), "commit": results["meta"].get("commit"),
                   "loadavg_start": results["meta"].get("loadavg_start")} for k in chosen}}
        results["settings"] = {**previous.get("settings", {}), **{k: v for k, v in results["settings"].items()
                                                                   if k not in ("warmup", "duration", "repeat")}}

    def save() -> None:
        data_path.write_text(json.dumps(results, indent=1, default=str))

    async def run_plan(plan: list[Step]) -> None:
        # Ctrl-C / SIGTERM: cancel the running step (its finally blocks stop what it started)
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def interrupt(signum: int) -> None:
            INTERRUPTED.append(signum)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            await execute(plan, results, save)
        except asyncio.CancelledError:
            if not INTERRUPTED:
                raise
            raise KeyboardInterrupt() from None

    code = 0
    try:
        ensure_node_modules()
        plan = build_plan(args, st, out)
        runnable = []
        for step in plan:  # a server this machine cannot run is reported as not run, never skipped silently
            why = servers.TARGETS[step.key].available
            if why:
                print(f"bench: not running {step.label}: {why}", file=sys.stderr)
                results["failures"].append({"scenario": step.scenario, "step": step.label, "error": f"not run: {why}"})
            else:
                runnable.append(step)
        plan = runnable
        print(f"bench: {len(plan)} runs, about {sum(s.seconds for s in plan) / 60:.1f} min; logs in {workdir}",
              file=sys.stderr, flush=True)
        asyncio.run(run_plan(plan))
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every process started", file=sys.stderr)
        results["interrupted"] = True
        code = 130
    finally:
        stop_all()
        results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        save()
    report.write(results, out, plots=not args.no_plots)
    ref = next((r for r in results["rows"].get("relay", []) if r["server"] == servers.REFERENCE
                and r["pairs"] == max(x["pairs"] for x in results["rows"]["relay"])), None)
    if ref and ref.get("loadgen_us_per_msg"):
        print(f"bench: load generator ceiling: {ref['loadgen_us_per_msg']:.1f} µs of its own CPU per delivered "
              f"message (about {1e6 / ref['loadgen_us_per_msg']:,.0f} msg/s per core; it used "
              f"{ref['loadgen_cores']:.2f} cores for {ref['msgs_per_s']:,.0f} msg/s against the raw relay, "
              f"P={ref['pairs']})", file=sys.stderr)
    print(f"bench: wrote {out / 'RESULTS.md'}", file=sys.stderr)
    if code == 0 and not results["failures"] and not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"bench: logs kept in {workdir}", file=sys.stderr)
    return code
