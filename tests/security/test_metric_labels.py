"""No client-chosen value becomes a metric label unbounded (issue 11, case 6): 40
clients closing with 40 different codes of their own make one `other` series."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from support import Client


async def closes_series(base: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
    return [line for line in text.splitlines() if line.startswith("signaling_closes_total{")]


async def test_close_codes_a_client_picks_do_not_become_label_values(processes):
    node = processes()
    await node.wait_ready()
    for code in range(4000, 4040):
        client = await Client.connect(node.ws_base)
        await client.ws.close(code=code)
        await client.http.close()
    deadline = time.monotonic() + 5
    while 'signaling_closes_total{code="other"} 40.0' not in (series := await closes_series(node.base)):
        assert time.monotonic() < deadline, f"40 closes with codes of the client's own not counted as other: {series}"
        await asyncio.sleep(0.05)
    assert len(series) == 1, series
