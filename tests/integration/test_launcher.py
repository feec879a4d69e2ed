"""`signaling cluster` and its Python API: everything starts, answers, and stops by PID."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cluster_support import make_cert
from signaling.launcher import LaunchError, LocalCluster, render_nginx, render_template
from support import ROOT, Client


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def gone(pids, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        await asyncio.sleep(0.05)
    return [p for p in pids if alive(p)]


async def start_cli(*args: str, cwd: Path = ROOT,
                    env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "signaling", "cluster", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return proc, lines
    proc.kill()
    raise AssertionError("no endpoint printed:\n" + "\n".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_starts_redis_nodes_and_nginx_and_stops_them_all_on_a_signal(sig):
    proc, lines = await start_cli("--nodes", "2", "--port", "0", "--", "--rate", "500")
    try:
        text = "\n".join(lines)
        endpoint = re.search(r"^endpoint: (ws://127\.0\.0\.1:\d+)/ws$", text, re.M).group(1)
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 4, text  # redis, two nodes, nginx
        assert all(alive(p) for p in pids)
        alice = await Client.connect(endpoint, peer="alice")
        bob = await Client.connect(endpoint, peer="bob")
        assert {alice.welcome["node"], bob.welcome["node"]} == {"node-1", "node-2"}
        await alice.send(type="message", to="bob", data="through nginx", id=1)
        await alice.expect("ack", id=1)
        await bob.expect("message", data="through nginx")
        proc.send_signal(sig)
        assert await alice.closed(timeout=10) == 1001  # the nodes drained
        rest = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest[0]
        assert await gone(pids) == []
        await alice.close()
        await bob.close()
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_cli_children_die_with_a_killed_launcher():
    proc, lines = await start_cli("--nodes", "1", "--port", "0")
    pids = [int(p) for p in re.findall(r"pid (\d+)", "\n".join(lines))]
    proc.kill()  # no chance to clean up: the children's parent-death signal does it
    proc.wait()
    assert await gone(pids, 15) == []


def test_cli_reports_a_bad_configuration():
    result = subprocess.run([sys.executable, "-m", "signaling", "cluster", "--nodes", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "at least one node" in result.stderr


async def test_api_node_drain_start_and_stop_by_pid(tmp_path):
    cluster = LocalCluster(2, workdir=tmp_path / "c")
    async with cluster:
        pids = cluster.pids()
        assert set(pids) == {"node-1", "node-2", "nginx", "redis"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{cluster.http_endpoint}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{cluster.http_endpoint}/") as r:
                assert r.status == 200 and "text/html" in r.headers["Content-Type"]  # the demo page
        node = cluster.nodes[0]
        first_pid = node.pid
        assert await node.drain() == 0 and not node.running
        await node.start()
        assert node.running and node.pid != first_pid
        client = await Client.connect(node.ws_base, peer="direct")
        assert client.welcome["node"] == "node-1"
        await client.close()
    assert await gone(list(pids.values()) + [node.pid]) == []
    assert (tmp_path / "c" / "node-1.log").exists()  # a given workdir is kept, with the logs


async def test_api_joins_an_existing_redis_without_starting_one(redis_server, key_prefix, tmp_path):
    async with LocalCluster(1, redis_url=redis_server.url, key_prefix=key_prefix, workdir=tmp_path) as cluster:
        assert "redis" not in cluster.pids() and cluster.redis_url == redis_server.url
        client = await Client.connect(cluster.endpoint, peer="solo")
        assert client.welcome["node"] == "node-1"
        await client.close()


async def test_api_serves_wss_with_a_certificate(tmp_path):
    cert, key = make_cert(tmp_path)
    async with LocalCluster(1, workdir=tmp_path / "c", tls_cert=str(cert), tls_key=str(key)) as cluster:
        assert cluster.tls_endpoint.startswith("wss://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{cluster.tls_endpoint}/ws?peer=secure", ssl=trust) as ws:
                welcome = await ws.receive_json(timeout=5)
                assert welcome["peer"] == "secure" and welcome["node"] == "node-1"
            async with http.get(f"{cluster.http_endpoint}/healthz") as r:
                assert r.status == 200  # plain HTTP is served too: the launcher renders no redirect


async def test_api_cleans_up_when_start_fails(tmp_path):
    cluster = LocalCluster(1, workdir=tmp_path, node_args=["--log-format", "yaml"])  # the node refuses to start
    with pytest.raises(LaunchError, match="log-format"):
        await cluster.start()
    assert cluster.pids() == {}
    assert cluster.redis is not None and cluster.redis.proc.poll() is not None


def test_render_refuses_missing_variables_and_missing_templates(tmp_path):
    assert render_template("listen ${A}; set $host x;", {"A": "80"}) == "listen 80; set $host x;"
    with pytest.raises(LaunchError, match="B"):
        render_template("${A} ${B}", {"A": "1"})
    with pytest.raises(LaunchError, match="templates"):
        render_nginx(tmp_path / "out", {}, source=tmp_path / "no-such-dir")


@pytest.mark.slow
async def test_cli_runs_from_an_installed_wheel_outside_the_checkout(tmp_path):
    # the nginx templates ship inside the package (signaling/nginx): nothing is read from the checkout
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    site = tmp_path / "site"
    wheel = next((tmp_path / "dist").glob("signaling-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import signaling.launcher as l; print(l.__file__, l.NGINX_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    proc, lines = await start_cli("--nodes", "2", "--port", "0", cwd=tmp_path, env=env)
    try:
        text = "\n".join(lines)
        endpoint = re.search(r"^endpoint: (ws://127\.0\.0\.1:\d+)/ws$", text, re.M).group(1)
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        alice = await Client.connect(endpoint, peer="alice")
        bob = await Client.connect(endpoint, peer="bob")
        await alice.send(type="message", to="bob", data="from a wheel", id=1)
        await alice.expect("ack", id=1)
        await bob.expect("message", data="from a wheel")
        await alice.close()
        await bob.close()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, rest
        assert await gone(pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
