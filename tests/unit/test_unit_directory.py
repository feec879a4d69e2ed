"""signaling.directory: the peer / room / inbox state machine, with a fake clock."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.bus.memory import MemoryBus
from signaling.directory import Directory
from signaling.inbox import parse_seq
from signaling.outcome import Delivery, Outcome
from support import RecordingMailbox


def make(grace: float = 10.0, limit: int = 100) -> Directory:
    return Directory(grace=grace, inbox_limit=limit)


def msg(n) -> bytes:
    return orjson.dumps({"type": "message", "data": n})


def join(d: Directory, peer: str, room: str, now: float = 0.0, *, room_limit: int = 50, rooms_per_peer: int = 32):
    return d.join(peer, room, now, room_limit=room_limit, rooms_per_peer=rooms_per_peer)


def events(deliveries) -> list[tuple[str, dict]]:
    return [(d.peer, orjson.loads(d.body)) for d in deliveries]


def bodies(replay) -> list:
    return [orjson.loads(body)["data"] for _, body in replay]


# -- attach / detach -------------------------------------------------------------------

def test_attach_new_peer_is_connected_and_not_resumed():
    d = make()
    a = d.attach("alice", "n1", 0)
    assert (a.replaced, a.resumed, a.replay, a.rooms) == (None, False, [], frozenset())
    assert d.owner("alice") == (a.epoch, True)


def test_attach_unknown_peer_with_resume_is_not_resumed():
    assert make().attach("alice", "n1", 0, resume="5-0").resumed is False


def test_every_attach_gets_a_higher_epoch():
    d = make()
    assert d.attach("a", "n", 0).epoch < d.attach("b", "n", 0).epoch < d.attach("a", "n", 0).epoch


def test_final_detach_removes_peer():
    d = make()
    a = d.attach("alice", "n1", 0)
    assert d.detach("alice", a.epoch, 1, final=True) == []
    assert d.owner("alice") is None
    assert d.send("alice", msg(1), 2).outcome is Outcome.NO_PEER


def test_non_final_detach_leaves_peer_reconnecting_until_grace_end():
    d = make(grace=10)
    a = d.attach("alice", "n1", 0)
    d.detach("alice", a.epoch, 3, final=False)
    assert d.owner("alice") == (a.epoch, False)
    assert d.next_deadline() == 13


def test_next_deadline_is_none_without_reconnecting_peers():
    d = make()
    d.attach("alice", "n1", 0)
    assert d.next_deadline() is None


def test_next_deadline_is_the_earliest():
    d = make(grace=10)
    a, b = d.attach("a", "n", 0), d.attach("b", "n", 0)
    d.detach("b", b.epoch, 2, final=False)
    d.detach("a", a.epoch, 5, final=False)
    assert d.next_deadline() == 12


def test_detach_of_reconnecting_peer_is_ignored():
    d = make()
    a = d.attach("alice", "n1", 0)
    d.detach("alice", a.epoch, 1, final=False)
    d.detach("alice", a.epoch, 2, final=True)
    assert d.owner("alice") == (a.epoch, False)


def test_detach_of_absent_peer_is_ignored():
    assert make().detach("ghost", 1, 0, final=True) == []


# -- takeover -------------------------------------------------------------------------

def test_later_attach_takes_over_and_reports_replaced_epoch():
    d = make()
    first = d.attach("alice", "n1", 0)
    second = d.attach("alice", "n2", 1)
    assert second.replaced == first.epoch
    assert d.owner("alice") == (second.epoch, True)


def test_stale_detach_after_takeover_is_ignored():
    d = make()
    first = d.attach("alice", "n1", 0)
    second = d.attach("alice", "n2", 1)
    d.detach("alice", first.epoch, 2, final=True)
    d.detach("alice", first.epoch, 2, final=False)
    assert d.owner("alice") == (second.epoch, True)


def test_attach_of_reconnecting_peer_replaces_nothing():
    d = make()
    a = d.attach("alice", "n1", 0)
    d.detach("alice", a.epoch, 1, final=False)
    assert d.attach("alice", "n2", 2).replaced is None


def test_delivery_after_takeover_goes_to_new_epoch():
    d = make()
    d.attach("alice", "n1", 0)
    second = d.attach("alice", "n2", 1)
    assert d.send("alice", msg(1), 2).deliveries[0].epoch == second.epoch


def test_takeover_without_resume_replays_nothing():
    d = make()
    d.attach("alice", "n1", 0)
    d.send("alice", msg(1), 1)
    assert d.attach("alice", "n2", 2).replay == []


# -- send -----------------------------------------------------------------------------

def test_send_to_connected_peer_is_delivered_with_seq():
    d = make()
    a = d.attach("bob", "n1", 0)
    r = d.send("bob", msg(1), 1)
    assert r.outcome is Outcome.DELIVERED
    [dv] = r.deliveries
    assert (dv.peer, dv.epoch, dv.body) == ("bob", a.epoch, msg(1))
    assert parse_seq(dv.seq) is not None


def test_send_to_reconnecting_peer_is_queued_without_delivery():
    d = make()
    a = d.attach("bob", "n1", 0)
    d.detach("bob", a.epoch, 1, final=False)
    r = d.send("bob", msg(1), 2)
    assert r.outcome is Outcome.QUEUED and not r.deliveries


def test_send_to_absent_peer_is_no_peer_and_stores_nothing():
    d = make()
    r = d.send("nobody", msg(1), 0)
    assert r.outcome is Outcome.NO_PEER and not r.deliveries
    assert "nobody" not in d.peers


def test_seqs_increase_per_recipient_within_one_millisecond():
    d = make()
    d.attach("bob", "n1", 0)
    seqs = [parse_seq(d.send("bob", msg(i), 1.0).deliveries[0].seq) for i in range(5)]
    assert seqs == sorted(set(seqs))


# -- rooms ----------------------------------------------------------------------------

def test_join_reports_members_already_there_and_tells_them():
    d = make()
    for p in ("a", "b", "c"):
        d.attach(p, "n", 0)
    join(d, "b", "r")
    join(d, "c", "r")
    r = join(d, "a", "r")
    assert r.outcome is Outcome.OK and r.peers == ["b", "c"]
    assert events(r.deliveries) == [("b", {"type": "peer-joined", "room": "r", "peer": "a"}),
                                    ("c", {"type": "peer-joined", "room": "r", "peer": "a"})]
    assert d.members("r") == ["a", "b", "c"]


def test_first_joiner_gets_empty_peer_list():
    d = make()
    d.attach("a", "n", 0)
    r = join(d, "a", "r")
    assert not r.peers and not r.deliveries


def test_join_of_absent_peer_is_no_peer():
    assert join(make(), "ghost", "r").outcome is Outcome.NO_PEER


def test_join_again_is_ok_and_tells_nobody():
    d = make()
    d.attach("a", "n", 0), d.attach("b", "n", 0)
    join(d, "b", "r"), join(d, "a", "r")
    r = join(d, "a", "r", room_limit=2)
    assert r.outcome is Outcome.OK and r.peers == ["b"] and not r.deliveries


def test_join_over_room_limit_is_room_full():
    d = make()
    for p in ("a", "b", "c"):
        d.attach(p, "n", 0)
    join(d, "a", "r", room_limit=2), join(d, "b", "r", room_limit=2)
    r = join(d, "c", "r", room_limit=2)
    assert r.outcome is Outcome.ROOM_FULL and not r.deliveries
    assert d.members("r") == ["a", "b"]


def test_join_over_rooms_per_peer_is_too_many_rooms():
    d = make()
    d.attach("a", "n", 0)
    join(d, "a", "r1", rooms_per_peer=2), join(d, "a", "r2", rooms_per_peer=2)
    assert join(d, "a", "r3", rooms_per_peer=2).outcome is Outcome.TOO_MANY_ROOMS
    assert d.members("r3") == []


def test_leave_tells_others_peer_left():
    d = make()
    d.attach("a", "n", 0), d.attach("b", "n", 0)
    join(d, "a", "r"), join(d, "b", "r")
    r = d.leave("a", "r", 1)
    assert r.outcome is Outcome.OK
    assert events(r.deliveries) == [("b", {"type": "peer-left", "room": "r", "peer": "a"})]
    assert d.members("r") == ["b"]


def test_leave_of_room_not_in_is_not_in_room():
    d = make()
    d.attach("a", "n", 0), d.attach("b", "n", 0)
    join(d, "b", "r")
    assert d.leave("a", "r", 1).outcome is Outcome.NOT_IN_ROOM
    assert d.leave("a", "nowhere", 1).outcome is Outcome.NOT_IN_ROOM


def test_last_member_leaving_deletes_room():
    d = make()
    d.attach("a", "n", 0)
    join(d, "a", "r")
    assert not d.leave("a", "r", 1).deliveries
    assert "r" not in d.rooms


# -- broadcast ------------------------------------------------------------------------

def test_broadcast_reaches_every_other_member_not_sender():
    d = make()
    for p in ("a", "b", "c"):
        d.attach(p, "n", 0)
        join(d, p, "r")
    r = d.broadcast("a", "r", msg("hi"), 1)
    assert r.outcome is Outcome.DELIVERED
    assert sorted(dv.peer for dv in r.deliveries) == ["b", "c"]


def test_broadcast_by_non_member_is_not_in_room():
    d = make()
    d.attach("a", "n", 0), d.attach("b", "n", 0)
    join(d, "b", "r")
    assert d.broadcast("a", "r", msg(1), 1).outcome is Outcome.NOT_IN_ROOM
    assert d.broadcast("a", "missing", msg(1), 1).outcome is Outcome.NOT_IN_ROOM


def test_broadcast_with_a_reconnecting_member_is_queued():
    d = make()
    eps = {p: d.attach(p, "n", 0).epoch for p in ("a", "b", "c")}
    for p in eps:
        join(d, p, "r")
    d.detach("c", eps["c"], 1, final=False)
    r = d.broadcast("a", "r", msg(1), 2)
    assert r.outcome is Outcome.QUEUED
    assert [dv.peer for dv in r.deliveries] == ["b"]


def test_broadcast_alone_in_room_is_delivered_to_nobody():
    d = make()
    d.attach("a", "n", 0)
    join(d, "a", "r")
    r = d.broadcast("a", "r", msg(1), 1)
    assert r.outcome is Outcome.DELIVERED and not r.deliveries


# -- leaving for good ------------------------------------------------------------------

def test_final_detach_leaves_rooms_with_peer_left():
    d = make()
    a = d.attach("a", "n", 0)
    d.attach("b", "n", 0)
    join(d, "a", "r1"), join(d, "b", "r1"), join(d, "a", "r2"), join(d, "b", "r2")
    out = d.detach("a", a.epoch, 1, final=True)
    assert sorted(ev["room"] for _, ev in events(out)) == ["r1", "r2"]
    assert all(p == "b" and ev["type"] == "peer-left" and ev["peer"] == "a" for p, ev in events(out))


def test_expire_before_deadline_keeps_reconnecting_peer():
    d = make(grace=10)
    a = d.attach("a", "n", 0)
    d.detach("a", a.epoch, 1, final=False)
    assert d.expire(10.9) == []
    assert d.owner("a") == (a.epoch, False)


def test_expire_at_deadline_removes_peer_and_sends_peer_left():
    d = make(grace=10)
    a = d.attach("a", "n", 0)
    d.attach("b", "n", 0)
    join(d, "a", "r"), join(d, "b", "r")
    d.detach("a", a.epoch, 1, final=False)
    out = d.expire(11)
    assert events(out) == [("b", {"type": "peer-left", "room": "r", "peer": "a"})]
    assert d.owner("a") is None and d.members("r") == ["b"]


def test_expire_ignores_connected_peers():
    d = make(grace=1)
    d.attach("a", "n", 0)
    assert d.expire(1000) == [] and d.owner("a") is not None


def test_peer_left_to_a_reconnecting_member_is_queued():
    d = make(grace=10)
    a, b = d.attach("a", "n", 0), d.attach("b", "n", 0)
    join(d, "a", "r"), join(d, "b", "r")
    d.detach("b", b.epoch, 1, final=False)
    assert d.detach("a", a.epoch, 2, final=True) == []
    assert bodies_raw(d.attach("b", "n", 3).replay) == [{"type": "peer-left", "room": "r", "peer": "a"}]


def bodies_raw(replay) -> list:
    return [orjson.loads(body) for _, body in replay]


# -- resume ---------------------------------------------------------------------------

def _drop(d: Directory, peer: str, epoch: int, now: float, delivered: str | None = None) -> None:
    d.detach(peer, epoch, now, final=False, delivered=delivered)


def test_resume_replays_exactly_what_follows_the_seq_in_order():
    d = make()
    a = d.attach("bob", "n1", 0)
    s1 = d.send("bob", msg(1), 1).deliveries[0].seq
    s2 = d.send("bob", msg(2), 1).deliveries[0].seq
    _drop(d, "bob", a.epoch, 2, delivered=s2)
    d.send("bob", msg(3), 3)
    back = d.attach("bob", "n2", 4, resume=s1)
    assert back.resumed is True
    assert bodies(back.replay) == [2, 3]
    assert back.replay[0][0] == s2
    newer = d.send("bob", msg(4), 4).deliveries[0].seq
    assert parse_seq(newer) > parse_seq(back.replay[-1][0])


def test_resume_from_last_seq_replays_nothing_and_is_resumed():
    d = make()
    a = d.attach("bob", "n1", 0)
    s = d.send("bob", msg(1), 1).deliveries[0].seq
    _drop(d, "bob", a.epoch, 2, delivered=s)
    back = d.attach("bob", "n1", 3, resume=s)
    assert back.resumed is True and back.replay == []


def test_resume_after_bound_exceeded_is_not_resumed():
    d = make(limit=2)
    a = d.attach("bob", "n1", 0)
    s1 = d.send("bob", msg(1), 1).deliveries[0].seq
    _drop(d, "bob", a.epoch, 2, delivered=s1)
    for i in (2, 3, 4):
        d.send("bob", msg(i), 3)
    back = d.attach("bob", "n1", 4, resume=s1)
    assert back.resumed is False
    assert bodies(back.replay) == [3, 4]  # what is left, newest last


def test_resume_with_unknown_future_seq_is_not_resumed():
    d = make()
    a = d.attach("bob", "n1", 0)
    d.send("bob", msg(1), 1)
    _drop(d, "bob", a.epoch, 2)
    back = d.attach("bob", "n1", 3, resume="99999999999999-0")
    assert back.resumed is False and back.replay == []


def test_resume_with_junk_seq_is_not_resumed():
    d = make()
    a = d.attach("bob", "n1", 0)
    _drop(d, "bob", a.epoch, 1)
    assert d.attach("bob", "n1", 2, resume="junk").resumed is False


def test_resume_after_grace_expired_is_not_resumed():
    d = make(grace=5)
    a = d.attach("bob", "n1", 0)
    s = d.send("bob", msg(1), 1).deliveries[0].seq
    _drop(d, "bob", a.epoch, 1, delivered=s)
    d.send("bob", msg(2), 2)
    d.expire(10)
    back = d.attach("bob", "n1", 11, resume=s)
    assert back.resumed is False and back.replay == []


def test_reconnect_without_resume_replays_what_was_queued_after_delivered():
    d = make()
    a = d.attach("bob", "n1", 0)
    s1 = d.send("bob", msg(1), 1).deliveries[0].seq
    d.send("bob", msg(2), 1)  # delivered to the socket but not written out
    _drop(d, "bob", a.epoch, 2, delivered=s1)
    d.send("bob", msg(3), 3)
    back = d.attach("bob", "n1", 4)
    assert back.resumed is False
    assert bodies(back.replay) == [2, 3]


def test_reconnect_without_delivered_report_replays_since_connection_start():
    d = make()
    a = d.attach("bob", "n1", 0)
    d.send("bob", msg(1), 1)
    _drop(d, "bob", a.epoch, 2)
    d.send("bob", msg(2), 3)
    assert bodies(d.attach("bob", "n1", 4).replay) == [1, 2]


def test_replayed_messages_are_not_replayed_again_on_next_reconnect():
    d = make()
    a = d.attach("bob", "n1", 0)
    _drop(d, "bob", a.epoch, 1)
    d.send("bob", msg(1), 2)
    b = d.attach("bob", "n1", 3)
    assert bodies(b.replay) == [1]
    _drop(d, "bob", b.epoch, 4)
    d.send("bob", msg(2), 5)
    assert bodies(d.attach("bob", "n1", 6).replay) == [2]


def test_delivered_beyond_last_is_clamped():
    d = make()
    a = d.attach("bob", "n1", 0)
    _drop(d, "bob", a.epoch, 1, delivered="99999999999999-0")
    d.send("bob", msg(1), 2)
    assert bodies(d.attach("bob", "n1", 3).replay) == [1]


def test_rooms_are_kept_across_reconnect_without_churn():
    d = make()
    a = d.attach("a", "n", 0)
    d.attach("b", "n", 0)
    join(d, "b", "r"), join(d, "a", "r")
    _drop(d, "a", a.epoch, 1)
    back = d.attach("a", "n2", 2)
    assert back.rooms == frozenset({"r"})
    assert d.members("r") == ["a", "b"]
    assert back.replay == []  # no peer-left / peer-joined about itself
    assert d.send("b", msg(1), 3).outcome is Outcome.DELIVERED  # b got nothing queued either


def test_broadcast_reaches_member_after_reconnect():
    d = make()
    a = d.attach("a", "n", 0)
    d.attach("b", "n", 0)
    join(d, "a", "r"), join(d, "b", "r")
    _drop(d, "a", a.epoch, 1)
    back = d.attach("a", "n", 2)
    r = d.broadcast("b", "r", msg(1), 3)
    assert [(dv.peer, dv.epoch) for dv in r.deliveries] == [("a", back.epoch)]


# -- expired_messages -------------------------------------------------------------------

def test_expired_messages_counts_undelivered_inbox_at_grace_end():
    d = make(grace=10)
    a = d.attach("bob", "n", 0)
    _drop(d, "bob", a.epoch, 1)
    d.send("bob", msg(1), 2), d.send("bob", msg(2), 2)
    d.expire(20)
    assert d.expired_messages == 2


def test_expired_messages_counts_undelivered_entries_pushed_out_while_reconnecting():
    d = make(limit=1)
    a = d.attach("bob", "n", 0)
    _drop(d, "bob", a.epoch, 1)
    d.send("bob", msg(1), 2)
    d.send("bob", msg(2), 2)
    assert d.expired_messages == 1


def test_expired_messages_ignores_final_detach_and_resumed_peers():
    d = make(grace=10)
    a = d.attach("bob", "n", 0)
    d.send("bob", msg(1), 1)
    d.detach("bob", a.epoch, 2, final=True)
    c = d.attach("carol", "n", 0)
    _drop(d, "carol", c.epoch, 1)
    d.send("carol", msg(1), 2)
    d.attach("carol", "n", 3)
    d.expire(100)
    assert d.expired_messages == 0


def test_expired_messages_does_not_count_already_delivered_entries():
    d = make(grace=10, limit=2)
    a = d.attach("bob", "n", 0)
    d.send("bob", msg(1), 0)
    s2 = d.send("bob", msg(2), 0).deliveries[0].seq
    _drop(d, "bob", a.epoch, 1, delivered=s2)
    d.send("bob", msg(3), 2)  # pushes out msg 1, which bob already has
    d.expire(100)
    assert d.expired_messages == 1  # only msg 3 was lost


def test_resume_within_grace_keeps_messages_acked_before_the_drop():
    d = make(grace=15)
    a = d.attach("bob", "n", 0)
    s0 = d.send("bob", msg(0), 0).deliveries[0].seq
    r1 = d.send("bob", msg(1), 0.5)  # acked DELIVERED; lost in flight with the connection
    assert r1.outcome is Outcome.DELIVERED
    _drop(d, "bob", a.epoch, 10, delivered=r1.deliveries[0].seq)
    back = d.attach("bob", "n2", 16, resume=s0)  # 6 s into a 15 s grace
    assert back.resumed is True
    assert bodies(back.replay) == [1]


# -- a model check -------------------------------------------------------------------

ops = st.lists(st.one_of(st.just(("send",)), st.tuples(st.just("drop"), st.integers(0, 3)),
                         st.just(("reconnect",))), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_resuming_client_gets_every_message_exactly_once_in_order(script):
    """A client that resumes from the last seq it processed sees each message once."""
    d = make(grace=1e6, limit=10_000)
    epoch = d.attach("bob", "n", 0).epoch
    first = d.send("bob", msg(0), 0).deliveries[0]  # processed: from now on the client has a seq to resume from
    connected, written, processed, sent, last = True, [], [0], [0], first.seq
    now = 0.0
    for op in script + [("drop", 0), ("reconnect",)]:
        now += 0.0004  # several sends share a millisecond
        if op[0] == "send":
            n = len(sent)
            sent.append(n)
            r = d.send("bob", msg(n), now)
            assert r.outcome is (Outcome.DELIVERED if connected else Outcome.QUEUED)
            written += [(dv.seq, orjson.loads(dv.body)["data"]) for dv in r.deliveries]
        elif op[0] == "drop" and connected:
            lost = min(op[1], len(written))  # the last `lost` writes never reached the client
            got = written[:len(written) - lost]
            processed += [n for _, n in got]
            last = got[-1][0] if got else last
            d.detach("bob", epoch, now, final=False, delivered=written[-1][0] if written else None)
            connected, written = False, []
        elif op[0] == "reconnect" and not connected:
            back = d.attach("bob", "n", now, resume=last)
            epoch, connected = back.epoch, True
            assert back.resumed is True
            written = [(seq, orjson.loads(body)["data"]) for seq, body in back.replay]
    processed += [n for _, n in written]
    assert processed == sent


# -- grace expiry at scale: one deadline heap ------------------------------------------

class ScanDirectory(Directory):
    """Expiry as a scan of every peer: the reference the deadline heap must match."""

    def expire(self, now: float) -> list[Delivery]:
        out: list[Delivery] = []
        for peer in [p for p, r in self.peers.items() if not r.connected and r.deadline <= now]:
            out += self._remove(peer, now)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [r.deadline for r in self.peers.values() if not r.connected]
        return min(deadlines) if deadlines else None


class NoScan(dict):
    """A peers table that refuses to be walked: expiry must find its peers by deadline."""

    def _refuse(self, *args):
        raise AssertionError("scanned every peer")

    items = values = keys = __iter__ = _refuse


def heap_size(d: Directory) -> int:
    return len(d._deadlines)


def check_heap(d: Directory) -> None:
    """Stale entries are counted exactly, and never outnumber the live ones by more than one."""
    reconnecting = sum(1 for r in dict.values(d.peers) if not r.connected)
    stale = sum(1 for e in d._deadlines if d._live(*e) is None)
    assert stale == d._stale
    assert heap_size(d) - stale == reconnecting
    assert stale <= reconnecting + 1


def test_expire_takes_many_due_peers_in_the_order_they_first_attached():
    d = make(grace=10)
    watcher = d.attach("w", "n", 0)
    join(d, "w", "r")
    epochs = {}
    for i in range(300):
        epochs[f"p{i:03}"] = d.attach(f"p{i:03}", "n", 0).epoch
        join(d, f"p{i:03}", "r", room_limit=1000)
    for k, peer in enumerate(reversed(list(epochs))):  # the last to attach drops first
        d.detach(peer, epochs[peer], 1 + k * 0.01, final=False)
    back = [p for i, p in enumerate(epochs) if i % 3 == 0]
    for peer in back:
        d.attach(peer, "n", 2)
    out = d.expire(1000)
    to_watcher = [(dv.epoch, orjson.loads(dv.body)["peer"]) for dv in out if dv.peer == "w"]
    assert to_watcher == [(watcher.epoch, p) for p in epochs if p not in back]
    assert len(out) == len(to_watcher) * (len(back) + 1)  # and to each peer that came back
    assert d.members("r") == sorted(back + ["w"]) and d.next_deadline() is None


def test_expire_pops_only_what_is_due():
    d = make(grace=10)
    for i in range(1000):
        d.detach(f"p{i}", d.attach(f"p{i}", "n", 0).epoch, i, final=False)
    d.peers = NoScan(d.peers)
    assert d.next_deadline() == 10
    assert d.expire(9.5) == [] and heap_size(d) == 1000
    d.expire(14)
    assert heap_size(d) == 995 and d.next_deadline() == 15
    assert d.owner("p4") is None and d.owner("p5") is not None


def test_next_deadline_skips_peers_back_in_their_grace_and_expired_ones():
    d = make(grace=10)
    a, b, c = d.attach("a", "n", 0), d.attach("b", "n", 0), d.attach("c", "n", 0)
    d.detach("a", a.epoch, 1, final=False)
    d.detach("b", b.epoch, 2, final=False)
    d.detach("c", c.epoch, 3, final=False)
    assert d.next_deadline() == 11
    a2 = d.attach("a", "n", 4)
    assert d.next_deadline() == 12
    d.detach("a", a2.epoch, 5, final=False)  # a's deadline moved: 11 -> 15
    assert d.expire(12) == [] and d.owner("b") is None
    assert d.next_deadline() == 13
    d.expire(13)
    assert d.next_deadline() == 15
    d.attach("a", "n", 6)
    assert d.next_deadline() is None and heap_size(d) == 0


def test_heap_stays_bounded_under_attach_detach_churn_of_one_peer():
    d = make(grace=10)
    for i in range(3):  # some peers stay reconnecting throughout
        d.detach(f"q{i}", d.attach(f"q{i}", "n", 0).epoch, 0, final=False)
    for i in range(10_000):
        a = d.attach("a", "n", i * 1e-4)
        d.detach("a", a.epoch, i * 1e-4, final=False)
    check_heap(d)
    assert heap_size(d) <= 2 * 4 + 1
    assert d.next_deadline() == 10
    d.expire(10)
    assert sorted(d.peers) == ["a"]
    d.expire(11)
    assert d.peers == {} and heap_size(d) == 0


ops = st.lists(st.tuples(st.sampled_from(["attach", "drop", "leave", "send", "expire"]),
                         st.integers(0, 5), st.floats(0, 3)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_heap_expiry_does_what_the_scan_did(script):
    """Same deliveries in the same order, same peers left, same expired_messages, same deadline."""
    heap, scan = make(grace=2, limit=3), ScanDirectory(grace=2, inbox_limit=3)
    epochs: dict[str, int] = {}
    now = 0.0
    for op, i, dt in script:
        now += dt
        peer = f"p{i}"
        results = []
        for d in (heap, scan):
            if op == "attach":
                a = d.attach(peer, "n", now)
                epochs[peer] = a.epoch
                results.append((a.replaced, a.replay, join(d, peer, f"r{i % 2}", now).deliveries))
            elif op in ("drop", "leave") and peer in epochs:
                results.append(d.detach(peer, epochs[peer], now, final=op == "leave"))
            elif op == "send":
                results.append(d.send(peer, msg(i), now))
            elif op == "expire":
                results.append((d.next_deadline(), d.expire(now)))
        if results:
            assert results[0] == results[1]
        assert heap.expired_messages == scan.expired_messages
        assert list(heap.peers) == list(scan.peers) and heap.next_deadline() == scan.next_deadline()
        check_heap(heap)


# -- the memory bus: one timer for every grace -------------------------------------------

@pytest.fixture
async def armed(monkeypatch):
    """armed() -> how many timers the loop has that are neither run nor cancelled."""
    loop = asyncio.get_running_loop()
    handles: list[tuple[asyncio.TimerHandle, list[bool]]] = []
    call_later = loop.call_later

    def counted(delay, callback, *args, **kwargs):
        ran = [False]

        def run(*a):
            ran[0] = True
            callback(*a)
        handle = call_later(delay, run, *args, **kwargs)
        handles.append((handle, ran))
        return handle

    monkeypatch.setattr(loop, "call_later", counted)
    return lambda: sum(1 for h, ran in handles if not ran[0] and not h.cancelled())


async def wait_until(condition, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def test_memory_bus_mass_disconnect_arms_one_timer_and_every_peer_leaves(armed):
    now = [0.0]
    bus = MemoryBus(node_id="n", grace=0.05, inbox_limit=100, clock=lambda: now[0])
    mates = {f"r{j}": RecordingMailbox() for j in range(200)}
    for room, box in mates.items():
        await bus.attach(f"mate-{room}", box)
        await bus.join(f"mate-{room}", room, room_limit=20, rooms_per_peer=1)
    epochs = {}
    for i in range(2000):
        peer = f"p{i}"
        epochs[peer] = (await bus.attach(peer, RecordingMailbox())).epoch
        await bus.join(peer, f"r{i % 200}", room_limit=20, rooms_per_peer=1)
    for box in mates.values():
        box.got.clear()
    for peer, epoch in epochs.items():
        now[0] += 1e-6
        await bus.detach(peer, epoch, final=False)
    assert armed() == 1
    now[0] = 1.0
    await wait_until(lambda: all(len(box.bodies) == 10 for box in mates.values()))
    assert sorted(ev["peer"] for box in mates.values() for ev in box.bodies) == sorted(epochs)
    assert all(ev["type"] == "peer-left" for box in mates.values() for ev in box.bodies)
    assert sorted(bus.directory.peers) == sorted(f"mate-{room}" for room in mates)
    assert armed() == 0 and bus.directory.next_deadline() is None
    await bus.close()


async def test_memory_bus_rearms_for_the_next_deadline_after_a_fire(armed):
    now = [0.0]
    bus = MemoryBus(node_id="n", grace=0.05, inbox_limit=100, clock=lambda: now[0])
    mate = RecordingMailbox()
    await bus.attach("m", mate)
    await bus.join("m", "r", room_limit=10, rooms_per_peer=1)
    a, b = await bus.attach("a", RecordingMailbox()), await bus.attach("b", RecordingMailbox())
    await bus.join("a", "r", room_limit=10, rooms_per_peer=1)
    await bus.join("b", "r", room_limit=10, rooms_per_peer=1)
    mate.got.clear()
    await bus.detach("a", a.epoch, final=False)  # grace ends at 0.05: the timer is for it
    now[0] = 0.03
    await bus.detach("b", b.epoch, final=False)  # ends at 0.08: the timer stays
    assert armed() == 1
    await bus.attach("a", RecordingMailbox())  # a is back: the timer fires for nothing and waits for b
    now[0] = 0.06
    await asyncio.sleep(0.1)
    assert mate.bodies == [] and armed() == 1
    now[0] = 0.2
    await wait_until(lambda: mate.bodies)
    assert mate.bodies == [{"type": "peer-left", "room": "r", "peer": "b"}]
    assert bus.directory.owner("a") is not None and armed() == 0
    await bus.close()


async def test_memory_bus_close_cancels_the_timer(armed):
    bus = MemoryBus(node_id="n", grace=60, inbox_limit=100)
    a = await bus.attach("a", RecordingMailbox())
    await bus.detach("a", a.epoch, final=False)
    assert armed() == 1
    await bus.close()
    assert armed() == 0
