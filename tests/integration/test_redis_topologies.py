"""Self-tests of the Redis topology fixtures (tests/redis_topologies.py), through redis-py's
asyncio client as a user would connect: TLS with a private CA, ACL users, Sentinel, Cluster."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisClusterException, RedisError, ResponseError

from redis_topologies import MASTER_NAME, NODE_ACL_RULES, PrivateCA, new_password, node_acl_rules

pytestmark = pytest.mark.timeout(90)

def granted(command: str) -> bool:
    """True when NODE_ACL_RULES lets the node run `command` ("get", "xinfo|stream")."""
    return f"+{command}" in NODE_ACL_RULES or f"+{command.partition('|')[0]}" in NODE_ACL_RULES


# What the node's script may call, as (command, Lua): the script runs the steps whose command
# NODE_ACL_RULES grants, on keys (and a channel) under the prefix, all in one hash slot
# (KEYS = string, set, zset, hash, stream; ARGV[1] = a channel), and returns the refusals.
SCRIPT_STEPS = [
    ("set", "'SET', KEYS[1], 'v'"), ("get", "'GET', KEYS[1]"), ("exists", "'EXISTS', KEYS[1]"),
    ("pexpire", "'PEXPIRE', KEYS[1], 60000"), ("pttl", "'PTTL', KEYS[1]"), ("persist", "'PERSIST', KEYS[1]"),
    ("sadd", "'SADD', KEYS[2], 'a', 'b'"), ("sismember", "'SISMEMBER', KEYS[2], 'a'"), ("scard", "'SCARD', KEYS[2]"),
    ("smembers", "'SMEMBERS', KEYS[2]"), ("srem", "'SREM', KEYS[2], 'a'"),
    ("zadd", "'ZADD', KEYS[3], 1, 'a', 2, 'b'"), ("zscore", "'ZSCORE', KEYS[3], 'b'"),
    ("zrange", "'ZRANGE', KEYS[3], 0, -1"), ("zrangebyscore", "'ZRANGEBYSCORE', KEYS[3], '-inf', 1"),
    ("zrem", "'ZREM', KEYS[3], 'a'"),
    ("hset", "'HSET', KEYS[4], 'f', 1"), ("hincrby", "'HINCRBY', KEYS[4], 'f', 2"), ("hmget", "'HMGET', KEYS[4], 'f'"),
    ("xadd", "'XADD', KEYS[5], '1-1', 'f', 'v'"), ("xlen", "'XLEN', KEYS[5]"),
    ("xrange", "'XRANGE', KEYS[5], '-', '+'"),
    ("xrevrange", "'XREVRANGE', KEYS[5], '+', '-'"), ("xinfo|stream", "'XINFO', 'STREAM', KEYS[5]"),
    ("xdel", "'XDEL', KEYS[5], '1-1'"),
    ("publish", "'PUBLISH', ARGV[1], 'hello'"), ("spublish", "'SPUBLISH', ARGV[1], 'hello'"), ("time", "'TIME'"),
    ("del", "'DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]"),
]
SCRIPT = """
local refused = {}
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err and (reply.err:find("can't") or reply.err:find('NOPERM')) then
    table.insert(refused, reply.err)
  end
end
""" + "\n".join(f"try({call})" for command, call in SCRIPT_STEPS if granted(command)) + "\nreturn refused\n"


async def run_script(client: Any, prefix: str) -> None:
    """SCRIPT LOAD + EVALSHA of SCRIPT as the node user: every step it runs is allowed."""
    assert any(granted(command) for command, _ in SCRIPT_STEPS), "NODE_ACL_RULES grants no data command"
    sha = await client.script_load(SCRIPT)
    assert await client.evalsha(sha, 5, *script_keys(prefix), f"{prefix}@0:{{t}}") == []


def script_keys(prefix: str) -> list[str]:
    return [f"{prefix}:{{t}}:{name}" for name in ("string", "set", "zset", "hash", "stream")]


async def until(what: str, attempt: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Retry `attempt` (as a client does after a failover) until it returns something true."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await attempt()
            if value:
                return value
        except (RedisError, RedisClusterException, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last error: {last!r})")
        await asyncio.sleep(0.1)


async def ping(url: str, **kwargs: Any) -> bool:
    client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **kwargs)
    try:
        return await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> PrivateCA:
    """A CA nobody here trusts: its certificates must fail verification."""
    return PrivateCA(tmp_path_factory.mktemp("other-ca"), name="other")


def with_ca(url: str, ca: PrivateCA) -> str:
    """`url` with its query string (TLS options) replaced by `ca`'s."""
    return url.split("?")[0] + "?" + ca.url_query()


