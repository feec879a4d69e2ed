"""signaling.core: one peer's frames -> effects, limits, room grants, settle()."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from signaling.core import Broadcast, Close, Limits, Peer, Reply, Send, room_allowed
from signaling.outcome import Outcome, Result
from signaling.protocol import CloseCode, Join, Leave
from signaling.quota import StrikeMeter, TokenBucket


def frame(**obj) -> str:
    return json.dumps(obj)


def decoded(effect: Reply) -> dict:
    assert isinstance(effect, Reply)
    return orjson.loads(effect.frame)


def error_codes(effects) -> list[str]:
    return [decoded(e)["code"] for e in effects if isinstance(e, Reply) and e.kind == "error"]


def peer(**kw) -> Peer:
    return Peer("alice", 0.0, **kw)


# -- relays ---------------------------------------------------------------------------

def test_offer_to_peer_becomes_send_with_from_set():
    [eff] = peer().receive(frame(type="offer", to="bob", offer={"type": "offer", "sdp": "v=0"}, id=1), 0)
    assert isinstance(eff, Send) and (eff.to, eff.id, eff.type) == ("bob", 1, "offer")
    assert orjson.loads(eff.body) == {"type": "offer", "to": "bob", "offer": {"type": "offer", "sdp": "v=0"},
                                      "id": 1, "from": "alice"}


def test_client_supplied_from_is_overwritten():
    [eff] = peer().receive(frame(type="message", to="bob", data=1, **{"from": "mallory"}), 0)
    assert orjson.loads(eff.body)["from"] == "alice"


def test_room_relay_in_joined_room_becomes_broadcast():
    [eff] = peer(rooms=["r"]).receive(frame(type="candidate", room="r", candidate=None), 0)
    assert isinstance(eff, Broadcast) and eff.room == "r" and eff.type == "candidate"
    assert orjson.loads(eff.body)["from"] == "alice"


def test_room_relay_outside_room_is_not_in_room_without_bus_work():
    effects = peer().receive(frame(type="message", room="r", data=1, id="x"), 0)
    assert error_codes(effects) == ["not-in-room"]
    assert decoded(effects[0])["id"] == "x"
    assert not any(isinstance(e, (Send, Broadcast)) for e in effects)


def test_kind_records_message_type_for_metrics():
    p = peer()
    p.receive(frame(type="bye", to="b"), 0)
    assert p.kind == "bye"
    p.receive("junk", 0)
    assert p.kind == "invalid"
    p.receive(frame(type="ping"), 0)
    assert p.kind == "ping"


# -- ping / join / leave ---------------------------------------------------------------

def test_ping_replies_pong():
    assert [decoded(e) for e in peer().receive(frame(type="ping"), 0)] == [{"type": "pong"}]


def test_ping_with_id_replies_pong_then_ack():
    assert [decoded(e) for e in peer().receive(frame(type="ping", id="p"), 0)] == [
        {"type": "pong"}, {"type": "ack", "id": "p"}]


def test_join_becomes_join_room():
    assert peer().receive(frame(type="join", room="r", id=2), 0) == [Join("r", 2)]


def test_join_refused_by_grants_is_forbidden():
    effects = peer(grants=["team-*"]).receive(frame(type="join", room="other", id=3), 0)
    assert error_codes(effects) == ["forbidden"] and decoded(effects[0])["id"] == 3


def test_join_allowed_by_prefix_grant():
    assert peer(grants=["team-*"]).receive(frame(type="join", room="team-7"), 0) == [Join("team-7", None)]


def test_leave_of_room_not_in_is_not_in_room_without_bus_work():
    effects = peer().receive(frame(type="leave", room="r"), 0)
    assert error_codes(effects) == ["not-in-room"]


def test_leave_of_joined_room_becomes_leave_room():
    assert peer(rooms=["r"]).receive(frame(type="leave", room="r", id=4), 0) == [Leave("r", 4)]


# -- invalid input ---------------------------------------------------------------------

@pytest.mark.parametrize("raw,code", [("nope", "bad-json"), ("[]", "bad-json"), ('{"type":"x"}', "unknown-type"),
                                      ('{"type":"offer","to":"b"}', "bad-message")])
def test_invalid_frames_get_error_replies(raw, code):
    assert error_codes(peer().receive(raw, 0)) == [code]


def test_error_echoes_valid_id():
    [eff] = peer().receive(frame(type="zzz", id="q"), 0)
    assert decoded(eff)["id"] == "q"


def test_binary_frame_is_bad_message():
    effects = peer().receive(b'{"type":"ping"}', 0, binary=True)
    assert error_codes(effects) == ["bad-message"] and "id" not in decoded(effects[0])


# -- rate limit -----------------------------------------------------------------------

def test_token_bucket_starts_full_then_refuses():
    b = TokenBucket(rate=1, burst=2, now=0)
    assert [b.take(0), b.take(0), b.take(0)] == [True, True, False]


def test_token_bucket_refills_over_time_up_to_burst():
    b = TokenBucket(rate=2, burst=3, now=0)
    for _ in range(3):
        b.take(0)
    assert b.take(0.5) and not b.take(0.5)
    assert sum(b.take(100) for _ in range(10)) == 3


def test_over_rate_frame_is_rate_limited_with_its_id():
    p = peer(limits=Limits(rate=1, burst=2))
    p.receive(frame(type="ping"), 0), p.receive(frame(type="ping"), 0)
    effects = p.receive(frame(type="message", to="b", data=1, id=9), 0)
    assert error_codes(effects) == ["rate-limited"] and decoded(effects[0])["id"] == 9
    assert not any(isinstance(e, Send) for e in effects)


def test_rate_limited_binary_frame_has_no_id():
    p = peer(limits=Limits(rate=1, burst=1))
    p.receive(frame(type="ping"), 0)
    [eff] = p.receive(b'{"id": 1}', 0, binary=True)
    assert decoded(eff)["code"] == "rate-limited" and "id" not in decoded(eff)


def test_rate_limit_recovers_after_refill():
    p = peer(limits=Limits(rate=1, burst=1))
    p.receive(frame(type="ping"), 0)
    assert error_codes(p.receive(frame(type="ping"), 0.5)) == ["rate-limited"]
    assert error_codes(p.receive(frame(type="ping"), 1.6)) == []


# -- abuse ----------------------------------------------------------------------------

def test_strike_meter_trips_above_limit_within_window():
    m = StrikeMeter(limit=3, window=10)
    assert [m.strike(t) for t in (0, 1, 2, 3)] == [False, False, False, True]


def test_strikes_outside_window_are_forgotten():
    m = StrikeMeter(limit=2, window=1)
    assert [m.strike(t) for t in (0, 2, 4, 6, 8)] == [False] * 5


def test_sustained_invalid_frames_close_with_1008():
    p = peer(limits=Limits(abuse_strikes=2, abuse_window=10))
    assert not any(isinstance(e, Close) for e in p.receive("x", 0) + p.receive("x", 1))
    effects = p.receive("x", 2)
    assert error_codes(effects) == ["bad-json"]
    assert effects[-1] == Close(CloseCode.POLICY, "too many rejected messages")


def test_rate_limited_frames_count_as_strikes():
    p = peer(limits=Limits(rate=0.001, burst=1, abuse_strikes=1, abuse_window=10))
    p.receive(frame(type="ping"), 0)
    assert not any(isinstance(e, Close) for e in p.receive(frame(type="ping"), 0))
    assert any(isinstance(e, Close) and e.code == 1008 for e in p.receive(frame(type="ping"), 0))


def test_valid_but_refused_requests_are_not_strikes():
    p = peer(limits=Limits(abuse_strikes=1), grants=[])
    for _ in range(5):
        effects = p.receive(frame(type="join", room="r"), 0) + p.receive(frame(type="leave", room="r"), 0)
        assert not any(isinstance(e, Close) for e in effects)


# -- room grants ------------------------------------------------------------------------

@pytest.mark.parametrize("grants,room,ok", [
    (None, "anything", True),
    ([], "r", False),
    (["r"], "r", True),
    (["r"], "r2", False),
    (["team-*"], "team-1", True),
    (["team-*"], "team-", True),
    (["team-*"], "team", False),
    (["team-*"], "other", False),
    (["*"], "any", True),
    (["a", "b*"], "bx", True),
    (["team"], "team-1", False),
    (["t*m"], "tom", False),
])
def test_room_allowed(grants, room, ok):
    assert room_allowed(grants, room) is ok


# -- settle ---------------------------------------------------------------------------

SEND = Send("bob", b"{}", "s1", "offer")
BCAST = Broadcast("r", b"{}", 5, "message")


@pytest.mark.parametrize("work", [SEND, BCAST])
def test_delivered_is_acked(work):
    [eff] = peer(rooms=["r"]).settle(work, Result(Outcome.DELIVERED))
    assert decoded(eff) == {"type": "ack", "id": work.id}


@pytest.mark.parametrize("work", [SEND, BCAST])
def test_queued_is_acked_queued(work):
    [eff] = peer(rooms=["r"]).settle(work, Result(Outcome.QUEUED))
    assert decoded(eff) == {"type": "ack", "id": work.id, "queued": True}


def test_delivered_without_id_sends_no_ack():
    assert peer().settle(Send("bob", b"{}", None, "offer"), Result(Outcome.DELIVERED)) == []


def test_no_peer_is_peer_unavailable_with_id():
    [eff] = peer().settle(SEND, Result(Outcome.NO_PEER))
    assert decoded(eff)["code"] == "peer-unavailable" and decoded(eff)["id"] == "s1"


def test_no_peer_without_id_still_errors():
    replies = peer().settle(Send("bob", b"{}", None, "offer"), Result(Outcome.NO_PEER))
    assert error_codes(replies) == ["peer-unavailable"]


def test_broadcast_not_in_room_errors_and_forgets_room():
    p = peer(rooms=["r"])
    assert error_codes(p.settle(BCAST, Result(Outcome.NOT_IN_ROOM))) == ["not-in-room"]
    assert "r" not in p.rooms


def test_join_ok_replies_joined_then_ack_and_remembers_room():
    p = peer()
    effects = p.settle(Join("r", 1), Result(Outcome.OK, peers=["b", "c"]))
    assert [decoded(e) for e in effects] == [{"type": "joined", "room": "r", "peers": ["b", "c"]},
                                             {"type": "ack", "id": 1}]
    assert "r" in p.rooms
    assert isinstance(p.receive(frame(type="message", room="r", data=1), 0)[0], Broadcast)


def test_join_ok_without_id_has_no_ack():
    assert [e.kind for e in peer().settle(Join("r", None), Result(Outcome.OK))] == ["joined"]


def test_join_room_full():
    p = peer()
    assert error_codes(p.settle(Join("r", 1), Result(Outcome.ROOM_FULL))) == ["room-full"]
    assert "r" not in p.rooms


def test_join_too_many_rooms_is_forbidden():
    assert error_codes(peer().settle(Join("r", 1), Result(Outcome.TOO_MANY_ROOMS))) == ["forbidden"]


def test_leave_ok_replies_left_then_ack_and_forgets_room():
    p = peer(rooms=["r"])
    effects = p.settle(Leave("r", "L"), Result(Outcome.OK))
    assert [decoded(e) for e in effects] == [{"type": "left", "room": "r"}, {"type": "ack", "id": "L"}]
    assert p.rooms == set()


def test_leave_not_in_room_errors_and_forgets_room():
    p = peer(rooms=["r"])
    assert error_codes(p.settle(Leave("r", None), Result(Outcome.NOT_IN_ROOM))) == ["not-in-room"]
    assert p.rooms == set()


def test_error_replies_carry_code_for_metrics():
    [eff] = peer().settle(SEND, Result(Outcome.NO_PEER))
    assert (eff.kind, eff.code) == ("error", "peer-unavailable")


@pytest.mark.parametrize("work", [SEND, BCAST, Join("r", "j"), Leave("r", None)])
def test_unavailable_is_unavailable_error_with_id(work):
    [eff] = peer().unavailable(work)
    body = decoded(eff)
    assert body["code"] == "unavailable" and body.get("id") == work.id


# -- robustness ---------------------------------------------------------------------

json_values = strategies.json_values(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    width=3, key_size=5, max_leaves=8)
objects = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["offer", "answer", "candidate", "bye", "message", "join", "leave", "ping"]) | json_values,
    "to": st.sampled_from(["bob", "alice"]) | json_values, "room": st.sampled_from(["r", "s"]) | json_values,
    "id": json_values, "data": json_values, "offer": json_values, "candidate": json_values, "reason": json_values,
})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(objects.map(json.dumps), st.text(max_size=30)), max_size=6))
def test_receive_never_raises_and_replies_are_json_objects(frames):
    p = Peer("alice", 0, limits=Limits(rate=5, burst=3, abuse_strikes=4), rooms=["r"])
    for i, raw in enumerate(frames):
        for eff in p.receive(raw, i * 0.1):
            if isinstance(eff, Reply):
                assert isinstance(orjson.loads(eff.frame), dict)
            elif isinstance(eff, (Send, Broadcast)):
                assert orjson.loads(eff.body)["from"] == "alice"


@pytest.mark.parametrize("raw", ['{"type":"ping","id":"\\ud800"}', '{"type":"message","to":"b","data":"\\udfff"}',
                                 "[" * 100_000], ids=["surrogate-id", "surrogate-data", "deep-nesting"])
def test_receive_never_raises_on_hostile_frames(raw):
    for eff in peer().receive(raw, 0):
        if isinstance(eff, Reply):
            orjson.loads(eff.frame)
