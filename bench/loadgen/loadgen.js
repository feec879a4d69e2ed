#!/usr/bin/env node
// The one load generator of the benchmark suite: it drives every server in its own dialect.
//
//   node bench/loadgen/loadgen.js CONFIG.json
//
// Modes (config.mode):
//   pairs  P pairs ping-pong a message: A sends, B echoes it back, A times the round trip.
//          loop "closed": one message outstanding per pair (the next leaves when the echo
//          is back); loop "open": pings leave on a schedule at `rate` delivered msgs/s in
//          total, whatever comes back (at most `cap` outstanding per pair; beyond that a
//          ping is shed and counted).
//   idle   open `count` connections (at most `concurrency` connecting at once), time them
//          until each is ready (welcome), then hold them until told to stop.
//   drain  our protocol only: `targets` peers on endpoint 0 receive acked messages from
//          `senders` peers on the other endpoints; when the node behind endpoint 0 drains
//          (1001) each target resumes on another endpoint with `resume=<last seq>`; counts
//          how long until every target is back, and every acked message that never arrived.
//
// Dialects (config.dialect): ours (docs/PROTOCOL.md, JWT in ?token= or ?peer= in open mode),
// raw (bench/servers/ws_relay.js and raw_aiohttp.py: ?peer=, {"to":...} forwarded as is),
// tutorial (bench/servers/ws_tutorial.js: everything is broadcast, each client keeps what is
// addressed to it), socketio (socket.io-client, emit("signal", {to, ...})).
//
// Output: one JSON object per line on stdout ({"event": ...}); the orchestrator reads the
// window boundaries from it to sample the servers' CPU. Commands arrive as JSON lines on
// stdin ({"cmd":"go"|"stop"|"drained"}). Nothing here parses a relayed frame as JSON: the
// counter is read at a known marker, so the generator stays cheap next to the servers.
"use strict";

const fs = require("fs");
const crypto = require("crypto");
const readline = require("readline");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const now = () => performance.now(); // ms, monotonic
const mono = () => process.hrtime.bigint().toString(); // ns, CLOCK_MONOTONIC (same clock as Python's)

function emit(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }
function fail(message) { emit({ event: "fatal", message }); process.exit(2); }
process.on("uncaughtException", (e) => fail(`uncaught: ${e && e.stack || e}`));

// ---- commands from the orchestrator ------------------------------------------------------
const waiters = new Map(); // command name -> [resolve]
const received = new Map(); // command name -> its message, once received
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  received.set(msg.cmd, msg);
  for (const resolve of waiters.get(msg.cmd) || []) resolve(msg);
  waiters.delete(msg.cmd);
});
function command(name) {
  if (received.has(name)) return Promise.resolve(received.get(name));
  return new Promise((resolve) => { const list = waiters.get(name) || []; list.push(resolve); waiters.set(name, list); });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- messages ----------------------------------------------------------------------------
const N_WIDTH = 10; // the counter travels as a 10-digit string: fixed size, found by a marker
const N_MARK = Buffer.from('"n":"');
const pad10 = (n) => String(n).padStart(N_WIDTH, "0");
function readN(buf, at) {
  let v = 0;
  for (let k = 0; k < N_WIDTH; k++) v = v * 10 + (buf[at + k] - 48);
  return v;
}
const CANDIDATE = {
  candidate: "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.1 rport 46154 generation 0 ufrag sK3d network-cost 999",
  sdpMid: "0", sdpMLineIndex: 0, usernameFragment: "sK3d",
};
function fakeSdp(bytes) {
  const lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "c=IN IP4 0.0.0.0"];
  let sdp = lines.join("\r\n") + "\r\n";
  let i = 0;
  while (sdp.length < bytes) sdp += `a=rtpmap:${96 + (i++ % 30)} VP8/90000\r\na=rtcp-fb:${96 + (i % 30)} nack pli\r\n`;
  return sdp.slice(0, bytes);
}