# -- TLS -------------------------------------------------------------------------------


def test_tls_url_form(redis_tls, redis_ca):
    assert redis_tls.url("u", "p") == (
        f"rediss://u:p@127.0.0.1:{redis_tls.port}/0?ssl_ca_certs={redis_ca.ca_cert}"
        f"&ssl_certfile={redis_ca.client_cert}&ssl_keyfile={redis_ca.client_key}&ssl_cert_reqs=required")


async def test_tls_ping_with_client_certificate(redis_tls):
    assert await ping(redis_tls.url())


async def test_tls_requires_client_certificate(redis_tls):
    with pytest.raises(RedisError):
        await ping(redis_tls.url(client_cert=False))


async def test_tls_wrong_ca_fails_verification(redis_tls, other_ca):
    with pytest.raises(RedisError, match="(?i)certificate verify failed"):
        await ping(with_ca(redis_tls.url(), other_ca))


async def test_tls_server_speaks_no_plain_text(redis_tls):
    with pytest.raises(RedisError):
        await ping(f"redis://127.0.0.1:{redis_tls.port}/0")


# -- ACL ---------------------------------------------------------------------------------


def test_node_acl_rules_accepted_one_by_one(redis_acl):
    """Each rule alone is accepted by this Redis (7.0): a rule it rejects is named here."""
    rejected = []
    for rule in node_acl_rules("prefix", new_password()):
        try:
            redis_acl.server.call("ACL", "SETUSER", "scratch", "reset", rule)
        except ResponseError as exc:
            rejected.append(f"{rule}: {exc}")
    redis_acl.server.call("ACL", "DELUSER", "scratch")
    assert not rejected, rejected


def test_node_acl_user_has_exactly_the_listed_rules(redis_acl, key_prefix):
    username, _ = redis_acl.node_user(key_prefix)
    user = redis_acl.server.call("ACL", "GETUSER", username)
    described = dict(zip(user[::2], user[1::2], strict=True))
    rules = node_acl_rules(key_prefix, "x")
    assert set(described["commands"].split()) == {r for r in rules if r[0] in "+-"}
    assert described["keys"].split() == [r for r in rules if r.startswith("~")]
    assert described["channels"].split() == [r for r in rules if r.startswith("&")]
    assert "on" in described["flags"]


async def test_acl_ping_needs_the_right_credentials(redis_acl, key_prefix):
    url = redis_acl.url_for(key_prefix)
    assert re.fullmatch(rf"redis://node-{key_prefix}:[0-9a-f]+@127\.0\.0\.1:{redis_acl.port}/0", url)
    assert await ping(url)
    assert await ping(redis_acl.admin_url)
    username, _ = redis_acl.node_user(key_prefix)
    with pytest.raises(AuthenticationError):
        await ping(redis_acl.url(username, "wrong"))
    with pytest.raises(AuthenticationError):  # NOAUTH: the default user is off
        await ping(redis_acl.url())
    with pytest.raises(AuthenticationError):  # a password alone logs in as the default user
        await ping(redis_acl.url(None, redis_acl.admin[1]))


