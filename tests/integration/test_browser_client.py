"""client.js in headless Chromium: its policy against a scripted socket, its perfect
negotiation between two RTCPeerConnections with glare and lost frames forced by an
in-page relay, and its sessions against real nodes (receipts, presence, takeover,
token renewal, exactly-once delivery across a drain).

Chromium runs inside a private network namespace (webrtc_support.py), so the
RTCPeerConnections gather their candidates on the namespace's veth address.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeout

from netns_support import NetNamespace
from signaling.auth import mint
from support import ROOT, SECRET, Client, NodeProcess
from webrtc_support import VethNode, chromium, netns  # noqa: F401 - fixtures: pytest finds them by name

pytestmark = pytest.mark.slow
T = TypeVar("T")

CLIENT_JS = (ROOT / "signaling" / "static" / "client.js").read_text()

# The pages' waits: every one is bounded, and says what it waited for and what it saw
# (`seen()`, which each kind of page defines).
WAITS = """
window.sleep = (ms) => new Promise((r) => setTimeout(r, ms));
window.timedOut = (what, ms) => new Error(`timed out after ${ms} ms waiting for: ${what}\\nsaw:\\n  ${seen()}`);
window.until = async (fn, ms = 3000) => {
  const end = performance.now() + ms;
  while (!fn()) { if (performance.now() > end) throw timedOut(String(fn), ms); await sleep(5); }
};
window.within = (what, ms, promise) => {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(timedOut(what, ms)), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
};
"""

# A WebSocket stand-in the test scripts: `sockets` holds every one the client made.
FAKE_SOCKET = """
window.sockets = [];
window.FakeSocket = class FakeSocket {
  constructor(url) {
    this.url = new URL(url); this.readyState = 0; this.sent = []; this.closedWith = null; sockets.push(this);
  }
  send(text) { if (this.readyState !== 1) throw new Error("not open"); this.sent.push(JSON.parse(text)); }
  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 3; }
  // the server's side
  deliver(frame) { this.onmessage && this.onmessage({ data: JSON.stringify(frame) }); }
  welcome(extra = {}) {
    this.readyState = 1;
    this.onopen && this.onopen({});
    this.deliver({ type: "welcome", peer: this.url.searchParams.get("peer") || "p", node: "n", iceServers: [],
                   heartbeat: 25, resumed: false, ...extra });
  }
  drop(code, reason = "") { this.readyState = 3; this.onclose && this.onclose({ code, reason }); }
  param(name) { return this.url.searchParams.get(name); }
};
// What a failed wait saw: the sockets, and the relayed pair of the negotiation tests.
window.seen = () => {
  const lines = sockets.map((s, i) => `socket ${i}: ${s.url.host} readyState ${s.readyState}` +
    ` closed ${JSON.stringify(s.closedWith)} sent ${JSON.stringify(s.sent.map((f) => f.type))}`);
  if (window.pair) lines.push(...pair.state());
  return lines.join("\\n  ");
};
""" + WAITS

HARNESS = """<!doctype html><meta charset="utf-8"><title>client.js</title>
<script>""" + FAKE_SOCKET + """</script>
<script type="module">import * as sig from "/client.js"; window.sig = sig; window.ready = true;</script>"""


# What the page shows when a wait on it runs out: whatever of these it has.
PAGE_STATE = """() => {
  const out = [];
  if (window.seen) out.push(seen());
  if (window.c) {
    out.push("client: " + JSON.stringify({
      state: c.state, node: c.node, peer: c.peer, lastSeq: c.lastSeq, pending: c._pending.size,
      rooms: Object.fromEntries([...c.rooms].map(([room, peers]) => [room, [...peers]])) }));
  }
  for (const name of ["log", "got", "closes"]) {
    if (Array.isArray(window[name])) out.push(`${name}: ${JSON.stringify(window[name].slice(-40))}`);
  }
  return out.join("\\n  ");
}"""


async def page_state(page: Any) -> str:
    """The page's state for a failure message (bounded: a page whose main thread is stuck says so)."""
    try:
        return str(await asyncio.wait_for(page.evaluate(PAGE_STATE), 5))
    except TimeoutError:
        return "(no answer within 5 s: the page's main thread is blocked)"
    except Exception as exc:  # noqa: BLE001 - a closed or crashed page: say what happened instead
        return f"(the page cannot be read: {exc})"


