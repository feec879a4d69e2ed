"""signaling.protocol: parse() of every client type, error codes, server encoders."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from signaling import protocol as p
from signaling.protocol import ErrorCode, Join, Leave, Ping, ProtocolError, Relay


def code_of(frame: str | bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as exc:
        p.parse(frame)
    return exc.value.code


def frame(**obj) -> str:
    return json.dumps(obj)


# -- every client type ---------------------------------------------------------------

@pytest.mark.parametrize("kind,payload", [
    ("offer", {"offer": {"type": "offer", "sdp": "v=0"}}),
    ("answer", {"answer": {"type": "answer", "sdp": "v=0"}}),
    ("candidate", {"candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0"}}),
    ("candidate", {"candidate": None}),
    ("bye", {"reason": "hang up"}),
    ("bye", {}),
    ("message", {"data": {"muted": True}}),
    ("message", {"data": None}),
])
def test_relay_types_to_a_peer_parse_to_relay(kind, payload):
    msg = p.parse(frame(type=kind, to="bob", **payload))
    assert msg == Relay(kind, "bob", None, None, {"type": kind, "to": "bob", **payload})


def test_relay_to_a_room_parses_with_room_set():
    msg = p.parse(frame(type="message", room="lobby", data=1))
    assert isinstance(msg, Relay) and msg.room == "lobby" and msg.to is None


def test_join_leave_ping_parse():
    assert p.parse(frame(type="join", room="r1")) == Join("r1", None)
    assert p.parse(frame(type="leave", room="r1", id=7)) == Leave("r1", 7)
    assert p.parse(frame(type="ping")) == Ping(None)


def test_bytes_frames_parse_like_text():
    assert p.parse(b'{"type":"ping","id":"x"}') == Ping("x")


@pytest.mark.parametrize("kind", ["offer", "answer", "candidate", "message"])
def test_relay_without_required_payload_is_bad_message(kind):
    assert code_of(frame(type=kind, to="bob")) is ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize("obj", [
    {"type": "offer", "to": "b", "offer": "v=0"},
    {"type": "offer", "to": "b", "offer": {"sdp": 1}},
    {"type": "answer", "to": "b", "answer": {"type": 2, "sdp": "x"}},
    {"type": "candidate", "to": "b", "candidate": "candidate:1"},
    {"type": "candidate", "to": "b", "candidate": {"candidate": 5}},
    {"type": "bye", "to": "b", "reason": 3},
    {"type": "bye", "to": "b", "reason": None},
])
def test_payload_of_wrong_shape_is_bad_message(obj):
    assert code_of(json.dumps(obj)) is ErrorCode.BAD_MESSAGE


# -- addressing ----------------------------------------------------------------------

def test_relay_with_both_to_and_room_is_bad_message():
    assert code_of(frame(type="message", to="b", room="r", data=1)) is ErrorCode.BAD_MESSAGE


def test_relay_with_neither_to_nor_room_is_bad_message():
    assert code_of(frame(type="message", data=1)) is ErrorCode.BAD_MESSAGE


def test_relay_with_null_to_and_no_room_is_bad_message():
    assert code_of(frame(type="message", to=None, data=1)) is ErrorCode.BAD_MESSAGE


# -- names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "A-z_0.9:@", "x" * 64, "user@example.com", "room:1"])
def test_valid_names(name):
    assert p.is_name(name)
    assert p.parse(frame(type="join", room=name)) == Join(name, None)
    assert p.parse(frame(type="bye", to=name)).to == name


@pytest.mark.parametrize("name", ["", "x" * 65, "é", "ａ", "a b", "a/b", "a\n", "a\x00", "١", 5, None, ["a"]])
def test_invalid_names_are_bad_message(name):
    assert not p.is_name(name)
    assert code_of(frame(type="join", room=name)) is ErrorCode.BAD_MESSAGE
    if name is not None:
        assert code_of(frame(type="bye", to=name)) is ErrorCode.BAD_MESSAGE
        assert code_of(frame(type="bye", room=name)) is ErrorCode.BAD_MESSAGE


def test_join_without_room_is_bad_message():
    assert code_of(frame(type="join")) is ErrorCode.BAD_MESSAGE


# -- receipt ids ---------------------------------------------------------------------

@pytest.mark.parametrize("rid", ["", "abc", "x" * 128, 0, -1, 2**63 - 1])
def test_valid_receipt_ids_are_kept(rid):
    assert p.parse(frame(type="ping", id=rid)) == Ping(rid)


@pytest.mark.parametrize("rid", [True, False, 1.5, "x" * 129, [], {}])
def test_invalid_receipt_id_is_bad_message_and_not_echoed(rid):
    with pytest.raises(ProtocolError) as exc:
        p.parse(frame(type="message", to="b", data=1, id=rid))
    assert exc.value.code is ErrorCode.BAD_MESSAGE
    assert exc.value.id is None


@pytest.mark.parametrize("obj,kind", [({"type": "ping"}, Ping), ({"type": "join", "room": "r"}, Join),
                                      ({"type": "leave", "room": "r"}, Leave),
                                      ({"type": "message", "to": "b", "data": 1}, Relay)])
def test_null_id_means_no_receipt(obj, kind):
    msg = p.parse(json.dumps({**obj, "id": None}))
    assert isinstance(msg, kind) and msg.id is None


def test_valid_id_is_echoed_on_errors():
    with pytest.raises(ProtocolError) as exc:
        p.parse(frame(type="offer", to="b", id="r1"))
    assert exc.value.id == "r1"


def test_integer_id_beyond_64_bits_is_kept():
    assert p.parse('{"type":"ping","id":%d}' % (2**70 + 1)) == Ping(2**70 + 1)  # noqa: UP031 - JSON's braces need no escaping


def test_relay_id_beyond_64_bits_is_kept_exactly():
    # the relayed text goes out as it came; only the receipt id is read, and exactly
    msg = p.parse('{"type":"message","to":"b","data":1,"id":%d}' % (2**70 + 1))  # noqa: UP031 - JSON's braces need no escaping
    assert msg.id == 2**70 + 1 and msg.frame is not None


def test_big_integer_is_exact_when_the_object_is_encoded_again():
    big = 2**70 + 1
    msg = p.parse('{"type":"message","to":"b","data":%d,"from":"mallory"}' % big)  # noqa: UP031 - JSON's braces need no escaping
    assert msg.frame is None  # `from` is stripped, so the object is encoded again
    assert json.loads(p.relayed_body("a", msg)) == {"type": "message", "to": "b", "data": big, "from": "a"}


def test_relayed_big_integer_payload_is_unchanged():
    big = 2**70 + 1  # not representable as a float
    msg = p.parse('{"type":"message","to":"b","data":%d}' % big)  # noqa: UP031 - JSON's braces need no escaping
    assert json.loads(p.relayed_body("a", msg))["data"] == big


def test_peek_id_reads_id_without_validating():
    assert p.peek_id('{"id": 5}') == 5
    assert p.peek_id('{"id": true}') is None
    assert p.peek_id("[1]") is None
    assert p.peek_id("nope") is None


# -- from / seq ----------------------------------------------------------------------

def test_client_from_and_seq_are_removed():
    msg = p.parse(frame(type="message", to="b", data=1, **{"from": "mallory", "seq": "9-9"}))
    assert "from" not in msg.body and "seq" not in msg.body


def test_relayed_body_sets_from_to_sender():
    msg = p.parse(frame(type="offer", to="bob", offer={"type": "offer", "sdp": "v"}, extra=[1], **{"from": "eve"}))
    out = orjson.loads(p.relayed_body("alice", msg))
    assert out == {"type": "offer", "to": "bob", "offer": {"type": "offer", "sdp": "v"}, "extra": [1], "from": "alice"}


def test_a_client_object_without_from_or_seq_is_relayed_as_written_with_from_in_front():
    raw = b' {"type":"message","to":"bob","data":{"n":123456789012345678901234567890,"s":"caf\\u00e9"}} '
    body = p.relayed_body("alice", p.parse(raw))
    assert body == (b'{"from":"alice","type":"message","to":"bob",'
                    b'"data":{"n":123456789012345678901234567890,"s":"caf\\u00e9"}} ')
    assert json.loads(p.with_seq(body, "5-0")) == {"seq": "5-0", "from": "alice", "type": "message", "to": "bob",
                                                  "data": {"n": 123456789012345678901234567890, "s": "café"}}


def test_a_client_from_or_seq_never_survives_the_relay():
    for extra in ({"from": "mallory"}, {"seq": "9-9"}, {"from": "mallory", "seq": "9-9"}):
        body = p.with_seq(p.relayed_body("alice", p.parse(frame(type="message", to="b", data=1, **extra))), "5-0")
        assert body.count(b'"from"') == 1 and body.count(b'"seq"') == 1  # no duplicate key a parser might prefer
        assert json.loads(body) == {"seq": "5-0", "from": "alice", "type": "message", "to": "b", "data": 1}


def test_stored_bodies_cost_their_size_not_an_encoder_buffer():
    import tracemalloc

    msgs = [p.parse(frame(type="candidate", to="b", candidate={"candidate": "c" * 200}, **extra))
            for extra in ({}, {"from": "x"})]  # relayed as written, and encoded again
    for msg in msgs:
        tracemalloc.start()
        kept = [p.relayed_body("alice", msg) for _ in range(1000)]
        kept.append(p.room_event("peer-joined", "r", "alice"))
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert used < 1000 * (len(kept[0]) + 100), used  # orjson's output alone is a 4 KiB allocation


# -- error codes ---------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["", "not json", "{", "{'type': 'ping'}", b"\xff\xfe", "NaN",
                                 '{"type":"ping","x":NaN}', '{"type":"ping","x":Infinity}', "[1,]"])
def test_not_json_is_bad_json(raw):
    assert code_of(raw) is ErrorCode.BAD_JSON


@pytest.mark.parametrize("raw", ["[]", '"x"', "1", "null", "true", '[{"type":"ping"}]'])
def test_json_that_is_not_an_object_is_bad_json(raw):
    assert code_of(raw) is ErrorCode.BAD_JSON


@pytest.mark.parametrize("raw", ["{}", '{"type": 1}', '{"type": null}', '{"type": ["ping"]}'])
def test_missing_or_non_string_type_is_bad_message(raw):
    assert code_of(raw) is ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize("kind", ["hello", "PING", "ack", "welcome", "error", "joined", "peer-joined", ""])
def test_unknown_type_is_unknown_type(kind):
    assert code_of(frame(type=kind, id=3)) is ErrorCode.UNKNOWN_TYPE


def test_unknown_type_error_keeps_id():
    with pytest.raises(ProtocolError) as exc:
        p.parse(frame(type="nope", id="q"))
    assert exc.value.id == "q"


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a":' * 100_000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_bad_json(raw):
    assert code_of(raw) is ErrorCode.BAD_JSON


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_parse_raises_only_protocol_error(raw):
    try:
        p.parse(raw)
    except ProtocolError:
        pass


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
json_values = strategies.json_values(json_scalars, width=3, key_size=5, max_leaves=10)
fields = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(sorted(p.CLIENT_TYPES)) | json_values,
    "to": st.sampled_from(["bob", "x" * 65]) | json_values,
    "room": st.sampled_from(["r", ""]) | json_values,
    "id": json_values, "offer": json_values, "answer": json_values,
    "candidate": json_values, "reason": json_values, "data": json_values, "from": json_values,
})


@settings(max_examples=200, deadline=None)
@given(fields)
def test_parse_of_json_objects_returns_message_or_protocol_error(obj):
    try:
        msg = p.parse(json.dumps(obj))
    except ProtocolError as exc:
        assert exc.id is None or exc.id == obj.get("id")
    else:
        assert isinstance(msg, (Relay, Join, Leave, Ping))


# -- encoders ------------------------------------------------------------------------

def test_with_seq_produces_valid_json_with_seq():
    body = p.relayed_body("alice", p.parse(frame(type="message", to="b", data={"k": [1]})))
    out = orjson.loads(p.with_seq(body, "1700000000000-3"))
    assert out["seq"] == "1700000000000-3" and out["from"] == "alice" and out["data"] == {"k": [1]}


def test_with_seq_on_room_event():
    out = orjson.loads(p.with_seq(p.room_event("peer-joined", "r", "a"), "1-0"))
    assert out == {"seq": "1-0", "type": "peer-joined", "room": "r", "peer": "a"}


def test_dumps_handles_integers_beyond_64_bits():
    assert json.loads(p.dumps({"id": 2**70, "n": -(2**80)})) == {"id": 2**70, "n": -(2**80)}


def test_error_frame_includes_id_only_when_given():
    assert orjson.loads(p.error(ErrorCode.ROOM_FULL, "full")) == {"type": "error", "code": "room-full",
                                                                  "message": "full"}
    assert orjson.loads(p.error(ErrorCode.ROOM_FULL, "full", 0))["id"] == 0


def test_ack_frames():
    assert orjson.loads(p.ack("a")) == {"type": "ack", "id": "a"}
    assert orjson.loads(p.ack(1, queued=True)) == {"type": "ack", "id": 1, "queued": True}


@pytest.mark.parametrize("raw", ['{"type":"ping","id":"\\ud800"}',
                                 '{"type":"message","to":"b","data":"\\udc00"}',
                                 '{"type":"message","to":"b","data":{"\\ud83d":1}}',
                                 '{"type":"ping\\udfff"}'], ids=["id", "data", "key", "type"])
def test_lone_surrogate_escape_is_refused_or_re_encodable(raw):
    """Whatever parse() accepts, the encoders can send again (no UnicodeEncodeError later)."""
    try:
        msg = p.parse(raw)
    except ProtocolError as exc:
        orjson.loads(p.error(exc.code, exc.message, exc.id))
        return
    orjson.loads(p.ack(msg.id))
    if isinstance(msg, Relay):
        orjson.loads(p.relayed_body("a", msg))


def test_welcome_joined_left_pong():
    w = orjson.loads(p.welcome("a", "n1", [{"urls": "stun:x"}], 25, True, "17-2"))
    assert w == {"type": "welcome", "peer": "a", "node": "n1", "iceServers": [{"urls": "stun:x"}], "heartbeat": 25,
                 "resumed": True, "seq": "17-2"}
    assert orjson.loads(p.joined("r", ["b"])) == {"type": "joined", "room": "r", "peers": ["b"]}
    assert orjson.loads(p.left("r")) == {"type": "left", "room": "r"}
    assert orjson.loads(p.PONG) == {"type": "pong"}
