"""The node as a real process: `signaling serve`, signals, TLS, logs, `signaling token`."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys

import aiohttp
import pytest

from cluster_support import make_cert
from support import ROOT, SECRET, Client


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_readyz_503_then_1001_then_exit(processes, sig):
    node = processes("--node-id", "p1", "--drain-window", "1.5")
    await node.wait_ready()
    clients = [await Client.connect(node.ws_base, peer=p) for p in ("a", "b", "c")]
    try:
        node.signal(sig)
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(0.2)
            async with http.get(f"{node.base}/readyz") as r:
                assert r.status == 503  # out of the load balancer while it drains
        codes = [await c.closed(timeout=10) for c in clients]
        assert codes == [1001, 1001, 1001]
        assert await asyncio.to_thread(node.proc.wait, 15) == 0
    finally:
        for c in clients:
            await c.close()


async def test_sigusr1_logs_every_task_and_the_node_carries_on(processes):
    node = processes("--node-id", "p1")
    await node.wait_ready()
    client = await Client.connect(node.ws_base, peer="a")
    try:
        node.signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        dump = node.log().partition("asyncio tasks (SIGUSR1)")[2]
        assert "signaling/peer_socket.py" in dump and " in run" in dump  # the session, with its stack
        await client.send(type="ping")
        await client.expect("pong")
    finally:
        await client.close()
    node.signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.proc.wait, 15) == 0
    assert "stopped (drain" in node.log()


async def test_open_mode_warns_loudly_at_start(processes):
    node = processes()
    await node.wait_ready()
    assert "OPEN MODE" in node.log()


async def test_tokens_never_reach_the_logs(processes):
    node = processes("--log-level", "debug", "--log-format", "json", env={"SIGNALING_JWT_SECRET": SECRET})
    await node.wait_ready()
    token = subprocess.run([sys.executable, "-m", "signaling", "token", "alice", "--ttl", "60"], cwd=ROOT,
                           env={**node.env}, capture_output=True, text=True, check=True).stdout.strip()
    alice = await Client.connect(node.ws_base, token=token)
    assert alice.peer == "alice"
    bad = token[:-4] + "AAAA"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await Client.connect(node.ws_base, token=bad)
    assert refused.value.status == 401
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.base}/readyz?token={token}", headers={"Authorization": f"Bearer {token}"}):
            pass
    await alice.close()
    node.stop()
    log = node.log()
    assert "/ws" in log and "/readyz" in log  # the requests were logged...
    for secret in (token, bad, SECRET, token.split(".")[2]):
        assert secret not in log  # ...without the token
    for line in log.splitlines():
        json.loads(line)  # --log-format json: one object per line


async def test_serves_wss_directly_with_tls_cert_and_key(processes, tmp_path):
    make_cert(tmp_path)  # cert.pem, key.pem: self-signed for 127.0.0.1 and localhost
    node = processes("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    await node.wait_ready()
    trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"wss://127.0.0.1:{node.port}/ws?peer=alice", ssl=trust) as ws:
            welcome = await ws.receive_json(timeout=5)
            assert welcome["type"] == "welcome" and welcome["peer"] == "alice"
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=5) == {"type": "pong"}
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{node.port}/healthz"):
                pass  # plain HTTP is not served on a TLS port


def test_configuration_errors_exit_2_with_a_message():
    result = subprocess.run([sys.executable, "-m", "signaling", "serve", "--tls-cert", "/nope"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--tls-key" in result.stderr
    result = subprocess.run([sys.executable, "-m", "signaling", "serve", "--jwt-secret", "short"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "32 bytes" in result.stderr


def test_token_command_needs_a_secret_and_honours_rooms():
    env = {"PATH": "/usr/bin:/bin", "SIGNALING_JWT_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "signaling", "token", "bob", "--room", "team-*", "--ttl", "30"],
                         cwd=ROOT, capture_output=True, text=True, env=env, check=True).stdout.strip()
    import jwt

    claims = jwt.decode(out, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["rooms"] == ["team-*"] and claims["exp"] - claims["iat"] == 30
    failed = subprocess.run([sys.executable, "-m", "signaling", "token", "bob"], cwd=ROOT, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin"})
    assert failed.returncode == 2