// One kind of message, sized to `size` bytes on the wire as the client sends it, for a
// fixed id length. `build(to, n, id)` returns the frame; `object(to, n)` the object (Socket.IO).
function messageKind(kind, size, idLength, withId) {
  const to = "x".repeat(idLength);
  const idPart = withId ? ',"id":' + "9".repeat(N_WIDTH) : "";
  const make = (type, field, value) => {
    const base = (pad) => JSON.stringify({ to, type, [field]: value, n: pad10(0), pad }).slice(0, -1) + idPart + "}";
    const fill = Math.max(0, size - Buffer.byteLength(base("")));
    const pad = "p".repeat(fill);
    const probe = base(pad);
    const at = probe.indexOf('"n":"');
    const head = probe.slice(0, 7), mid = probe.slice(7 + idLength, at + 5), tail = probe.slice(at + 5 + N_WIDTH);
    // head = {"to":"  mid = ","type":...,"n":"  tail = ","pad":"...","id":999...}
    const tailNoId = withId ? tail.slice(0, tail.length - idPart.length - 1) : tail.slice(0, -1);
    return {
      build: withId ? (dst, n) => head + dst + mid + pad10(n) + tailNoId + ',"id":' + n + "}" : (dst, n) => head + dst + mid + pad10(n) + tail,
      object: (dst, n) => ({ to: dst, type, [field]: value, n: pad10(n), pad }),
      bytes: Buffer.byteLength(probe),
    };
  };
  if (kind === "offer") {
    const sdp = fakeSdp(Math.max(0, size - 120 - idLength));
    return { ping: make("offer", "offer", { type: "offer", sdp }), echo: make("answer", "answer", { type: "answer", sdp }) };
  }
  const m = make("candidate", "candidate", CANDIDATE);
  return { ping: m, echo: m };
}

// ---- tokens -------------------------------------------------------------------------------
const JWT_HEADER = Buffer.from('{"alg":"HS256","typ":"JWT"}').toString("base64url");
function jwt(secret, sub) {
  const t = Math.floor(Date.now() / 1000);
  const body = Buffer.from(JSON.stringify({ sub, iat: t, exp: t + 3600 })).toString("base64url");
  const sig = crypto.createHmac("sha256", secret).update(`${JWT_HEADER}.${body}`).digest("base64url");
  return `${JWT_HEADER}.${body}.${sig}`;
}

// ---- connections --------------------------------------------------------------------------
// A Conn calls conn.onDelivery(n, buf) for a relayed message addressed to it, conn.onReady()
// once (per connection) when it can send, conn.onClosed(code) when it goes away.
const stats = { errors: {}, closes: {}, acks: 0, queuedAcks: 0, connectFailures: 0, otherFrames: 0, notForMe: 0 };
const count = (table, key) => { table[key] = (table[key] || 0) + 1; };
const SEQ_PREFIX = Buffer.from('{"seq":"');
// The client's own costs kept low: no per-frame random mask (a zero mask is valid: the
// servers unmask as usual), and no UTF-8 validation of what the servers send.
const ZERO_MASK = () => {};
const WS_OPTIONS = { perMessageDeflate: false, handshakeTimeout: 30000, skipUTF8Validation: true, generateMask: ZERO_MASK };

class Conn {
  constructor(id, endpoint) {
    this.id = id; this.endpoint = endpoint; this.ready = false; this.ws = null; this.sock = null;
    this.lastSeq = null; this.closedByUs = false;
    this.onDelivery = () => {}; this.onReady = () => {}; this.onClosed = () => {}; this.onWelcome = () => {};
  }

  url(extra = "") {
    const d = cfg.dialect, base = this.endpoint;
    if (d === "ours") {
      const auth = cfg.secret ? `token=${jwt(cfg.secret, this.id)}` : `peer=${encodeURIComponent(this.id)}`;
      return `${base}/ws?${auth}${extra}`;
    }
    if (d === "raw") return `${base}/?peer=${encodeURIComponent(this.id)}`;
    return `${base}/`;
  }

