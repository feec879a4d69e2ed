"""Fast unit tests of the Redis bus's pieces, on fakeredis (the real thing is in tests/contract)."""

from __future__ import annotations

import fakeredis
import pytest

from signaling import envelope
from signaling.bus.redis import RedisBus, _Local, cluster_nodes


class Box:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.was_lost = False

    def deliver(self, seq: str, body: bytes) -> None:
        self.got.append((seq, body))

    def replaced(self) -> None:
        raise AssertionError("not expected")

    def lost(self) -> None:
        self.was_lost = True


def test_envelope_round_trip_and_version_check():
    env = envelope.Envelope("d", 7, "1-2", b'{"type":"message"}', 1234.0)
    assert envelope.unpack(envelope.pack(env)) == env
    assert envelope.unpack(envelope.pack(envelope.Envelope("r", 3))) == envelope.Envelope("r", 3)
    import msgpack

    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(msgpack.packb({"v": 2, "k": "d", "e": 1}))
    with pytest.raises(envelope.EnvelopeError):
        envelope.unpack(b"\xc1 not msgpack")


def test_cluster_urls():
    assert cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    with pytest.raises(ValueError):
        cluster_nodes("redis+cluster://nohost")


def test_prefix_is_checked():
    with pytest.raises(ValueError):
        RedisBus("redis://x", node_id="n", grace=1, inbox_limit=1, prefix="bad{prefix}")


async def _bus_with_inbox(entries: int, trimmed: str | None) -> tuple[RedisBus, Box, list[str]]:
    bus = RedisBus("redis://unused", node_id="n1", grace=5, inbox_limit=10)
    bus._redis = fakeredis.FakeAsyncRedis()  # noqa: SLF001
    state, inbox, _, _ = bus._peer_keys("bob")  # noqa: SLF001
    ids = [(await bus._redis.xadd(inbox, {"b": f"m{i}".encode()})).decode() for i in range(entries)]  # noqa: SLF001
    if trimmed:
        await bus._redis.hset(state, "trimmed", trimmed)  # noqa: SLF001
    box = Box()
    bus._local["bob"] = [_Local(box, epoch=1, last_seq=ids[1])]  # noqa: SLF001
    return bus, box, ids


async def test_gap_repair_hands_over_what_the_inbox_got_meanwhile():
    bus, box, ids = await _bus_with_inbox(5, trimmed=None)
    await bus._repair_gaps()  # noqa: SLF001
    assert [seq for seq, _ in box.got] == ids[2:] and not box.was_lost


async def test_gap_repair_reports_a_gap_the_bound_cut_into():
    bus, box, ids = await _bus_with_inbox(5, trimmed="99999999999999-0")
    await bus._repair_gaps()  # noqa: SLF001
    assert box.was_lost and box.got == []


async def test_gap_repair_knows_a_full_inbox_pushed_out_what_its_oldest_entry_marks():
    # inbox limit 10, 11 entries: full, the oldest (ids[0]) marks the newest seq pushed out
    bus, box, ids = await _bus_with_inbox(11, trimmed=None)
    bus._local["bob"][0].last_seq = ids[0]  # noqa: SLF001 - it has the marker: nothing is missing
    await bus._repair_gaps()  # noqa: SLF001
    assert [seq for seq, _ in box.got] == ids[1:] and not box.was_lost
    bus, box, ids = await _bus_with_inbox(11, trimmed=None)
    bus._local["bob"][0].last_seq = "1-0"  # noqa: SLF001 - from before the marker: a gap
    await bus._repair_gaps()  # noqa: SLF001
    assert box.was_lost and box.got == []


def test_resp_packing():
    from signaling.bus.redis_wire import pack

    assert pack(("SET", "k", b"v\r\n", 12)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n"
    import hiredis

    reader = hiredis.Reader()
    reader.feed(pack(("EVALSHA", "abc", 1, "key", "é")))
    assert reader.gets() == [b"EVALSHA", b"abc", b"1", b"key", "é".encode()]


def test_the_hot_path_packs_send_exactly_as_the_generic_packer_would(monkeypatch):
    from signaling.bus import redis as redis_bus
    from signaling.bus.redis_wire import pack

    monkeypatch.setattr(redis_bus, "_ms", lambda: 1764201600123)
    bus = RedisBus("redis://127.0.0.1:1/0", node_id="n1", grace=30.0, inbox_limit=256)
    bus._sha = {"SEND": "f" * 40}  # noqa: SLF001
    bus._prepare_send()  # noqa: SLF001 - what start() does once the scripts are known
    body = b'{"type":"message","from":"a","data":"\xc3\xa9\\r\\n"}'
    state, inbox, _, channel = bus._peer_keys("b:1")  # noqa: SLF001
    expected = pack(("EVALSHA", "f" * 40, 3, state, inbox, channel, body, 256, 1764201600123, bus._ttl_ms))  # noqa: SLF001
    assert bus._packed_send("b:1", body) == expected  # noqa: SLF001
    assert bus._packed_send("b:1", body) == expected  # noqa: SLF001 - from the cache too
