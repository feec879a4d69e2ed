"""Unit tests of the Redis bus's pieces; those that run a script use the real redis-server."""

from __future__ import annotations

import pytest

from signaling import envelope
from signaling.bus.redis import RedisBus, _Local
from support import RecordingMailbox


def test_envelope_round_trip_and_version_check():
    env = envelope.Envelope("d", 7, "1-2", b'{"type":"message"}', 1234.0)
    assert envelope.unpack(envelope.pack(env)) == env
    assert envelope.unpack(envelope.pack(envelope.Envelope("r", 3))) == envelope.Envelope("r", 3)
    import msgpack

    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(msgpack.packb({"v": 2, "k": "d", "e": 1}))
    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(b"\xc1 not msgpack")
    # a known kind without its fields, or fields of the wrong type: the bad-envelope path too
    for broken in ({"v": 1, "k": "d", "e": 1}, {"v": 1, "k": "d", "e": 1, "s": 5, "b": b"x"},
                   {"v": 1, "k": "d", "e": 1, "s": "1-0", "b": 5}, {"v": 1, "k": "q", "e": 1}, [1, 2, 3], 7):
        with pytest.raises(envelope.EnvelopeError):
            envelope.unpack(msgpack.packb(broken))


def test_prefix_is_checked():
    with pytest.raises(ValueError):
        RedisBus("redis://x", node_id="n", grace=1, inbox_limit=1, prefix="bad{prefix}")


async def _registered_with_inbox(redis_server, key_prefix, entries: int, trimmed: str | None,
                                 last: int) -> tuple[RedisBus, RecordingMailbox, list[str]]:
    """A started bus whose live connection of bob (epoch 7) was handed ids[last]; Redis
    has `entries` inbox entries for bob (inbox limit 10)."""
    import redis.asyncio as aioredis

    bus = RedisBus(redis_server.url, node_id="n1", grace=5, inbox_limit=10, prefix=key_prefix)
    await bus.start()
    state, inbox, _, _ = bus._peer_keys("bob")
    async with aioredis.from_url(redis_server.url) as r:
        ids = [(await r.xadd(inbox, {"b": f"m{i}".encode(), "k": b""})).decode() for i in range(entries)]
        await r.hset(state, mapping={"epoch": 7, "node": "n1", "connected": 1,
                                     **({"trimmed": trimmed} if trimmed else {})})
    box = RecordingMailbox(decode=False, lost_is_error=False)
    bus._local["bob"] = [_Local(box, "bob", epoch=7, last_seq=ids[last])]
    return bus, box, ids


async def test_registering_again_hands_over_what_the_inbox_got_meanwhile(redis_server, key_prefix):
    bus, box, ids = await _registered_with_inbox(redis_server, key_prefix, 5, trimmed=None, last=1)
    try:
        await bus._register_again()
        assert [seq for seq, _ in box.got] == ids[2:] and not box.was_lost
    finally:
        await bus.close()


async def test_registering_again_reports_a_gap_the_bound_cut_into(redis_server, key_prefix):
    bus, box, ids = await _registered_with_inbox(redis_server, key_prefix, 5, trimmed="99999999999999-0", last=1)
    try:
        await bus._register_again()
        assert box.was_lost and box.got == []
    finally:
        await bus.close()


async def test_registering_again_knows_a_full_inbox_pushed_out_what_its_oldest_entry_marks(redis_server, key_prefix):
    # inbox limit 10, 11 entries: full, the oldest (ids[0]) marks the newest seq pushed out
    bus, box, ids = await _registered_with_inbox(redis_server, key_prefix, 11, trimmed=None, last=0)
    try:
        await bus._register_again()  # it has the marker: nothing is missing
        assert [seq for seq, _ in box.got] == ids[1:] and not box.was_lost
    finally:
        await bus.close()
    bus, box, ids = await _registered_with_inbox(redis_server, key_prefix + "x", 11, trimmed=None, last=0)
    try:
        bus._local["bob"][0].last_seq = "1-0"  # from before the marker: a gap
        await bus._register_again()
        assert box.was_lost and box.got == []
    finally:
        await bus.close()