async def bounded(what: str, awaitable: Awaitable[T], timeout: float, page: Any = None) -> T:
    """`awaitable`, or an AssertionError saying what did not happen within `timeout` (and the page's state)."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        state = f"\npage: {await page_state(page)}" if page is not None else ""
        raise AssertionError(f"timed out after {timeout} s waiting for: {what}{state}") from None


async def run_js(page: Any, script: str, arg: Any = None, *, timeout: float = 60.0) -> Any:
    """page.evaluate, bounded. The scripts bound their own waits, with their own diagnostics,
    well within `timeout`; this one is for a page that stops answering."""
    return await bounded(f"the page's script to finish: {script.strip()[:200]}", page.evaluate(script, arg),
                         timeout, page)


async def wait_page(page: Any, expression: str, timeout: float = 15.0) -> None:
    """Wait until `expression` is truthy in the page; on timeout say what it was and what the page had."""
    try:
        await bounded(expression, page.wait_for_function(expression, timeout=timeout * 1000), timeout + 5, page)
    except PlaywrightTimeout:
        raise AssertionError(f"not true within {timeout} s: {expression}\npage: {await page_state(page)}") from None


async def expect(client: Client, type: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """client.expect with a failure that says what was expected when nothing came."""
    try:
        return await client.expect(type, timeout, **fields)
    except TimeoutError:
        raise AssertionError(f"no frame within {timeout} s; expected {type} {fields}") from None


async def connect(base: str, **query: Any) -> Client:
    return await bounded(f"a welcome from {base} for {query}", Client.connect(base, **query), 10)


async def scripted_page(browser: Any) -> Any:
    """A page with client.js and the scripted socket, served by the test itself."""
    context = await bounded("a browser context", browser.new_context(), 15)
    page = await bounded("a page", context.new_page(), 15)

    async def serve(route: Any) -> None:
        if route.request.url.endswith("/client.js"):
            await route.fulfill(body=CLIENT_JS, content_type="text/javascript")
        else:
            await route.fulfill(body=HARNESS, content_type="text/html")

    await bounded("the route", page.route("http://client.test/**", serve), 10)
    await page.goto("http://client.test/", timeout=10_000)
    await wait_page(page, "window.ready === true", timeout=10)
    return page


@pytest.fixture
async def page(chromium):  # noqa: F811 - the imported fixture
    return await scripted_page(await chromium())


# -- policy, against the scripted socket ------------------------------------------------


async def test_pure_helpers(page):
    result = await run_js(page, """() => {
      const { compareSeq, closeAction, backoffDelay } = sig;
      const opts = { initial: 100, max: 1000 };
      return {
        seq: [compareSeq("9-0", "10-0"), compareSeq("1795813470482-10", "1795813470482-9"), compareSeq("5-1", "5-1"),
              compareSeq("99999999999999999999-0", "100000000000000000000-0")],
        actions: [1000, 1001, 1006, 1008, 1009, 1011, 4401, 4409, 4000].map(closeAction),
        low: [0, 1, 2, 3, 10].map((a) => backoffDelay(a, opts, () => 0)),
        high: [0, 1, 2, 3, 10].map((a) => backoffDelay(a, opts, () => 1)),
      };
    }""")
    assert [v < 0 for v in result["seq"]] == [True, False, False, True]
    assert result["seq"][1] > 0 and result["seq"][2] == 0
    assert result["actions"] == ["stop", "now", "backoff", "stop", "stop", "backoff", "token", "stop", "backoff"]
    assert result["low"] == [50, 100, 200, 400, 500]
    assert result["high"] == [100, 200, 400, 800, 1000]


async def test_deliveries_once_and_receipts(page):
    result = await run_js(page, """async () => {
      const c = new sig.SignalingClient("ws://x.test/ws", { peer: "alice", WebSocket: FakeSocket });
      const got = [], errors = [];
      c.on("message", (m) => got.push(m.data));
      c.on("error", (e) => errors.push(e.code));
      const ready = c.connect();
      const s = sockets[0];
      s.welcome();
      const welcome = await within("the first welcome", 3000, ready);
      s.deliver({ type: "message", from: "bob", data: 1, seq: "100-0" });
      s.deliver({ type: "message", from: "bob", data: 1, seq: "100-0" });          // the same seq again
      s.deliver({ type: "message", from: "bob", data: 0, seq: "99-5" });           // an older one
      s.deliver({ type: "message", from: "bob", data: 2, seq: "100-1", id: "~k.1" });
      s.deliver({ type: "message", from: "bob", data: 2, seq: "100-2", id: "~k.1" }); // bob's client re-sent it
      s.deliver({ type: "message", from: "carol", data: 3, seq: "100-3", id: "~k.1" }); // another sender's id
      s.deliver({ type: "message", from: "bob", data: 4, seq: "100-4", id: 7 });
      s.deliver({ type: "message", from: "bob", data: 5, seq: "100-5", id: 7 });    // app ids are the app's
      const p1 = c.send({ type: "message", to: "bob", data: "x", id: "mine" });
      const p2 = c.send({ type: "message", to: "nobody", data: "y" });
      const [f1, f2] = s.sent.slice(-2);
      s.deliver({ type: "ack", id: f1.id, queued: true });
      s.deliver({ type: "error", id: f2.id, code: "peer-unavailable", message: "gone" });
      s.deliver({ type: "error", code: "rate-limited", message: "slow down" });
      const ack = await within("the ack", 3000, p1);
      let rejected = null;
      try {
        await within("the error", 3000, p2);
      } catch (e) {
        rejected = { name: e.name, code: e.code, id: e.id, message: e.message };
      }
      return { url: s.url.search, welcome, got, ack, rejected, errors, ids: [f1.id, f2.id], lastSeq: c.lastSeq,
               pending: c._pending.size };
    }""")
    assert result["url"] == "?peer=alice"  # no resume on a first connection
    assert result["welcome"]["type"] == "welcome"
    assert result["got"] == [1, 2, 3, 4, 5]
    assert result["ack"] == {"id": result["ids"][0], "queued": True}
    assert result["rejected"] == {"name": "SignalingError", "code": "peer-unavailable", "id": result["ids"][1],
                                  "message": "gone"}
    assert result["errors"] == ["rate-limited"]
    first, second = result["ids"]
    assert first.startswith("~") and second.startswith("~") and first != second  # the client's ids, always
    assert result["lastSeq"] == "100-5"
    assert result["pending"] == 0


async def test_reconnects_resume_resend_and_rejoin(page):
    result = await run_js(page, """async () => {
      const c = new sig.SignalingClient(["ws://a.test/ws", "ws://b.test/ws"],
                                        { peer: "alice", WebSocket: FakeSocket, backoff: { initial: 400, max: 800 } });
      const log = [], closes = [];
      for (const t of ["peer-joined", "peer-left", "resync", "state"]) {
        c.on(t, (e) => log.push([t, e.peer ?? e.state ?? null]));
      }
      c.on("close", (e) => closes.push([e.code, e.reconnect, e.delay]));
      const presence = [];
      c.on("presence", (p) => presence.push(p.peers));
      c.connect();
      sockets[0].welcome();
      await until(() => c.state === "open");
      const joining = c.join("r1");
      const join = sockets[0].sent.at(-1);
      sockets[0].deliver({ type: "joined", room: "r1", peers: ["bob", "carol"] });
      sockets[0].deliver({ type: "ack", id: join.id });
      const members = await within("the join's receipt", 3000, joining);
      sockets[0].deliver({ type: "peer-joined", room: "r1", peer: "dave", seq: "5-0" });
      const inflight = c.send({ type: "message", to: "bob", data: "in flight" });
      const inflightId = sockets[0].sent.at(-1).id;

      // 1001: at once, to the next URL, resuming after the last seq processed
      sockets[0].drop(1001, "node draining");
      await until(() => sockets.length === 2);
      const queued = c.send({ type: "message", to: "bob", data: "while away" });
      sockets[1].welcome({ resumed: true });
      const resent = sockets[1].sent.map((f) => [f.type, f.data ?? f.room, f.id]);
      for (const f of sockets[1].sent) sockets[1].deliver({ type: "ack", id: f.id });
      await within("the re-sent frames' receipts", 3000, Promise.all([inflight, queued]));

      // 1011: after a jittered back-off (initial 400 ms: between 200 and 400)
      const t1 = performance.now();
      sockets[1].drop(1011, "internal error");
      await until(() => sockets.length === 3);
      const backoffDelay = performance.now() - t1;

      // the session could not be resumed: resync, rejoin, and the snapshot's changes as events
      sockets[2].welcome({ resumed: false });
      const rejoin = sockets[2].sent.find((f) => f.type === "join");
      sockets[2].deliver({ type: "joined", room: "r1", peers: ["bob", "erin"] });
      sockets[2].deliver({ type: "ack", id: rejoin.id });
      sockets[2].deliver({ type: "peer-joined", room: "r1", peer: "erin", seq: "6-0" }); // known already
      return {
        urls: sockets.map((s) => s.url.host), resume: sockets.map((s) => s.param("resume")),
        members, backoffDelay, closes, resent, inflightId, rejoin: rejoin.room, log, presence,
        rooms: [...c.rooms.get("r1")].sort(),
      };
    }""")
    assert result["members"] == ["bob", "carol"]
    assert result["urls"] == ["a.test", "b.test", "b.test"]
    assert result["resume"] == [None, "5-0", "5-0"]
    # 1001 at once, 1011 after a jittered back-off (initial 400 ms: between 200 and 400); the
    # reconnects waited what the client said (a timer never fires early; a busy machine may make it late)
    [(drain, again, no_delay), (internal, again_later, delay)] = result["closes"]
    assert (drain, again, no_delay) == (1001, True, 0) and (internal, again_later) == (1011, True)
    assert 200 <= delay <= 400
    assert result["backoffDelay"] >= delay - 1
    # the frame the dead connection left unacknowledged, with its id, then the one that waited
    assert result["resent"] == [["message", "in flight", result["inflightId"]],
                                ["message", "while away", result["resent"][1][2]]]
    assert result["rejoin"] == "r1"
    events = [e for e in result["log"] if e[0] != "state"]
    assert events == [["peer-joined", "dave"], ["resync", "alice"], ["peer-left", "carol"], ["peer-left", "dave"],
                      ["peer-joined", "erin"]]
    states = [e[1] for e in result["log"] if e[0] == "state"]
    assert states == ["connecting", "open", "reconnecting", "open", "reconnecting", "open"]
    assert result["presence"][0] == ["bob", "carol"] and result["presence"][-1] == ["bob", "erin"]
    assert result["rooms"] == ["bob", "erin"]


async def test_a_connection_lost_before_anything_was_processed_resumes_from_welcome_seq(page):
    # protocol 1.1: frames reached the socket, the app handled none, the connection died
    result = await run_js(page, """async () => {
      const c = new sig.SignalingClient("ws://x.test/ws", { peer: "bob", WebSocket: FakeSocket,
                                                            backoff: { initial: 10, max: 20 } });
      const got = [];
      c.on("message", (m) => got.push(m.data));
      c.connect();
      sockets[0].welcome({ resumed: false, seq: "7-3" });   // a takeover that replays after 7-3
      await until(() => c.state === "open");
      const before = c.lastSeq;
      sockets[0].drop(1006, "");                              // before its replay arrived
      await until(() => sockets.length === 2);
      sockets[1].welcome({ resumed: true, seq: "7-3" });
      sockets[1].deliver({ type: "message", from: "alice", data: 1, seq: "7-4" });
      sockets[1].deliver({ type: "message", from: "alice", data: 2, seq: "7-5" });
      return { before, resume: sockets[1].param("resume"), got, lastSeq: c.lastSeq,
               welcome: sockets[0].param("resume") };
    }""")
    assert result["before"] == "7-3" and result["resume"] == "7-3"  # not "0-0": no false resync, no old frames
    assert result["welcome"] is None and result["got"] == [1, 2] and result["lastSeq"] == "7-5"


async def test_a_rejoin_refused_while_the_cluster_reregisters_is_retried(page):
    # right after Redis lost its data, joins answer `unavailable` for a node TTL: a client
    # that lost its session (resumed: false) keeps rejoining until the join is taken
    result = await run_js(page, """async () => {
      const c = new sig.SignalingClient("ws://x.test/ws", { peer: "alice", WebSocket: FakeSocket,
                                                            backoff: { initial: 10, max: 20 } });
      const errors = [];
      c.on("error", (e) => errors.push(e.code));
      c.connect();
      sockets[0].welcome();
      await until(() => c.state === "open");
      const joining = c.join("r1");
      const first = sockets[0].sent.at(-1);
      sockets[0].deliver({ type: "joined", room: "r1", peers: [] });
      sockets[0].deliver({ type: "ack", id: first.id });
      await within("the join's receipt", 3000, joining);
      sockets[0].drop(1001, "lease lost");
      await until(() => sockets.length === 2);
      sockets[1].welcome({ resumed: false });
      const refused = sockets[1].sent.find((f) => f.type === "join");
      sockets[1].deliver({ type: "error", code: "unavailable", message: "re-registering", id: refused.id });
      const t0 = performance.now();
      await until(() => sockets[1].sent.filter((f) => f.type === "join").length === 2, 3000);
      const waited = performance.now() - t0;
      const again = sockets[1].sent.filter((f) => f.type === "join")[1];
      sockets[1].deliver({ type: "joined", room: "r1", peers: ["bob"] });
      sockets[1].deliver({ type: "ack", id: again.id });
      await until(() => c.rooms.get("r1")?.has("bob"));
      return { waited, errors, rooms: [...c.rooms.keys()], room: again.room };
    }""")
    assert result["room"] == "r1" and result["rooms"] == ["r1"]
    assert result["errors"] == []  # a refused rejoin is retried, not reported
    assert result["waited"] >= 200  # after a back-off, not at once


@pytest.mark.parametrize("code", [1000, 1008, 1009, 4409, 4401])
async def test_final_close_codes_stop(page, code):
    result = await run_js(page, """async (code) => {
      const c = new sig.SignalingClient("ws://x.test/ws", { peer: "alice", WebSocket: FakeSocket });
      const closed = [];
      c.on("closed", (e) => closed.push(e.code));
      c.connect();
      sockets[0].welcome();
      const pending = c.send({ type: "message", to: "bob", data: 1 }).then(() => "acked", (e) => e.code);
      sockets[0].drop(code, "bye");
      await sleep(300);
      return { state: c.state, closed, pending: await within("the pending send to settle", 3000, pending),
               sockets: sockets.length,
               after: await within("a send after the stop to settle", 3000,
                                   c.send({ type: "ping" }).then(() => "sent", (e) => e.code)) };
    }""", code)
    # 4401 without a getToken hook has nothing to reconnect with
    assert result == {"state": "closed", "closed": [code], "pending": "closed", "sockets": 1, "after": "closed"}


async def test_token_renewal_on_4401_and_after_a_refused_upgrade(page):
    result = await run_js(page, """async () => {
      let n = 0;
      const c = new sig.SignalingClient("ws://x.test/ws", { token: "t0", WebSocket: FakeSocket,
                                        getToken: async () => `t${++n}`, backoff: { initial: 40, max: 40 } });
      c.connect();
      sockets[0].welcome();
      sockets[0].deliver({ type: "message", from: "bob", data: 1, seq: "7-0" });
      sockets[0].drop(4401, "token expired");
      await until(() => sockets.length === 2);
      sockets[1].drop(1006, "");            // refused before any welcome: perhaps a 401
      await until(() => sockets.length === 3);
      sockets[2].welcome({ resumed: true });
      return { tokens: sockets.map((s) => s.param("token")), peers: sockets.map((s) => s.param("peer")),
               resume: sockets.map((s) => s.param("resume")), state: c.state };
    }""")
    assert result["tokens"] == ["t0", "t1", "t2"]
    assert result["peers"] == [None, None, None]  # the token names the peer
    assert result["resume"] == [None, "7-0", "7-0"]
    assert result["state"] == "open"


async def test_a_silent_connection_is_abandoned_without_a_close_frame(page):
    result = await run_js(page, """async () => {
      const c = new sig.SignalingClient("ws://x.test/ws", { peer: "alice", WebSocket: FakeSocket,
                                        pingInterval: 50, pongTimeout: 150, backoff: { initial: 20, max: 20 } });
      c.connect();
      const first = sockets[0];
      const send = first.send.bind(first);
      let answered = 0;
      first.send = (text) => {            // the server answers the first ping, as soon as it is sent
        send(text);
        if (JSON.parse(text).type === "ping" && answered++ === 0) queueMicrotask(() => first.deliver({ type: "pong" }));
      };
      first.welcome();
      await until(() => sockets.length === 2, 2000);  // the next ping went unanswered
      sockets[1].welcome({ resumed: true });
      const pings = sockets[0].sent.filter((f) => f.type === "ping").length;
      c.close();
      return { closedFirst: sockets[0].closedWith, pings, state: c.state, closedLast: sockets[1].closedWith };
    }""")
    # a close frame would end the peer for good; the new connection takes over instead
    assert result["closedFirst"] is None
    assert result["pings"] >= 2
    assert result["state"] == "closed"
    assert result["closedLast"] == {"code": 1000, "reason": "bye"}


# -- perfect negotiation, through an in-page relay ------------------------------------------

RELAY = """
// Two clients, one relay that plays the server: frames go from one to the other with
// `from` and `seq`, and are acked. `hold` keeps frames back; `lose` drops matching ones.
// `pair.watch(name, link, channel)` adds a link's events to the relay's log, and the link's
// state and its channel's to what a failed wait reports (`seen`), with every frame relayed.
window.makePair = async () => {
  const relay = { held: [], hold: false, lose: () => false, seq: 0, sockets: {}, log: [] };
  const t0 = performance.now();
  relay.note = (...what) => relay.log.push([Math.round(performance.now() - t0), ...what].join(" "));
  const pump = (from, frame) => {
    const to = relay.sockets[frame.to];
    relay.sockets[from].deliver({ type: "ack", id: frame.id });
    const c = frame.candidate;
    const lost = relay.lose(frame);
    relay.note(`${from}->${frame.to}`, frame.type, frame.offer?.type ?? frame.answer?.type ?? "",
               frame.type === "candidate" ? (c ? `${c.usernameFragment} ${c.candidate}` : "end") : "",
               lost ? "LOST" : relay.hold ? "held" : "");
    if (lost) return;
    const out = { ...frame, from, seq: `1-${++relay.seq}` };
    if (relay.hold) relay.held.push([to, out]); else setTimeout(() => to.deliver(out), 1);
  };
  relay.release = () => { relay.hold = false; for (const [to, f] of relay.held.splice(0)) to.deliver(f); };
  const links = {}, channels = {};
  window.pair = {
    watch(name, link, channel) {
      links[name] = link;
      channels[name] = channel;
      for (const t of ["state", "negotiated", "error", "closed"]) {
        link.on(t, (e) => relay.note(name, t, t === "error" ? String(e) : JSON.stringify(e)));
      }
      const pc = link.pc;
      pc.addEventListener("icegatheringstatechange", () => relay.note(name, "gathering", pc.iceGatheringState));
      channel.addEventListener("open", () => relay.note(name, "channel open"));
    },
    state: () => [
      ...Object.entries(links).map(([name, link]) => `${name}: ${JSON.stringify(linkState(link))}`),
      ...Object.entries(channels).map(([name, channel]) => `${name}'s channel: ${channel.readyState}`),
      "frames relayed and events (ms):", ...relay.log.map((line) => `  ${line}`),
    ],
  };
  const make = async (peer) => {
    const c = new sig.SignalingClient("ws://relay.test/ws", { peer, WebSocket: FakeSocket });
    c.connect();
    const s = sockets.at(-1);
    relay.sockets[peer] = s;
    s.send = (text) => pump(peer, JSON.parse(text));
    s.welcome();
    await until(() => c.state === "open");
    return c;
  };
  const a = await make("ann"), b = await make("ben");
  return { relay, a, b };
};
// The state of a link and its connection, for failure messages.
window.linkState = (link) => link && {
  polite: link.polite, makingOffer: link._makingOffer, ignoreOffer: link._ignoreOffer, negotiations: link.negotiations,
  closed: link.closed, signaling: link.pc.signalingState, gathering: link.pc.iceGatheringState,
  ice: link.pc.iceConnectionState, connection: link.pc.connectionState, sctp: link.pc.sctp?.state ?? null,
  local: link.pc.localDescription?.type ?? null, remote: link.pc.remoteDescription?.type ?? null,
};
window.opened = (channel) => new Promise((resolve) => {
  if (channel.readyState === "open") resolve(); else channel.addEventListener("open", () => resolve(), { once: true });
});
window.echo = (channel, text) => new Promise((resolve) => {
  channel.addEventListener("message", (e) => resolve(e.data), { once: true });
  channel.send(text);
});
"""


async def relay_page(page: Any) -> Any:
    await bounded("the relay script", page.add_script_tag(content=RELAY), 10, page)
    return page


async def test_glare_is_resolved_by_the_polite_side(page):
    # Both offers cross in flight; the polite side ("ann" < "ben") rolls its own back and
    # answers. (Chromium: a connection that rolls back its first offer before that offer's
    # gathering produced anything never gathers again; PeerLink._gathered waits for it.)
    result = await run_js(await relay_page(page), """async () => {
      const { relay, a, b } = await makePair();
      relay.hold = true;
      const la = a.link("ben"), lb = b.link("ann");
      const da = la.pc.createDataChannel("x", { negotiated: true, id: 3 });
      const db = lb.pc.createDataChannel("x", { negotiated: true, id: 3 });
      pair.watch("ann", la, da);
      pair.watch("ben", lb, db);
      await until(() => relay.held.filter(([, f]) => f.type === "offer").length === 2);
      relay.note("release");
      relay.release();
      await within("both data channels open", 15000, Promise.all([opened(da), opened(db)]));
      db.onmessage = (e) => db.send("pong:" + e.data);
      const reply = await within("the echo", 5000, echo(da, "ping"));
      // a data channel can open on one side a moment before that side's connectionState says so
      await until(() => la.pc.connectionState === "connected" && lb.pc.connectionState === "connected", 5000);
      return { reply, politeA: la.polite, politeB: lb.polite, na: la.negotiations, nb: lb.negotiations,
               states: [la.pc.connectionState, lb.pc.connectionState] };
    }""")
    assert result["reply"] == "pong:ping"
    assert (result["politeA"], result["politeB"]) == (True, False)  # "ann" < "ben"
    assert result["na"] >= 1 and result["nb"] >= 1
    assert result["states"] == ["connected", "connected"]


async def test_a_lost_offer_is_made_again_and_ice_restarts(page):
    result = await run_js(await relay_page(page), """async () => {
      const { relay, a, b } = await makePair();
      let lost = 0;
      relay.lose = (f) => f.type === "offer" && lost++ === 0;   // the first offer vanishes
      let lb = null, db = null;
      b.on("offer", (m) => {                                     // ben answers whoever calls
        if (lb) return;
        lb = b.link(m.from);
        db = lb.pc.createDataChannel("x", { negotiated: true, id: 1 });
        pair.watch("ben", lb, db);
      });
      const la = a.link("ben", { offerTimeout: 500 });
      const da = la.pc.createDataChannel("x", { negotiated: true, id: 1 });
      pair.watch("ann", la, da);
      await until(() => lb !== null, 5000);                      // after the watchdog's new offer
      await within("both data channels open", 15000, Promise.all([opened(da), opened(db)]));
      const before = lb.negotiations;
      relay.note("ben restarts ICE");
      lb.restartIce();
      await until(() => lb.negotiations > before && lb.pc.connectionState === "connected", 10000);
      db.onmessage = (e) => db.send("pong:" + e.data);
      const reply = await within("the echo after the ICE restart", 5000, echo(da, "after restart"));
      // a resync of the signaling restarts ICE too
      const n = la.negotiations;
      relay.note("resync");
      a.emit("resync", {});
      await until(() => la.negotiations > n, 10000);
      // bye closes the other side's link
      relay.note("ann closes");
      la.close();
      await until(() => lb.closed, 5000);
      return { lost, reply, links: [a.links.size, b.links.size] };
    }""")
    assert result["lost"] >= 2
    assert result["reply"] == "pong:after restart"
    assert result["links"] == [0, 0]


# -- against real nodes ----------------------------------------------------------------------

# A page on a node's origin: client.js as the module it serves, the bounded waits, and what
# a failed one saw (the client `c` and the `log` the tests keep).
REAL_PAGE = """async () => {
  window.sig = await import("/client.js");
  window.log = [];
  window.seen = () => JSON.stringify({ state: window.c?.state, node: window.c?.node, log: window.log });
""" + WAITS + """
}"""


async def real_page(browser: Any, node: NodeProcess) -> Any:
    context = await bounded("a browser context", browser.new_context(), 15)
    page = await bounded("a page", context.new_page(), 15)
    await page.goto(f"{node.base}/healthz", timeout=10_000)  # an origin that serves the module
    await run_js(page, REAL_PAGE, timeout=15)
    return page


def ws(node: NodeProcess) -> str:
    return node.base.replace("http", "ws", 1)


async def node_metric(node: NodeProcess, name: str) -> str:
    """The line of /metrics for `name` (a metric without labels)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(f"{node.base}/metrics") as response:
            text = await response.text()
    return next((line for line in text.splitlines() if line.startswith(name + " ")), f"{name} missing")


