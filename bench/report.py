"""RESULTS.md and the PNG plots, from the rows the scenarios produced (results.json)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .servers import REFERENCE, TARGETS

Row = dict[str, Any]


# -- formatting ------------------------------------------------------------------------------

def _num(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _ms(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _us(x: Any) -> str:
    return "–" if x is None else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _ratio(x: Any, ref: Any) -> str:
    if x is None or not ref:
        return "–"
    r = x / ref
    return f"{r:.2f}×" if r < 10 else f"{r:.1f}×" if r < 100 else f"{r:,.0f}×"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _label(row: Row) -> str:
    return row.get("label") or TARGETS.get(row["server"], None) and TARGETS[row["server"]].label or row["server"]


def _errors(row: Row) -> str:
    bits = [f"{k} {v:,}" for k, v in sorted((row.get("errors") or {}).items())]
    bits += [f"close {k} ×{v:,}" for k, v in sorted((row.get("closes") or {}).items())]
    if row.get("shed"):
        bits.append(f"shed {row['shed']:,}")
    return ", ".join(bits) or "–"


def one_line(scenario: str, row: Row) -> str:
    """The progress line printed after each run."""
    if scenario == "idle":
        return (f"{row['server']}: {row['ready']:,}/{row['connections']:,} connected at "
                f"{_num(row['connect_rate'])}/s, node {_num(row['node_kib_per_conn'], 1)} KiB/conn"
                + (f", Redis {_num(row['redis_kib_per_conn'], 1)} KiB/conn" if row.get("redis_kib_per_conn") else ""))
    if scenario == "drain":
        return (f"{row['resumed']:,}/{row['connections']:,} resumed in {_num(row['seconds_to_all_resumed'], 2)} s, "
                f"{row['acked']:,} acked, lost {row['lost']}, duplicates {row['duplicates']}")
    offered = f" offered {row['offered']:,.0f}" if row.get("offered") else ""
    return (f"{row['server']} x{row['nodes']} P={row['pairs']}{offered}: {_num(row['msgs_per_s'])} msg/s, "
            f"p50 {_ms(row['p50_ms'])} p99 {_ms(row['p99_ms'])} ms, {_us(row['us_per_msg'])} µs/msg "
            f"(loadgen {row['loadgen_cores']:.2f} cores, other {row['other_cores']:.2f})")


# -- the profile -----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", "/work/main/", "/signaling/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                tail = "stdlib/" + tail.split("/", 1)[1] if "/" in tail else tail
            if marker == "/signaling/":
                tail = "signaling/" + tail
            return tail
    return path


def _package(short: str) -> str:
    if short.startswith("signaling/"):
        return short.rsplit("/", 1)[0] if short.count("/") > 1 else short
    if short.startswith("stdlib/"):
        parts = short.split("/")
        return "stdlib/" + (parts[1] if len(parts) > 2 else parts[1].removesuffix(".py"))
    return short.split("/", 1)[0]


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own time and by inclusive time, and own time by package, from py-spy's
    raw (collapsed stack) output: one `frame;frame;... count` per line, the root first."""
    own: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    packages: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame.strip())
            if m:
                short = _short_file(m.group("file"))
                names.append((f"{m.group('func')} ({short})", short))
            else:
                names.append((frame.strip(), frame.strip()))
        if not names:
            continue
        leaf, leaf_file = names[-1]
        own[leaf] += n
        packages[_package(leaf_file)] += n
        for name in {name for name, _ in names}:
            incl[name] += n

    def ranked(table: dict[str, int], k: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in sorted(table.items(), key=lambda kv: -kv[1])[:k]]

    # inclusive: our own functions, then the libraries' entry points, leaving out the frames
    # that only wrap everything (the process, the event loop, aiohttp's request chain)
    ours = [(n, p) for n, p in ranked(incl, len(incl)) if "(signaling/" in n and not any(w in n for w in _WRAPPERS)]
    libs = [(n, p) for n, p in ranked(incl, len(incl)) if "(signaling/" not in n and p < 90.0
            and not any(w in n for w in _WRAPPERS)]
    return {"file": str(path), "samples": total, "own": ranked(own, top), "inclusive": ours[:top],
            "inclusive_libraries": libs[:10], "packages": ranked(packages, 12)}


