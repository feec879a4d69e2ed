"""Retention (bus/retention.py): what a node keeps of what it acked, and when it lets go."""

from __future__ import annotations

from signaling.bus.retention import ENTRY_OVERHEAD, Retention


def _fill(r: Retention, times: list[float], size: int = 100) -> None:
    for i, at in enumerate(times):
        r.add(at, f"p{i}", b"1-%d" % i, b"x" * size, b"k%d" % i)


def test_kept_until_redis_is_seen_alive_a_window_after_the_ack():
    r = Retention(window=5.0, max_bytes=1 << 20)
    _fill(r, [0.0, 1.0, 2.0])
    r.confirm(5.5)  # alive 5.5 s after the first, 4.5 s after the second
    assert [e.to for e in r.take()] == ["p1", "p2"]
    assert len(r) == 0 and r.bytes == 0


def test_nothing_is_let_go_without_redis_seen_alive():
    r = Retention(window=1.0, max_bytes=1 << 20)
    _fill(r, [0.0, 1.0])
    # no confirm: however long Redis was away, both wait for the next lease reply
    assert [e.seq for e in r.take()] == [b"1-0", b"1-1"]


def test_the_byte_bound_lets_the_oldest_go_and_counts_them():
    r = Retention(window=5.0, max_bytes=3 * (100 + ENTRY_OVERHEAD))
    _fill(r, [0.0, 0.1, 0.2, 0.3, 0.4])
    assert len(r) == 3 and r.dropped == 2 and r.bytes <= r.max_bytes
    assert [e.to for e in r.take()] == ["p2", "p3", "p4"]


def test_what_could_not_be_handed_in_goes_back_first_in_line():
    r = Retention(window=5.0, max_bytes=1 << 20)
    _fill(r, [0.0, 1.0, 2.0])
    taken = r.take()
    r.add(3.0, "new", b"2-0", b"y", b"kn")
    r.give_back(taken[1:])
    assert [e.to for e in r.take()] == ["p1", "p2", "new"]
    assert r.bytes == 0


def test_a_zero_window_keeps_nothing():
    r = Retention(window=0.0, max_bytes=1 << 20)
    _fill(r, [0.0])
    assert len(r) == 0 and r.take() == []