async def until_metric(node: NodeProcess, line: str, timeout: float = 10.0) -> None:
    """Wait until the node's /metrics has `line` ("name value"); on timeout say what it had."""
    name = line.split()[0]
    deadline = time.monotonic() + timeout
    seen = await node_metric(node, name)
    while seen != line:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for /metrics to say {line!r}: it says {seen!r}")
        await asyncio.sleep(0.02)
        seen = await node_metric(node, name)


async def start_nodes(netns: NetNamespace, tmp_path: Path, n: int, *args: str,  # noqa: F811 - the imported fixture
                      redis: Any = None, key_prefix: str = "") -> list[VethNode]:
    nodes = []
    for i in range(n):
        extra = ["--redis-url", redis.url, "--key-prefix", key_prefix] if redis else []
        nodes.append(VethNode(netns.host_address, "--node-id", f"node-{i + 1}", *extra, *args).start(tmp_path))
    for node in nodes:
        await bounded(f"{node.base} ready", node.wait_ready(), 20)
    return nodes


@pytest.fixture
async def veth_nodes(netns, tmp_path, redis_server, key_prefix):  # noqa: F811 - the imported fixture
    started: list[VethNode] = []

    async def start(n: int, *args: str, clustered: bool = False) -> list[VethNode]:
        nodes = await start_nodes(netns, tmp_path, n, *args, redis=redis_server if clustered else None,
                                  key_prefix=key_prefix)
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


