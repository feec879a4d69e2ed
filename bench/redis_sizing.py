"""Redis bytes per connected peer, per reconnecting peer and per room membership, measured
on a real node and a real redis-server (docs/CLUSTER.md, "Redis sizing").

    .venv/bin/python -m bench.redis_sizing [--peers 500]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import NodeProcess, RedisServer  # noqa: E402


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


async def settle(r: redis.Redis) -> int:
    await asyncio.sleep(1.0)
    return used(r)


async def main(peers: int) -> None:
    server = RedisServer().start()
    r = redis.Redis(port=server.port)
    workdir = Path("/tmp") / "signaling-sizing"
    workdir.mkdir(exist_ok=True)
    node = NodeProcess("--redis-url", server.url, "--grace", "60", "--rate", "1e6", "--burst", "1000000").start(workdir)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        await node.wait_ready()
        base = await settle(r)
        sockets = []
        for i in range(peers):
            ws = await http.ws_connect(f"{node.ws_base}/ws?peer=p{i}", heartbeat=None)
            await ws.receive(timeout=5)
            sockets.append(ws)
        connected = await settle(r)
        for i, ws in enumerate(sockets):  # rooms of 10, names of 24 characters
            await ws.send_json({"type": "join", "room": f"room-{i // 10:05d}-of-a-call-xx", "id": 1})
        for ws in sockets:
            while (await ws.receive_json(timeout=5))["type"] != "ack":
                pass
        joined = await settle(r)
        for ws in sockets:  # no close frame: each starts its grace
            ws._response.connection.transport.abort()  # noqa: SLF001
        reconnecting = await settle(r)
        rows = [("connected peer", (connected - base) / peers),
                ("room membership, rooms of 10 (both sets, and the peer-joined notices in inboxes)",
                 (joined - connected) / peers),
                ("reconnecting peer, empty inbox (vs connected)", (reconnecting - joined) / peers)]
        print(f"| measured with {peers} peers | bytes each |\n| --- | --- |")
        for name, value in rows:
            print(f"| {name} | {value:.0f} |")
    finally:
        await http.close()
        node.stop()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=500)
    asyncio.run(main(parser.parse_args().peers))
