"""Shared fixtures. Servers the tests need are real programs; a missing one fails, never skips."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uuid  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402

from support import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart through `key_prefix`."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator["RedisClusterServers"]:
    """A real 3-primary Redis Cluster for the session."""
    from support import RedisClusterServers

    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield servers
    servers.stop()


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
