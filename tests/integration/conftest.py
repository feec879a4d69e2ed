"""In-process nodes on real sockets (aiohttp's TestServer), and clients that close themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from signaling.app import NODE, create_app
from signaling.bus import Bus
from signaling.config import Settings
from signaling.node import Node
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

    make.nodes = nodes  # type: ignore[attr-defined]  # the fixture hands its nodes to tests
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
