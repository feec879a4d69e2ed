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