_WRAPPERS = ("(aiohttp/web_protocol.py)", "(aiohttp/web_app.py)", "(aiohttp/web_middlewares.py)", "forwarded (",
             "json_errors (", "websocket (signaling/app.py)", "Session.run (", "Handle._run (", "_run_once (",
             "run_forever (", "run_until_complete (", "runners.py", "runpy", "__main__.py", "main (signaling/cli.py)",
             "serve (signaling/server.py)")


# -- tables ----------------------------------------------------------------------------------

def _ref(rows: list[Row], **match: Any) -> Row | None:
    for row in rows:
        if row["server"] == REFERENCE and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _pairs_table(rows: list[Row], ref: Row | None) -> str:
    header = ["server", "msg/s", "× relay", "p50 ms", "p99 ms", "p99.9 ms", "p99 × relay", "µs/msg (server+Redis)",
              "× relay", "of which Redis", "loadgen cores", "other load (cores)", "errors"]
    out = []
    for r in rows:
        out.append([
            _label(r), _num(r["msgs_per_s"]), _ratio(r["msgs_per_s"], ref and ref["msgs_per_s"]),
            _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["p999_ms"]), _ratio(r["p99_ms"], ref and ref["p99_ms"]),
            _us(r["us_per_msg"]), _ratio(r["us_per_msg"], ref and ref["us_per_msg"]),
            _us(r["redis_us_per_msg"]) if r.get("redis_cpu_s") else "–",
            f"{r['loadgen_cores']:.2f}", f"{r['other_cores']:.2f}", _errors(r)])
    return _table(header, out)


def _find(rows: list[Row], server: str, **match: Any) -> Row | None:
    for row in rows:
        if row["server"] == server and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _targets(data: dict[str, list[Row]]) -> tuple[str, list[str]]:
    relay, idle, scaling, drain = (data.get(k, []) for k in ("relay", "idle", "scaling", "drain"))
    scaling = [r for r in scaling if not r.get("control")]
    out: list[list[str]] = []
    verdicts: list[str] = []

    def verdict(name: str, ok: bool | None, figure: str, goal: str) -> None:
        mark = "–" if ok is None else ("**met**" if ok else "**missed**")
        out.append([name, goal, figure, mark])
        if ok is not None:
            verdicts.append(f"{name}: {'met' if ok else 'missed'} ({figure})")

    ours2, sio2 = _find(relay, "ours-2nodes", pairs=200), _find(relay, "socketio-2nodes", pairs=200)
    if ours2 and sio2:
        r = ours2["us_per_msg"] / sio2["us_per_msg"]
        verdict("cross-node relay P=200, CPU", r <= 0.5,
                f"{_us(ours2['us_per_msg'])} vs {_us(sio2['us_per_msg'])} µs/msg = {r:.2f}× Socket.IO",
                "≤ 0.5× Socket.IO + redis-adapter")
        verdict("cross-node relay P=200, p99", ours2["p99_ms"] <= sio2["p99_ms"],
                f"{_ms(ours2['p99_ms'])} vs {_ms(sio2['p99_ms'])} ms", "≤ Socket.IO's p99")
    raw = _find(relay, "aiohttp", pairs=200)
    for key in ("ours-1node", "ours-memory"):
        ours1 = _find(relay, key, pairs=200)
        if ours1 and raw:
            r = ours1["us_per_msg"] / raw["us_per_msg"]
            verdict(f"single-node relay P=200 ({'Redis bus' if key == 'ours-1node' else 'memory bus'}), CPU",
                    r <= 1.3, f"{_us(ours1['us_per_msg'])} vs {_us(raw['us_per_msg'])} µs/msg = {r:.2f}× raw aiohttp",
                    "≤ 1.3× raw aiohttp relay")
    ours_idle = [r for r in idle if r["server"] == "ours-1node"]
    for row in ours_idle:
        kib = row["node_kib_per_conn"]
        verdict(f"idle {row['connections']:,}: node RSS per connection", kib is not None and kib <= 18,
                f"{_num(kib, 1)} KiB", "≤ 18 KiB")
        ref = _find(idle, REFERENCE, connections=row["connections"])
        if ref and ref.get("connect_rate") and row.get("connect_rate"):
            r = row["connect_rate"] / ref["connect_rate"]
            verdict(f"idle {row['connections']:,}: connect rate", r >= 0.6,
                    f"{_num(row['connect_rate'])}/s vs {_num(ref['connect_rate'])}/s = {r:.2f}× raw relay",
                    "≥ 0.6× raw relay")
    ours_scale = {r["nodes"]: r for r in scaling if r["server"] == "ours-1node"}
    if 2 in ours_scale and 8 in ours_scale:
        r = ours_scale[8]["us_per_msg"] / ours_scale[2]["us_per_msg"]
        net = ""
        if ours_scale[8].get("net_us_per_msg") and ours_scale[2].get("net_us_per_msg"):
            net = f"; net of idle CPU {ours_scale[8]['net_us_per_msg'] / ours_scale[2]['net_us_per_msg']:.2f}×"
        verdict("scaling: CPU per message, 8 vs 2 nodes", r <= 1.2,
                f"{_us(ours_scale[8]['us_per_msg'])} vs {_us(ours_scale[2]['us_per_msg'])} µs/msg = {r:.2f}×{net}",
                "≤ 1.2×")
    for row in drain:
        t = row.get("seconds_to_all_resumed")
        verdict(f"drain storm {row['connections']:,}", bool(row["all_resumed"]) and t is not None and t < 10
                and row["lost"] == 0,
                f"{_num(t, 2)} s to all resumed, {row['lost']} lost of {row['acked']:,} acked",
                "all resumed < 10 s, 0 lost")
    if not out:
        return "(no target could be evaluated from the scenarios that ran)\n", verdicts
    return _table(["target", "goal", "measured", "verdict"], out), verdicts


