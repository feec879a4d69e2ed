"""The demo page makes a real call between two headless Chromiums on different nodes, and
the call survives one node being drained.

Chromium runs inside a private network namespace (webrtc_support.py); the cluster is
two node processes on one redis-server behind nginx, reached through the namespace's
veth pair. One page sends the fake camera, the other the page's generated canvas stream.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from webrtc_support import DEMO_SHOT, chromium, netns, reachable_cluster, wait_js  # noqa: F401 - fixtures: pytest finds them by name

pytestmark = pytest.mark.slow


async def open_demo(browser: Any, base: str, peer: str, room: str, media: str, servers: list[str] | None) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    query = f"peer={peer}&room={room}&media={media}&autojoin=1"
    if servers:
        query += "&servers=" + ",".join(servers)
    await page.goto(f"{base}/?{query}", timeout=15_000)
    await wait_js(page, "window.demo && window.demo.client && window.demo.client.state === 'open'"
                        " && document.getElementById('leave').disabled === false")
    return page


async def say(page: Any, text: str) -> None:
    await page.fill("#chat-text", text)
    await page.click("#chat-send")


async def heard(page: Any, sender: str, text: str) -> None:
    await page.wait_for_selector(f'#chat li:has(b:text-is("{sender}:")):has-text("{text}")', timeout=10_000)


async def video_flows(page: Any) -> None:
    await wait_js(page, "(() => { const v = document.getElementById('remote');"
                        " return v.videoWidth > 0 && v.currentTime > 0.3; })()", timeout=15)


async def test_demo_call_across_two_nodes_survives_a_drain(reachable_cluster, chromium):  # noqa: F811 - the imported fixture
    stack = await reachable_cluster(2)
    browser = await chromium(secure_origins=stack.origins)
    # behind nginx the page's own /ws is the endpoint; without it each page gets its node first
    servers = [None, None] if stack.behind_nginx else [stack.ws_urls(0), stack.ws_urls(1)]
    alice = await open_demo(browser, stack.page_base(0), "alice", "call", "camera", servers[0])
    bob = await open_demo(browser, stack.page_base(1), "bob", "call", "canvas", servers[1])

    alice_node = await alice.evaluate("window.demo.client.node")
    bob_node = await bob.evaluate("window.demo.client.node")
    assert alice_node != bob_node, "the two pages should be on different nodes"
    assert {alice_node, bob_node} == set(stack.node_ids())

    # presence, and each side learns the other's node through the signaling
    await alice.wait_for_selector(f'#presence li[data-peer="bob"] .node:text-is("on {bob_node}")', timeout=10_000)
    await bob.wait_for_selector(f'#presence li[data-peer="alice"] .node:text-is("on {alice_node}")', timeout=10_000)

    await alice.click('#presence li[data-peer="bob"] button.call')
    for page in (alice, bob):
        await page.wait_for_selector('#dc-state[data-state="open"]', timeout=20_000)
        await page.wait_for_selector('#call-state[data-state="connected"]', timeout=20_000)
    assert await alice.text_content("#media-kind") == "camera"
    assert await bob.text_content("#media-kind") == "generated stream"
    # roles come from the ids: "alice" < "bob", so alice is the polite one
    assert await alice.evaluate("window.demo.link.polite") is True
    assert await bob.evaluate("window.demo.link.polite") is False

    await say(alice, "hello bob")
    await heard(bob, "alice", "hello bob")
    await say(bob, "hi alice")
    await heard(alice, "bob", "hi alice")
    await video_flows(alice)
    await video_flows(bob)

    # drain alice's node: she reconnects at once, through nginx, to bob's node
    await stack.drain(alice_node)
    await wait_js(alice, f"window.demo.client.state === 'open' && window.demo.client.node === '{bob_node}'")
    welcome = await alice.evaluate("window.demo.client.welcome")
    assert welcome["resumed"] is True, welcome
    assert "connection closed 1001" in await alice.text_content("#log")
    # bob hears about it through the signaling, now all on one node
    await bob.wait_for_selector(f'#presence li[data-peer="alice"] .node:text-is("on {bob_node}")', timeout=10_000)

    # the call did not notice: same connection, chat both ways
    assert await alice.evaluate("window.demo.link.pc.connectionState") == "connected"
    await say(bob, "still there?")
    await heard(alice, "bob", "still there?")
    await say(alice, "yes, on another node now")
    await heard(bob, "alice", "yes, on another node now")

    # and negotiating through the surviving node works: an ICE restart, offer to answer
    before = await alice.evaluate("window.demo.link.negotiations")
    await alice.evaluate("window.demo.link.restartIce()")
    await wait_js(alice, f"window.demo.link.negotiations > {before}"
                         " && window.demo.link.pc.connectionState === 'connected'")
    await say(bob, "after the ICE restart")
    await heard(alice, "bob", "after the ICE restart")
    await video_flows(alice)

    # the README's screenshot; refreshed on demand (or when missing) so a test run leaves git clean
    shot = DEMO_SHOT if os.environ.get("UPDATE_DEMO_SCREENSHOT") or not DEMO_SHOT.exists() \
        else Path(tempfile.mkdtemp()) / "demo.png"
    shot.parent.mkdir(exist_ok=True)
    await alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    assert alice.errors == [] and bob.errors == [], (alice.errors, bob.errors)