async def test_receipts_presence_and_takeover_on_a_real_node(chromium, veth_nodes):  # noqa: F811 - the imported fixture
    [node] = await veth_nodes(1)
    page = await real_page(await chromium(), node)
    await run_js(page, """async (url) => {
      window.c = new sig.SignalingClient(url, { peer: "web" });
      for (const t of ["peer-joined", "peer-left", "message", "closed"]) {
        c.on(t, (e) => log.push([t, e.peer ?? e.data ?? e.code]));
      }
      c.on("presence", (p) => log.push(["presence", p.peers]));
      await within("the first welcome", 10000, c.connect());
      return await within("the join's receipt", 10000, c.join("room"));
    }""", f"{ws(node)}/ws")
    py = await connect(ws(node), peer="py")
    try:
        await py.send(type="join", room="room")
        await expect(py, "joined", peers=["web"])
        await wait_page(page, "log.some(([t, p]) => t === 'peer-joined' && p === 'py')")
        assert await run_js(page, "[...c.rooms.get('room')]") == ["py"]

        ack = await run_js(page, "c.message({ to: 'py' }, { hi: 1 })")
        assert ack["queued"] is False
        got = await expect(py, "message", data={"hi": 1})
        assert got["from"] == "web" and got["id"] == ack["id"]
        await py.send(type="message", to="web", data="back")
        await wait_page(page, "log.some(([t, d]) => t === 'message' && d === 'back')")

        error = await run_js(page, "c.message({ to: 'nobody' }, 1).catch((e) => [e.name, e.code])")
        assert error == ["SignalingError", "peer-unavailable"]

        await py.drop()  # py vanishes: it is reconnecting, so messages for it are queued
        await until_metric(node, "signaling_peers 1.0")  # (once the node has seen the connection go)
        ack = await run_js(page, "c.message({ to: 'py' }, 'later')")
        assert ack["queued"] is True
        py = await connect(ws(node), peer="py", resume=py.last_seq or "0-0")
        await expect(py, "message", data="later")

        await py.send(type="leave", room="room")
        await wait_page(page, "log.some(([t, p]) => t === 'peer-left' && p === 'py')")

        # another connection with the same peer id takes over: 4409, and the client stops
        other = await connect(ws(node), peer="web")
        await wait_page(page, "c.state === 'closed'")
        assert await run_js(page, "log.filter(([t]) => t === 'closed')") == [["closed", 4409]]
        await other.close()
    finally:
        await py.close()


