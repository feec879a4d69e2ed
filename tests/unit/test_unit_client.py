"""The clients' pure parts: close-code policy, back-off, dedupe, aiortc conversions, and
the shape of the browser module and its types."""

from __future__ import annotations

import re

import pytest

from signaling.client import (
    AUTO_ID,
    RECENT_IDS,
    Backoff,
    Deduper,
    SignalingError,
    _ufrag,
    candidate_from_json,
    close_action,
    ice_servers_for_aiortc,
)
from support import ROOT

STATIC = ROOT / "signaling" / "static"


@pytest.mark.parametrize("code, action", [
    (1000, "stop"), (1008, "stop"), (1009, "stop"), (4409, "stop"),
    (1001, "now"), (4401, "token"),
    (1011, "backoff"), (1006, "backoff"), (None, "backoff"), (4000, "backoff"),
])
def test_close_action(code, action):
    assert close_action(code) == action


def test_backoff_grows_caps_and_jitters():
    b = Backoff(initial=0.5, max=4.0, factor=2.0)
    assert [b.delay(a, lambda: 0.0) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [b.delay(a, lambda: 1.0) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(-3, lambda: 1.0) == 0.5
    assert 0.25 <= Backoff().delay(0) <= 0.5


def test_dedupe_by_seq_compares_numbers_not_strings():
    d = Deduper()
    assert d.fresh({"type": "message", "seq": "9-0"})
    assert d.fresh({"type": "message", "seq": "10-0"})  # as strings "10-0" < "9-0"
    assert not d.fresh({"type": "message", "seq": "10-0"})
    assert not d.fresh({"type": "message", "seq": "9-5"})
    assert d.fresh({"type": "peer-left", "seq": "10-1"})
    assert d.fresh({"type": "message", "seq": "1795813470482-10"})
    assert not d.fresh({"type": "message", "seq": "1795813470482-9"})


def test_dedupe_starts_after_a_resume_point():
    d = Deduper(highest=(100, 3))
    assert not d.fresh({"type": "message", "seq": "100-3"})
    assert d.fresh({"type": "message", "seq": "100-4"})


def test_dedupe_drops_a_senders_resend_of_an_auto_id():
    d = Deduper()
    first = {"type": "candidate", "from": "bob", "id": f"{AUTO_ID}ab.1", "seq": "1-0"}
    assert d.fresh(first)
    assert not d.fresh({**first, "seq": "1-1"})  # bob's client sent it again: a new seq
    assert d.fresh({**first, "from": "carol", "seq": "1-2"})
    assert d.fresh({"type": "message", "from": "bob", "id": 7, "seq": "1-3"})
    assert d.fresh({"type": "message", "from": "bob", "id": 7, "seq": "1-4"})  # the app's own ids
    assert d.fresh({"type": "peer-joined", "peer": "bob", "id": f"{AUTO_ID}ab.1", "seq": "1-5"})


def test_dedupe_memory_is_bounded():
    d = Deduper()
    for i in range(RECENT_IDS + 10):
        assert d.fresh({"type": "message", "from": "b", "id": f"{AUTO_ID}x.{i}"})
    assert len(d.recent) == RECENT_IDS
    assert d.fresh({"type": "message", "from": "b", "id": f"{AUTO_ID}x.0"})  # forgotten: the oldest


def test_signaling_error_carries_code_and_id():
    err = SignalingError("peer-unavailable", "peer 'x' is not connected", 7)
    assert (err.code, err.id, err.message) == ("peer-unavailable", 7, "peer 'x' is not connected")
    assert "peer-unavailable" in str(err)


def test_browser_candidates_become_aiortc_candidates():
    init = {"candidate": "candidate:842163049 1 udp 1677729535 198.18.0.2 46154 typ srflx raddr 10.0.0.1 "
                         "rport 46154 generation 0 ufrag sK4b network-cost 999",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sK4b"}
    c = candidate_from_json(init)
    assert (c.ip, c.port, c.protocol, c.type, c.priority) == ("198.18.0.2", 46154, "udp", "srflx", 1677729535)
    assert (c.relatedAddress, c.relatedPort, c.sdpMid, c.sdpMLineIndex) == ("10.0.0.1", 46154, "0", 0)
    assert candidate_from_json(None) is None
    assert candidate_from_json({"candidate": "", "sdpMid": "0"}) is None  # end-of-candidates, spelled out


def test_welcome_ice_servers_become_aiortc_servers():
    servers = ice_servers_for_aiortc([
        {"urls": ["stun:stun.example:3478"]},
        {"urls": "turn:turn.example:3478", "username": "1700000000:alice", "credential": "c2VjcmV0"},
        {"username": "no urls"},
    ])
    assert [s.urls for s in servers] == [["stun:stun.example:3478"], "turn:turn.example:3478"]
    assert (servers[1].username, servers[1].credential) == ("1700000000:alice", "c2VjcmV0")


def test_ufrag_of_a_description():
    assert _ufrag("v=0\r\na=ice-ufrag:Ab12\r\na=ice-pwd:x\r\n") == "Ab12"
    assert _ufrag("v=0\r\n") is None


# -- the browser module -----------------------------------------------------------------


def _js_exports() -> set[str]:
    text = (STATIC / "client.js").read_text()
    return set(re.findall(r"^export (?:class|function|const) (\w+)", text, re.M))


def test_every_export_of_client_js_is_typed_in_client_d_ts():
    declared = set(re.findall(r"^export declare (?:class|function|const) (\w+)", (STATIC / "client.d.ts").read_text(),
                              re.M))
    assert _js_exports() == declared == {"CloseCode", "SignalingError", "compareSeq", "closeAction", "backoffDelay",
                                         "SignalingClient", "PeerLink"}


def test_client_js_needs_no_build_step():
    text = (STATIC / "client.js").read_text()
    assert not re.search(r"^import ", text, re.M), "client.js must not import anything"
    assert "require(" not in text


def test_the_demo_page_uses_the_served_module():
    html = (STATIC / "index.html").read_text()
    assert 'import { SignalingClient } from "/client.js"' in html
    for element in ("peer", "room", "join", "presence", "local", "remote", "chat", "chat-text", "chat-send",
                    "me-node", "call-state", "dc-state", "hangup", "log"):
        assert f'id="{element}"' in html, element


def test_the_readme_shows_the_demo():
    readme = (ROOT / "README.md").read_text()
    assert "## Clients and demo" in readme
    assert "](docs/demo.png)" in readme
