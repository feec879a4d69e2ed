"""signaling.inbox: seq strings and the bounded per-peer inbox."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.inbox import (
    LUA_EXACT,
    RESUME_FUTURE_MS,
    TRIM_HORIZON,
    ZERO,
    Inbox,
    entry_size,
    format_seq,
    parse_resume,
    parse_seq,
)

# -- seq strings ---------------------------------------------------------------------

@pytest.mark.parametrize("seq", [(0, 0), (1700000000000, 3), (1, 2**40), (2**64 - 1, 2**64 - 1)])
def test_format_then_parse_round_trips(seq):
    assert parse_seq(format_seq(seq)) == seq


@pytest.mark.parametrize("text", ["0-18446744073709551616", "18446744073709551616-0", "0-99999999999999999999"])
def test_parse_seq_refuses_what_no_stream_id_can_hold(text):
    # a resume beyond Redis's uint64 stream ids would fail inside a script: refused before the upgrade
    assert parse_seq(text) is None


def test_parse_seq_reads_stream_id():
    assert parse_seq("1700000000000-3") == (1700000000000, 3)


@pytest.mark.parametrize("junk", [None, "", "-", "1", "1-", "-1", "a-1", "1-b", "1-2-3", "+1-2", "1--2",
                                  " 1-2", "1-2 ", "1.0-2", "١-٢", "²-1", "1-" + "9" * 40, "0x1-2"])
def test_parse_seq_rejects_junk(junk):
    assert parse_seq(junk) is None


@given(st.integers(0, 10**18), st.integers(0, 10**18))
def test_parse_seq_inverts_format_seq(ms, n):
    assert parse_seq(format_seq((ms, n))) == (ms, n)


@given(st.text(max_size=50))
def test_parse_seq_of_any_text_is_none_or_a_pair_of_naturals(text):
    out = parse_seq(text)
    assert out is None or (isinstance(out, tuple) and out[0] >= 0 and out[1] >= 0)


# -- ordering ------------------------------------------------------------------------

def test_appends_in_one_millisecond_count_up():
    box = Inbox(limit=10)
    seqs = [box.append(b"{}", 5.0)[0] for _ in range(3)]
    assert seqs == [(5000, 0), (5000, 1), (5000, 2)]


def test_seq_stays_increasing_when_clock_goes_backwards():
    box = Inbox(limit=10)
    a, _ = box.append(b"{}", 10.0)
    b, _ = box.append(b"{}", 9.0)
    c, _ = box.append(b"{}", 11.0)
    assert a < b < c
    assert box.last == c


@settings(max_examples=200)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_seqs_strictly_increase_for_any_clock(clock):
    box = Inbox(limit=1000)
    seqs = [box.append(b"{}", now)[0] for now in clock]
    assert all(x < y for x, y in itertools.pairwise(seqs))
    assert [parse_seq(format_seq(s)) for s in seqs] == seqs


# -- the count bound ----------------------------------------------------------------

def test_append_within_the_bound_drops_nothing():
    box = Inbox(limit=2)
    assert box.append(b"1", 0)[1] == [] and box.append(b"2", 0)[1] == []
    assert box.trimmed == ZERO


def test_a_full_inbox_lets_a_sixteenth_go_at_once():
    box = Inbox(limit=32)
    seqs = [box.append(b"m", 0)[0] for _ in range(32)]
    _, dropped = box.append(b"m", 0)
    assert [e.seq for e in dropped] == seqs[:3] and len(box.entries) == 30  # 32 - 32 // 16
    assert all(box.append(b"m", 0)[1] == [] for _ in range(2))  # the next sends trim nothing


def test_count_bound_returns_the_dropped_oldest_entry_and_sets_trimmed():
    box = Inbox(limit=2)
    s1, _ = box.append(b"1", 0)
    box.append(b"2", 0)
    _, [dropped] = box.append(b"3", 0)
    assert (dropped.seq, dropped.body) == (s1, b"1")
    assert box.trimmed == s1
    assert [e.body for e in box.entries] == [b"2", b"3"]


def test_old_entries_stay_however_much_time_passes():
    box = Inbox(limit=10)
    box.append(b"1", 0)
    _, dropped = box.append(b"2", 1e6)
    assert dropped == [] and [e.body for e in box.entries] == [b"1", b"2"]


# -- covers / after -------------------------------------------------------------------

def test_after_returns_entries_strictly_after_seq():
    box = Inbox(limit=10)
    s = [box.append(str(i).encode(), 1)[0] for i in range(4)]
    assert [e.seq for e in box.after(s[1])] == s[2:]
    assert [e.seq for e in box.after(ZERO)] == s
    assert box.after(s[-1]) == []


def test_covers_between_trimmed_and_last():
    box = Inbox(limit=2)
    s = [box.append(b"x", 1)[0] for _ in range(4)]  # s0, s1 trimmed
    assert box.trimmed == s[1]
    assert not box.covers(s[0])
    assert box.covers(s[1]) and box.covers(s[2]) and box.covers(s[3])
    assert not box.covers((s[3][0], s[3][1] + 1))


def test_empty_inbox_covers_only_zero():
    box = Inbox(limit=2)
    assert box.covers(ZERO)
    assert not box.covers((1, 0))


NOW = 1_800_000_000.0  # seconds


@pytest.mark.parametrize("text", ["0-0", "1800000000000-0", "1800000000000-17",
                                  format_seq((int(NOW * 1000) + RESUME_FUTURE_MS, 0))])
def test_parse_resume_takes_seqs_as_the_server_writes_them(text):
    assert parse_resume(text, NOW) == parse_seq(text)


@pytest.mark.parametrize("text", [
    "0-18446744073709551615", "18446744073709551615-0",   # valid stream ids, beyond what the scripts compare
    f"1-{LUA_EXACT}", f"{LUA_EXACT}-0",
    format_seq((int(NOW * 1000) + RESUME_FUTURE_MS + 1, 0)),  # from the future
    "01-1", "1-01", "00-0",                                # not as the server writes them
    "", "1", "-1", "1-", "a-b", "1-1-1",
])
def test_parse_resume_refuses_what_no_server_sent(text):
    assert parse_resume(text, NOW) is None


@given(st.text(max_size=50))
def test_parse_resume_is_parse_seq_or_stricter(text):
    got = parse_resume(text, NOW)
    assert got is None or got == parse_seq(text)


# -- the byte bound and trimming what the client has ----------------------------------

def test_byte_bound_drops_the_oldest_until_the_rest_fits_but_never_the_newest():
    box = Inbox(limit=100, max_bytes=3 * entry_size(b"x" * 100))
    seqs = [box.append(b"x" * 100, 0)[0] for _ in range(3)]
    _, dropped = box.append(b"y" * 250, 0)  # past the bound: down to 15/16 of it
    assert [e.seq for e in dropped] == seqs and box.trimmed == seqs[2]
    assert box.bytes == sum(entry_size(e.body) for e in box.entries) <= box.max_bytes
    _, dropped = box.append(b"z" * 10_000, 0)  # bigger than the bound alone: it stays, alone
    assert [e.body[:1] for e in box.entries] == [b"z"]


@given(st.lists(st.integers(0, 3000), max_size=40), st.integers(1, 10), st.integers(100, 8000))
def test_the_bounds_always_hold(sizes, limit, max_bytes):
    box = Inbox(limit=limit, max_bytes=max_bytes)
    for i, n in enumerate(sizes):
        box.append(b"x" * n, i)
        assert len(box.entries) <= limit
        assert box.bytes <= max_bytes or len(box.entries) == 1
        assert box.bytes == sum(entry_size(e.body) for e in box.entries)


def test_trim_through_keeps_what_is_younger_than_the_horizon():
    box = Inbox(limit=10)
    seqs = [box.append(b"m", t)[0] for t in (0, 5, 9)]
    assert box.trim_through(seqs[2], 12) is False  # 5 and 9 are younger than 10 s at 12
    assert [e.seq for e in box.entries] == seqs[1:]
    assert box.trim_through(seqs[2], 19.5) is True and not box.entries


def test_trim_through_lets_go_of_what_the_client_has_and_a_resume_from_after_it_is_covered():
    box = Inbox(limit=10)
    seqs = [box.append(b"m", 0)[0] for _ in range(4)]
    assert box.trim_through(seqs[1], TRIM_HORIZON)
    assert [e.seq for e in box.entries] == seqs[2:] and box.trimmed == seqs[1]
    assert box.covers(seqs[1]) and box.covers(seqs[3]) and not box.covers(seqs[0])
    assert [e.seq for e in box.after(seqs[1])] == seqs[2:]
