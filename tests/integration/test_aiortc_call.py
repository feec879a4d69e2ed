"""Two aiortc peers negotiate a data channel through signaling.client across two nodes,
and the call survives a drain; the aiortc example runs; the demo page calls an aiortc peer.

aioice leaves 127.0.0.1 out of its host candidates, so the peers run inside a private
network namespace (webrtc_support.py): the test's thread enters it, and the sockets
aioice opens, and the addresses it gathers, are the namespace's.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from signaling.client import PeerLink, SignalingClient
from support import ROOT, eventually
from webrtc_support import chromium, netns, reachable_cluster, run_in_netns, wait_js  # noqa: F401 - fixtures: pytest finds them by name

pytestmark = pytest.mark.slow


class Chat:
    """A pre-negotiated `chat` data channel on every connection a PeerLink makes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.channel: Any = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.connections = 0

    def setup(self, pc: Any) -> None:
        self.connections += 1
        self.channel = channel = pc.createDataChannel("chat", negotiated=True, id=0)
        channel.on("message", lambda data: self.inbox.put_nowait(json.loads(data)))

    async def opened(self, timeout: float = 20.0) -> None:
        await eventually(lambda: self.channel is not None and self.channel.readyState == "open", timeout=timeout)

    def say(self, text: str) -> None:
        self.channel.send(json.dumps({"from": self.name, "text": text}))

    async def heard(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.inbox.get(), timeout)


async def both_ways(a: Chat, b: Chat, tag: str) -> None:
    a.say(f"{tag} from {a.name}")
    assert await b.heard() == {"from": a.name, "text": f"{tag} from {a.name}"}
    b.say(f"{tag} from {b.name}")
    assert await a.heard() == {"from": b.name, "text": f"{tag} from {b.name}"}


async def test_aiortc_peers_across_two_nodes_survive_a_drain(reachable_cluster, netns):  # noqa: F811 - the imported fixture
    stack = await reachable_cluster(2)
    with netns.entered():
        alice = SignalingClient(stack.ws_urls(0), peer="alice")
        bob = SignalingClient(stack.ws_urls(1), peer="bob")
        try:
            await alice.connect(timeout=10)
            await bob.connect(timeout=10)
            assert alice.node != bob.node, "the two peers should be on different nodes"
            await alice.join("call")
            assert await bob.join("call") == ["alice"]

            chats = {"alice": Chat("alice"), "bob": Chat("bob")}
            links: dict[str, PeerLink] = {}

            def accept(offer: dict[str, Any]) -> None:  # alice answers whoever calls
                if offer["from"] not in alice.links:
                    links["alice"] = alice.link(offer["from"], setup=chats["alice"].setup)

            alice.on("offer", accept)
            links["bob"] = bob.link("alice", setup=chats["bob"].setup)
            await links["bob"].negotiate()  # bob calls
            await chats["alice"].opened()
            await chats["bob"].opened()
            assert links["alice"].polite and not links["bob"].polite  # "alice" < "bob"
            await both_ways(chats["alice"], chats["bob"], "hello")

            # drain alice's node: she resumes on bob's; the call does not notice
            welcomed = asyncio.ensure_future(alice.wait_for("welcome", timeout=15))
            drained, survivor = alice.node, bob.node
            await stack.drain(drained)
            welcome = await welcomed
            assert welcome["node"] == survivor and welcome["resumed"] is True
            assert links["alice"].pc.connectionState == "connected"
            await both_ways(chats["alice"], chats["bob"], "after the drain")

            # negotiating again goes through the surviving node: alice starts over
            # (aiortc's ICE restart) and bob follows the new offer
            await links["alice"].restart()
            await eventually(lambda: chats["bob"].connections == 2, timeout=15)
            await chats["alice"].opened()
            await chats["bob"].opened()
            await both_ways(chats["alice"], chats["bob"], "after the restart")
            assert links["alice"].rebuilds == 1 and links["bob"].rebuilds == 1
        finally:
            await alice.close()
            await bob.close()


async def test_the_aiortc_example_runs(reachable_cluster, netns):  # noqa: F811 - the imported fixture
    stack = await reachable_cluster(1)
    done = await asyncio.to_thread(
        run_in_netns, netns, [sys.executable, str(ROOT / "examples" / "aiortc_datachannel.py"),
                              "--url", stack.ws_urls(0)[0], "--both", "--count", "3", "--interval", "0.1",
                              "--timeout", "40"], 50)
    assert done.returncode == 0, done.stdout
    for peer in ("alice", "bob"):
        assert f"[{peer}] data channel open" in done.stdout
        assert f"[{peer}] sent 3, received 3" in done.stdout


async def test_the_demo_page_calls_an_aiortc_peer(reachable_cluster, netns, chromium):  # noqa: F811 - the imported fixture
    stack = await reachable_cluster(2)
    browser = await chromium()
    with netns.entered():
        py = SignalingClient(stack.ws_urls(1), peer="python")
        chat = Chat("python")
        try:
            await py.connect(timeout=10)
            py.on("offer", lambda m: py.links.get(m["from"]) or py.link(m["from"], setup=chat.setup))
            await py.join("mixed")

            page = await (await browser.new_context()).new_page()
            servers = "" if stack.behind_nginx else "&servers=" + ",".join(stack.ws_urls(0))
            await page.goto(f"{stack.page_base(0)}/?peer=web&room=mixed&media=canvas&autojoin=1{servers}")
            await page.wait_for_selector('#presence li[data-peer="python"] button.call', timeout=10_000)
            await page.click('#presence li[data-peer="python"] button.call')
            await page.wait_for_selector('#dc-state[data-state="open"]', timeout=20_000)
            await chat.opened()

            await page.fill("#chat-text", "hello python")
            await page.click("#chat-send")
            assert await chat.heard() == {"from": "web", "text": "hello python"}
            chat.say("hello browser")
            await page.wait_for_selector('#chat li:has(b:text-is("python:")):has-text("hello browser")',
                                         timeout=10_000)
            await page.click("#hangup")  # bye: the Python side's link closes
            await eventually(lambda: "web" not in py.links, timeout=10)
        finally:
            await py.close()
