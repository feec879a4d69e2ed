"""Fixtures for the tests with real WebRTC stacks (Chromium, aiortc).

- `netns`: a private network namespace (see netns_support.py), deleted afterwards.
- `reachable_cluster`: start(n, *node_flags) -> a `Stack` of n real node processes on
  one real redis-server that the namespace can reach: behind nginx through
  `signaling.launcher.LocalCluster` (nginx listening on the host end of the veth pair),
  or, where the launcher is missing (or WEBRTC_TESTS_WITHOUT_NGINX=1), the nodes
  themselves listening there, each client given every node's URL.
- `chromium`: launch(secure_origins=()) -> a Playwright Browser: Debian's Chromium,
  headless, started inside the namespace (its driver is spawned there, and Chromium
  with it). Playwright gives every launch a fresh temporary --user-data-dir.

Every fixture stops what it started in its finalizer, by PID, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from netns_support import NetNamespace
from support import ROOT, NodeProcess

try:
    from signaling.launcher import LocalCluster
except ImportError:  # the launcher is another milestone's; without it the nodes face the namespace
    LocalCluster = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root
    "--headless",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",  # no permission prompt
    "--use-fake-device-for-media-stream",  # a synthetic camera
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # host candidates as plain addresses
    "--disable-background-networking",  # and the next three: never reach for the internet
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_SHOT = ROOT / "docs" / "demo.png"


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    ns = NetNamespace().create()
    try:
        yield ns
    finally:
        ns.destroy()


class VethNode(NodeProcess):
    """A node process listening on the host end of the namespace's veth pair."""

    def __init__(self, host: str, *args: str) -> None:
        super().__init__(*args)
        self.host = host
        self.args += ["--host", host]  # the last --host wins
        if not any(a.startswith("--jwt-") for a in args):
            self.args.append("--open")  # not loopback: open mode only when asked for (a private namespace here)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


class Stack:
    """n nodes the namespace can reach, and how a client there finds them."""

    def __init__(self, netns: NetNamespace) -> None:
        self.netns = netns
        self.cluster: Any = None  # a LocalCluster, when behind nginx
        self.direct: list[VethNode] = []  # else the node processes themselves

    @property
    def behind_nginx(self) -> bool:
        return self.cluster is not None

    @property
    def http_base(self) -> str:
        """Where a page loads from: nginx, or the first node."""
        return self.cluster.http_endpoint if self.cluster is not None else self.direct[0].base

    def page_base(self, i: int) -> str:
        return self.http_base if self.cluster is not None else self.direct[i % len(self.direct)].base

    def ws_urls(self, i: int = 0) -> list[str]:
        """The /ws URLs client `i` should use: nginx's, or every node's starting with node i."""
        if self.cluster is not None:
            return [f"{self.cluster.endpoint}/ws"]
        ordered = self.direct[i:] + self.direct[:i]
        return [f"{n.base.replace('http', 'ws', 1)}/ws" for n in ordered]

    @property
    def origins(self) -> list[str]:
        return [self.http_base] if self.cluster is not None else [n.base for n in self.direct]

    def node_ids(self) -> list[str]:
        if self.cluster is not None:
            return [n.node_id for n in self.cluster.nodes]
        return [n.args[n.args.index("--node-id") + 1] for n in self.direct]

    async def drain(self, node_id: str) -> None:
        """SIGTERM to that node's process: /readyz 503, every socket closed with 1001."""
        if self.cluster is not None:
            node = next(n for n in self.cluster.nodes if n.node_id == node_id)
            await node.drain(wait=False)
        else:
            self.direct[self.node_ids().index(node_id)].signal(signal.SIGTERM)

    def logs(self) -> str:
        if self.cluster is not None:
            return "\n".join(f"--- {n.node_id}\n{n.log()[-3000:]}" for n in self.cluster.nodes)
        return "\n".join(f"--- node\n{n.log()[-3000:]}" for n in self.direct)


@pytest.fixture
async def reachable_cluster(netns: NetNamespace, redis_server: Any, key_prefix: str,
                            tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    stacks: list[Stack] = []

    async def start(n: int = 2, *node_args: str) -> Stack:
        stack = Stack(netns)
        stacks.append(stack)
        if LocalCluster is not None and not os.environ.get("WEBRTC_TESTS_WITHOUT_NGINX"):
            stack.cluster = LocalCluster(nodes=n, host=netns.host_address, redis_url=redis_server.url,
                                         key_prefix=key_prefix, node_args=list(node_args),
                                         workdir=tmp_path / "cluster")
            await asyncio.wait_for(stack.cluster.start(), 60)
        else:
            for i in range(n):
                node = VethNode(netns.host_address, "--redis-url", redis_server.url, "--key-prefix", key_prefix,
                                "--node-id", f"node-{i + 1}", *node_args).start(tmp_path)
                stack.direct.append(node)
            for node in stack.direct:
                await node.wait_ready()
        return stack

    yield start
    for stack in stacks:
        if stack.cluster is not None:
            await asyncio.wait_for(stack.cluster.stop(), 60)
        for node in stack.direct:
            node.stop()


@pytest.fixture
async def chromium(netns: NetNamespace) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed: run .ci/run (apt-get install chromium)"
    playwright: Any = None
    browsers: list[Any] = []

    async def launch(secure_origins: Sequence[str] = ()) -> Any:
        nonlocal playwright
        if playwright is None:
            with netns.entered():  # the driver starts in the namespace; Chromium is its child
                playwright = await asyncio.wait_for(async_playwright().start(), 30)
        args = list(CHROMIUM_ARGS)
        if secure_origins:
            # getUserMedia needs a secure context; the page is plain http on a veth address
            args.append("--unsafely-treat-insecure-origin-as-secure=" + ",".join(secure_origins))
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True,
                                                   timeout=30_000)
        browsers.append(browser)
        return browser

    try:
        yield launch
    finally:
        for browser in browsers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 15)
        if playwright is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(playwright.stop(), 15)
        netns.kill_remaining()  # anything of Chromium's that outlived its driver


async def wait_js(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Wait until `expression` is truthy in the page; on timeout say what it was."""
    try:
        return await page.wait_for_function(expression, timeout=timeout * 1000)
    except Exception as exc:
        state = await page.evaluate("() => ({client: window.demo && window.demo.client && "
                                    "{state: window.demo.client.state, node: window.demo.client.node}, "
                                    "log: document.getElementById('log') && "
                                    "document.getElementById('log').textContent})")
        raise AssertionError(f"not true within {timeout}s: {expression}\npage state: {state}") from exc


def run_in_netns(netns: NetNamespace, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a program inside the namespace, killed (by PID) if it outlives `timeout`."""
    proc = subprocess.Popen(netns.popen_args(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{argv} did not finish within {timeout}s:\n{out}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")
