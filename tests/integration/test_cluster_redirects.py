"""ClusterLink follows MOVED and ASK on a real Redis Cluster (the command did not run: it is
sent where Redis says, once, and its answer is the caller's)."""

from __future__ import annotations

import redis
from redis.crc import key_slot

from signaling.bus.redis_link import ClusterLink, open_link
from signaling.bus.redis_url import parse


async def _noop() -> None:
    return None


async def _link(url: str) -> ClusterLink:
    link = open_link(parse(url), {}, on_message=lambda channel, data: None, on_reconnect=_noop, on_changed=_noop,
                     on_unsettled=lambda: None)
    assert isinstance(link, ClusterLink)
    await link.start()
    return link


async def test_a_stale_slot_map_is_corrected_by_moved(redis_cluster, key_prefix):
    link = await _link(redis_cluster.url)
    try:
        key = f"{key_prefix}:{{moved}}:k"
        slot = key_slot(key.encode())
        owner = link._owners[slot]
        wrong = next(name for name in link.servers() if name != owner)
        link._owners[slot] = wrong
        assert await link.call(key, "SET", key, "v") == b"OK"
        assert link._owners[slot] == owner
        assert await link.call(key, "GET", key) == b"v"
    finally:
        await link.close()


async def test_a_slot_being_migrated_is_followed_with_asking(redis_cluster, key_prefix):
    link = await _link(redis_cluster.url)
    key = f"{key_prefix}:{{ask}}:k"
    slot = key_slot(key.encode())
    source_name = link._owners[slot]
    target_name = next(name for name in link.servers() if name != source_name)
    port = {name: int(name.rpartition(":")[2]) for name in (source_name, target_name)}
    source = redis.Redis(port=port[source_name])
    target = redis.Redis(port=port[target_name])
    ids = {name: r.execute_command("CLUSTER", "MYID").decode() for name, r in ((source_name, source),
                                                                               (target_name, target))}
    try:
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source_name])
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target_name])
        # the key is not on the source: it answers ASK, and the link asks the target
        assert await link.call(key, "SET", key, "moved-in") == b"OK"
        asking = target.pipeline(transaction=False)  # ASKING applies to the next command on its connection
        asking.execute_command("ASKING")
        asking.get(key)
        assert asking.execute() == [True, b"moved-in"]  # it went to the importing node
        assert link._owners[slot] == source_name
    finally:
        cleanup = target.pipeline(transaction=False)
        cleanup.execute_command("ASKING")
        cleanup.delete(key)
        cleanup.execute()
        for r in (source, target):  # the slot stays with its owner
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[source_name])
        await link.close()