async def test_acl_node_user_runs_its_script_and_nothing_else(redis_acl, key_prefix):
    client = aioredis.from_url(redis_acl.url_for(key_prefix), socket_timeout=2, decode_responses=True)
    try:
        await run_script(client, key_prefix)
        direct = {"ping": ("PING",), "select": ("SELECT", 0), "client|setname": ("CLIENT", "SETNAME", "node-1"),
                  "role": ("ROLE",), "info": ("INFO", "server"), "time": ("TIME",),
                  "scan": ("SCAN", 0, "MATCH", f"{key_prefix}:*"), "exists": ("EXISTS", f"{key_prefix}:k")}
        for command, args in direct.items():
            if granted(command):
                await client.execute_command(*args)

        async def refused(*args: Any) -> str:
            with pytest.raises(NoPermissionError) as info:
                await client.execute_command(*args)
            return str(info.value)

        assert not granted("flushall") and not granted("keys")
        await refused("FLUSHALL")
        await refused("KEYS", "*")
        for command, args in {"config|get": ("CONFIG", "GET", "maxmemory"), "script|flush": ("SCRIPT", "FLUSH"),
                              "eval": ("EVAL", "return 1", 0), "client|list": ("CLIENT", "LIST"),
                              "acl|setuser": ("ACL", "SETUSER", "intruder", "on", "+@all")}.items():
            if not granted(command):
                await refused(*args)
        assert "key" in await refused("GET", "elsewhere:key")
        assert "key" in await refused("SET", f"x{key_prefix}:k", 1)
        assert "channel" in await refused("PUBLISH", "elsewhere@0:c", "x")
        # a script may not reach past the user's rights either
        sha = await client.script_load(SCRIPT)
        with pytest.raises(NoPermissionError):  # a key outside the prefix, declared
            await client.evalsha(sha, 5, "elsewhere:{t}:a", *script_keys(key_prefix)[1:], f"{key_prefix}@0:{{t}}")
        flush = await client.script_load("return redis.call('FLUSHALL')")
        with pytest.raises(ResponseError, match="user executing the script can't"):
            await client.evalsha(flush, 0)
        sneak = await client.script_load("return redis.call('GET', 'elsewhere:key')")
        with pytest.raises(ResponseError, match="user executing the script can't"):
            await client.evalsha(sneak, 0)
    finally:
        await client.aclose()


async def test_the_script_check_sees_a_refusal(redis_acl, key_prefix):
    """run_script is no empty check: with the first command it calls taken away, it fails."""
    command = next(c for c, _ in SCRIPT_STEPS if granted(c))
    password = new_password()
    rules = [r for r in node_acl_rules(key_prefix, password) if r != f"+{command}"] + [f"-{command}"]
    redis_acl.server.create_user(f"lesser-{key_prefix}", rules)
    client = aioredis.from_url(redis_acl.url(f"lesser-{key_prefix}", password), socket_timeout=2)
    try:
        with pytest.raises(AssertionError, match="can't run"):
            await run_script(client, key_prefix)
    finally:
        await client.aclose()