def test_resp_packing():
    from signaling.bus.redis_wire import pack

    assert pack(("SET", "k", b"v\r\n", 12)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n"
    import hiredis

    reader = hiredis.Reader()
    reader.feed(pack(("EVALSHA", "abc", 1, "key", "é")))
    assert reader.gets() == [b"EVALSHA", b"abc", b"1", b"key", "é".encode()]


def test_the_hot_path_packs_send_exactly_as_the_generic_packer_would():
    from signaling.bus.redis_wire import pack

    bus = RedisBus("redis://127.0.0.1:1/0", node_id="n1", grace=30.0, inbox_limit=256, inbox_bytes=5000)
    from signaling.bus.redis_link import open_link

    bus._link = open_link(bus.target, {"SEND": ""}, on_message=None, on_reconnect=None, on_changed=None,
                          on_unsettled=None)
    bus._link._shas["SEND"] = "f" * 40
    bus._prepare_send()  # what start() does once the scripts are known
    body = b'{"type":"message","from":"a","data":"\xc3\xa9\\r\\n"}'
    state, inbox, _, channel = bus._peer_keys("b:1")
    sender = bus._peer_keys("a")[0]
    ttl = bus._ttl_ms
    for retry in (False, True):
        anonymous = pack(("EVALSHA", "f" * 40, 3, state, inbox, channel, body, 256, ttl, b"k:1", "", int(retry), 5000))
        fenced = pack(("EVALSHA", "f" * 40, 4, state, inbox, channel, sender, body, 256, ttl, b"k:1",
                       1796136845519990, int(retry), 5000))
        for _ in range(2):  # the second time from the caches
            route, keys = bus._send_route("b:1")
            assert route == state
            assert bus._packed_send(keys, body, None, b"k:1", retry) == anonymous
            assert bus._packed_send(keys, body, ("a", 1796136845519990), b"k:1", retry) == fenced


async def test_registering_again_after_redis_lost_everything_puts_the_peer_back_in_its_rooms(redis_server, key_prefix):
    # the peer's own rooms go back in the REGISTER script itself, and the rooms' member sets
    # follow even when the lease ran out during the round (a peer resumable elsewhere but
    # outside its rooms answered not-in-room for 28 s in a fault run)
    import time

    import redis.asyncio as aioredis

    bus = RedisBus(redis_server.url, node_id="n1", grace=5, inbox_limit=10, prefix=key_prefix)
    await bus.start()
    try:
        state, inbox, rooms, _ = bus._peer_keys("carol")
        assert await bus._eval("REGISTER", [state, inbox, rooms], [7, "n1", "5-0", 10, "r1"]) == [2, []]
        box = RecordingMailbox(decode=False, lost_is_error=False)
        bus._local["bob"] = [_Local(box, "bob", epoch=7, last_seq="5-0", rooms=frozenset({"r1", "r2"}))]
        bus._lease_until = time.monotonic() - 0.001  # lapsed mid-round
        await bus._register_again()  # Redis has nothing of bob: restored
        state, _, rooms, _ = bus._peer_keys("bob")
        async with aioredis.from_url(redis_server.url) as r:
            assert await r.smembers(bus._peer_keys("carol")[2]) == {b"r1"}
            assert await r.smembers(rooms) == {b"r1", b"r2"}
            for room in ("r1", "r2"):
                assert await r.sismember(bus._room_key(room), "bob")
            assert await r.hget(state, "trimmed") == b"5-0"  # a resume from before it has a gap
    finally:
        await bus.close()


async def test_a_recent_resume_that_finds_nothing_tells_every_node_that_redis_lost_its_data(redis_server, key_prefix):
    # a seq is ms of Redis's clock: a resume from one younger than the grace cannot have
    # expired, so finding no state means Redis lost it; "no such peer" is not trusted then
    import time

    from signaling.bus import BusUnavailable

    nodes = [RedisBus(redis_server.url, node_id=n, grace=15, inbox_limit=10, prefix=key_prefix) for n in ("n1", "n2")]
    for bus in nodes:
        await bus.start()
    try:
        first, other = nodes
        await first.attach("old", RecordingMailbox(lost_is_error=False), resume="1000-0")  # long expired: no evidence
        assert (await first.send("nobody", b"{}")).outcome.value == "no-peer"
        await first.attach("bob", RecordingMailbox(lost_is_error=False), resume=f"{int(time.time() * 1000) - 2000}-0")
        with pytest.raises(BusUnavailable):
            await first.send("nobody", b"{}")
        await other._renew_lease()  # the other node learns it at its next lease
        with pytest.raises(BusUnavailable):
            await other.send("nobody", b"{}")
    finally:
        for bus in nodes:
            await bus.close()


async def test_the_estimate_of_redis_clock_ignores_a_reply_held_up_on_the_way():
    # a lease reply that sat in a stalled link would put the estimate ahead by half the
    # stall: a node's abandoned handshake then looked newer than its client's next one
    import time

    bus = RedisBus("redis://127.0.0.1:1/0", node_id="n1", grace=5, inbox_limit=10, node_ttl=3.0)
    now = time.monotonic()
    bus._held_lease(now - 0.002, int(now * 1e6) + 10**9)  # a quick round trip: Redis 1000 s ahead
    good = bus._redis_time_us(now)
    assert abs(good - (now * 1e6 + 10**9)) < 2000
    bus._held_lease(now - 1.3, int(now * 1e6) + 10**9)  # 1.3 s round trip, executed at its end
    assert bus._redis_time_us(now) == good  # the slow sample is not taken
    if bus._lease_timer is not None:
        bus._lease_timer.cancel()


# -- handing in again what was acked before Redis lost its data (REPLAY, REGISTER) ----------

async def _lost_bob(redis_server, key_prefix) -> RedisBus:
    bus = RedisBus(redis_server.url, node_id="n1", grace=5, inbox_limit=100, prefix=key_prefix)
    await bus.start()
    return bus


async def _replay(bus: RedisBus, seq: str, body: bytes, key: bytes) -> int:
    state, inbox, _, channel = bus._peer_keys("bob")
    return int(await bus._eval("REPLAY", [state, inbox, channel], [seq, body, key, 5000]))


async def _register(bus: RedisBus, last: str) -> list:
    state, inbox, rooms, _ = bus._peer_keys("bob")
    return await bus._eval("REGISTER", [state, inbox, rooms], [9, "n1", last, 100])


async def test_handed_in_before_its_node_registers_it_bob_gets_only_what_he_never_had(redis_server, key_prefix):
    bus = await _lost_bob(redis_server, key_prefix)
    try:
        # two senders hand in, the newer first: the older one can no longer keep its seq
        assert await _replay(bus, "1000-3", b"m3", b"a:3") == 2
        assert await _replay(bus, "1000-1", b"m1", b"b:1") == 2
        assert await _replay(bus, "1000-2", b"m2", b"b:2") == 2
        assert await _replay(bus, "1000-3", b"m3", b"a:3") == 0  # handed in twice: once
        kind, replay = await _register(bus, "1000-1")  # bob's connection had 1000-1 and before
        assert kind == 2
        assert [body for _, body in replay] == [b"m3", b"m2"]
        assert replay[0][0] == b"1000-3"  # kept its seq; m2 got a newer one
        assert [int(x) for x in replay[1][0].split(b"-")] > [1000, 3]
        state, inbox, _, _ = bus._peer_keys("bob")
        import redis.asyncio as aioredis

        async with aioredis.from_url(redis_server.url) as r:
            assert await r.xlen(inbox) == 2 and await r.pttl(inbox) == -1  # m1 gone; no expiry on a live inbox
            assert int(await r.hget(state, "ib")) == 2 * (2 + 64)
            new = await r.xadd(inbox, {"b": b"later", "k": b""})
            assert [int(x) for x in new.split(b"-")] > [int(x) for x in replay[1][0].split(b"-")]
    finally:
        await bus.close()


async def test_handed_in_after_its_node_registered_it_what_bob_had_is_not_sent_twice(redis_server, key_prefix):
    bus = await _lost_bob(redis_server, key_prefix)
    try:
        kind, replay = await _register(bus, "1000-5")
        assert (kind, replay) == (2, [])
        assert await _replay(bus, "1000-4", b"had", b"a:4") == 0
        assert await _replay(bus, "1000-5", b"had too", b"a:5") == 0
        assert await _replay(bus, "1000-6", b"never had", b"a:6") == 2  # (nobody subscribed to hear it)
        state, inbox, _, _ = bus._peer_keys("bob")
        import redis.asyncio as aioredis

        async with aioredis.from_url(redis_server.url) as r:
            assert [(i, f[b"b"]) for i, f in await r.xrange(inbox)] == [(b"1000-6", b"never had")]
            # bob connected afresh since the loss (no `restored`): he was told resumed: false
            await r.hdel(state, "restored")
        assert await _replay(bus, "1000-7", b"for the old session", b"a:7") == 0
    finally:
        await bus.close()


async def test_a_replay_reaches_the_live_connection_through_its_channel(redis_server, key_prefix):
    bus = await _lost_bob(redis_server, key_prefix)
    try:
        box = RecordingMailbox(decode=False, lost_is_error=False)
        await bus._subscribe(bus._peer_keys("bob")[3].encode(), "bob")
        bus._local["bob"] = [_Local(box, "bob", epoch=9, last_seq="1000-1")]
        await bus._register_again()
        assert await _replay(bus, "1000-2", b"m2", b"a:2") == 1
        from support import eventually

        await eventually(lambda: box.got == [("1000-2", b"m2")])
    finally:
        await bus.close()


async def test_a_replay_cut_off_part_way_keeps_what_it_did_not_hand_in(redis_server, key_prefix):
    from redis.exceptions import ConnectionError as RedisConnectionError

    import signaling.bus.redis as redis_bus

    bus = await _lost_bob(redis_server, key_prefix)
    try:
        for i in range(3):
            bus._retention.add(0.0, "bob", b"1000-%d" % i, b"m%d" % i, b"a:%d" % i)
        bus._replay_due = True
        real, calls = bus._run_scripts, []

        async def cut_off(batch):
            calls.append(len(batch))
            if len(calls) == 2:
                raise RedisConnectionError("connection lost")
            return await real(batch)

        bus._run_scripts = cut_off
        redis_bus.REGISTER_BATCH, saved = 2, redis_bus.REGISTER_BATCH
        try:
            with pytest.raises(RedisConnectionError):
                await bus._replay()
        finally:
            redis_bus.REGISTER_BATCH = saved
        assert calls == [2, 1] and bus._replay_due
        assert [e.seq for e in bus._retention.take()] == [b"1000-2"]  # the first batch went in
    finally:
        await bus.close()


def test_with_replicas_confirming_writes_nothing_is_retained():
    kept = RedisBus("redis://127.0.0.1:1/0", node_id="n1", grace=5, inbox_limit=10, replay_window=3.0)
    waited = RedisBus("redis://127.0.0.1:1/0", node_id="n1", grace=5, inbox_limit=10, replay_window=3.0, replicas=1)
    for bus in (kept, waited):
        bus._retention.add(0.0, "bob", b"1-0", b"m", b"k")
    assert (len(kept._retention), len(waited._retention)) == (1, 0)


async def test_more_handed_in_than_the_inbox_bound_is_a_gap_not_a_silent_cut(redis_server, key_prefix):
    bus = await _lost_bob(redis_server, key_prefix)
    try:
        for i in range(1, 4):
            await _replay(bus, f"1000-{i}", b"m", f"a:{i}".encode())
        state, inbox, rooms, _ = bus._peer_keys("bob")
        # inbox bound 2, 3 waiting: the connection cannot be given them all, so it is closed to
        # resume (and learns of the gap) rather than handed the first 2
        assert await bus._eval("REGISTER", [state, inbox, rooms], [9, "n1", "1000-0", 2]) == [3]
        assert (await _register(bus, "1000-0"))[0] == 2  # (bound 100: all 3)
    finally:
        await bus.close()
