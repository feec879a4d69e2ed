#!/usr/bin/env node
// The load generator of the Redis-restart recovery scenario (bench/recovery.py, issue 13).
//
//   node bench/loadgen/recovery.js CONFIG.json
//
// One process holds `pairs` pairs of our clients (docs/PROTOCOL.md): peer a of pair i on
// endpoint 0, peer b on endpoint 1, both from the source address `localAddress`. Both
// peers of a pair live in this process, so every account below is local to it.
//
// Commands (JSON lines on stdin), in this order:
//   go         start the regular traffic: `rate` acked messages per second in total, pair
//              after pair, a -> b then b -> a (at 2,000 msg/s overall and 10,000 pairs, each
//              peer sends one every 10 s). A message due while its sender is not connected
//              is not sent (counted as `skipped`).
//   restarted  {"t": ns}: Redis was restarted at t (CLOCK_MONOTONIC, Python's clock). From
//              then on each peer not yet reachable is probed by its partner: an acked probe
//              (the same frame as the regular messages), at most one outstanding per peer,
//              the next one `probeInterval` ms after the previous one left and once that one
//              was answered (ack, error, or no answer within `probeTimeout` ms), within a
//              budget of `probeRate` probes/s for the process (unreachable peers are probed
//              round-robin: with U of them, each is probed every max(probeInterval,
//              U / probeRate)). A peer whose probe was acked (`delivered` or `queued`) is
//              probed no more: that probe must reach it.
//              A peer is REACHABLE at the first moment it receives a message from its partner
//              (a probe or a regular one) that was sent after t; its reachable time is that
//              moment minus t. The process prints {"event":"reached"} when all of its peers are.
//              Its lower bound: when the last message to it (probe or regular) that was refused
//              (an `error` came back) left, minus t (0 if none was): it was not reachable then. The truth lies between;
//              the gap is at most a probing round, max(probeInterval, U / probeRate).
//   stop       stop sending; then (bounded) wait for every client to be connected again,
//              for every sent message to be answered, and for every acked one to arrive,
//              and print {"event":"result"} with the whole account.
//
// Reconnecting: a socket closed by the server (or lost) reconnects to the same endpoint
// with resume=<last seq> as PROTOCOL.md says (the `seq` of the last frame processed, else the
// `seq` of the last welcome): at once after 1001, else after signaling/static/client.js's
// back-off (500 ms doubling to 15 s, equal jitter); a refused attempt (HTTP 503, a close
// before `welcome`) backs off the same way. 1000, 1008, 1009 and 4409 are not reconnected
// (counted as `stopped`: none should happen here).
//
// Lost: a message acked `delivered` or `queued` that never reached its addressee by the
// end. Duplicate: one that reached it more than once. Reordered: one that arrived after a
// later message from the same partner.
"use strict";

const fs = require("fs");
const crypto = require("crypto");
const readline = require("readline");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const now = () => performance.now(); // ms, monotonic
const monoNs = () => process.hrtime.bigint(); // CLOCK_MONOTONIC, as Python's time.monotonic_ns()

function emit(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }
function fail(message) { emit({ event: "fatal", message }); process.exit(2); }
process.on("uncaughtException", (e) => fail(`uncaught: ${e && e.stack || e}`));