async def test_acl_node_user_pubsub_in_its_channels_only(redis_acl, key_prefix):
    client = aioredis.from_url(redis_acl.url_for(key_prefix), socket_timeout=2)
    pubsub = client.pubsub()
    try:
        channel = f"{key_prefix}@0:{{p:a}}"
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        assert await client.publish(channel, "hi") == 1
        message = await pubsub.get_message(timeout=2)
        assert message and message["data"] == b"hi"
        await pubsub.unsubscribe(channel)
        other = client.pubsub()
        try:
            with pytest.raises(NoPermissionError):
                await other.subscribe("elsewhere@0:c")
                await other.get_message(timeout=2)
        finally:
            await other.aclose()
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_acl_tls_ping_needs_credentials_and_the_ca(redis_acl_tls, key_prefix, other_ca):
    url = redis_acl_tls.url_for(key_prefix)
    assert url.startswith(f"rediss://node-{key_prefix}:") and "ssl_cert_reqs=required" in url
    assert await ping(url)
    assert await ping(redis_acl_tls.url_for(key_prefix, client_cert=False))  # --tls-auth-clients optional
    username, _ = redis_acl_tls.node_user(key_prefix)
    with pytest.raises(AuthenticationError):
        await ping(redis_acl_tls.url(username, "wrong"))
    with pytest.raises(AuthenticationError):
        await ping(redis_acl_tls.url())
    with pytest.raises(RedisError, match="(?i)certificate verify failed"):
        await ping(with_ca(url, other_ca))
    client = aioredis.from_url(url, socket_timeout=2)
    try:
        await run_script(client, key_prefix)
        with pytest.raises(NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()


# -- Sentinel ----------------------------------------------------------------------------


def sentinel_client(topology, username: str | None, password: str | None, ca: PrivateCA | None = None,
                    **options: Any) -> Sentinel:
    tls = (ca or topology.ca).client_kwargs() if topology.ca else {}
    return Sentinel(topology.sentinel_addresses, sentinel_kwargs={**tls, "socket_timeout": 2, **options},
                    username=username, password=password, socket_timeout=2, socket_connect_timeout=2, **tls,
                    **options)


def test_sentinel_url_form(redis_sentinel):
    ports = [s.port for s in redis_sentinel.sentinels]
    assert redis_sentinel.url == (f"redis+sentinel://admin:{redis_sentinel.password}@127.0.0.1:{ports[0]},"
                                  f"127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}/{MASTER_NAME}/0")
    assert redis_sentinel.primary() in {s.port for s in redis_sentinel.data}


async def test_sentinel_ping_needs_the_right_credentials(redis_sentinel, key_prefix):
    username, password = redis_sentinel.node_user(key_prefix)
    sentinel = sentinel_client(redis_sentinel, username, password)
    master = sentinel.master_for(MASTER_NAME)
    assert await master.ping()
    assert await master.set(f"{key_prefix}:k", 1)
    replica = sentinel.slave_for(MASTER_NAME)
    assert await until("the write reached the replica", lambda: replica.get(f"{key_prefix}:k"), 5) == b"1"
    for client in (master, replica):
        await client.aclose()
    wrong = sentinel_client(redis_sentinel, username, "wrong").master_for(MASTER_NAME)
    with pytest.raises(AuthenticationError):
        await wrong.ping()
    anonymous = sentinel_client(redis_sentinel, None, None).master_for(MASTER_NAME)
    with pytest.raises(AuthenticationError):
        await anonymous.ping()
    for client in (wrong, anonymous):
        await client.aclose()


async def check_failover_followed(topology, key_prefix: str) -> None:
    username, password = topology.node_user(key_prefix)
    sentinel = sentinel_client(topology, username, password)
    master = sentinel.master_for(MASTER_NAME)
    try:
        old = topology.primary()
        assert await master.set(f"{key_prefix}:k", "before")
        assert topology.server(old).call("GET", f"{key_prefix}:k") == "before"

        new = await asyncio.to_thread(topology.failover)
        assert new != old and topology.primary() == new
        assert await sentinel.discover_master(MASTER_NAME) == ("127.0.0.1", new)
        assert topology.server(old).role()[0] == "slave"  # so a write that succeeds went to `new`
        await until("redis-py's sentinel client writes to the new primary",
                    lambda: master.set(f"{key_prefix}:k", "after"), 10)
        assert topology.server(new).call("GET", f"{key_prefix}:k") == "after"
    finally:
        await master.aclose()


async def test_sentinel_failover_moves_the_primary_and_redis_py_follows(redis_sentinel, key_prefix):
    await check_failover_followed(redis_sentinel, key_prefix)


async def test_sentinel_unplanned_failover_after_kill(redis_sentinel, key_prefix):
    username, password = redis_sentinel.node_user(key_prefix)
    master = sentinel_client(redis_sentinel, username, password).master_for(MASTER_NAME)
    try:
        assert await master.set(f"{key_prefix}:k", 1)
        killed = await asyncio.to_thread(redis_sentinel.kill_primary)
        new = redis_sentinel.primary()
        assert new != killed and not redis_sentinel.server(killed).alive()
        await until("redis-py's sentinel client writes to the promoted replica",
                    lambda: master.set(f"{key_prefix}:k", 2), 10)
        assert redis_sentinel.server(new).call("GET", f"{key_prefix}:k") == "2"
    finally:
        await master.aclose()
        await asyncio.to_thread(redis_sentinel.revive)
    assert redis_sentinel.server(killed).role()[:3] == ["slave", "127.0.0.1", new]


async def test_sentinel_tls(redis_sentinel_tls, key_prefix, other_ca):
    url = redis_sentinel_tls.url_for(key_prefix)
    assert url.startswith(f"rediss+sentinel://node-{key_prefix}:") and f"/{MASTER_NAME}/0?ssl_ca_certs=" in url
    username, password = redis_sentinel_tls.node_user(key_prefix)
    master = sentinel_client(redis_sentinel_tls, username, password).master_for(MASTER_NAME)
    untrusted = sentinel_client(redis_sentinel_tls, username, password, ca=other_ca,  # fail fast: no retries
                                retry=Retry(NoBackoff(), 0)).master_for(MASTER_NAME)
    try:
        assert await master.ping()
        with pytest.raises(MasterNotFoundError):  # no sentinel passes verification
            await untrusted.ping()
    finally:
        await master.aclose()
        await untrusted.aclose()
    await check_failover_followed(redis_sentinel_tls, key_prefix)


# -- Cluster -------------------------------------------------------------------------------


def cluster_client(cluster, **overrides: Any) -> RedisCluster:
    options = {**cluster.client_kwargs(), "socket_timeout": 2, "socket_connect_timeout": 2, **overrides}
    return RedisCluster("127.0.0.1", cluster.servers[0].port, **options)


def test_cluster_url_form(redis_cluster_secure, redis_ca):
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster_secure.servers)
    assert len(redis_cluster_secure.servers) == 6 and len(redis_cluster_secure.primaries_ports()) == 3
    assert redis_cluster_secure.url == (f"rediss+cluster://admin:{redis_cluster_secure.password}@{hosts}?"
                                        f"{redis_ca.url_query()}")


