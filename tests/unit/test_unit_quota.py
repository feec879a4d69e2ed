"""The per-peer quota: budgets, snapshots carried between connections, the node's table."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from signaling.quota import Limits, Quota, Quotas, Snapshot

LIMITS = Limits(rate=10, burst=20, abuse_strikes=3, abuse_window=5, byte_rate=1000, byte_burst=4000)


def drain(q: Quota, now: float, size: int = 1) -> int:
    n = 0
    while q.take(size, now):
        n += 1
    return n


def test_a_frame_needs_both_budgets_and_a_refused_one_costs_neither():
    q = Quota(LIMITS, 0)
    assert q.take(3000, 0)
    assert not q.take(2000, 0)  # over the bytes left
    assert q.messages.level(0) == 19  # the refused frame's message token came back
    assert q.take(1000, 0)


def test_a_snapshot_carried_to_a_new_quota_leaves_only_what_was_left():
    old = Quota(LIMITS, 0)
    drain(old, 0)
    snap = old.snapshot(0)
    new = Quota(LIMITS, 0.5)
    new.restrict(snap, age=0.5, now=0.5)
    assert drain(new, 0.5) == 5  # half a second of refill at 10/s, not a fresh burst of 20


def test_a_late_report_charges_what_the_successor_spent_meanwhile():
    old = Quota(LIMITS, 0)
    for _ in range(15):
        old.take(1, 0)  # 5 left
    new = Quota(LIMITS, 0)
    mark = new.spent()
    assert drain(new, 0) == 20  # before the report arrives it starts from a stale snapshot: full
    spent = (new.spent()[0] - mark[0], new.spent()[1] - mark[1])
    new.restrict(old.snapshot(0), age=0, now=0, spent_since=spent)
    assert not new.take(1, 1.0)  # in debt by 15: a second of refill (10) does not pay it
    assert new.take(1, 1.6)


def test_strikes_carry_over_and_fade_after_the_window():
    old = Quota(LIMITS, 0)
    assert not old.strike(0) and not old.strike(0)
    new = Quota(LIMITS, 1)
    new.restrict(old.snapshot(1), age=0, now=1)
    assert not new.strike(1)
    assert new.strike(1)  # the 4th within the window
    later = Quota(LIMITS, 100)
    later.restrict(old.snapshot(1), age=99, now=100)  # a snapshot older than the window says nothing
    assert not later.strike(100)


@given(st.floats(-1e9, 1e9), st.floats(-1e9, 1e12), st.integers(0, 10_000))
def test_snapshots_round_trip(m, b, s):
    got = Snapshot.unpack(Snapshot(m, b, s).pack())
    assert got is not None and abs(got.messages - m) < 1e-3 + abs(m) * 1e-9 and got.strikes == s


def test_a_snapshot_unpacks_only_from_its_own_form():
    for junk in (None, b"", "1 2", "a b c", "1 2 3 4", b"\xff"):
        assert Snapshot.unpack(junk) is None


def test_the_table_shares_a_quota_among_a_peers_connections():
    table = Quotas(LIMITS, capacity=10)
    a, b = table.acquire("alice", 0), table.acquire("alice", 0)
    assert a is b
    table.release("alice", 0)
    assert table.acquire("alice", 1) is a


def test_the_table_forgets_idle_entries_once_as_good_as_new_and_is_bounded():
    table = Quotas(LIMITS, capacity=3)
    for i in range(10):
        table.acquire(f"p{i}", 0)
        table.release(f"p{i}", 0)
    assert len(table) == 3  # the oldest idle ones went
    live = table.acquire("live", 0)
    table.prune(LIMITS.memory + 1)
    assert len(table) == 1 and table.acquire("live", 100) is live  # a connected peer's stays
