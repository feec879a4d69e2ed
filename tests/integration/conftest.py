"""In-process nodes on real sockets (aiohttp's TestServer), and clients that close themselves."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer

from signaling.app import NODE, Node, create_app
from signaling.bus import Bus
from signaling.config import Settings
from support import Client

MakeNode = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_node() -> AsyncIterator[Any]:
    """make_node(**settings) -> ws base URL of a fresh node; `make_node.nodes[url]` is its Node."""
    servers: list[TestServer] = []
    nodes: dict[str, Node] = {}

    async def make(bus: Bus | None = None, **overrides: Any) -> str:
        overrides.setdefault("node_id", f"test-node-{len(servers) + 1}")
        settings = Settings(**overrides).check()
        app = create_app(settings, bus)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        base = f"ws://127.0.0.1:{server.port}"
        nodes[base] = app[NODE]
        return base

    make.nodes = nodes  # type: ignore[attr-defined]
    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def node(make_node: Any) -> str:
    return await make_node()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """connect(base, peer=..., ...) -> a welcomed Client, closed after the test."""
    clients: list[Client] = []

    async def make(base: str, **kwargs: Any) -> Client:
        client = await Client.connect(base, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def processes(tmp_path):
    """processes(*flags, env=...) -> a started `signaling serve` process, stopped after the test."""
    from support import NodeProcess

    started: list[NodeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(*args, env=env).start(tmp_path)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
async def cluster(redis_server, key_prefix, tmp_path):
    """cluster(n, **flags) -> n real `signaling serve` processes on one real redis-server."""
    from support import NodeProcess

    started: list[NodeProcess] = []

    async def start(n: int, *args: str) -> list[NodeProcess]:
        nodes = []
        for i in range(n):
            node = NodeProcess("--redis-url", redis_server.url, "--key-prefix", key_prefix,
                               "--node-id", f"node-{len(started) + 1}", *args).start(tmp_path)
            started.append(node)
            nodes.append(node)
        for node in nodes:
            await node.wait_ready()
        return nodes

    yield start
    for node in started:
        node.stop()