# -- plots -----------------------------------------------------------------------------------

def _plots(data: dict[str, list[Row]], out: Path) -> list[str]:
    """Draw what the data allows; return notes about what could not be drawn."""
    notes: list[str] = []
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["plots not drawn: matplotlib is not installed (pip install '.[bench]')"]

    sweep = data.get("sweep", [])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    by_server: dict[str, list[Row]] = defaultdict(list)
    source = sweep or data.get("relay", [])
    for row in source:
        by_server[row["server"]].append(row)
    for server, rows in by_server.items():
        rows.sort(key=lambda r: r.get("offered") or r["msgs_per_s"])
        xs = [r.get("offered") or r["msgs_per_s"] for r in rows]
        for ax, key, name in zip(axes, ("p50_ms", "p99_ms", "p999_ms"), ("p50", "p99", "p99.9")):
            name_ = TARGETS[server].label if server in TARGETS else server
            line, = ax.plot(xs, [r[key] for r in rows], marker="o", label=name_)
            sat = [(x, r[key]) for x, r in zip(xs, rows) if r.get("offered") and r["msgs_per_s"] < 0.95 * r["offered"]]
            if sat:
                ax.scatter(*zip(*sat), marker="x", s=80, color=line.get_color(), zorder=5)
            ax.set_title(f"round-trip {name}")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("offered load (delivered msg/s)" if sweep else "delivered msg/s (closed loop, P = 1 and 200)")
    axes[0].set_ylabel("ms")
    if by_server:
        axes[0].legend(fontsize=8)
    fig.suptitle("Latency vs offered load (200 pairs, 300-byte candidates; × = saturated: delivered < 95 % of offered)"
                 if sweep else "Latency vs load (closed-loop relay runs; no sweep in this run)")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_load.png", dpi=110)
    plt.close(fig)
    if not source:
        notes.append("latency_vs_load.png is empty: neither the sweep nor the relay scenario ran")

    scaling = [r for r in data.get("scaling", []) if not r.get("control")]
    if scaling:
        fig, ax = plt.subplots(figsize=(8, 5))
        for server in sorted({r["server"] for r in scaling}):
            rows = sorted((r for r in scaling if r["server"] == server), key=lambda r: r["nodes"])
            line, = ax.plot([r["nodes"] for r in rows], [r["us_per_msg"] for r in rows], marker="o",
                            label=rows[0].get("design", server))
            if all(r.get("net_us_per_msg") is not None for r in rows):
                ax.plot([r["nodes"] for r in rows], [r["net_us_per_msg"] for r in rows], marker=".", linestyle=":",
                        color=line.get_color(), label="  same, net of idle CPU")
        ref = _find(data.get("relay", []), REFERENCE, pairs=200)
        if ref:
            ax.axhline(ref["us_per_msg"], linestyle="--", color="grey", label="raw Node ws relay, 1 node (P=200)")
        ax.set_xlabel("nodes")
        ax.set_xticks(sorted({r["nodes"] for r in scaling}))
        ax.set_ylabel("server + Redis CPU µs per delivered message")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("CPU per message vs node count (fixed offered load, pairs across nodes)")
        fig.tight_layout()
        fig.savefig(out / "cpu_per_msg_vs_nodes.png", dpi=110)
        plt.close(fig)
    else:
        notes.append("cpu_per_msg_vs_nodes.png not drawn: the scaling scenario did not run")

    relay = data.get("relay", [])
    if relay:
        fig, ax = plt.subplots(figsize=(10, 5))
        ps = sorted({r["pairs"] for r in relay})
        servers = list(dict.fromkeys(r["server"] for r in relay))
        width = 0.8 / len(ps)
        for j, p in enumerate(ps):
            vals = [(_find(relay, s, pairs=p) or {}).get("us_per_msg") or 0 for s in servers]
            ax.bar([i + j * width for i in range(len(servers))], vals, width, label=f"P = {p}")
        ax.set_xticks([i + width * (len(ps) - 1) / 2 for i in range(len(servers))])
        ax.set_xticklabels([TARGETS[s].label if s in TARGETS else s for s in servers], rotation=25, ha="right",
                           fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("server + Redis CPU µs per delivered message (log)")
        ax.set_title("Relay: CPU per delivered message (300-byte candidate, closed loop)")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "relay_cpu_per_msg.png", dpi=110)
        plt.close(fig)
    return notes


