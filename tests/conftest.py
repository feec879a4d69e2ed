"""Shared fixtures. Servers the tests need are real programs; a missing one fails, never skips."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from support import RedisServer

if TYPE_CHECKING:  # the fixtures import these when first used
    from redis_topologies import AclRedis, PrivateCA, SecureRedisCluster, SentinelTopology, TlsRedisServer
    from support import RedisClusterServers


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
def redis_cluster(tmp_path_factory) -> Iterator[RedisClusterServers]:
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
        for _ in range(n):
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


# -- Redis as production runs it (tests/redis_topologies.py): TLS, ACL, Sentinel, Cluster -----


@pytest.fixture(scope="session")
def redis_ca(tmp_path_factory) -> PrivateCA:
    """The private CA the TLS fixtures below trust: .ca_cert, .server_cert/.server_key,
    .client_cert/.client_key (PEM paths); .client_kwargs() / .url_query() for redis-py."""
    from redis_topologies import PrivateCA

    return PrivateCA(tmp_path_factory.mktemp("redis-ca"))


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory, redis_ca) -> Iterator[TlsRedisServer]:
    """redis-server TLS only (--port 0 --tls-port P, --tls-auth-clients yes: a client certificate
    is required), no password. `.url()` -> rediss://127.0.0.1:P/0?ssl_ca_certs=...&ssl_certfile=...
    &ssl_keyfile=...&ssl_cert_reqs=required."""
    from redis_topologies import TlsRedisServer

    server = TlsRedisServer(tmp_path_factory.mktemp("redis-tls"), redis_ca, tls_auth_clients="yes")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_acl(tmp_path_factory) -> Iterator[AclRedis]:
    """redis-server with the default user off and an `admin` user. `.url_for(prefix)` creates (once)
    a user with NODE_ACL_RULES for that key prefix and returns redis://node-<prefix>:<pw>@127.0.0.1:P/0;
    `.admin_url`; `.server` is the SecureRedisServer."""
    from redis_topologies import AclRedis

    topology = AclRedis(tmp_path_factory.mktemp("redis-acl"))
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_acl_tls(tmp_path_factory, redis_ca) -> Iterator[AclRedis]:
    """redis_acl over TLS only (--tls-auth-clients optional): `.url_for(prefix)` ->
    rediss://node-<prefix>:<pw>@127.0.0.1:P/0?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...&ssl_cert_reqs=required
    (`client_cert=False` leaves out the client certificate)."""
    from redis_topologies import AclRedis

    topology = AclRedis(tmp_path_factory.mktemp("redis-acl-tls"), ca=redis_ca)
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory) -> Iterator[SentinelTopology]:
    """1 primary + 1 replica (user `admin`, default user off) + 3 sentinels. `.url` ->
    redis+sentinel://admin:<pw>@127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster/0; `.url_for(prefix)`
    the same with a node ACL user; `.primary()`, `.failover()`, `.kill_primary()` + `.revive()`.
    A test that kills a node must call `.revive()` (session-scoped)."""
    from redis_topologies import SentinelTopology, new_password

    topology = SentinelTopology(tmp_path_factory.mktemp("redis-sentinel"), password=new_password(), username="admin")
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel_tls(tmp_path_factory, redis_ca) -> Iterator[SentinelTopology]:
    """redis_sentinel with every link TLS only (sentinels too): `.url` ->
    rediss+sentinel://admin:<pw>@127.0.0.1:S1,.../mymaster/0?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...&ssl_cert_reqs=required."""
    from redis_topologies import SentinelTopology, new_password

    topology = SentinelTopology(tmp_path_factory.mktemp("redis-sentinel-tls"), password=new_password(),
                                username="admin", tls=redis_ca)
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_cluster_secure(tmp_path_factory, redis_ca) -> Iterator[SecureRedisCluster]:
    """Redis Cluster, 3 primaries + 3 replicas, ACL (user `admin`, default user off; replicas log in
    with --masteruser/--masterauth) and TLS everywhere (clients, --tls-replication, --tls-cluster).
    `.url` -> rediss+cluster://admin:<pw>@127.0.0.1:P1,...,127.0.0.1:P6?ssl_ca_certs=...&ssl_certfile=...
    &ssl_keyfile=...&ssl_cert_reqs=required; `.url_for(prefix)`; `.client_kwargs()` for RedisCluster;
    `.failover(replica_port)`, `.kill_primary(port)` + `.revive()` (a test that kills must revive)."""
    from redis_topologies import SecureRedisCluster

    servers = SecureRedisCluster(tmp_path_factory.mktemp("redis-cluster-secure"), primaries=3, replicas=1,
                                 tls=redis_ca)
    try:
        yield servers.start()
    finally:
        servers.stop()
