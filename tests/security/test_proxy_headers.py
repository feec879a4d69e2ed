"""Behind the project's nginx, a node sees the real client address, the original Host and
X-Forwarded-Proto, whatever forwarding headers the client sends (issue 11, item 8).

The client connects from 127.0.0.2, nginx and the node listen on 127.0.0.1, and the node
trusts only 127.0.0.1 as a proxy: so a client address the node logs other than 127.0.0.2
came from a header the client forged."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nginx_support import nginx_in_front as nginx_in_front_of
from support import NodeProcess

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
    async with nginx_in_front_of(tmp_path, "--log-format", "json") as front:
        yield front


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