async def test_cluster_ping_needs_the_right_credentials(redis_cluster_secure, key_prefix, other_ca):
    client = cluster_client(redis_cluster_secure)
    try:
        assert await client.ping()
        keys = [f"{key_prefix}:{i}" for i in range(30)]
        for key in keys:
            await client.set(key, key)
        assert {redis_cluster_secure.primary_of(k).port for k in keys} == set(redis_cluster_secure.primaries_ports())
        assert [await client.get(k) for k in keys] == [k.encode() for k in keys]
    finally:
        await client.aclose()
    failures = {
        "wrong password": dict(password="wrong"),
        "no credentials": dict(username=None, password=None),
        "wrong CA": other_ca.client_kwargs(),
        "no TLS": dict(ssl=False),
    }
    for what, overrides in failures.items():
        client = cluster_client(redis_cluster_secure, **overrides)
        try:
            with pytest.raises((RedisClusterException, RedisError)):
                await client.ping()
        except BaseException as exc:
            raise AssertionError(f"{what}: {exc}") from exc
        finally:
            await client.aclose()


async def test_cluster_node_user(redis_cluster_secure, key_prefix):
    """The node user on Redis Cluster. redis-py's RedisCluster runs COMMAND when it starts (its
    key parser), which NODE_ACL_RULES does not grant: without "+command" it cannot connect."""
    if "+command" not in NODE_ACL_RULES:
        username, password = redis_cluster_secure.node_user(key_prefix)
        client = cluster_client(redis_cluster_secure, username=username, password=password)
        try:
            with pytest.raises(NoPermissionError, match="'command'"):
                await client.ping()
        finally:
            await client.aclose()
    username, password = redis_cluster_secure.node_user(key_prefix, extra_rules=["+command"])
    client = cluster_client(redis_cluster_secure, username=username, password=password)
    try:
        assert await client.ping()
        await run_script(client, key_prefix)
        for command in ("cluster|slots", "cluster|shards"):
            if granted(command):
                assert await client.execute_command(command.replace("|", " ").upper())
        with pytest.raises(NoPermissionError):
            await client.get("elsewhere:key")
        with pytest.raises((NoPermissionError, RedisClusterException)):
            await client.execute_command("FLUSHALL", target_nodes=RedisCluster.PRIMARIES)
    finally:
        await client.aclose()


async def test_cluster_failover_and_kill_redis_py_follows(redis_cluster_secure, key_prefix):
    cluster = redis_cluster_secure
    key = f"{key_prefix}:k"
    client = cluster_client(cluster)
    try:
        assert await client.set(key, 1)
        primary = cluster.primary_of(key).port
        replica = cluster.replica_of(primary)
        await asyncio.to_thread(cluster.failover, replica)
        assert cluster.primary_of(key).port == replica and cluster.server(primary).role()[0] == "slave"
        await until("RedisCluster writes to the promoted replica", lambda: client.set(key, 2), 10)
        assert cluster.server(replica).call("GET", key) == "2"

        promoted = await asyncio.to_thread(cluster.kill_primary, replica)  # the key's primary, by PID
        assert promoted == primary and cluster.primary_of(key).port == primary
        await until("RedisCluster writes after its primary was killed", lambda: client.set(key, 3), 15)
        assert cluster.server(primary).call("GET", key) == "3"
    finally:
        await client.aclose()
        await asyncio.to_thread(cluster.revive)
    assert cluster.server(replica).role()[0] == "slave" and len(cluster.primaries_ports()) == 3
