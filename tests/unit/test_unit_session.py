"""The session protocol object (signaling/session.py): every transition, without a socket."""

from __future__ import annotations

import json

import pytest

from signaling.frames import PING, PING_FRAME, PONG, control_frame, text_frame
from signaling.outcome import Attached
from signaling.protocol import CloseCode
from signaling.quota import Limits, Quota
from signaling.session import Action, Closing, Ending, Liveness, Session, State

WELCOME = b'{"type":"welcome"}'
BODY = b'{"type":"message","from":"a","data":1}'


def session(grants=None) -> Session:
    return Session("bob", Quota(Limits(), 0.0), 0.0, grants=grants)


def attached(epoch=7, replay=(), rooms=frozenset()) -> Attached:
    return Attached(epoch, None, False, list(replay), frozenset(rooms))


def open_session(**kw) -> Session:
    s = session(**kw)
    s.attached(attached(), WELCOME, 0.0)
    return s


def handling_a_frame() -> Session:
    s = open_session()
    assert s.received()
    s.frame()
    return s


def payload(frame: bytes) -> dict:
    assert frame[0] == 0x81  # FIN + text
    return json.loads(frame[2:] if frame[1] < 126 else frame[4:])


# -- ATTACHING ------------------------------------------------------------------------

def test_attaching_holds_deliveries_until_the_welcome_then_sends_them_after_the_inbox():
    s = session()
    assert s.state is State.ATTACHING
    assert s.deliver("5-0", BODY) is None  # arrived while the bus answered the attach
    frames, revoked = s.attached(attached(replay=[("3-0", BODY), ("4-0", BODY)]), WELCOME, 0.0)
    assert s.state is State.OPEN and s.epoch == 7 and revoked == ()
    assert frames[0] == text_frame(WELCOME)
    assert [payload(f)["seq"] for f in frames[1:]] == ["3-0", "4-0", "5-0"]
    assert s.written == "5-0"


def test_attached_drops_an_overlap_between_the_inbox_and_live_deliveries():
    s = session()
    s.deliver("4-0", BODY)
    frames, _ = s.attached(attached(replay=[("3-0", BODY), ("4-0", BODY)]), WELCOME, 0.0)
    assert [payload(f)["seq"] for f in frames[1:]] == ["3-0", "4-0"]


def test_attached_keeps_granted_rooms_and_names_the_ones_to_leave():
    s = session(grants=["a*"])
    _, revoked = s.attached(attached(rooms={"a1", "b", "a2", "c"}), WELCOME, 0.0)
    assert revoked == ("b", "c") and s.core.rooms == {"a1", "a2"}


def test_attaching_then_closed_writes_nothing_but_keeps_the_epoch_to_detach():
    s = session()
    s.deliver("5-0", BODY)
    assert s.close(CloseCode.DRAINING, "bye") == Closing(CloseCode.DRAINING, "bye", False)
    assert s.state is State.CLOSING
    assert s.attached(attached(epoch=9), WELCOME, 0.0) == ([], ())
    assert s.epoch == 9 and s.end(None) == Ending(CloseCode.DRAINING, False, False, None)


# -- OPEN -----------------------------------------------------------------------------

def test_open_delivers_in_seq_order_and_drops_what_was_sent_already():
    s = open_session()
    assert payload(s.deliver("2-0", BODY)) == {"seq": "2-0", "type": "message", "from": "a", "data": 1}
    assert s.deliver("2-0", BODY) is None and s.deliver("1-5", BODY) is None
    assert s.deliver("2-1", BODY) is not None and s.written == "2-1"


def test_a_data_frame_is_handled_only_while_open():
    s = open_session()
    assert s.received()
    s.frame()
    assert s.handling
    assert s.handled() and not s.handling
    s.close(CloseCode.DRAINING, "bye")
    assert not s.received()  # closing: the next frame stays unhandled


def test_replies_and_pongs_are_written_while_open_or_closing_only():
    s = open_session()
    assert s.reply(b'{"type":"pong"}') == text_frame(b'{"type":"pong"}')
    assert s.ping(b"x") == control_frame(PONG, b"x")
    s.close(CloseCode.DRAINING, "bye")
    assert s.reply(b"{}") is not None and s.ping(b"") is not None
    s.quiet()
    assert s.reply(b"{}") is None and s.ping(b"") is None and s.deliver("9-0", BODY) is None


# -- OPEN -> CLOSING -> QUIET -> CLOSED ----------------------------------------------

def test_a_close_while_a_frame_is_handled_waits_for_its_answer():
    s = handling_a_frame()
    closing = s.close(CloseCode.DRAINING, "node draining")
    assert closing == Closing(CloseCode.DRAINING, "node draining", True) and s.state is State.CLOSING
    assert s.close(CloseCode.POLICY, "again") is None  # idempotent: the first code stands
    assert s.reply(b'{"type":"ack","id":1}') is not None  # the frame's receipt still goes out
    assert not s.handled()  # and the read loop stops
    s.quiet()
    assert s.state is State.QUIET
    assert s.end(1001) == Ending(CloseCode.DRAINING, False, False, None) and s.state is State.CLOSED


def test_internal_errors_close_without_waiting_for_the_frame():
    s = handling_a_frame()
    assert s.close(CloseCode.INTERNAL, "x").after_frame is False


@pytest.mark.parametrize("code,final", [(CloseCode.POLICY, True), (CloseCode.TOO_BIG, True),
                                        (CloseCode.DRAINING, False), (CloseCode.INTERNAL, False),
                                        (CloseCode.TOKEN_EXPIRED, False)])
