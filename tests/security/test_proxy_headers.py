"""Behind the project's nginx, a node sees the real client address, the original Host and
X-Forwarded-Proto, whatever forwarding headers the client sends (issue 11, item 8).

The client connects from 127.0.0.2, nginx and the node listen on 127.0.0.1, and the node
trusts only 127.0.0.1 as a proxy: so a client address the node logs other than 127.0.0.2
came from a header the client forged."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest

from cluster_support import make_cert
from signaling.launcher import LocalNginx, local_values
from support import NodeProcess, free_port

pytestmark = pytest.mark.timeout(60)

CLIENT_ADDRESS = "127.0.0.2"  # not nginx's address (127.0.0.1), which the node trusts
FORGED = "6.6.6.6"
TIMEOUT = aiohttp.ClientTimeout(total=10)


def access_records(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's JSON access-log records (lines with a path and a status)."""
    records = []
    for line in node.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "path" in record and "status" in record:
            records.append(record)
    return records


async def record_for(node: NodeProcess, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access record of `path` (a WebSocket's is written once it has closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in access_records(node) if r["path"] == path]
        if found:
            (record,) = found
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access record for {path}:\n{node.log()}")


@pytest.fixture
async def nginx_in_front(tmp_path) -> AsyncIterator[dict[str, Any]]:
    """The launcher's rendering (HTTP and HTTPS servers) in front of one real node that
    trusts 127.0.0.1, i.e. nginx, as its proxy; everything stopped by PID afterwards."""
    node = NodeProcess("--node-id", "solo", "--trusted-proxies", "127.0.0.1", "--log-format", "json").start(tmp_path)
    nginx = None
    try:
        await node.wait_ready()
        cert, key = make_cert(tmp_path)
        http_port, https_port = free_port(), free_port()
        values = local_values(f"127.0.0.1:{http_port}", [f"127.0.0.1:{node.port}"],
                              listen_tls=f"127.0.0.1:{https_port}", cert=str(cert), key=str(key))
        nginx = LocalNginx(tmp_path / "nginx")
        nginx.render(values, tls=True)
        nginx.start()
        trust = ssl.create_default_context(cafile=str(cert))
        bases = {"http": f"127.0.0.1:{http_port}", "https": f"127.0.0.1:{https_port}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for scheme, base in bases.items():
                deadline = time.monotonic() + 10
                while True:
                    assert nginx.proc is not None and nginx.proc.poll() is None, nginx.log()
                    try:
                        # /readyz, not /healthz or /: the node logs every request, and the
                        # tests read the access records of those two
                        async with http.get(f"{scheme}://{base}/readyz", ssl=trust) as r:
                            if r.status == 200:
                                break
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                    assert time.monotonic() < deadline, f"nginx did not answer on {scheme}://{base}:\n{nginx.log()}"
                    await asyncio.sleep(0.05)
        yield {"bases": bases, "ssl": trust, "node": node}
    finally:
        if nginx is not None:
            await nginx.stop()
        node.stop()


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("forged", [
    {"X-Forwarded-For": FORGED},
    {"X-Real-IP": FORGED},
    {"X-Forwarded-For": FORGED, "X-Real-IP": FORGED},
], ids=["x-forwarded-for", "x-real-ip", "both"])
async def test_the_node_logs_the_real_client_host_and_scheme_whatever_the_client_forges(nginx_in_front, scheme, forged):
    e = nginx_in_front
    base = e["bases"][scheme]
    headers = {"Host": "example.test", "X-Forwarded-Proto": "gopher", **forged}
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:
        ws_scheme = "wss" if scheme == "https" else "ws"
        async with http.ws_connect(f"{ws_scheme}://{base}/ws?peer=alice", headers=headers, ssl=e["ssl"]) as ws:
            welcome = await ws.receive_json(timeout=5)
            assert welcome["type"] == "welcome"
        for path in ("/healthz", "/"):
            async with http.get(f"{scheme}://{base}{path}", headers=headers, ssl=e["ssl"]) as r:
                assert r.status == 200, path

    node = e["node"]
    for path, status in (("/ws", 101), ("/healthz", 200), ("/", 200)):
        record = await record_for(node, path)
        assert record["status"] == status
        assert record["remote"] == CLIENT_ADDRESS, record  # never the forged address
        assert record["host"] == "example.test", record  # the client's Host, not the upstream's name
        assert record["forwarded_proto"] == scheme, record  # nginx's scheme, not the client's "gopher"
    assert FORGED not in node.log()