  open(extra = "") {
    return new Promise((resolve) => {
      if (cfg.dialect === "socketio") return this.openSocketIO(resolve);
      const ws = new WebSocket(this.url(extra), WS_OPTIONS);
      this.ws = ws;
      let settled = false;
      const done = (ok) => { if (!settled) { settled = true; resolve(ok); } };
      const meBuf = Buffer.from(this.id), meLen = meBuf.length;
      const dialect = cfg.dialect;
      ws.on("open", () => { if (dialect === "tutorial") { this.ready = true; done(true); this.onReady(); } });
      ws.on("message", (buf) => {
        if (dialect === "ours") {
          if (buf[2] === 0x73 && buf.compare(SEQ_PREFIX, 0, 8, 0, 8) === 0) { // {"seq":"...
            const end = buf.indexOf(0x22, 8);
            this.lastSeq = buf.latin1Slice(8, end);
            const at = buf.indexOf(N_MARK, end);
            if (at >= 0) { this.onDelivery(readN(buf, at + 5), buf); return; }
          }
        } else if (buf[2] === 0x74 && buf[3] === 0x6f) { // {"to":"...
          if (dialect === "tutorial" && (buf.compare(meBuf, 0, meLen, 7, 7 + meLen) !== 0 || buf[7 + meLen] !== 0x22)) {
            stats.notForMe++;
            return;
          }
          const at = buf.indexOf(N_MARK, 7);
          if (at >= 0) { this.onDelivery(readN(buf, at + 5), buf); return; }
        }
        this.control(buf, done);
      });
      ws.on("close", (code) => {
        const was = this.ready;
        this.ready = false;
        if (!settled) { stats.connectFailures++; count(stats.errors, `closed-before-ready-${code}`); done(false); return; }
        if (!this.closedByUs) count(stats.closes, String(code));
        if (was) this.onClosed(code);
      });
      ws.on("unexpected-response", (req, res) => { count(stats.errors, `http-${res.statusCode}`); res.resume(); ws.terminate(); });
      ws.on("error", () => { if (!settled) { ws.terminate(); } });
    });
  }

  control(buf, done) {
    let msg;
    try { msg = JSON.parse(buf); } catch { stats.otherFrames++; return; }
    switch (msg.type) {
      case "welcome":
        this.ready = true;
        this.onWelcome(msg);
        done(true);
        this.onReady();
        return;
      case "ack":
        stats.acks++;
        if (msg.queued) stats.queuedAcks++;
        this.onAck && this.onAck(msg.id, !!msg.queued);
        return;
      case "error":
        count(stats.errors, msg.code);
        this.onError && this.onError(msg.id, msg.code);
        return;
      default:
        stats.otherFrames++;
    }
  }

  openSocketIO(resolve) {
    const { io } = require("socket.io-client");
    const sock = io(this.endpoint, { transports: ["websocket"], query: { peer: this.id }, reconnection: false,
      forceNew: true, timeout: 30000, perMessageDeflate: false });
    this.sock = sock;
    let settled = false;
    const done = (ok) => { if (!settled) { settled = true; resolve(ok); } };
    sock.on("welcome", () => { this.ready = true; done(true); this.onReady(); });
    sock.on("signal", (msg) => this.onDelivery(parseInt(msg.n, 10), msg));
    sock.on("connect_error", () => { stats.connectFailures++; done(false); });
    sock.on("disconnect", (reason) => {
      const was = this.ready;
      this.ready = false;
      if (!this.closedByUs) count(stats.closes, reason);
      if (was) this.onClosed(reason);
    });
  }

  send(frame) { this.ws.send(frame); }
  emit(obj) { this.sock.emit("signal", obj); }

  close() {
    this.closedByUs = true;
    if (this.sock) this.sock.disconnect();
    if (this.ws) this.ws.terminate();
  }
}

// signaling/static/client.js's backoffDelay: exponential from 500 ms, capped at 15 s, equal jitter
function backoffDelay(attempt, initial = 500, max = 15000, factor = 2) {
  const ceiling = Math.min(max, initial * factor ** Math.max(0, attempt));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

async function openAll(conns, concurrency, retries = 10) {
  let next = 0, failed = 0;
  const worker = async () => {
    while (next < conns.length) {
      const c = conns[next++];
      let ok = false;
      for (let attempt = 0; attempt <= retries && !ok; attempt++) {
        if (attempt) await sleep(Math.min(1000, 100 * attempt));
        ok = await c.open();
      }
      if (!ok) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, conns.length) }, worker));
  return failed;
}

function percentiles(samples, count) {
  const a = samples.subarray(0, count).sort();
  const q = (p) => (count ? a[Math.min(count - 1, Math.floor(p * count))] : null);
  let sum = 0;
  for (let i = 0; i < count; i++) sum += a[i];
  return { count, mean: count ? sum / count : null, p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: count ? a[count - 1] : null };
}

function endpointFor(i, side, n) {
  const E = cfg.endpoints.length;
  if (cfg.placement === "same" || E === 1) return cfg.endpoints[0];
  const a = i % E;
  if (side === "a") return cfg.endpoints[a];
  // b: any other endpoint, spread evenly
  const b = (a + 1 + (Math.floor(i / E) % (E - 1))) % E;
  return cfg.endpoints[b];
}

