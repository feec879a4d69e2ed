"""The `Bus` contract (signaling/bus/base.py), one suite for every implementation.

Add an implementation to `BUSES` and the whole suite runs over it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest

from signaling.bus import AttachRefused, Bus, BusUnavailable, LeaseLost
from signaling.bus.memory import MemoryBus
from signaling.inbox import parse_seq
from signaling.outcome import Outcome
from support import RecordingMailbox as Box

GRACE = 0.3


def memory_bus(request: pytest.FixtureRequest) -> Bus:
    return MemoryBus(node_id="node-1", grace=GRACE, inbox_limit=4)


def redis_bus(request: pytest.FixtureRequest) -> Bus:
    from signaling.bus.redis import RedisBus

    server = request.getfixturevalue("redis_server")  # a real redis-server
    return RedisBus(server.url, node_id="node-1", grace=GRACE, inbox_limit=4,
                    prefix=request.getfixturevalue("key_prefix"))


def redis_cluster_bus(request: pytest.FixtureRequest) -> Bus:
    from signaling.bus.redis import RedisBus

    servers = request.getfixturevalue("redis_cluster")  # a real 3-primary Redis Cluster
    return RedisBus(servers.url, node_id="node-1", grace=GRACE, inbox_limit=4,
                    prefix=request.getfixturevalue("key_prefix"))


def redis_acl_tls_bus(request: pytest.FixtureRequest) -> Bus:
    """One Redis over TLS (a private CA, a client certificate), as an ACL user that may run
    only the commands docs/CLUSTER.md lists, on its own key prefix."""
    from signaling.bus.redis import RedisBus

    prefix = request.getfixturevalue("key_prefix")
    url = request.getfixturevalue("redis_acl_tls").url_for(prefix)
    return RedisBus(url, node_id="node-1", grace=GRACE, inbox_limit=4, prefix=prefix)


def redis_sentinel_bus(request: pytest.FixtureRequest) -> Bus:
    """The primary found through three sentinels, as the node's ACL user, every write on
    the replica before it is acknowledged."""
    from signaling.bus.redis import RedisBus

    prefix = request.getfixturevalue("key_prefix")
    url = request.getfixturevalue("redis_sentinel").url_for(prefix)
    return RedisBus(url, node_id="node-1", grace=GRACE, inbox_limit=4, prefix=prefix, replicas=1)


BUSES: dict[str, Callable[[pytest.FixtureRequest], Bus]] = {
    "memory": memory_bus, "redis": redis_bus, "redis-cluster": redis_cluster_bus,
    "redis-acl-tls": redis_acl_tls_bus, "redis-sentinel": redis_sentinel_bus}


@pytest.fixture(params=sorted(BUSES))
async def bus(request) -> AsyncIterator[Bus]:
    b = BUSES[request.param](request)
    await b.start()
    assert b.ready
    yield b
    await b.close()


def msg(n: int) -> bytes:
    return json.dumps({"type": "message", "data": n}).encode()


async def test_send_to_a_connected_peer_is_delivered_in_order(bus):
    box = Box()
    await bus.attach("bob", box)
    for n in range(5):
        assert (await bus.send("bob", msg(n))).outcome is Outcome.DELIVERED
    assert [m["data"] for m in await box.wait(5)] == [0, 1, 2, 3, 4]
    seqs = [parse_seq(s) for s, _ in box.got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_send_to_nobody_stores_nothing(bus):
    assert (await bus.send("ghost", msg(1))).outcome is Outcome.NO_PEER
    box = Box()
    attached = await bus.attach("ghost", box)
    assert attached.replay == [] and not attached.resumed


async def test_later_attach_wins_and_the_earlier_mailbox_hears_nothing_more(bus):
    first, second = Box(), Box()
    a1 = await bus.attach("bob", first)
    a2 = await bus.attach("bob", second)
    assert first.was_replaced and a2.epoch > a1.epoch and a2.replaced == a1.epoch
    await bus.send("bob", msg(1))
    await second.wait(1)
    assert first.got == []
    await bus.detach("bob", a1.epoch, final=True)  # stale: ignored
    assert (await bus.send("bob", msg(2))).outcome is Outcome.DELIVERED


async def test_a_replaced_connection_changes_nothing(bus):
    # a frame read from a superseded connection (its node woke from a pause, say) must not
    # reach anyone: it would overtake what the client sent on its newer connection
    bob = Box()
    await bus.attach("bob", bob)
    old = await bus.attach("alice", Box())
    new = await bus.attach("alice", Box())
    await join_both(bus, "alice", "bob", new.epoch)
    assert (await bus.send("bob", msg(1), origin=("alice", old.epoch))).outcome is Outcome.REPLACED
    assert (await bus.broadcast("alice", "r", msg(2), epoch=old.epoch)).outcome is Outcome.REPLACED
    with pytest.raises(BusUnavailable):
        await bus.leave("alice", "r", epoch=old.epoch)
    assert (await bus.send("bob", msg(3), origin=("alice", new.epoch))).outcome is Outcome.DELIVERED
    assert [m.get("data") for m in await bob.wait(2)] == [None, 3]  # peer-joined, then 3 only


async def join_both(bus: Bus, a: str, b: str, epoch: int) -> None:
    await bus.join(b, "r", room_limit=9, rooms_per_peer=9)
    await bus.join(a, "r", room_limit=9, rooms_per_peer=9, epoch=epoch)


@pytest.mark.parametrize("queued_before", [0, 2])
async def test_a_resume_from_the_welcome_seq_replays_all_the_connection_was_given(bus, queued_before):
    # protocol 1.1: a connection lost before its client processed anything resumes from
    # welcome.seq (Attached.seq) and gets every frame the lost connection was given, once
    last = await _away_after_one(bus)
    for n in range(1, 1 + queued_before):
        await bus.send("bob", msg(n))
    box = Box()
    first = await bus.attach("bob", box, resume=last)
    await bus.send("bob", msg(9))
    await box.wait(1)
    await bus.detach("bob", first.epoch, final=False, delivered=box.got[-1][0])
    again = await bus.attach("bob", Box(), resume=first.seq)
    assert again.resumed
    assert [json.loads(body)["data"] for _, body in again.replay] == [*range(1, 1 + queued_before), 9]


async def test_the_welcome_seq_after_a_gap_is_a_point_a_resume_can_serve(bus):
    last = await _away_after_one(bus)
    for n in range(1, 7):  # the bound is 4: 1 and 2 are pushed out
        await bus.send("bob", msg(n))
    gap = await bus.attach("bob", Box(), resume=last)
    assert not gap.resumed and [json.loads(body)["data"] for _, body in gap.replay] == [3, 4, 5, 6]
    await bus.detach("bob", gap.epoch, final=False)  # lost before anything was processed
    again = await bus.attach("bob", Box(), resume=gap.seq)
    assert again.resumed and [json.loads(body)["data"] for _, body in again.replay] == [3, 4, 5, 6]


async def test_a_new_peer_resumes_from_its_first_welcome_seq(bus):
    box = Box()
    first = await bus.attach("carol", box)
    for n in range(2):
        await bus.send("carol", msg(n))
    await box.wait(2)
    await bus.detach("carol", first.epoch, final=False, delivered=box.got[-1][0])
    again = await bus.attach("carol", Box(), resume=first.seq)
    assert again.resumed and [json.loads(body)["data"] for _, body in again.replay] == [0, 1]


async def _away_after_one(bus: Bus) -> str:
    """bob gets message 0, then his connection drops (reconnecting); his last seq."""
    box = Box()
    a = await bus.attach("bob", box)
    await bus.send("bob", msg(0))
    await box.wait(1)
    last = box.got[-1][0]
    await bus.detach("bob", a.epoch, final=False, delivered=last)
    return last


async def test_reconnecting_peer_queues_then_resumes_exactly_once(bus):
    last = await _away_after_one(bus)
    for n in (1, 2):
        assert (await bus.send("bob", msg(n))).outcome is Outcome.QUEUED
    again = Box()
    b = await bus.attach("bob", again, resume=last)
    assert b.resumed and [json.loads(body)["data"] for _, body in b.replay] == [1, 2]


async def test_reconnect_without_resume_starts_after_what_was_delivered(bus):
    await _away_after_one(bus)
    await bus.send("bob", msg(1))
    b = await bus.attach("bob", Box())
    assert not b.resumed and [json.loads(body)["data"] for _, body in b.replay] == [1]


async def test_inbox_bound_makes_resume_fail(bus):
    a = await bus.attach("bob", Box())
    await bus.detach("bob", a.epoch, final=False)
    for n in range(6):  # the bound is 4
        await bus.send("bob", msg(n))
    b = await bus.attach("bob", Box(), resume="1-0")
    assert not b.resumed
    assert [json.loads(body)["data"] for _, body in b.replay] == [2, 3, 4, 5]


@pytest.mark.parametrize("missed", [4, 5])
async def test_inbox_bound_exactly_full_still_resumes_one_more_does_not(bus, missed):
    last = await _away_after_one(bus)
    for n in range(1, missed + 1):  # the bound is 4
        await bus.send("bob", msg(n))
    b = await bus.attach("bob", Box(), resume=last)
    assert b.resumed is (missed <= 4)
    assert [json.loads(body)["data"] for _, body in b.replay] == list(range(missed - 3, missed + 1))


async def test_rooms_join_leave_broadcast_and_events(bus):
    boxes = {p: Box() for p in "abc"}
    for p, box in boxes.items():
        await bus.attach(p, box)
    assert (await bus.join("a", "r", room_limit=2, rooms_per_peer=5)).peers == []
    assert (await bus.join("b", "r", room_limit=2, rooms_per_peer=5)).peers == ["a"]
    assert (await bus.join("c", "r", room_limit=2, rooms_per_peer=5)).outcome is Outcome.ROOM_FULL
    assert (await boxes["a"].wait(1))[0] == {"type": "peer-joined", "room": "r", "peer": "b"}
    assert (await bus.broadcast("c", "r", msg(0))).outcome is Outcome.NOT_IN_ROOM
    assert (await bus.broadcast("a", "r", msg(7))).outcome is Outcome.DELIVERED
    assert (await boxes["b"].wait(1))[0]["data"] == 7
    assert (await bus.leave("b", "r")).outcome is Outcome.OK
    assert (await boxes["a"].wait(2))[1] == {"type": "peer-left", "room": "r", "peer": "b"}
    assert (await bus.leave("b", "r")).outcome is Outcome.NOT_IN_ROOM


async def test_rooms_per_peer_limit(bus):
    await bus.attach("a", Box())
    assert (await bus.join("a", "r1", room_limit=9, rooms_per_peer=1)).outcome is Outcome.OK
    assert (await bus.join("a", "r2", room_limit=9, rooms_per_peer=1)).outcome is Outcome.TOO_MANY_ROOMS


async def _a_and_b_in_room(bus):
    """Peers a and b in room r; returns a's mailbox and b's attachment."""
    a_box = Box()
    await bus.attach("a", a_box)
    b = await bus.attach("b", Box())
    await bus.join("a", "r", room_limit=9, rooms_per_peer=9)
    await bus.join("b", "r", room_limit=9, rooms_per_peer=9)
    return a_box, b


async def test_grace_keeps_rooms_then_expiry_sends_peer_left(bus):
    a_box, b = await _a_and_b_in_room(bus)
    await a_box.wait(1)
    await bus.detach("b", b.epoch, final=False)
    assert (await bus.broadcast("a", "r", msg(1))).outcome is Outcome.QUEUED
    await asyncio.sleep(GRACE + 0.3)
    got = await a_box.wait(2)
    assert got[1] == {"type": "peer-left", "room": "r", "peer": "b"}
    assert (await bus.send("b", msg(2))).outcome is Outcome.NO_PEER


async def test_reattach_within_grace_keeps_rooms_silently(bus):
    a_box, b = await _a_and_b_in_room(bus)
    await a_box.wait(1)
    await bus.detach("b", b.epoch, final=False)
    again = await bus.attach("b", Box())
    assert again.rooms == frozenset({"r"})
    await asyncio.sleep(GRACE + 0.2)
    assert len(a_box.got) == 1  # no peer-left, no second peer-joined


@pytest.fixture(params=["redis", "redis-cluster", "redis-acl-tls", "redis-sentinel"])
async def redis_bus_only(request) -> AsyncIterator[Bus]:
    b = BUSES[request.param](request)
    await b.start()
    yield b
    await b.close()


async def test_redis_attach_registers_with_the_node_and_ends_the_grace(redis_bus_only):
    # what the sweeper relies on: a node's peer set names every peer it holds (so its
    # death orphans them), and a peer back within its grace is off the grace schedule
    bus = redis_bus_only
    cmd, node_peers = bus._cmd, bus._node_peers_key(bus.node_id)
    first = await bus.attach("b", Box())
    assert await cmd("SISMEMBER", node_peers, "b")
    await bus.detach("b", first.epoch, final=False)
    assert await cmd("ZSCORE", bus.grace_key, "b") is not None and not await cmd("SISMEMBER", node_peers, "b")
    await bus.attach("b", Box())
    assert await cmd("ZSCORE", bus.grace_key, "b") is None
    assert await cmd("SISMEMBER", node_peers, "b")


async def test_final_detach_leaves_rooms_at_once(bus):
    a_box, b = await _a_and_b_in_room(bus)
    await bus.detach("b", b.epoch, final=True)
    got = await a_box.wait(2)
    assert got[1] == {"type": "peer-left", "room": "r", "peer": "b"}
    assert (await bus.send("b", msg(1))).outcome is Outcome.NO_PEER


async def test_too_many_rooms_is_checked_before_room_full(bus):
    await bus.attach("a", Box())
    await bus.attach("b", Box())
    await bus.join("a", "full", room_limit=1, rooms_per_peer=9)
    await bus.join("b", "mine", room_limit=9, rooms_per_peer=1)
    result = await bus.join("b", "full", room_limit=1, rooms_per_peer=1)
    assert result.outcome is Outcome.TOO_MANY_ROOMS


async def test_an_older_handshake_cannot_take_over_a_newer_connection(redis_bus_only):
    # a client's abandoned attempt, stuck on a node whose link to Redis stalled, reaches
    # Redis after the client's newer connection: it is refused, the newer one untouched
    bus, newer = redis_bus_only, Box()
    began = time.monotonic()
    await bus.attach("bob", newer, started=began)
    with pytest.raises(AttachRefused) as refused:
        await bus.attach("bob", Box(), started=began - 0.5)
    assert refused.value.newer and not newer.was_replaced
    assert (await bus.send("bob", msg(1))).outcome is Outcome.DELIVERED
    assert [m["data"] for m in await newer.wait(1)] == [1]


async def test_a_handshake_that_reaches_redis_too_late_is_refused(redis_bus_only):
    with pytest.raises(AttachRefused) as refused:
        await redis_bus_only.attach("bob", Box(), started=time.monotonic() - 20)
    assert not refused.value.newer
    assert (await redis_bus_only.send("bob", msg(1))).outcome is Outcome.NO_PEER


async def test_a_node_past_its_lease_fences_its_connections_and_acts_for_none(redis_bus_only):
    bus, box = redis_bus_only, Box()
    await bus.attach("bob", box)
    bus._lease_until = time.monotonic() - 0.001  # as after a pause: the lease has lapsed
    with pytest.raises(LeaseLost):
        await bus.send("bob", msg(1))
    assert box.was_fenced and not bus.ready
    with pytest.raises(LeaseLost):
        await bus.attach("carol", Box())


async def test_a_send_whose_reply_was_lost_runs_once_when_tried_again(redis_server, key_prefix):
    from signaling.bus.redis import RedisBus

    bus = RedisBus(redis_server.url, node_id="node-1", grace=GRACE, inbox_limit=4, prefix=key_prefix)
    await bus.start()
    try:
        box = Box()
        await bus.attach("bob", box)
        link = bus._link
        route, keys = bus._send_route("bob")
        packed = bus._packed_send
        first = await link.call_packed(route, packed(keys, msg(1), None, b"send-1", False))
        again = await link.call_packed(route, packed(keys, msg(1), None, b"send-1", True))  # its reply was lost
        assert again == first  # found by its key: not stored or published a second time
        never_ran = await link.call_packed(route, packed(keys, msg(2), None, b"send-2", True))
        assert never_ran[0] == 1 and never_ran[1] != first[1]  # a retry of a send that had not run runs
        await asyncio.sleep(0.2)
        assert [m["data"] for m in await box.wait(2)] == [1, 2] and len(box.got) == 2
    finally:
        await bus.close()


async def test_commands_are_sent_on_call_and_run_in_call_order(redis_bus_only):
    # the bus relies on it on every topology (an attach registers with its node before
    # ATTACH runs; a detach's schedule follows it): redis-py's cluster client sent a
    # command only once its coroutine was awaited, which reordered them
    bus = redis_bus_only
    key = f"{bus.prefix}:{{p:order}}:probe"
    first = bus._cmd("SADD", key, "first")  # not awaited
    await asyncio.sleep(0.2)
    assert await bus._cmd("SMEMBERS", key) == [b"first"]  # it ran without being awaited
    writes = [bus._cmd("SADD", key, f"m{i}") for i in range(50)]
    count = bus._cmd("SCARD", key)  # sent after the 50, answered after them
    assert await count == 51
    await asyncio.gather(first, *writes)
    await bus._cmd("DEL", key)