// ---- commands ------------------------------------------------------------------------------
const waiters = new Map();
const received = new Map();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  msg.at = now();
  received.set(msg.cmd, msg);
  for (const resolve of waiters.get(msg.cmd) || []) resolve(msg);
  waiters.delete(msg.cmd);
});
function command(name) {
  if (received.has(name)) return Promise.resolve(received.get(name));
  return new Promise((resolve) => { const list = waiters.get(name) || []; list.push(resolve); waiters.set(name, list); });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// ms on performance.now()'s scale of a CLOCK_MONOTONIC instant in ns (a string)
const toLocal = (ns) => now() - Number(monoNs() - BigInt(ns)) / 1e6;

// ---- frames --------------------------------------------------------------------------------
const N_WIDTH = 10;
const N_MARK = Buffer.from('"n":"');
const SEQ_PREFIX = Buffer.from('{"seq":"');
const pad10 = (n) => String(n).padStart(N_WIDTH, "0");
function readN(buf, at) {
  let v = 0;
  for (let k = 0; k < N_WIDTH; k++) v = v * 10 + (buf[at + k] - 48);
  return v;
}
// {"to":"<id>","type":"candidate","candidate":{...},"n":"0000000042","pad":"ppp","id":42}
function frameKind(idLength, size) {
  const candidate = { candidate: "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.1 rport 46154 generation 0", sdpMid: "0", sdpMLineIndex: 0 };
  const to = "x".repeat(idLength);
  const base = (pad) => JSON.stringify({ to, type: "candidate", candidate, n: pad10(0), pad }).slice(0, -1) + ',"id":' + "9".repeat(N_WIDTH) + "}";
  const pad = "p".repeat(Math.max(0, size - Buffer.byteLength(base(""))));
  const probe = base(pad);
  const at = probe.indexOf('"n":"');
  const head = probe.slice(0, 7), mid = probe.slice(7 + idLength, at + 5);
  const tail = probe.slice(at + 5 + N_WIDTH, probe.length - (',"id":'.length + N_WIDTH + 1));
  return { build: (dst, n) => head + dst + mid + pad10(n) + tail + ',"id":' + n + "}", bytes: Buffer.byteLength(probe) };
}

const JWT_HEADER = Buffer.from('{"alg":"HS256","typ":"JWT"}').toString("base64url");
function jwt(secret, sub) {
  const t = Math.floor(Date.now() / 1000);
  const body = Buffer.from(JSON.stringify({ sub, iat: t, exp: t + 7200 })).toString("base64url");
  const sig = crypto.createHmac("sha256", secret).update(`${JWT_HEADER}.${body}`).digest("base64url");
  return `${JWT_HEADER}.${body}.${sig}`;
}

// ---- the account ---------------------------------------------------------------------------
const MAXN = cfg.maxMessages || (1 << 22);
const sentAt = new Float64Array(MAXN); // ms (performance.now) when message n left
const destOf = new Int32Array(MAXN); // addressee's peer index
const got = new Uint8Array(MAXN); // times it arrived
const acked = new Uint8Array(MAXN); // 1 delivered, 2 queued
const refused = new Uint8Array(MAXN); // an error came back
const isProbe = new Uint8Array(MAXN);
let counter = 0;
const stats = { errors: {}, closes: {}, connectErrors: {}, acks: 0, queuedAcks: 0, otherFrames: 0, reordered: 0,
  skipped: 0, stopped: 0, portsTaken: 0, closedBeforeRestart: 0, reconnectAttempts: 0, reconnects: 0, resumedTrue: 0, resumedFalse: 0 };
const count = (table, key) => { table[key] = (table[key] || 0) + 1; };
const otherSamples = []; // frames that are neither a delivery of ours, a welcome, an ack nor an error
function otherFrame(buf) {
  stats.otherFrames++;
  if (otherSamples.length < 5) otherSamples.push(buf.toString("utf8", 0, Math.min(buf.length, 300)));
}

const WS_OPTIONS = { perMessageDeflate: false, handshakeTimeout: 30000, skipUTF8Validation: true, generateMask: () => {} };
// Each process has a source address of its own, and picks its local ports itself, round-robin
// over [portLow, portHigh]: a bind() to a given port is a hash lookup, where a bind() to port 0
// on a given address searches the kernel's whole bind table for a free port, in this
// process's CPU time (it cost the load generators a core in the reconnect storms: 10,000
// sockets make each such bind scan thousands of ports). A port that is taken (EADDRINUSE:
// a wildcard listener, or one of ours still in TIME_WAIT) is skipped at once.
const PORT_LOW = cfg.portLow || 10000, PORT_HIGH = cfg.portHigh || 60999;
let nextPort = PORT_LOW + crypto.randomInt(PORT_HIGH - PORT_LOW + 1);
function wsOptions() {
  if (!cfg.localAddress) return WS_OPTIONS;
  const localPort = nextPort;
  nextPort = nextPort >= PORT_HIGH ? PORT_LOW : nextPort + 1;
  return { ...WS_OPTIONS, localAddress: cfg.localAddress, localPort };
}

function backoffDelay(attempt, initial = 500, max = 15000, factor = 2) { // signaling/static/client.js
  const ceiling = Math.min(max, initial * factor ** Math.max(0, attempt));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

let restartAt = Infinity; // ms, performance.now() scale
let stopping = false;

class Peer {
  constructor(index, id, endpoint) {
    this.index = index; this.id = id; this.endpoint = endpoint;
    this.ws = null; this.ready = false; this.lastSeq = null; this.welcomes = 0; this.lastN = 0;
    this.closedAt = 0; this.closedCount = 0; this.down = 0; this.reconnecting = false; this.stoppedFor = 0;
    this.history = []; // each drop: {closed, welcomed (-1 while down), resumed (welcome.resumed)}
    // probing (this peer as the addressee)
    this.reachedAt = -1; this.reachedBy = ""; this.probes = 0; this.probeOut = 0; this.probeLeft = -1e9; this.prevProbeLeft = -1e9; this.gap = 0; this.landed = false;
    this.lastRefused = -Infinity; // when the last message to it that came back as an error left (before it was reached)
  }

  async open() { // true at `welcome`, false if the attempt failed (a local port taken is no attempt)
    for (let i = 0; i < 100; i++) {
      if (await this.attempt()) return true;
      if (!this.portTaken) return false;
    }
    return false;
  }

  attempt() {
    return new Promise((resolve) => {
      let url = `${this.endpoint}/ws?` + (cfg.secret ? `token=${jwt(cfg.secret, this.id)}` : `peer=${encodeURIComponent(this.id)}`);
      if (this.welcomes) url += `&resume=${encodeURIComponent(this.lastSeq || "0-0")}`;
      const ws = new WebSocket(url, wsOptions());
      this.portTaken = false;
      this.ws = ws;
      let settled = false;
      const done = (ok) => { if (!settled) { settled = true; resolve(ok); } };
      ws.on("message", (buf) => {
        if (buf[2] === 0x73 && buf.compare(SEQ_PREFIX, 0, 8, 0, 8) === 0) { // {"seq":"... a delivery
          const end = buf.indexOf(0x22, 8);
          const at = buf.indexOf(N_MARK, end);
          if (at >= 0) onDelivery(this, readN(buf, at + 5));
          this.lastSeq = buf.latin1Slice(8, end); // processed
          return;
        }
        let msg;
        try { msg = JSON.parse(buf); } catch { otherFrame(buf); return; }
        if (msg.type === "welcome") {
          if (typeof msg.seq === "string") this.lastSeq = msg.seq; // the resume point until a delivery is processed
          if (this.welcomes) {
            stats.reconnects++;
            if (msg.resumed) stats.resumedTrue++; else stats.resumedFalse++;
            if (this.closedAt) this.down += now() - this.closedAt;
            const last = this.history[this.history.length - 1];
            if (last && last.welcomed < 0) { last.welcomed = now(); last.resumed = !!msg.resumed; }
          }
          this.welcomes++;
          this.ready = true;
          done(true);
        } else if (msg.type === "ack") {
          stats.acks++;
          if (msg.queued) stats.queuedAcks++;
          onAnswer(msg.id, msg.queued ? 2 : 1, null);
        } else if (msg.type === "error") {
          count(stats.errors, msg.code);
          onAnswer(msg.id, 0, msg.code);
        } else {
          otherFrame(buf);
        }
      });
      ws.on("close", (code) => {
        const was = this.ready;
        this.ready = false;
        if (!settled) { if (!this.portTaken) count(stats.connectErrors, `closed-before-welcome-${code}`); done(false); return; }
        if (this.closedByUs) return;
        count(stats.closes, String(code));
        if (was) this.onClosed(code);
      });
      ws.on("unexpected-response", (req, res) => { count(stats.connectErrors, `http-${res.statusCode}`); res.resume(); ws.terminate(); });
      ws.on("error", (e) => {
        if (settled) return;
        if (e.code === "EADDRINUSE") { this.portTaken = true; stats.portsTaken++; } else count(stats.connectErrors, e.code || e.message || "error");
        ws.terminate();
      });
    });
  }

  async onClosed(code) {
    this.closedAt = now();
    this.closedCount++;
    if (this.closedAt < restartAt) stats.closedBeforeRestart++;
    this.history.push({ closed: this.closedAt, welcomed: -1, resumed: null });
    if ([1000, 1008, 1009, 4409].includes(code)) { stats.stopped++; this.stoppedFor = code; return; }
    this.reconnecting = true;
    // as signaling/static/client.js schedules it: after 1001 at once, else after backoffDelay(0);
    // after each failed attempt, backoffDelay(1), backoffDelay(2), ...
    if (code !== 1001) await sleep(backoffDelay(0));
    for (let attempt = 1; !this.closedByUs; attempt++) {
      stats.reconnectAttempts++;
      if (await this.open()) break;
      await sleep(backoffDelay(attempt));
    }
    this.reconnecting = false;
  }

  dropAfter(t) { // the first drop that ended after t (or has not ended): what a message sent at t went through
    return this.history.find((h) => h.welcomed < 0 || h.welcomed > t) || null;
  }

  send(frame) { this.ws.send(frame); }
  close() { this.closedByUs = true; if (this.ws) this.ws.terminate(); }
}

// ---- the pairs -----------------------------------------------------------------------------
const P = cfg.pairs, offset = cfg.pairOffset || 0;
const width = 6;
const peers = [];
for (let i = 0; i < P; i++) {
  const k = String(offset + i).padStart(width, "0");
  peers.push(new Peer(2 * i, `${cfg.idPrefix}a${k}`, cfg.endpoints[0]));
  peers.push(new Peer(2 * i + 1, `${cfg.idPrefix}b${k}`, cfg.endpoints[1]));
}
const partner = (p) => peers[p.index ^ 1];
const kind = frameKind(peers[0].id.length, cfg.size || 200);

function sendTo(dst, probe) {
  const src = partner(dst);
  if (!src.ready) return 0;
  if (counter + 1 >= MAXN) fail(`more than ${MAXN} messages: raise maxMessages`);
  const n = ++counter;
  sentAt[n] = now();
  destOf[n] = dst.index;
  isProbe[n] = probe ? 1 : 0;
  src.send(kind.build(dst.id, n));
  return n;
}

let reachedCount = 0, reachedAnnounced = false;
function onDelivery(peer, n) {
  if (n <= 0 || n >= MAXN) { stats.otherFrames++; return; }
  got[n]++;
  if (n < peer.lastN) stats.reordered++; else peer.lastN = n;
  if (peer.reachedAt < 0 && sentAt[n] >= restartAt && got[n] === 1) {
    peer.reachedAt = now() - restartAt;
    peer.reachedBy = isProbe[n] ? "probe" : "message";
    // how sharp that is: the message that reached it left this long after the probe before it
    // (the last probe to it that left before that message, or the restart)
    const before = [peer.probeLeft, peer.prevProbeLeft].filter((x) => x < sentAt[n]);
    peer.gap = sentAt[n] - Math.max(restartAt, ...before);
    reachedCount++;
  }
}

function onAnswer(id, ack, code) {
  if (typeof id !== "number" || id <= 0 || id >= MAXN) return;
  if (ack) acked[id] = ack; else refused[id] = 1;
  if (!ack) { // a probe or a regular message refused: its addressee was not reachable when it left
    const dst = peers[destOf[id]];
    if (dst.reachedAt < 0 && sentAt[id] >= restartAt && sentAt[id] > dst.lastRefused) dst.lastRefused = sentAt[id];
  }
  if (isProbe[id]) {
    const dst = peers[destOf[id]];
    if (dst.probeOut === id) {
      dst.probeOut = 0;
      if (ack) dst.landed = true;
    }
  }
}

// ---- connect ---------------------------------------------------------------------------------
async function openAll(list, concurrency, retries = 20) {
  let next = 0, failed = 0;
  const worker = async () => {
    while (next < list.length) {
      const p = list[next++];
      let ok = false;
      for (let attempt = 0; attempt <= retries && !ok; attempt++) {
        if (attempt) await sleep(Math.min(2000, 100 * attempt));
        ok = await p.open();
      }
      if (!ok) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, list.length) }, worker));
  return failed;
}