// ---- mode: pairs ---------------------------------------------------------------------------
async function pairs() {
  const P = cfg.pairs;
  const width = String(Math.max(P - 1, 1)).length;
  const ids = (side) => Array.from({ length: P }, (_, i) => `${cfg.idPrefix}${side}${String(i).padStart(width, "0")}`);
  const aIds = ids("a"), bIds = ids("b");
  const kinds = messageKind(cfg.kind || "candidate", cfg.size || 300, aIds[0].length, false);
  const A = aIds.map((id, i) => new Conn(id, endpointFor(i, "a")));
  const B = bIds.map((id, i) => new Conn(id, endpointFor(i, "b")));
  const failed = await openAll([...A, ...B], cfg.concurrency || 200);
  if (failed) fail(`${failed} of ${2 * P} connections failed to open (${JSON.stringify(stats)})`);
  emit({ event: "connected", connections: 2 * P });

  const MASK = (1 << 20) - 1;
  const sentAt = new Float64Array(MASK + 1);
  const outstanding = new Int32Array(P);
  const cap = cfg.loop === "open" ? (cfg.cap || 32) : 1;
  let counter = 0, sending = true, measuring = false;
  let delivered = 0, windowDelivered = 0, windowSent = 0, shed = 0, windowShed = 0, sentTotal = 0;
  let samples = new Float64Array(1 << 16), nSamples = 0;
  const sio = cfg.dialect === "socketio";
  const sendPing = (i) => {
    const n = ++counter;
    sentAt[n & MASK] = now();
    outstanding[i]++;
    sentTotal++;
    if (measuring) windowSent++;
    if (sio) A[i].emit(kinds.ping.object(bIds[i], n)); else A[i].send(kinds.ping.build(bIds[i], n));
  };
  for (let i = 0; i < P; i++) {
    const a = A[i], b = B[i], aId = aIds[i];
    b.onDelivery = (n) => {
      delivered++;
      if (measuring) windowDelivered++;
      if (sio) b.emit(kinds.echo.object(aId, n)); else b.send(kinds.echo.build(aId, n));
    };
    a.onDelivery = (n) => {
      const t = now();
      delivered++;
      outstanding[i]--;
      if (measuring) {
        windowDelivered++;
        if (nSamples === samples.length) { const bigger = new Float64Array(samples.length * 2); bigger.set(samples); samples = bigger; }
        samples[nSamples++] = t - sentAt[n & MASK];
      }
      if (sending && cap === 1) sendPing(i);
    };
    a.onClosed = b.onClosed = () => { if (sending) count(stats.errors, "closed-during-run"); };
    // an error frame (e.g. `unavailable`) means that message was not delivered: the ping or
    // its echo is gone, so the pair starts over (closed loop) or frees its slot (open loop)
    a.onError = b.onError = () => {
      if (cap === 1) { outstanding[i] = 0; if (sending) sendPing(i); } else if (outstanding[i] > 0) outstanding[i]--;
    };
  }

  let ticker = null;
  const t0 = now();
  if (cfg.loop === "open") {
    const pingRate = cfg.rate / 2 / 1000; // pings per ms (each ping is delivered twice: there and back)
    let pinged = 0, rr = 0;
    ticker = setInterval(() => {
      const due = Math.floor((now() - t0) * pingRate);
      for (; pinged < due; pinged++) {
        const i = rr; rr = (rr + 1) % P;
        if (outstanding[i] >= cap) { shed++; if (measuring) windowShed++; continue; }
        sendPing(i);
      }
    }, 1);
  } else {
    for (let i = 0; i < P; i++) sendPing(i);
  }
  const progress = setInterval(() => emit({ event: "tick", delivered, t: (now() - t0) / 1000 }), 1000);

  await sleep(cfg.warmup * 1000);
  const deliveredBefore = delivered;
  const cpu0 = process.cpuUsage();
  emit({ event: "measure-start", mono: mono() });
  const w0 = now();
  measuring = true;
  await sleep(cfg.duration * 1000);
  measuring = false;
  const w1 = now();
  emit({ event: "measure-end", mono: mono() });
  const cpu = process.cpuUsage(cpu0);
  sending = false;
  if (ticker) clearInterval(ticker);
  clearInterval(progress);
  // let what is in flight come back (bounded), then leave
  const drainUntil = now() + 2000;
  while (outstanding.some((x) => x > 0) && now() < drainUntil) await sleep(20);
  const lost = outstanding.reduce((s, x) => s + Math.max(0, x), 0);
  for (const c of [...A, ...B]) c.close();
  const seconds = (w1 - w0) / 1000;
  emit({
    event: "result", mode: "pairs", pairs: P, seconds, delivered: windowDelivered, msgsPerSec: windowDelivered / seconds,
    pingsSent: windowSent, shed: windowShed, inFlightAtEnd: lost, warmupDelivered: deliveredBefore,
    offered: cfg.loop === "open" ? cfg.rate : null, messageBytes: kinds.ping.bytes,
    rttMs: percentiles(samples, nSamples),
    loadgenCpuSec: (cpu.user + cpu.system) / 1e6, ...stats,
  });
}