async def test_every_message_once_and_in_order_across_a_drain(chromium, veth_nodes):  # noqa: F811 - the imported fixture
    nodes = await veth_nodes(2, clustered=True)
    page = await real_page(await chromium(), nodes[0])
    await run_js(page, """async (urls) => {
      window.c = new sig.SignalingClient(urls, { peer: "web" });
      window.got = [];
      c.on("message", (m) => got.push(m.data));
      await within("the first welcome", 10000, c.connect());
    }""", [f"{ws(n)}/ws" for n in nodes])
    sender = await connect(ws(nodes[1]), peer="sender")
    try:
        acks = []
        for i in range(60):
            await sender.send(type="message", to="web", data=i, id=i)
            if i == 20:
                nodes[0].signal(15)  # SIGTERM: node-1 drains while the messages flow
            acks.append(await expect(sender, "ack", id=i))
            await asyncio.sleep(0.01)
        await wait_page(page, "got.length >= 60", timeout=15)
        await asyncio.sleep(0.3)  # then nothing more may come: no repeats
        assert await run_js(page, "got") == list(range(60))
        assert await run_js(page, "[c.node, c.welcome.resumed]") == ["node-2", True]
    finally:
        await sender.close()


async def test_token_renewal_with_a_real_node(chromium, veth_nodes):  # noqa: F811 - the imported fixture
    [node] = await veth_nodes(1, "--jwt-secret", SECRET)
    page = await real_page(await chromium(), node)
    minted: list[float] = []

    def token() -> str:
        minted.append(time.time())
        return mint(SECRET, "web", ttl=2 if len(minted) == 1 else 300)

    await bounded("the page's freshToken hook", page.expose_function("freshToken", token), 10, page)
    await run_js(page, """async ([url, first]) => {
      window.c = new sig.SignalingClient(url, { token: first, getToken: () => window.freshToken() });
      window.closes = [];
      c.on("close", (e) => closes.push(e.code));
      await within("the first welcome", 10000, c.connect());
      await within("the join's receipt", 10000, c.join("r"));
    }""", [f"{ws(node)}/ws", token()])
    await wait_page(page, "closes.includes(4401) && c.state === 'open'", timeout=10)
    assert len(minted) == 2
    assert await run_js(page, "[c.peer, c.welcome.resumed, [...c.rooms.keys()]]") == ["web", True, ["r"]]
    assert json.loads(json.dumps(await run_js(page, "closes"))) == [4401]