function percentiles(values) {
  const a = Float64Array.from(values).sort();
  const q = (x) => (a.length ? a[Math.min(a.length - 1, Math.floor(x * a.length))] : null);
  return { count: a.length, p50: q(0.5), p99: q(0.99), max: a.length ? a[a.length - 1] : null };
}

async function main() {
  const c0 = now();
  const failed = await openAll(peers, cfg.concurrency || 128);
  if (failed) fail(`${failed} of ${peers.length} connections failed to open (${JSON.stringify(stats.connectErrors)})`);
  emit({ event: "connected", connections: peers.length, seconds: (now() - c0) / 1000 });

  await command("go");
  const t0 = now();
  const rate = cfg.rate / 1000; // messages per ms
  let due = 0, rr = 0;
  const ticker = setInterval(() => {
    const target = Math.floor((now() - t0) * rate);
    for (; due < target && !stopping; due++) {
      const dst = peers[rr];
      rr = rr + 1 === peers.length ? 0 : rr + 1;
      // rr walks a0 b0 a1 b1 ...: the message to a0 is sent by b0, then to b0 by a0, ...
      if (!sendTo(dst, false)) stats.skipped++;
    }
  }, 2);
  const tick = setInterval(() => emit({ event: "tick", sent: counter, reached: reachedCount, t: (now() - t0) / 1000,
    down: peers.reduce((s, p) => s + (p.ready ? 0 : 1), 0) }), 1000);

  const restarted = await command("restarted");
  restartAt = toLocal(restarted.t);
  let probesSent = 0;
  // probing: round-robin over the peers not yet reachable, within the budget
  const probeRate = cfg.probeRate / 1000, interval = cfg.probeInterval, timeout = cfg.probeTimeout;
  let unreached = peers.slice(), cursor = 0, tokens = 0, lastTick = now();
  const prober = setInterval(() => {
    const t = now();
    tokens = Math.min(tokens + (t - lastTick) * probeRate, Math.max(1, probeRate * 50));
    lastTick = t;
    if (stopping) return;
    if (unreached.length && (cursor === 0 || cursor >= unreached.length)) {
      unreached = unreached.filter((p) => p.reachedAt < 0 && !p.landed);
      cursor = 0;
    }
    for (let walked = 0; walked < unreached.length && tokens >= 1; walked++) {
      const p = unreached[cursor];
      cursor = cursor + 1 >= unreached.length ? 0 : cursor + 1;
      if (p.reachedAt >= 0 || p.landed) continue;
      if (p.probeOut && t - sentAt[p.probeOut] < timeout) continue;
      if (t - p.probeLeft < interval) continue;
      const n = sendTo(p, true);
      if (!n) continue; // its partner is not connected right now
      p.prevProbeLeft = p.probeLeft; p.probeOut = n; p.probeLeft = sentAt[n]; p.probes++; probesSent++;
      tokens--;
    }
    if (reachedCount === peers.length && !reachedAnnounced) {
      reachedAnnounced = true;
      const r = peers.map((p) => p.reachedAt);
      emit({ event: "reached", maxMs: Math.max(...r), probesSent });
    }
  }, 5);

  await command("stop");
  stopping = true;
  clearInterval(ticker);
  const sentN = counter;
  const stopAt = now();
  // every client connected again, every message answered, every acked one arrived (bounded)
  const settle = (cfg.settleSeconds || 20) * 1000;
  while (peers.some((p) => !p.ready && !p.stoppedFor) && now() - stopAt < settle) await sleep(50);
  const unanswered = () => { let u = 0; for (let n = 1; n <= sentN; n++) if (!acked[n] && !refused[n]) u++; return u; };
  const missing = () => { let m = 0; for (let n = 1; n <= sentN; n++) if (acked[n] && !got[n]) m++; return m; };
  while ((unanswered() || missing()) && now() - stopAt < settle) await sleep(100);
  await sleep(500); // late duplicates
  clearInterval(prober);
  clearInterval(tick);

  let ackedN = 0, queuedN = 0, refusedN = 0, lost = 0, dup = 0, deliveredN = 0, unansweredN = 0, deliveredUnacked = 0;
  let probes = 0, probesAcked = 0, probesRefused = 0;
  // lost, by what the addressee went through after the message left: no drop at all, or a drop
  // it came back from with welcome.resumed true (both break PROTOCOL.md's promise), or false
  // (the server said it could not fill the gap); and whether it was down longer than the grace
  const lostBy = { queuedAck: 0, liveAck: 0, sentBeforeRestart: 0, sentAfterRestart: 0, probe: 0, noDrop: 0,
    resumedTrue: 0, resumedFalse: 0, stillDown: 0, downOverGrace: 0, upOver2s: 0, breach: 0, sample: [] };
  const graceMs = (cfg.grace || 15) * 1000;
  for (let n = 1; n <= sentN; n++) {
    if (isProbe[n]) { probes++; if (acked[n]) probesAcked++; if (refused[n]) probesRefused++; }
    if (acked[n]) {
      ackedN++;
      if (acked[n] === 2) queuedN++;
      if (!got[n]) {
        lost++;
        lostBy[acked[n] === 2 ? "queuedAck" : "liveAck"]++;
        lostBy[sentAt[n] < restartAt ? "sentBeforeRestart" : "sentAfterRestart"]++;
        if (isProbe[n]) lostBy.probe++;
        const d = peers[destOf[n]];
        const drop = d.dropAfter(sentAt[n]);
        if (!drop) lostBy.noDrop++;
        else if (drop.welcomed < 0) lostBy.stillDown++;
        else lostBy[drop.resumed ? "resumedTrue" : "resumedFalse"]++;
        if (drop && drop.welcomed >= 0 && drop.welcomed - drop.closed > graceMs) lostBy.downOverGrace++;
        // connected when it left, and for how long after (it should have arrived meanwhile)
        const upFor = !drop ? now() - sentAt[n] : drop.closed > sentAt[n] ? drop.closed - sentAt[n] : 0;
        if (upFor > 2000) lostBy.upOver2s++;
        // against PROTOCOL.md whatever the grace: never dropped, back with resumed: true, or
        // connected for 2 s after it left without getting it
        if (!drop || drop.resumed === true || upFor > 2000) lostBy.breach++;
        if (lostBy.sample.length < 10) {
          lostBy.sample.push({ n, to: d.id, msAfterRestart: Math.round(sentAt[n] - restartAt), probe: !!isProbe[n],
            ack: acked[n] === 2 ? "queued" : "delivered", upForMs: Math.round(upFor),
            history: d.history.map((h) => [Math.round(h.closed - restartAt), h.welcomed < 0 ? null : Math.round(h.welcomed - restartAt), h.resumed]),
            drop: drop && { closedMs: Math.round(drop.closed - restartAt), downMs: Math.round((drop.welcomed < 0 ? now() : drop.welcomed) - drop.closed), resumed: drop.resumed } });
        }
      }
    } else if (refused[n]) refusedN++;
    else unansweredN++;
    if (got[n]) { deliveredN++; if (!acked[n]) deliveredUnacked++; }
    if (got[n] > 1) dup++;
  }
  const reached = peers.map((p) => (p.reachedAt >= 0 ? Math.round(p.reachedAt * 10) / 10 : null));
  const closedPeers = peers.filter((p) => p.closedCount > 0);
  const downs = closedPeers.map((p) => p.down);
  const result = {
    event: "result", pairs: P, peers: peers.length, sent: sentN, acked: ackedN, queued: queuedN, refused: refusedN,
    unanswered: unansweredN, delivered: deliveredN, deliveredUnacked, lost, duplicates: dup, lostDetail: lostBy,
    probes, probesAcked, probesRefused, messageBytes: kind.bytes,
    reachedMs: reached,
    // the lower bound of each peer's reachable time: it was not reachable when its last refused message left
    refusedMs: peers.map((p) => (p.lastRefused > restartAt ? Math.round((p.lastRefused - restartAt) * 10) / 10 : 0)),
    reachedByProbe: peers.filter((p) => p.reachedBy === "probe").length,
    probesPerPeer: percentiles(peers.map((p) => p.probes)),
    probeGapMs: percentiles(peers.filter((p) => p.reachedAt >= 0).map((p) => p.gap)),
    clientsClosed: closedPeers.length, clientsClosedBySide: [0, 1].map((s) => closedPeers.filter((p) => p.index % 2 === s).length),
    notConnectedAtEnd: peers.filter((p) => !p.ready).length,
    downMs: percentiles(downs), otherSamples, ...stats,
  };
  for (const p of peers) p.close();
  emit(result);
}

main().then(() => setTimeout(() => process.exit(0), 100), (e) => fail(e && e.stack || String(e)));
