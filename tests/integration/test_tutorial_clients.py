"""Two clients in the classic Node.js tutorial style complete an exchange unchanged.

They only know `{type: 'offer', offer, from, to}` and friends: they ignore frames
they do not understand (`welcome`, `seq`), answer whoever sent the offer (`from`),
and trickle candidates until a `null` end-of-candidates.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

SDP_OFFER = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
SDP_ANSWER = SDP_OFFER.replace("4611731400430051336", "1")
CANDIDATES = [f"candidate:{i} 1 udp 2122260223 198.18.0.{i} 5000{i} typ host" for i in range(1, 4)]


class TutorialPeer:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> None:
        self.ws, self.name = ws, name
        self.remote_description = None
        self.remote_candidates: list = []
        self.done = asyncio.Event()

    def send(self, message: dict) -> asyncio.Future:
        return asyncio.ensure_future(self.ws.send_str(json.dumps(message)))

    async def call(self, other: str) -> None:
        await self.send({"type": "offer", "offer": {"type": "offer", "sdp": SDP_OFFER}, "to": other})
        for c in CANDIDATES:
            await self.send({"type": "candidate", "candidate": {"candidate": c, "sdpMid": "0"}, "to": other})

    async def run(self) -> None:
        async for frame in self.ws:
            data = json.loads(frame.data)
            if data["type"] == "offer":
                self.remote_description = data["offer"]
                await self.send({"type": "answer", "answer": {"type": "answer", "sdp": SDP_ANSWER}, "to": data["from"]})
                for c in CANDIDATES[::-1]:
                    await self.send({"type": "candidate", "candidate": {"candidate": c, "sdpMid": "0"},
                                     "to": data["from"]})
                await self.send({"type": "candidate", "candidate": None, "to": data["from"]})
            elif data["type"] == "answer":
                self.remote_description = data["answer"]
            elif data["type"] == "candidate":
                if data["candidate"] is None:
                    await self.send({"type": "bye", "to": data["from"]})
                    self.done.set()
                else:
                    self.remote_candidates.append(data["candidate"]["candidate"])
            elif data["type"] == "bye":
                self.done.set()
            elif data["type"] == "error":
                raise AssertionError(f"{self.name} got an error: {data}")
            # anything else (welcome, ...) is ignored, as the tutorials do


async def test_offer_answer_candidates_between_tutorial_clients(node):
    async with aiohttp.ClientSession() as http:
        a = TutorialPeer(await http.ws_connect(f"{node}/ws?peer=caller"), "caller")
        b = TutorialPeer(await http.ws_connect(f"{node}/ws?peer=callee"), "callee")
        tasks = [asyncio.ensure_future(p.run()) for p in (a, b)]
        await a.call("callee")
        await asyncio.wait_for(asyncio.gather(a.done.wait(), b.done.wait()), 5)
        assert a.remote_description == {"type": "answer", "sdp": SDP_ANSWER}
        assert b.remote_description == {"type": "offer", "sdp": SDP_OFFER}
        assert a.remote_candidates == CANDIDATES[::-1] and b.remote_candidates == CANDIDATES
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.ws.close()
        await b.ws.close()
