"""The benchmark suite keeps working: its quick mode runs end to end and writes its table.

`python -m bench --quick` drives the raw Node `ws` relay and one of our nodes (with
Redis) with the Node.js load generator for one second each, then writes RESULTS.md.
Benchmarks are not tests: this only checks that the suite runs and produces numbers.
Node.js, npm and redis-server are required, never skipped; the load generator's npm
packages are installed from bench/package-lock.json when bench/node_modules is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def test_bench_quick_run_writes_the_results_table(tmp_path: Path) -> None:
    for name in ("node", "npm", "redis-server"):
        assert _program(name), f"{name} is needed by the benchmark suite (see bench/README.md)"
    if not (BENCH / "node_modules").is_dir():
        installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
                                   cwd=BENCH, capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, f"npm ci in bench/ failed:\n{installed.stdout}\n{installed.stderr}"

    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--quiet", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-4000:]

    data = json.loads((out / "results.json").read_text())
    assert data["failures"] == []
    rows = {row["server"]: row for row in data["rows"]["relay"]}
    assert set(rows) == {"ws-relay", "ours-1node"}
    for row in rows.values():
        assert row["pairs"] == 1 and row["bytes"] == 300
        assert row["delivered"] > 0 and row["rtt_samples"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
        assert row["us_per_msg"] > 0 and row["server_cpu_s"] > 0
        assert row["errors"] == {}
    assert rows["ours-1node"]["redis_cpu_s"] > 0  # Redis is counted in our node's cost

    text = (out / "RESULTS.md").read_text()
    assert "| raw Node `ws` relay | " in text
    assert "| signaling, 1 node + Redis | " in text
    assert "| 1.00× |" in text  # the reference's own ratio
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latency_vs_load.png").stat().st_size > 0
        assert (out / "relay_cpu_per_msg.png").stat().st_size > 0
    else:  # plots need the `bench` extra; the table says so instead of leaving them out silently
        assert "plots not drawn: matplotlib is not installed" in text