def test_which_closes_end_the_peer_for_good(code, final):
    s = open_session()
    s.close(code, "x")
    assert s.end(None).final is final


def test_the_clients_close_frame_ends_the_peer_for_good():
    s = open_session()
    s.deliver("3-0", BODY)
    s.client_closed()
    assert s.end(1000) == Ending(1000, True, False, "3-0")


def test_a_client_close_after_ours_does_not_make_it_final():
    s = open_session()
    s.close(CloseCode.DRAINING, "bye")
    s.client_closed()
    assert s.end(1000).final is False


def test_aiohttps_own_close_code_is_kept():
    s = open_session()
    s.closed_by_server(1009)
    assert s.end(None).code is CloseCode.TOO_BIG and s.end(None).final
    t = open_session()
    t.closed_by_server(4999)  # a code we do not name stays an int
    assert t.end(None).code == 4999


def test_replaced_is_forgotten_not_detached():
    s = open_session()
    s.close(CloseCode.REPLACED, "replaced")
    assert s.end(None).replaced


def test_a_network_loss_keeps_the_peer_reconnecting_with_what_it_was_given():
    s = open_session()
    s.deliver("3-0", BODY)
    assert s.end(1006) == Ending(1006, False, False, "3-0")


# -- cut off: OPEN -> QUIET --------------------------------------------------------------

def test_a_slow_consumer_is_cut_off_at_once_with_1011():
    s = handling_a_frame()
    closing = s.overflowed()
    assert closing == Closing(CloseCode.INTERNAL, "slow consumer: resume to get the rest", False)
    assert s.state is State.QUIET and s.deliver("9-0", BODY) is None and s.reply(b"{}") is None


def test_a_fenced_node_writes_not_one_more_frame_and_does_not_wait():
    s = handling_a_frame()
    closing = s.fenced()
    assert closing == Closing(CloseCode.DRAINING, "this node lost its place in the cluster; reconnect", False)
    assert s.state is State.QUIET and s.reply(b"{}") is None


def test_a_gone_socket_stops_writes_and_the_seq_is_not_counted():
    s = open_session()
    s.deliver("1-0", BODY)
    s.socket_gone()
    assert s.state is State.QUIET and s.deliver("2-0", BODY) is None and s.written == "1-0"


def test_closed_stays_closed():
    s = open_session()
    s.end(1000)
    for event in (s.socket_gone, s.quiet, s.overflowed):
        event()
        assert s.state is State.CLOSED
    assert s.close(CloseCode.DRAINING, "x") is None and s.tick() is None


# -- liveness (tick) ---------------------------------------------------------------------

def test_a_quiet_connection_is_pinged_then_dropped():
    s = open_session()
    assert s.tick() is None and s.liveness is Liveness.SILENT  # heard since the welcome
    assert s.tick() == PING_FRAME and s.liveness is Liveness.PINGED
    assert s.tick() is Action.ABORT and s.state is State.QUIET
    assert s.end(1006) == Ending(1006, False, False, None)


def test_anything_heard_keeps_it_alive():
    s = open_session()
    s.tick()
    s.tick()
    s.received()  # its pong, a ping, a frame: anything
    assert s.liveness is Liveness.HEARD
    assert s.tick() is None and s.tick() == PING_FRAME


def test_a_ping_carries_the_last_seq_and_its_pong_lets_the_inbox_go():
    s = open_session()
    s.deliver("4-0", BODY)
    assert s.tick() == control_frame(PING, b"4-0")  # heard, but written to since the last trim
    assert s.tick() == PING_FRAME  # one confirmation at a time
    assert s.pong(b"3-0") is None  # not the ping out now
    assert s.pong(b"4-0") == "4-0"
    s.trimmed("4-0")
    s.received()
    assert s.tick() is None  # trimmed up to what was written: nothing to confirm


def test_an_unconfirmed_seq_is_asked_again():
    s = open_session()
    s.deliver("4-0", BODY)
    s.tick()
    assert s.pong(b"4-0") == "4-0"  # the bus could not trim: no trimmed()
    s.received()
    assert s.tick() == control_frame(PING, b"4-0")


def test_no_tick_before_the_welcome_or_once_closing():
    s = session()
    assert s.tick() is None
    s = open_session()
    s.close(CloseCode.DRAINING, "x")
    assert s.tick() is None


# -- quota ------------------------------------------------------------------------------

def test_the_quota_left_by_the_last_connection_applies_from_the_attach():
    limits = Limits(rate=1.0, burst=10)
    s = Session("bob", Quota(limits, 0.0), 0.0)
    left = Quota(limits, 0.0)
    for _ in range(8):
        assert left.take(10, 0.0)
    s.attached(Attached(7, None, True, [], frozenset(), quota=left.snapshot(0.0), quota_age=0.0), WELCOME, 0.0)
    assert [s.core.quota.take(10, 0.0) for _ in range(3)] == [True, True, False]  # 2 left, not 10


def test_a_takeover_elsewhere_reports_the_quota_minus_what_was_spent_here_since():
    limits = Limits(rate=1.0, burst=10)
    s = Session("bob", Quota(limits, 0.0), 0.0)
    s.attached(attached(), WELCOME, 0.0)
    assert s.core.quota.take(10, 0.0)  # spent here after the attach
    other = Quota(limits, 0.0)
    for _ in range(5):
        other.take(10, 0.0)  # the other connection left 5
    s.quota_report(other.snapshot(0.0), 0.0, 0.0)
    assert [s.core.quota.take(10, 0.0) for _ in range(5)] == [True] * 4 + [False]  # 5 - the 1 spent here
