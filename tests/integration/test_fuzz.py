"""Property-based: arbitrary JSON values and bytes thrown at a running node never crash it,
always get a protocol error, and never disturb an unrelated pair on the same node."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from signaling import protocol
from signaling.app import create_app
from signaling.config import Settings
from support import free_port

CODES = {c.value for c in protocol.ErrorCode}

json_values = strategies.json_values(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    width=5, key_size=10, max_leaves=20,
)
# objects that look like protocol messages: known and unknown types, fields of any type
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(protocol.CLIENT_TYPES) + ["welcome", "ack", "", "OFFER"]) | json_values},
    optional={k: json_values | st.sampled_from(["bob", "room-1", "x" * 65, ""])
              for k in ("to", "room", "id", "offer", "answer", "candidate", "data", "reason", "from", "seq")},
)


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    """One real node in a thread of its own, shared by every example."""
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    settings = Settings(port=port, node_id="fuzz", rate=1e9, burst=10**9, abuse_strikes=10**9).check()
    runner = web.AppRunner(create_app(settings))

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def _exchange(base: str, frames: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send each frame from a fuzzing peer while a pair chats; return the fuzzer's first replies."""
    async with aiohttp.ClientSession() as http:
        fuzzer = await http.ws_connect(f"{base}/ws", params={"peer": "fuzzer"})
        # the pair's ids are ones the fuzzer never addresses
        alice = await http.ws_connect(f"{base}/ws", params={"peer": "pair-a"})
        bob = await http.ws_connect(f"{base}/ws", params={"peer": "pair-b"})
        for ws in (fuzzer, alice, bob):
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        replies = []
        for i, (kind, frame) in enumerate(frames):
            if kind == "binary":
                await fuzzer.send_bytes(frame)
            else:
                await fuzzer.send_str(frame)
            # a marker ping after each frame: everything before its pong answers the frame
            await fuzzer.send_str('{"type":"ping","id":"mark"}')
            answers = []
            while True:
                msg = await fuzzer.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.TEXT, f"node closed the fuzzer: {msg}"
                answer = json.loads(msg.data)
                if answer == {"type": "ack", "id": "mark"}:
                    break
                answers.append(answer)
            assert answers and answers[-1] == {"type": "pong"}
            replies.append(answers[0] if len(answers) >= 2 else None)  # a valid relay without id: silence
            await alice.send_json({"type": "message", "to": "pair-b", "data": i, "id": i})
            assert await alice.receive_json(timeout=5) == {"type": "ack", "id": i}
            got = await bob.receive_json(timeout=5)
            assert (got["type"], got["from"], got["data"]) == ("message", "pair-a", i)
        for ws in (fuzzer, alice, bob):
            await ws.close()
        return replies


def _valid(frame: str) -> bool:
    try:
        protocol.parse(frame)
    except protocol.ProtocolError:
        return False
    return True


def _check(frame: str, reply: dict[str, Any] | None) -> None:
    if _valid(frame):
        assert reply is None or reply["type"] in ("ack", "error", "pong", "joined", "left")
    else:
        assert reply is not None, f"no error for {frame!r}"
        assert reply["type"] == "error" and reply["code"] in CODES and reply["message"]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(json_values, min_size=1, max_size=4))
def test_arbitrary_json_values(node_url, values):
    frames = [json.dumps(v) for v in values]
    replies = asyncio.run(_exchange(node_url, [("text", f) for f in frames]))
    for frame, reply in zip(frames, replies, strict=True):
        _check(frame, reply)


@FUZZ
@given(st.lists(message_like, min_size=1, max_size=4))
def test_message_shaped_objects(node_url, objects):
    frames = [json.dumps(o) for o in objects]
    replies = asyncio.run(_exchange(node_url, [("text", f) for f in frames]))
    for frame, reply in zip(frames, replies, strict=True):
        _check(frame, reply)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["text", "binary"]), st.binary(max_size=200)), min_size=1, max_size=4))
def test_arbitrary_bytes_as_text_and_binary_frames(node_url, frames):
    prepared = [(kind, data if kind == "binary" else data.decode("utf-8", "replace")) for kind, data in frames]
    replies = asyncio.run(_exchange(node_url, prepared))
    for (kind, frame), reply in zip(prepared, replies, strict=True):
        if kind == "binary":
            assert reply is not None and (reply["type"], reply["code"]) == ("error", "bad-message")
        else:
            _check(frame, reply)