# -- RESULTS.md ------------------------------------------------------------------------------

def write(results: dict[str, Any], out: Path, plots: bool = True) -> None:
    data: dict[str, list[Row]] = results.get("rows", {})
    meta, st = results.get("meta", {}), results.get("settings", {})
    notes = _plots(data, out) if plots else ["plots not drawn (--no-plots)"]
    md: list[str] = []
    w = md.append
    w("# Benchmark results\n")
    if results.get("quick"):
        w("**Quick smoke run (`--quick`): a tiny subset with a 1-second window. Not a measurement.**\n")
    if results.get("interrupted"):
        w("**Interrupted: the tables hold only the runs that finished.**\n")
    w(f"Produced by `make bench` (`python -m bench`) on {meta.get('date', '?')}, commit {meta.get('commit', '?')}. "
      f"Machine: {meta.get('cores', '?')} cores ({meta.get('cpu', '?')}), Linux {meta.get('kernel', '?')}, "
      f"Python {meta.get('python', '?')} (aiohttp {meta.get('aiohttp', '?')}, uvloop {meta.get('uvloop', '?')}), "
      f"Node {meta.get('node', '?')}, {meta.get('redis', '?')}. Load average at start "
      f"{' '.join(meta.get('loadavg_start', []))}, at end {' '.join(meta.get('loadavg_end', []))}.\n")
    if meta.get("sources"):
        runs: dict[tuple[str, str], list[str]] = {}
        for scenario, src in meta["sources"].items():
            runs.setdefault((src.get("date") or "?", src.get("commit") or "?"), []).append(scenario)
        w("Where each scenario's figures come from (a scenario run again with `--update` replaces its rows): "
          + "; ".join(f"{', '.join(sorted(names))}: the run of {date} (commit {commit})"
                      for (date, commit), names in sorted(runs.items())) + ".\n")
    elif meta.get("updated"):
        earlier = meta.get("earlier", {})
        w(f"Re-run on {meta.get('date', '?')} (commit {meta.get('commit', '?')}, load average "
          f"{' '.join(meta.get('loadavg_start', []))}): {', '.join(meta['updated'])}. Everything else is from "
          f"the run of {earlier.get('date', '?')} (commit {earlier.get('commit', '?')}).\n")
    w(f"Every pairs run: {st.get('warmup', '?')} s warm-up, then a {st.get('duration', '?')} s measured window "
      f"({st.get('repeat', 1)} run(s) per point, median). Everything on 127.0.0.1, one Node.js `ws` load generator "
      "process (bench/loadgen/loadgen.js) for every server.\n")
    w("How to read: **µs/msg** is the CPU time (utime + stime from `/proc/<pid>/stat`) of every server process "
      "plus redis-server during the measured window, divided by the messages delivered in it; it is the sturdiest "
      "figure on a shared 2-core machine. A delivered message is one relayed frame reaching its addressee; a "
      "round trip (A → B → A) is two. Latencies are round trips in ms. **× relay** is the figure divided by "
      "the raw Node `ws` relay's in the same scenario (for latency and µs/msg, lower is better). **loadgen "
      "cores** is the load generator's own CPU; near 1.0 it, not the server, may bound msg/s. **other load** "
      "is CPU used on the machine by processes outside the run (other engineers' tests): a noise indicator.\n")

    w("## Targets of issue 6\n")
    table, _ = _targets(data)
    w(table)

    relay = data.get("relay", [])
    if relay:
        w("## Relay: 300-byte candidate, closed loop (one message outstanding per pair)\n")
        for p in sorted({r["pairs"] for r in relay}):
            rows = [r for r in relay if r["pairs"] == p]
            w(f"### P = {p} pair{'s' if p > 1 else ''}\n")
            w(_pairs_table(rows, _ref(relay, pairs=p)))
        w("![relay CPU per message](relay_cpu_per_msg.png)\n")

    offer = data.get("offer", [])
    if offer:
        w("## Offer: 4 KB SDP-sized messages (offer out, answer back), 50 pairs, closed loop\n")
        w(_pairs_table(offer, _ref(offer)))

    sweep = data.get("sweep", [])
    if sweep or relay:
        w("## Latency vs offered load\n")
        if sweep:
            w("Open loop: 200 pairs; pings leave on a schedule whatever comes back (at most 32 outstanding per "
              f"pair, then shed), {st.get('sweep_rates')} delivered msg/s offered; a server's sweep stops after "
              "the first point where it delivers less than half the offered load.\n")
            header = ["server", "offered msg/s", "delivered msg/s", "p50 ms", "p99 ms", "p99.9 ms", "µs/msg",
                      "loadgen cores", "shed"]
            w(_table(header, ([_label(r), _num(r["offered"]), _num(r["msgs_per_s"]), _ms(r["p50_ms"]),
                               _ms(r["p99_ms"]), _ms(r["p999_ms"]), _us(r["us_per_msg"]),
                               f"{r['loadgen_cores']:.2f}", _num(r.get("shed", 0))] for r in sweep)))
        w("![latency vs offered load](latency_vs_load.png)\n")

    idle = data.get("idle", [])
    if idle:
        w("## Idle connections (JWT auth on for our node)\n")
        w("RSS growth of the node process and of redis-server from before the first connection to 2 s after the "
          "last `welcome` (Socket.IO: its `welcome` event; tutorial-style servers send a one-line welcome), "
          "divided by the connections. Connect rate: connections ready per second, from the first connect to "
          "the last welcome, with at most 128 connecting at once per generator process. Connect CPU: server + "
          "Redis CPU per connection while connecting.\n")
        header = ["server", "connections", "node KiB/conn", "× relay", "Redis KiB/conn", "connect rate /s",
                  "× relay", "connect CPU µs/conn", "failed", "errors"]
        rows = []
        for r in idle:
            ref = _find(idle, REFERENCE, connections=r["connections"])
            rows.append([_label(r), _num(r["ready"]), _num(r["node_kib_per_conn"], 1),
                         _ratio(r["node_kib_per_conn"], ref and ref["node_kib_per_conn"]),
                         _num(r["redis_kib_per_conn"], 1) if r.get("redis_kib_per_conn") is not None else "–",
                         _num(r["connect_rate"]), _ratio(r["connect_rate"], ref and ref["connect_rate"]),
                         _us(r["connect_cpu_us_per_conn"]), _num(r["failed"]), _errors(r)])
        w(_table(header, rows))
        fd = meta.get("fd_limit")
        if fd and any(r["connections"] < 20000 for r in idle if r["connections"] > 5000):
            w(f"The large idle run holds {max(r['connections'] for r in idle):,} connections, not 20,000: the "
              f"hard limit on open files here is {fd:,} per process and cannot be raised in this sandbox, and one "
              "node must hold them all.\n")

    scaling = [r for r in data.get("scaling", []) if not r.get("control")]
    controls = [r for r in data.get("scaling", []) if r.get("control")]
    if scaling:
        w("## Scaling: fixed offered load over more nodes\n")
        w(f"Open loop, {st.get('scaling_rate', '?'):,} delivered msg/s offered by 200 pairs whose two peers sit on "
          "different nodes (spread evenly), one Redis. µs/msg counts every node and Redis. Idle cores: what the "
          "same processes burned in 3 s with no client at all (heartbeats, sweepers, timers), measured just before; "
          "'net of idle' subtracts it, leaving the cost that grows with traffic.\n")
        header = ["design", "nodes", "delivered msg/s", "µs/msg (= ms per 1,000 msgs)", "× 2 nodes",
                  "× relay (P=200)", "of which Redis", "idle cores", "µs/msg net of idle", "× 2 nodes", "p50 ms",
                  "p99 ms", "per-node CPU s", "errors"]
        ref = _find(relay, REFERENCE, pairs=200)
        rows = []
        for r in sorted(scaling, key=lambda r: (r["server"], r["nodes"])):
            two = _find(scaling, r["server"], nodes=2)
            rows.append([r.get("design", _label(r)), str(r["nodes"]), _num(r["msgs_per_s"]), _us(r["us_per_msg"]),
                         _ratio(r["us_per_msg"], two and two["us_per_msg"]),
                         _ratio(r["us_per_msg"], ref and ref["us_per_msg"]), _us(r["redis_us_per_msg"]),
                         f"{r['idle_cores']:.3f}" if r.get("idle_cores") is not None else "–",
                         _us(r.get("net_us_per_msg")),
                         _ratio(r.get("net_us_per_msg"), two and two.get("net_us_per_msg")),
                         _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                         " / ".join(f"{c:.2f}" for c in r.get("node_cpu_s", [])), _errors(r)])
        w(_table(header, rows))
        w("![CPU per message vs node count](cpu_per_msg_vs_nodes.png)\n")
        for c in controls:
            big = max((r for r in scaling if r["server"] == c["server"]), key=lambda r: r["nodes"], default=None)
            two = _find(scaling, c["server"], nodes=c["nodes"])
            if big is None or two is None:
                continue
            per_node = c["msgs_per_s"] / c["nodes"]
            w(f"**Control**: {c['nodes']} nodes at {_num(c['offered'])} msg/s, so that each node sees what each of "
              f"{big['nodes']} nodes sees at {_num(big['offered'])} msg/s (about {_num(per_node)} delivered msg/s a "
              f"node): {_us(c['us_per_msg'])} µs/msg (of which Redis {_us(c['redis_us_per_msg'])}), against "
              f"{_us(big['us_per_msg'])} on {big['nodes']} nodes and {_us(two['us_per_msg'])} on {two['nodes']} nodes "
              f"at {_num(two['offered'])} msg/s. Where the control costs what the big deployment costs, the growth "
              "comes from each node's lower message rate (fixed costs of every wake-up, spread over fewer "
              "messages), not from the number of nodes a message touches.\n")

    drain = data.get("drain", [])
    if drain:
        w("## Drain storm\n")
        w("Three nodes and one Redis. The targets all sit on node 1; senders on nodes 2 and 3 send them acked "
          "300-byte messages (open loop) before, during and after the drain. Node 1 gets SIGTERM (defaults: "
          "no drain delay, no drain window, so every socket is closed with 1001 at once); each target "
          "reconnects the way signaling/static/client.js does: at once to node 2 or 3 with `resume=<last seq>` "
          "(`0-0` if nothing arrived yet), and after a failed attempt (HTTP 503, or a close before `welcome`) "
          "after its jittered back-off (500 ms doubling to 15 s) to the next node (the client doing what a load "
          "balancer would). Times are from the SIGTERM; a target still not back 60 s after it counts as not "
          "resumed. Lost: acked messages that never reached their target by the end. Unanswered: sent "
          "messages that got neither an ack nor an error within 10 s of the last send.\n")
        header = ["connections", "all resumed", "to last resume (s)", "to first close (s)", "resumed: true",
                  "sent", "acked (queued)", "refused", "unanswered", "lost", "duplicates", "node exit (s)",
                  "reconnect retries"]
        w(_table(header, ([_num(r["connections"]), "yes" if r["all_resumed"] else f"no ({r['resumed']:,})",
                           _num(r["seconds_to_all_resumed"], 2), _num(r["seconds_to_first_close"], 3),
                           _num(r["resumed_true"]), _num(r["sent"]), f"{r['acked']:,} ({r.get('queued_acks', 0):,})",
                           _num(r["refused"]), _num(r["unanswered"]), _num(r["lost"]), _num(r["duplicates"]),
                           _num(r["node_exit_seconds"], 2), _num(r["retries"])] for r in drain)))
        errs = [_errors(r) for r in drain if r.get("errors") or r.get("closes")]
        if errs:
            w(f"Errors and closes seen by the clients: {'; '.join(errs)}.\n")

    w("## Load generator ceiling\n")
    ref = _find(relay, REFERENCE, pairs=200)
    if ref and ref.get("loadgen_us_per_msg"):
        ceiling = 1e6 / ref["loadgen_us_per_msg"]
        w(f"Against the raw Node `ws` relay at P = 200 the generator used {ref['loadgen_cores']:.2f} cores for "
          f"{_num(ref['msgs_per_s'])} msg/s: **{_us(ref['loadgen_us_per_msg'])} µs of its own CPU per delivered "
          f"message, so its ceiling is about {_num(ceiling)} msg/s per core**. Each delivered message costs it one "
          "frame received and one sent (mostly the `writev` syscall on loopback), about what it costs the relay; "
          "on 2 cores the generator and the fastest servers therefore share the machine roughly evenly, which "
          "caps the fastest servers' msg/s (not their µs/msg).\n")
    bound = [r for rows in (relay, offer, sweep, scaling) for r in rows if r.get("loadgen_cores", 0) > 0.9]
    if bound:
        w("Runs where the generator used more than 0.9 of a core (its msg/s may be generator-bound): "
          + ", ".join(f"{r['server']} P={r['pairs']}" + (f" at {r['offered']:,.0f}" if r.get("offered") else "")
                      for r in bound) + ".\n")

    profiles = data.get("profile", [])
    if profiles:
        w("## Profile of our node: relay P = 200 (py-spy, 200 Hz, idle samples excluded)\n")
        w("Measured in separate runs (sampling slows the node; the figures above are without it). Raw collapsed "
          "stacks are in `profiles/` (load them in speedscope or inferno to see a flame graph). Own = time in the "
          "function itself; inclusive = time with everything it calls.\n")
        for row in profiles:
            files = [out / "profiles" / Path(p).name for p in row.get("profiles", [])]
            if files and all(f.exists() for f in files):  # summarise again: the summary may have changed
                row["hotspots"] = [summarise_profile(f) for f in files]
            for i, prof in enumerate(row.get("hotspots", [])):
                node = f", node {i + 1}" if len(row.get("hotspots", [])) > 1 else ""
                w(f"### {_label(row)}{node}: {prof['samples']:,} samples, {_num(row['msgs_per_s'])} msg/s "
                  f"while sampled\n")
                w("Own time by package:\n\n" + ", ".join(f"{name} {pct:.1f} %" for name, pct in prof["packages"])
                  + "\n")
                w(_table(["top functions (own time)", "%"], ([f"`{n}`", f"{p:.1f}"] for n, p in prof["own"])))
                w(_table(["our functions (inclusive)", "%"], ([f"`{n}`", f"{p:.1f}"] for n, p in prof["inclusive"])))
                if prof.get("inclusive_libraries"):
                    w(_table(["library functions (inclusive)", "%"],
                             ([f"`{n}`", f"{p:.1f}"] for n, p in prof["inclusive_libraries"])))

    failures = results.get("failures", [])
    if failures or notes:
        w("## Not run, failed, or not drawn\n")
        for f in failures:
            w(f"- {f['step']} ({f['scenario']}): {f['error'].splitlines()[0] if f['error'] else ''}")
        for n in notes:
            w(f"- {n}")
        w("")
    (out / "RESULTS.md").write_text("\n".join(md) + "\n")
