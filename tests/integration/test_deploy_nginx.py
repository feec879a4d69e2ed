"""The shipped nginx config: `nginx -t` on it as the compose stack renders it and as the
launcher renders it, and the production rendering (TLS, redirect, limits, proxy headers)
running for real in front of a node."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import aiohttp
import pytest
import yaml

from cluster_support import make_cert
from nginx_support import nginx_in_front
from signaling.launcher import find_program, local_values, nginx_test, render_nginx
from support import ROOT, free_port


def nginx_version() -> tuple[int, ...]:
    out = subprocess.run([find_program("nginx"), "-v"], capture_output=True, text=True).stderr
    return tuple(int(x) for x in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups())


def compose_nginx_values() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: str(v) for k, v in compose["services"]["nginx"]["environment"].items()}


def rendered_files(prefix):
    return [p for p in (prefix / "conf.d").rglob("*.conf")]


def test_nginx_t_passes_on_the_production_config_as_compose_renders_it(tmp_path):
    cert, key = make_cert(tmp_path)
    values = compose_nginx_values()
    values["NGINX_REDIRECT_HTTPS"] = "1"  # the compose default (`${ENDPOINT_REDIRECT_HTTPS:-1}`)
    values.update(NGINX_TLS_CERT=str(cert), NGINX_TLS_KEY=str(key))
    values.update(NGINX_LISTEN_HTTP=str(free_port()), NGINX_LISTEN_HTTPS=str(free_port()))
    if nginx_version() < (1, 27, 3):
        # `server ... resolve` in an upstream is open-source nginx 1.27.3+ (the compose image
        # is 1.28); this one is older, and without `resolve` the name must resolve at load
        assert "signaling:8080 resolve" in values["NGINX_UPSTREAM_SERVERS"]
        values["NGINX_UPSTREAM_SERVERS"] = values["NGINX_UPSTREAM_SERVERS"].replace("signaling:8080 resolve",
                                                                                    "127.0.0.1:8080")
    main = render_nginx(tmp_path / "prod", values, tls=True)
    for path in rendered_files(tmp_path / "prod"):
        assert "${" not in path.read_text(), path
    assert {p.name for p in rendered_files(tmp_path / "prod")} == {
        "signaling.conf", "signaling-tls.conf", "signaling-locations.conf"}
    result = nginx_test(find_program("nginx"), main)
    assert result.returncode == 0, result.stderr
    assert "[emerg]" not in result.stderr


@pytest.mark.parametrize("tls", [False, True])
def test_nginx_t_passes_on_the_launcher_config(tmp_path, tls):
    cert, key = make_cert(tmp_path)
    values = local_values(f"127.0.0.1:{free_port()}", ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
                          listen_tls=f"127.0.0.1:{free_port()}" if tls else "", cert=str(cert) if tls else "",
                          key=str(key) if tls else "")
    main = render_nginx(tmp_path / "local", values, tls=tls)
    assert (tmp_path / "local" / "conf.d" / "signaling-tls.conf").exists() == tls
    upstream = (tmp_path / "local" / "conf.d" / "signaling.conf").read_text()
    assert upstream.count("server 127.0.0.1:") == 3 and "least_conn;" in upstream
    result = nginx_test(find_program("nginx"), main)
    assert result.returncode == 0, result.stderr


@pytest.fixture
async def production_nginx(tmp_path):
    """The production rendering (TLS, HTTP redirect, low limits) in front of one real node."""
    async with nginx_in_front(tmp_path, redirect=True, limit_conn=2, limit_rate="100r/s", limit_burst=5) as front:
        yield front


async def test_production_config_terminates_tls_redirects_http_and_keeps_tokens_out_of_logs(production_nginx):
    e = production_nginx
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"  # shaped like a JWT
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{e['http']}/ws?peer=alice&token={token}", allow_redirects=False) as r:
            assert r.status == 308
            assert r.headers["Location"].startswith("https://127.0.0.1/ws?")
        async with http.get(f"{e['http']}/healthz") as r:  # health checks are never redirected
            assert r.status == 200 and (await r.json())["node"] == "solo"
        async with http.get(f"{e['https']}/metrics", ssl=e["ssl"]) as r:
            assert r.status == 404  # per-node metrics are not for the public
        async with http.get(f"{e['https']}/healthz", ssl=e["ssl"]) as r:
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        async with http.ws_connect(f"{e['wss']}/ws?peer=alice&token={token}", ssl=e["ssl"]) as ws:
            welcome = await ws.receive_json(timeout=5)
            assert welcome["type"] == "welcome" and welcome["node"] == "solo"
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=5) == {"type": "pong"}
        async with http.get(f"{e['https']}/healthz", ssl=e["ssl"], headers={"X-Forwarded-For": "198.51.100.7"}) as r:
            assert r.status == 200
    await e["nginx"].stop()
    logs = e["nginx"].log()
    assert '"path":"/ws"' in logs and token not in logs and "c2VjcmV0" not in logs
    node_log = e["node"].log()
    # nginx replaced the client's X-Forwarded-For with the address it saw: the node trusts
    # nginx (127.0.0.1), and even a client on a trusted address cannot name another one
    assert "127.0.0.1 GET /healthz 200" in node_log and "198.51.100.7" not in node_log
    assert "127.0.0.1 GET /ws 101" in node_log


async def test_production_config_limits_connections_and_handshakes_per_address(production_nginx):
    e = production_nginx
    async with aiohttp.ClientSession() as http:
        open_sockets = [await http.ws_connect(f"{e['wss']}/ws?peer=p{i}", ssl=e["ssl"]) for i in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{e['wss']}/ws?peer=p3", ssl=e["ssl"])
        assert refused.value.status == 429  # limit_conn: 2 open WebSockets per address
        for ws in open_sockets:
            await ws.close()
        await asyncio.sleep(0.2)

        async def handshake() -> tuple[int, str, str | None]:
            async with http.get(f"{e['https']}/ws", ssl=e["ssl"]) as r:
                return r.status, await r.text(), r.headers.get("Retry-After")

        results = await asyncio.gather(*(handshake() for _ in range(40)))
        statuses = [status for status, _, _ in results]
        assert statuses.count(429) > 0 and statuses.count(426) > 0, statuses  # limit_req: burst 5, then 100 r/s
        _, body, retry_after = next(r for r in results if r[0] == 429)
        assert json.loads(body)["error"] == "rate-limited" and retry_after == "1"
        await asyncio.sleep(0.2)
        async with http.get(f"{e['https']}/healthz", ssl=e["ssl"]) as r:
            assert r.status == 200  # /healthz is not rate limited