// ---- mode: idle ----------------------------------------------------------------------------
async function idle() {
  const { count: N, offset = 0 } = cfg;
  const width = 6;
  const conns = Array.from({ length: N }, (_, i) => new Conn(`${cfg.idPrefix}i${String(offset + i).padStart(width, "0")}`, cfg.endpoints[0]));
  emit({ event: "prepared" });
  await command("go");
  const start = mono(), t0 = now();
  let readyAt = 0;
  for (const c of conns) c.onReady = () => { readyAt = now(); };
  const failed = await openAll(conns, cfg.concurrency || 256, 10); // 503 means "try again": clients do
  const end = mono();
  emit({ event: "connected", ready: N - failed, failed, startMono: start, endMono: end, seconds: (readyAt - t0) / 1000, ...stats });
  await command("stop");
  const closes = { ...stats.closes };
  for (const c of conns) c.close();
  emit({ event: "result", mode: "idle", ready: N - failed, failed, closesWhileIdle: closes });
}

// ---- mode: drain ---------------------------------------------------------------------------
async function drain() {
  const T = cfg.targets, S = cfg.senders;
  const E = cfg.endpoints;
  const tIds = Array.from({ length: T }, (_, i) => `${cfg.idPrefix}t${String(i).padStart(5, "0")}`);
  const targets = tIds.map((id) => new Conn(id, E[0]));
  const senders = Array.from({ length: S }, (_, i) => new Conn(`${cfg.idPrefix}s${String(i).padStart(5, "0")}`, E[1 + (i % (E.length - 1))]));
  const kind = messageKind("candidate", cfg.size || 300, tIds[0].length, true).ping;
  const MAXN = 1 << 22;
  const got = new Uint8Array(MAXN), acked = new Uint8Array(MAXN), refused = new Uint8Array(MAXN);
  const sentAt = new Float64Array(MAXN), toIdx = new Int32Array(MAXN); // for the account of any loss
  let counter = 0;
  let deliveries = 0;
  for (const t of targets) t.onDelivery = (n) => { deliveries++; if (n < MAXN) got[n]++; };
  for (const s of senders) {
    s.onAck = (id, queued) => { if (typeof id === "number" && id < MAXN) acked[id] = queued ? 2 : 1; };
    s.onError = (id) => { if (typeof id === "number" && id < MAXN) refused[id] = 1; };
  }
  const failed = await openAll([...targets, ...senders], cfg.concurrency || 256);
  if (failed) fail(`${failed} connections failed to open before the drain (${JSON.stringify(stats)})`);
  emit({ event: "connected", connections: T + S });

  // resume, as signaling/static/client.js does it: after 1001 reconnect at once to another
  // endpoint with resume=<last seq> ("0-0" when nothing arrived yet); after a failed attempt,
  // wait backoffDelay (500 ms doubling to 15 s, equal jitter) and try the next endpoint
  let reconnecting = 0, resumedCount = 0, resumedTrue = 0, lastWelcome = 0n, firstClose = 0n;
  let retries = 0, gaveUp = 0, giveUpAt = Infinity;
  const pending = new Set();
  targets.forEach((t, i) => {
    t.onClosed = async (code) => {
      if (!firstClose) firstClose = process.hrtime.bigint();
      if (t.moved) return;
      t.moved = true;
      pending.add(t);
      reconnecting++;
      let k = i % (E.length - 1);
      t.endpoint = E[1 + k];
      t.onWelcome = (msg) => {
        if (!pending.has(t)) return;
        pending.delete(t);
        resumedCount++;
        if (msg.resumed) resumedTrue++;
        t.welcomedAt = now();
        lastWelcome = process.hrtime.bigint();
      };
      for (let attempt = 0; attempt < 100 && now() < giveUpAt; attempt++) {
        if (await t.open(`&resume=${encodeURIComponent(t.lastSeq || "0-0")}`)) return;
        retries++;
        k = (k + 1) % (E.length - 1);
        t.endpoint = E[1 + k];
        await sleep(backoffDelay(attempt + 1)); // client.js: the first retry after a 1001 is attempt 1
      }
      gaveUp++;
    };
  });

  let sending = true, sent = 0, rr = 0;
  const t0 = now();
  const rate = cfg.rate / 1000;
  const ticker = setInterval(() => {
    const due = Math.floor((now() - t0) * rate);
    for (; sent < due && sending; sent++) {
      const n = ++counter;
      const target = tIds[rr % T], sender = senders[rr % S];
      if (n < MAXN) { sentAt[n] = now(); toIdx[n] = rr % T; }
      rr++;
      if (sender.ready) sender.send(kind.build(target, n));
    }
  }, 1);
  const progress = setInterval(() => emit({ event: "tick", delivered: deliveries, resumed: resumedCount, reconnecting, t: (now() - t0) / 1000 }), 1000);
  await sleep((cfg.steady || 2) * 1000);
  emit({ event: "steady", sent: counter });
  const drained = await command("drained");
  giveUpAt = now() + (cfg.timeout || 60) * 1000;
  const drainedAt = now() - Number(process.hrtime.bigint() - BigInt(drained.t)) / 1e6;
  const deadline = now() + (cfg.timeout || 60) * 1000;
  while ((reconnecting < T || resumedCount < reconnecting) && now() < deadline) await sleep(10);
  const allBack = resumedCount === T;
  await sleep((cfg.after || 2) * 1000);
  sending = false;
  clearInterval(ticker);
  // every message either acked, refused, or still waiting: give the acks time, then the deliveries
  const sentN = counter;
  const settleUntil = now() + 10000;
  const unsettled = () => { let u = 0; for (let n = 1; n <= sentN; n++) if (!acked[n] && !refused[n]) u++; return u; };
  while (unsettled() > 0 && now() < settleUntil) await sleep(50);
  await sleep(1000);
  let ackedN = 0, refusedN = 0, lost = 0, dup = 0, deliveredN = 0;
  const lostBy = { queuedAck: 0, liveAck: 0, toResumedTarget: 0, sentBeforeDrain: 0, sentAfterDrain: 0, targets: new Set(), sample: [] };
  for (let n = 1; n <= sentN; n++) {
    if (acked[n]) {
      ackedN++;
      if (!got[n]) {
        lost++;
        lostBy[acked[n] === 2 ? "queuedAck" : "liveAck"]++;
        lostBy[sentAt[n] < drainedAt ? "sentBeforeDrain" : "sentAfterDrain"]++;
        lostBy.targets.add(toIdx[n]);
        if (lostBy.sample.length < 10) lostBy.sample.push({ n, target: tIds[toIdx[n]], msAfterDrain: Math.round(sentAt[n] - drainedAt), welcomedMsAfterDrain: Math.round(targets[toIdx[n]].welcomedAt - drainedAt), lastSeq: targets[toIdx[n]].lastSeq });
        if (targets[toIdx[n]].welcomedAt < sentAt[n]) lostBy.toResumedTarget++;
      }
    }
    if (refused[n]) refusedN++;
    if (got[n]) deliveredN++;
    if (got[n] > 1) dup++;
  }
  clearInterval(progress);
  for (const c of [...targets, ...senders]) c.close();
  const t = BigInt(drained.t);
  emit({
    event: "result", mode: "drain", targets: T, senders: S, allResumed: allBack, resumed: resumedCount, resumedTrue,
    gaveUp, retries, secondsToAllResumed: lastWelcome ? Number(lastWelcome - t) / 1e9 : null,
    secondsToFirstClose: firstClose ? Number(firstClose - t) / 1e9 : null,
    sent: sentN, acked: ackedN, refused: refusedN, unanswered: sentN - ackedN - refusedN, delivered: deliveredN,
    lost, duplicates: dup, lostDetail: { ...lostBy, targets: lostBy.targets.size }, ...stats,
  });
}

const modes = { pairs, idle, drain };
if (!modes[cfg.mode]) fail(`unknown mode ${cfg.mode}`);
modes[cfg.mode]().then(() => setTimeout(() => process.exit(0), 50), (e) => fail(e && e.stack || String(e)));
