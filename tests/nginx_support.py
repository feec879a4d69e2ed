"""The launcher's nginx rendering (HTTP and HTTPS servers, a private CA) in front of one
real node that trusts 127.0.0.1, i.e. nginx, as its proxy; stopped by PID afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from cluster_support import make_cert
from signaling.launcher import LocalNginx, local_values
from support import NodeProcess, free_port


@contextlib.asynccontextmanager
async def nginx_in_front(tmp_path: Path, *node_args: str, redirect: bool = False,
                         **limits: Any) -> AsyncIterator[dict[str, Any]]:
    """Yields {"http", "https", "wss": base URLs, "bases": {scheme: host:port}, "ssl": the
    client context trusting the CA, "node", "nginx"}. `limits`: local_values' per-address
    limits; `redirect`: HTTP answers with a redirect to HTTPS, as in production."""
    node = NodeProcess("--node-id", "solo", "--trusted-proxies", "127.0.0.1", *node_args).start(tmp_path)
    nginx = None
    try:
        await node.wait_ready()
        cert, key = make_cert(tmp_path)
        http_port, https_port = free_port(), free_port()
        values = local_values(f"127.0.0.1:{http_port}", [f"127.0.0.1:{node.port}"],
                              listen_tls=f"127.0.0.1:{https_port}", cert=str(cert), key=str(key), **limits)
        if redirect:
            values["NGINX_REDIRECT_HTTPS"] = "1"
        nginx = LocalNginx(tmp_path / "nginx")
        nginx.render(values, tls=True)
        nginx.start()
        trust = ssl.create_default_context(cafile=str(cert))
        bases = {"http": f"127.0.0.1:{http_port}", "https": f"127.0.0.1:{https_port}"}
        probed = ["https"] if redirect else ["http", "https"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for scheme in probed:
                deadline = time.monotonic() + 10
                while True:
                    assert nginx.proc is not None and nginx.proc.poll() is None, nginx.log()
                    try:
                        # /readyz: tests read the node's access records of /healthz and /
                        async with http.get(f"{scheme}://{bases[scheme]}/readyz", ssl=trust) as r:
                            if r.status == 200:
                                break
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    assert time.monotonic() < deadline, f"nginx did not answer on {scheme}://{bases[scheme]}:\n{nginx.log()}"
                    await asyncio.sleep(0.05)
        yield {"http": f"http://{bases['http']}", "https": f"https://{bases['https']}",
               "wss": f"wss://{bases['https']}", "bases": bases, "ssl": trust, "node": node, "nginx": nginx}
    finally:
        if nginx is not None:
            await nginx.stop()
        node.stop()
