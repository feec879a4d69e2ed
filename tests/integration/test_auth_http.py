"""Auth before the upgrade (HTTP 401 + JSON), the HTTP endpoints, ICE servers in `welcome`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling import auth
from support import SECRET


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def _refused(base: str, *, params=None, headers=None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base.replace("ws", "http", 1) + "/ws", params=params, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(), **(headers or {}),
        }) as r:
            body = await r.json()
            assert r.status != 101
            return r.status, body


@pytest.fixture
async def jwt_node(make_node):
    return await make_node(jwt_secret=SECRET, jwt_audience="signaling", jwt_issuer="https://auth.example")


def _token(**overrides):
    now = int(time.time())
    claims = {"sub": "alice", "exp": now + 60, "iat": now, "aud": "signaling", "iss": "https://auth.example"}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


async def test_valid_token_in_query_and_in_bearer_header(jwt_node, connect):
    alice = await connect(jwt_node, token=_token())
    assert alice.peer == "alice"
    bob = await connect(jwt_node, headers={"Authorization": f"Bearer {_token(sub='bob')}"})
    assert bob.peer == "bob"


async def test_the_token_decides_the_peer_id_not_the_query(jwt_node, connect):
    alice = await connect(jwt_node, token=_token(), peer="mallory")
    assert alice.peer == "alice"


def _unsigned(**claims) -> str:
    return _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."


# tokens are made when the test runs (a factory each): made at collection, the valid
# parts of them would have expired by the time a long suite reaches this file
@pytest.mark.parametrize(("name", "make", "error"), [
    ("missing", lambda: None, "missing-token"),
    ("expired", lambda: _token(exp=int(time.time()) - 60), "token-expired"),
    ("not yet valid", lambda: _token(nbf=int(time.time()) + 600), "invalid-token"),
    ("wrong signature", lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60, "aud": "signaling",
                                            "iss": "https://auth.example"},
                                           "another-secret-of-at-least-32-bytes!!", algorithm="HS256"),
     "invalid-token"),
    ("alg none", lambda: _unsigned(sub="alice", exp=int(time.time()) + 60, aud="signaling",
                                   iss="https://auth.example"), "invalid-token"),
    ("wrong aud", lambda: _token(aud="someone-else"), "invalid-token"),
    ("wrong iss", lambda: _token(iss="https://evil.example"), "invalid-token"),
    ("no exp", lambda: _token(exp=None), "invalid-token"),
    ("bad sub", lambda: _token(sub="not a peer id"), "invalid-token"),
    ("bad rooms", lambda: _token(rooms="lobby"), "invalid-token"),
    ("garbage", lambda: "not.a.jwt", "invalid-token"),
], ids=lambda v: v if isinstance(v, str) else "")
async def test_rejected_tokens_get_401_json_before_the_upgrade(jwt_node, name, make, error):
    token = make()
    status, body = await _refused(jwt_node, params={"token": token} if token else None)
    assert status == 401
    assert body["error"] == error and body["message"]


async def test_public_key_modes_and_algorithm_confusion(make_node, connect, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        path = tmp_path / f"{alg}.pem"
        path.write_bytes(pem)
        node = await make_node(jwt_public_key=str(path), jwt_audience="signaling")
        claims = {"sub": "alice", "exp": int(time.time()) + 60, "aud": "signaling"}
        alice = await connect(node, token=jwt.encode(claims, key, algorithm=alg))
        assert alice.peer == "alice"
        # signed by the same identity provider for another service: refused
        other = jwt.encode({**claims, "aud": "billing"}, key, algorithm=alg)
        status, body = await _refused(node, params={"token": other})
        assert (status, body["error"]) == (401, "invalid-token")
        # HS256 signed with the public key as the HMAC secret: the classic confusion attack
        forged = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64(claims)
        sig = hmac.new(pem, forged.encode(), hashlib.sha256).digest()
        forged += "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        status, body = await _refused(node, params={"token": forged})
        assert (status, body["error"]) == (401, "invalid-token")
        status, _ = await _refused(node, params={"token": jwt.encode(claims, SECRET, algorithm="HS256")})
        assert status == 401


async def test_open_mode_refuses_a_bad_peer_id(node):
    status, body = await _refused(node, params={"peer": "spaces are not allowed"})
    assert (status, body["error"]) == (400, "bad-request")


async def test_max_connections_answers_503_before_the_upgrade(make_node, connect):
    node = await make_node(max_connections=2)
    await connect(node, peer="a")
    await connect(node, peer="b")
    status, body = await _refused(node, params={"peer": "c"})
    assert (status, body["error"]) == (503, "unavailable")


async def test_healthz_readyz_and_draining(make_node, connect):
    node = await make_node()
    http_base = node.replace("ws", "http", 1)
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(http_base + path) as r:
                assert r.status == 200
        await make_node.nodes[node].drain()
        async with http.get(http_base + "/readyz") as r:
            assert r.status == 503 and (await r.json())["message"] == "draining"
        async with http.get(http_base + "/healthz") as r:
            assert r.status == 200  # alive, just not taking new peers
    status, _ = await _refused(node, params={"peer": "late"})
    assert status == 503


async def test_metrics_in_prometheus_text_format(node, connect):
    alice, bob = await connect(node, peer="alice"), await connect(node, peer="bob")
    await alice.send(type="offer", to="bob", offer={"type": "offer", "sdp": "x"}, id=1)
    await alice.expect("ack")
    await bob.expect("offer")
    await alice.send_raw("junk")
    await alice.expect("error")
    async with aiohttp.ClientSession() as http:
        async with http.get(node.replace("ws", "http", 1) + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    assert "signaling_connections 2.0" in text
    assert 'signaling_messages_in_total{type="offer"} 1.0' in text
    assert 'signaling_errors_total{code="bad-json"} 1.0' in text
    assert 'signaling_messages_out_total{type="relayed"} 1.0' in text
    for name in ("signaling_bus_publish_latency_seconds_bucket", "signaling_bus_reconnects_total"):
        assert name in text


async def test_unknown_paths_and_plain_http_get_json_errors(node):
    async with aiohttp.ClientSession() as http:
        async with http.get(node.replace("ws", "http", 1) + "/nope") as r:
            assert r.status == 404 and (await r.json())["error"] == "not-found"
        async with http.get(node.replace("ws", "http", 1) + "/ws") as r:
            assert r.status == 426 and (await r.json())["error"] == "upgrade-required"


async def test_static_ice_servers_and_turn_rest_credentials(make_node, connect):
    stun = [{"urls": "stun:stun.example.org:3478"}]
    node = await make_node(ice_servers=json.dumps(stun), turn_urls=["turn:turn.example.org:3478?transport=udp"],
                           turn_secret="turn-shared-secret", turn_ttl=600)
    alice = await connect(node, peer="alice")
    servers = alice.welcome["iceServers"]
    assert servers[0] == stun[0]
    turn = servers[1]
    expiry, peer = turn["username"].split(":")
    assert peer == "alice" and abs(int(expiry) - (time.time() + 600)) < 5
    expected = base64.b64encode(hmac.new(b"turn-shared-secret", turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]


async def test_minted_token_round_trip(make_node, connect):
    node = await make_node(jwt_secret=SECRET)
    alice = await connect(node, token=auth.mint(SECRET, "alice", ttl=30))
    assert alice.peer == "alice"
