// @ts-check
/**
 * Browser client for the signaling protocol (docs/PROTOCOL.md), as an ES module with no
 * build step: `import { SignalingClient, PeerLink } from "/client.js"`.
 *
 * - {@link SignalingClient}: one WebSocket session that survives reconnects. It keeps its
 *   peer id, reconnects with jittered back-off passing `resume=<last seq processed>`,
 *   drops duplicate deliveries by `seq`, resolves or rejects every send on its receipt,
 *   re-sends what a dead connection left unacknowledged (receivers drop the repeat), and
 *   tracks room presence.
 * - {@link PeerLink}: an RTCPeerConnection wired to that session with the perfect
 *   negotiation pattern (polite/impolite roles, glare resolved by rollback, trickle ICE
 *   with a null end-of-candidates, ICE restart on failure).
 *
 * Types are in /client.d.ts.
 */

/** Close codes the server uses (docs/PROTOCOL.md, section 6). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  DRAINING: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TOKEN_EXPIRED: 4401,
  REPLACED: 4409,
});

/** Frame types relayed from one peer to another. */
const RELAYED = new Set(["offer", "answer", "candidate", "bye", "message"]);
/** Auto receipt ids start with this; receivers drop a repeat of one they have processed. */
const AUTO_ID = "~";
const RECENT_IDS = 4096; // (sender, id) pairs remembered for that

/**
 * An `error` frame answering a send, or a failure of the client itself. `code` is a
 * protocol error code (`peer-unavailable`, `not-in-room`, ...) or one of the client's
 * own: `timeout` (no receipt within `ackTimeout`), `closed` (the client stopped),
 * `outbox-full` (too many sends waiting for a connection).
 */
export class SignalingError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {string|number} [id]
   */
  constructor(code, message, id) {
    super(message);
    this.name = "SignalingError";
    this.code = code;
    this.id = id;
  }
}

/**
 * Compare two `seq` strings (`"<ms>-<n>"`) as the pairs of integers they are.
 * @param {string} a
 * @param {string} b
 * @returns {number} negative, zero or positive
 */
export function compareSeq(a, b) {
  const [am, an] = a.split("-");
  const [bm, bn] = b.split("-");
  return compareDigits(am, bm) || compareDigits(an ?? "0", bn ?? "0");
}

/** @param {string} a @param {string} b */
function compareDigits(a, b) {
  a = a.replace(/^0+(?=\d)/, "");
  b = b.replace(/^0+(?=\d)/, "");
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * What a client does when its connection closes with `code`:
 * `"stop"` for good (1000 normal, 1008 abuse, 1009 too large, 4409 replaced),
 * `"now"` reconnect at once (1001 draining), `"token"` reconnect with a new token (4401),
 * `"backoff"` reconnect after a jittered delay (1011, 1006 and anything else).
 * @param {number} code
 * @returns {"stop"|"now"|"token"|"backoff"}
 */
export function closeAction(code) {
  switch (code) {
    case CloseCode.NORMAL:
    case CloseCode.POLICY:
    case CloseCode.TOO_BIG:
    case CloseCode.REPLACED:
      return "stop";
    case CloseCode.DRAINING:
      return "now";
    case CloseCode.TOKEN_EXPIRED:
      return "token";
    default:
      return "backoff";
  }
}

/**
 * Delay before reconnect attempt `attempt` (0-based), in ms: exponential, capped, with
 * "equal jitter" (between half and all of it) so a fleet of clients spreads out.
 * @param {number} attempt
 * @param {{initial?: number, max?: number, factor?: number}} [opts]
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const { initial = 500, max = 15000, factor = 2 } = opts;
  const ceiling = Math.min(max, initial * factor ** Math.max(0, attempt));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * A small typed event emitter: `on(type, fn)` returns the function that removes it.
 * A throwing handler is reported on the console and does not stop the others.
 */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * @param {string} type
   * @param {Function} handler
   * @returns {() => void} removes the handler
   */
  on(type, handler) {
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => this.off(type, handler);
  }

  /**
   * @param {string} type
   * @param {Function} handler
   */
  once(type, handler) {
    const off = this.on(type, (/** @type {any[]} */ ...args) => {
      off();
      handler(...args);
    });
    return off;
  }

  /**
   * @param {string} type
   * @param {Function} handler
   */
  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /**
   * @param {string} type
   * @param {any} [detail]
   */
  emit(type, detail) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(detail);
      } catch (err) {
        console.error(`signaling: a "${type}" handler threw`, err);
      }
    }
  }
}

/**
 * One signaling session over a WebSocket that reconnects by itself.
 *
 * Events (`client.on(type, handler)`):
 * `state` ({state}), `welcome` (the welcome frame, on every connection),
 * `resync` (the welcome of a reconnect that could not resume: renegotiate your calls),
 * `offer` / `answer` / `candidate` / `bye` / `message` (relayed frames, each once),
 * `joined` / `left` / `peer-joined` / `peer-left` / `presence` ({room, peers}),
 * `error` (a SignalingError no pending send was waiting for), `close` ({code, reason,
 * reconnect, delay}) for each lost connection, `closed` ({code, reason}) once stopped,
 * and `frame` for every frame processed.
 */
export class SignalingClient extends Emitter {
  /**
   * @param {string | string[]} url WebSocket URL of `/ws` (or several: reconnects
   *   rotate through them when one fails or drains; behind a load balancer give one).
   *   Default: the `/ws` of the page's own host.
   * @param {import("./client").SignalingOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const urls = Array.isArray(url) ? url : [url ?? defaultUrl()];
    if (!urls.length) throw new TypeError("SignalingClient needs a URL");
    /** @private */ this._urls = urls;
    /** @private */ this._urlIndex = 0;
    /** @private */ this._opts = {
      backoff: {},
      ackTimeout: 15000,
      pongTimeout: 10000,
      maxOutbox: 1024,
      ...options,
    };
    /** @private */ this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @private */ this._token = options.token ?? null;
    /** @private */ this._refreshToken = !this._token && !!options.getToken;
    /** @private @type {WebSocket | null} */ this._ws = null;
    /** @private */ this._attempt = 0;
    /** @private @type {any} */ this._timer = null;
    /** @private @type {any} */ this._heartbeat = null;
    /** @private */ this._awaitingPong = 0;
    /** @private */ this._stopped = false;
    /** @private */ this._welcomes = 0;
    /** @private */ this._idPrefix = AUTO_ID + randomToken() + ".";
    /** @private */ this._counter = 0;
    /** receipt id -> a send waiting for its ack; Map order is send order
     * @private @type {Map<string, Pending>} */
    this._pending = new Map();
    /** "sender id" keys of recently processed auto-id messages, oldest first
     * @private @type {Set<string>} */
    this._recent = new Set();
    /** rooms the app wants to be in (joins are repeated after a reconnect that lost them)
     * @private @type {Set<string>} */
    this._wanted = new Set();
    /** @private @type {{promise: Promise<any>, resolve: Function, reject: Function} | null} */
    this._firstWelcome = null;
    /** @type {Map<string, PeerLink>} links to remote peers, by their id */
    this.links = new Map();
    /** @type {Map<string, Set<string>>} room -> the other members, as the server said */
    this.rooms = new Map();
    /** @type {string | null} our peer id (kept across reconnects) */
    this.peer = options.peer ?? null;
    /** @type {string | null} the node this connection is on */
    this.node = null;
    /** @type {RTCIceServer[]} from the latest welcome */
    this.iceServers = [];
    /** @type {number} seconds, from the latest welcome */
    this.heartbeat = 25;
    /** @type {string | null} seq of the last delivery processed (sent as `resume`) */
    this.lastSeq = options.resume ?? null;
    /** @type {import("./client").ClientState} */
    this.state = "idle";
    /** @type {any} the latest welcome frame */
    this.welcome = null;
  }

  /** The URL the next connection goes to. */
  get url() {
    return this._urls[this._urlIndex % this._urls.length];
  }

  /**
   * Start (if not started) and wait for the first welcome.
   * @returns {Promise<any>} the welcome frame
   */
  connect() {
    if (this._stopped) return Promise.reject(new SignalingError("closed", "the client was closed"));
    if (this.welcome && this.state === "open") return Promise.resolve(this.welcome);
    if (!this._firstWelcome) {
      /** @type {any} */ const d = {};
      d.promise = new Promise((resolve, reject) => Object.assign(d, { resolve, reject }));
      this._firstWelcome = d;
    }
    if (this.state === "idle") this._open();
    return /** @type {any} */ (this._firstWelcome).promise;
  }

  /**
   * Leave for good: close with 1000 (the server removes the peer from its rooms at once),
   * reject what is still pending with `closed`, and stop reconnecting.
   * @param {string} [reason]
   */
  close(reason = "bye") {
    if (this._stopped) return;
    for (const link of [...this.links.values()]) link.close({ bye: false });
    const ws = this._ws;
    this._detach();
    if (ws && ws.readyState <= 1) ws.close(CloseCode.NORMAL, reason);
    this._finish(CloseCode.NORMAL, reason);
  }

  /**
   * Send a frame and wait for its receipt. The client assigns `id`. While disconnected
   * the frame waits (at most `maxOutbox` of them) and goes out after the reconnect; a
   * frame whose connection died before its ack is sent again then (the receiving client
   * drops the repeat).
   * @param {Record<string, any>} frame e.g. `{type: "message", to: "bob", data: {...}}`
   * @returns {Promise<{id: string, queued: boolean}>} resolves on `ack` (`queued`: the
   *   recipient is reconnecting and will get it when it resumes); rejects with a
   *   SignalingError on `error`, after `ackTimeout`, or when the client stops.
   */
  send(frame) {
    if (this._stopped) return Promise.reject(new SignalingError("closed", "the client was closed"));
    if (this._pending.size >= this._opts.maxOutbox) {
      return Promise.reject(new SignalingError("outbox-full", `more than ${this._opts.maxOutbox} sends are waiting`));
    }
    const id = this._idPrefix + ++this._counter;
    const text = JSON.stringify({ ...frame, id });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SignalingError("timeout", `no receipt for ${frame.type} within ${this._opts.ackTimeout} ms`, id));
      }, this._opts.ackTimeout);
      this._pending.set(id, { text, type: String(frame.type), room: frame.room, resolve, reject, timer });
      if (this.state === "open") this._write(text);
    });
  }

  /**
   * `message` with `data` to one peer (`{to}`) or to a room (`{room}`).
   * @param {{to?: string, room?: string}} target
   * @param {any} data
   */
  message(target, data) {
    return this.send({ type: "message", ...target, data });
  }

  /**
   * Join a room (idempotent); resolves with the other members.
   * @param {string} room
   * @returns {Promise<string[]>}
   */
  async join(room) {
    this._wanted.add(room);
    try {
      await this.send({ type: "join", room });
    } catch (err) {
      this._wanted.delete(room);
      throw err;
    }
    return [...(this.rooms.get(room) ?? [])];
  }

  /**
   * Leave a room.
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    this._wanted.delete(room);
    await this.send({ type: "leave", room });
  }

  /**
   * The link to `remote`, made on first use (see {@link PeerLink}).
   * @param {string} remote
   * @param {import("./client").PeerLinkOptions} [options]
   * @returns {PeerLink}
   */
  link(remote, options) {
    return this.links.get(remote) ?? new PeerLink(this, remote, options);
  }

  // -- connection --------------------------------------------------------------------

  /** @private */
  _setState(/** @type {import("./client").ClientState} */ state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  /** @private */
  async _open() {
    this._timer = null;
    this._setState(this._welcomes ? "reconnecting" : "connecting");
    if (this._refreshToken && this._opts.getToken) {
      try {
        this._token = await this._opts.getToken();
        this._refreshToken = false;
      } catch (err) {
        this.emit("error", new SignalingError("token", `getToken failed: ${err}`));
        this._schedule("backoff", CloseCode.TOKEN_EXPIRED, "no token");
        return;
      }
      if (this._stopped) return;
    }
    const target = new URL(this.url, typeof location === "undefined" ? undefined : location.href);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    if (this._token) target.searchParams.set("token", this._token);
    else if (this.peer) target.searchParams.set("peer", this.peer);
    // a first connection resumes only from a seq the app handed in; a reconnect always
    // does ("0-0": nothing was processed yet), so the server says whether it could
    const resume = this.lastSeq ?? (this._welcomes ? "0-0" : null);
    if (resume) target.searchParams.set("resume", resume);
    let ws;
    try {
      ws = new this._WebSocket(target.toString());
    } catch (err) {
      this.emit("error", new SignalingError("bad-url", String(err)));
      this._finish(CloseCode.ABNORMAL, String(err));
      return;
    }
    this._ws = ws;
    let welcomed = false;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame && frame.type === "welcome") welcomed = true;
      this._onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._detach();
      this._onClose(ev.code, ev.reason, welcomed);
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** Forget the current socket without closing it (a dead one may never answer). @private */
  _detach() {
    const ws = this._ws;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  /** @private */
  _onClose(/** @type {number} */ code, /** @type {string} */ reason, /** @type {boolean} */ welcomed) {
    if (this._stopped) return;
    let action = closeAction(code);
    if (action === "token" && !this._opts.getToken) action = "stop";
    if (action === "stop") {
      this.emit("close", { code, reason, reconnect: false, delay: null });
      this._finish(code, reason);
      return;
    }
    if (!welcomed && this._opts.getToken) this._refreshToken = true; // it may have been a 401
    this._schedule(action, code, reason, welcomed);
  }

  /** @private */
  _schedule(/** @type {string} */ action, /** @type {number} */ code, /** @type {string} */ reason, welcomed = false) {
    let delay;
    if (action === "now" || action === "token") {
      if (action === "token") this._refreshToken = true;
      if (action === "now") this._urlIndex++; // that node is going away
      delay = this._attempt ? backoffDelay(this._attempt - 1, this._opts.backoff) : 0;
    } else {
      if (!welcomed) this._urlIndex++; // that URL did not answer: try the next
      delay = backoffDelay(this._attempt, this._opts.backoff);
    }
    this._attempt++;
    this._setState("reconnecting");
    this.emit("close", { code, reason, reconnect: true, delay });
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** Stop for good. @private */
  _finish(/** @type {number} */ code, /** @type {string} */ reason) {
    this._stopped = true;
    clearTimeout(this._timer);
    this._detach();
    const error = new SignalingError("closed", `signaling closed (${code}${reason ? ": " + reason : ""})`);
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this._pending.clear();
    this._firstWelcome?.reject(error);
    this._setState("closed");
    this.emit("closed", { code, reason });
  }

  /** @private */
  _write(/** @type {string} */ text) {
    const ws = this._ws;
    if (ws && ws.readyState === 1) ws.send(text);
  }

  /** Liveness: a connection that leaves a ping unanswered is given up. @private */
  _startHeartbeat() {
    clearInterval(this._heartbeat);
    this._awaitingPong = 0;
    const every = this._opts.pingInterval ?? (this.heartbeat * 1000 || 25000);
    const timeout = this._opts.pongTimeout;
    let lastPing = Date.now();
    this._heartbeat = setInterval(() => {
      const now = Date.now();
      if (this._awaitingPong) {
        if (now - this._awaitingPong <= timeout) return;
        // never send a close frame here: the server would end the peer for good. The
        // new connection takes over (the server closes this one with 4409 if it lives).
        this._detach();
        this._onClose(CloseCode.ABNORMAL, "no pong", true);
      } else if (now - lastPing >= every) {
        lastPing = this._awaitingPong = now;
        this._write('{"type":"ping"}');
      }
    }, Math.max(10, Math.min(every, timeout) / 4));
  }

  // -- frames ------------------------------------------------------------------------

  /** @private */
  _onFrame(/** @type {any} */ frame) {
    if (!frame || typeof frame.type !== "string") return;
    this._awaitingPong = 0; // any frame proves the connection alive
    if (frame.type === "welcome") return this._onWelcome(frame); // (first: since 1.1 it has a seq)
    if (typeof frame.seq === "string") {
      if (this.lastSeq && compareSeq(frame.seq, this.lastSeq) <= 0) return; // seen already
      if (!this._isRepeat(frame)) this._dispatch(frame);
      this.lastSeq = frame.seq;
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "ack":
        return this._settle(frame.id, (p) => p.resolve({ id: frame.id, queued: frame.queued === true }));
      case "error": {
        const error = new SignalingError(frame.code, frame.message, frame.id);
        if (!this._settle(frame.id, (p) => p.reject(error))) this.emit("error", error);
        return;
      }
      case "pong":
        return;
      default:
        this._dispatch(frame);
    }
  }

  /** Join a room again after a lost session. Right after the cluster lost its data it
   * refuses joins (`unavailable`) until every node has registered its peers again: retry.
   * @private */
  _rejoin(/** @type {string} */ room, attempt = 0) {
    this.send({ type: "join", room }).catch((err) => {
      if (err.code === "unavailable" && this._wanted.has(room) && !this._stopped) {
        setTimeout(() => this._rejoin(room, attempt + 1), Math.min(2000, 250 * 2 ** attempt));
      } else {
        this.emit("error", err);
      }
    });
  }

  /** A re-sent frame (same sender, same auto id) processed already. @private */
  _isRepeat(/** @type {any} */ frame) {
    if (!RELAYED.has(frame.type) || typeof frame.id !== "string" || !frame.id.startsWith(AUTO_ID)) return false;
    const key = `${frame.from} ${frame.id}`;
    if (this._recent.has(key)) return true;
    this._recent.add(key);
    if (this._recent.size > RECENT_IDS) this._recent.delete(/** @type {string} */ (this._recent.values().next().value));
    return false;
  }

  /** @private */
  _settle(/** @type {any} */ id, /** @type {(p: Pending) => void} */ fn) {
    const pending = this._pending.get(id);
    if (!pending) return false;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    fn(pending);
    return true;
  }

  /** @private */
  _onWelcome(/** @type {any} */ frame) {
    const reconnect = this._welcomes > 0;
    this._welcomes++;
    this._attempt = 0;
    this.welcome = frame;
    this.peer = frame.peer;
    this.node = frame.node;
    this.iceServers = frame.iceServers ?? [];
    this.heartbeat = frame.heartbeat ?? 25;
    // protocol 1.1: where this connection starts, the resume point until a delivery is processed
    if (typeof frame.seq === "string") this.lastSeq = frame.seq;
    this._setState("open");
    this._startHeartbeat();
    // first what a dead connection left unacknowledged and what waited for a connection,
    // in the order sent; handlers of the events below send after them
    for (const pending of this._pending.values()) this._write(pending.text);
    const lost = reconnect && !frame.resumed;
    if (lost) {
      // the server could not fill the gap: our rooms may be gone (joining is idempotent)
      const joining = new Set([...this._pending.values()].filter((p) => p.type === "join").map((p) => p.room));
      for (const room of this._wanted) {
        if (!joining.has(room)) this._rejoin(room);
      }
    }
    this.emit("welcome", frame);
    if (lost) this.emit("resync", frame);
    const first = this._firstWelcome;
    this._firstWelcome = null;
    first?.resolve(frame);
  }

  /** @private */
  _dispatch(/** @type {any} */ frame) {
    switch (frame.type) {
      case "joined": {
        const before = this.rooms.get(frame.room);
        const now = new Set(/** @type {string[]} */ (frame.peers ?? []).filter((p) => p !== this.peer));
        this.rooms.set(frame.room, now);
        this.emit("joined", frame);
        if (before) {
          // a rejoin: report the changes that happened while we were away
          for (const p of before) if (!now.has(p)) this.emit("peer-left", { type: "peer-left", room: frame.room, peer: p });
          for (const p of now) if (!before.has(p)) this.emit("peer-joined", { type: "peer-joined", room: frame.room, peer: p });
        }
        this._presence(frame.room);
        break;
      }
      case "left":
        this.rooms.delete(frame.room);
        this.emit("left", frame);
        this._presence(frame.room);
        break;
      case "peer-joined": {
        const members = this.rooms.get(frame.room);
        if (members?.has(frame.peer)) break; // known already (a rejoin snapshot had it)
        members?.add(frame.peer);
        this.emit("peer-joined", frame);
        this._presence(frame.room);
        break;
      }
      case "peer-left": {
        const members = this.rooms.get(frame.room);
        if (members && !members.has(frame.peer)) break;
        members?.delete(frame.peer);
        this.emit("peer-left", frame);
        this._presence(frame.room);
        break;
      }
      default:
        this.emit(frame.type, frame);
        if (frame.type !== "message" && RELAYED.has(frame.type)) this.links.get(frame.from)?._handle(frame);
    }
    this.emit("frame", frame);
  }

  /** @private */
  _presence(/** @type {string} */ room) {
    this.emit("presence", { room, peers: [...(this.rooms.get(room) ?? [])].sort() });
  }
}

/**
 * @typedef {object} Pending
 * @property {string} text the frame as sent
 * @property {string} type its type
 * @property {string} [room] its room, if any
 * @property {(ack: {id: string, queued: boolean}) => void} resolve
 * @property {(err: SignalingError) => void} reject
 * @property {any} timer
 */

/**
 * An RTCPeerConnection to one remote peer, negotiated over a SignalingClient with the
 * perfect negotiation pattern (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example):
 *
 * - either side may add tracks or data channels at any time; `negotiationneeded` makes
 *   the offer;
 * - roles come from the peer ids: the side whose id sorts first is polite. When two
 *   offers cross (glare) the impolite side ignores the other's offer, the polite side
 *   rolls its own back and answers;
 * - ICE candidates trickle as `candidate` frames; `null` marks the end of candidates;
 * - ICE `failed` (or `disconnected` for `restartDelay` ms) restarts ICE; so does a
 *   `resync` of the signaling (frames may be lost); an offer left unanswered for
 *   `offerTimeout` ms is rolled back and made again.
 *
 * Events: `track` (RTCTrackEvent), `datachannel` (RTCDataChannelEvent), `state`
 * ({connectionState, iceConnectionState, signalingState}), `negotiated` (an offer/answer
 * exchange completed), `bye` (the remote hung up; the link closes), `closed`, `error`.
 */
export class PeerLink extends Emitter {
  /**
   * @param {SignalingClient} client
   * @param {string} remote the other peer's id
   * @param {import("./client").PeerLinkOptions} [options]
   */
  constructor(client, remote, options = {}) {
    super();
    if (client.links.has(remote)) throw new Error(`a link to ${remote} exists already`);
    if (!client.peer) throw new Error("connect the client before making links");
    this.client = client;
    this.remote = remote;
    /** the side whose id sorts first is polite */
    this.polite = options.polite ?? client.peer < remote;
    this.restartDelay = options.restartDelay ?? 3000;
    this.offerTimeout = options.offerTimeout ?? 10000;
    /** @type {RTCPeerConnection} */
    this.pc = options.pc ?? new RTCPeerConnection({ iceServers: client.iceServers, ...(options.rtcConfig ?? {}) });
    /** completed offer/answer exchanges */
    this.negotiations = 0;
    this.closed = false;
    /** @private */ this._makingOffer = false;
    /** @private */ this._ignoreOffer = false;
    /** @private */ this._queue = Promise.resolve();
    /** @private @type {any} */ this._restartTimer = null;
    /** @private @type {any} */ this._offerTimer = null;
    /** @private */ this._offers = 0; // offers sent: the watchdog generation
    /** @private */ this._gatheredOnce = false; // an icecandidate event came (see _gathered)
    /** @private @type {() => void} */ this._sawCandidate = () => {};
    /** @private @type {Promise<void>} the first icecandidate event (or the link's close) */
    this._firstCandidate = new Promise((resolve) => (this._sawCandidate = resolve));
    /** @private @type {Promise<void>} the offer being set, settled (see _gathered) */
    this._offering = Promise.resolve();
    /** @private */ this._offs = [client.on("resync", () => this.restartIce())];
    client.links.set(remote, this);
    this._wire();
  }

  /** @private */
  _wire() {
    const pc = this.pc;
    pc.onnegotiationneeded = async () => {
      try {
        this._makingOffer = true;
        const offering = pc.setLocalDescription();
        this._offering = offering.then(() => {}, () => {});
        await offering;
        // a glare rollback may have replaced our offer meanwhile: then there is nothing to send
        if (pc.signalingState !== "have-local-offer" || pc.localDescription?.type !== "offer") return;
        this._signal({ type: "offer", offer: pc.localDescription.toJSON() });
        this._watchOffer();
      } catch (err) {
        this.emit("error", err);
      } finally {
        this._makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      this._gatheredOnce = true;
      this._sawCandidate();
      this._signal({ type: "candidate", candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = (ev) => this.emit("track", ev);
    pc.ondatachannel = (ev) => this.emit("datachannel", ev);
    const state = () => {
      this.emit("state", {
        connectionState: pc.connectionState,
        iceConnectionState: pc.iceConnectionState,
        signalingState: pc.signalingState,
      });
    };
    pc.onconnectionstatechange = state;
    pc.onsignalingstatechange = state;
    pc.oniceconnectionstatechange = () => {
      state();
      clearTimeout(this._restartTimer);
      if (pc.iceConnectionState === "failed") this.restartIce();
      else if (pc.iceConnectionState === "disconnected") {
        this._restartTimer = setTimeout(() => {
          if (pc.iceConnectionState === "disconnected") this.restartIce();
        }, this.restartDelay);
      }
    };
  }

  /** Send a frame to the remote peer; failures are reported, not thrown. @private */
  _signal(/** @type {Record<string, any>} */ frame) {
    if (this.closed) return;
    this.client.send({ ...frame, to: this.remote }).catch((err) => this.emit("error", err));
  }

  /** An offer nobody answers (lost with a connection that died) is made again. @private */
  _watchOffer() {
    clearTimeout(this._offerTimer);
    const offer = ++this._offers;
    this._offerTimer = setTimeout(() => {
      if (this.closed || this._offers !== offer || this.pc.signalingState !== "have-local-offer") return;
      this._enqueue(async () => {
        await this._gathered();
        if (this.closed || this._offers !== offer || this.pc.signalingState !== "have-local-offer") return;
        await this.pc.setLocalDescription({ type: "rollback" });
        this.pc.restartIce();
      });
    }, this.offerTimeout);
  }

  /**
   * Before any rollback of our offer: wait until this connection's first ICE gathering
   * has produced an icecandidate event (a candidate, or the end of candidates).
   *
   * Chromium gives each RTCPeerConnection a network filter that hands the browser's
   * network list, which arrives once some ms after the first connection of the page, to
   * the connection's gathering sessions. If the list arrives while the connection has no
   * session running, the filter drops it and never passes it on again: every later
   * gathering of that connection waits for networks forever (no candidate, ICE stays
   * "new"). Rolling back the first offer ends its session, and the answer's (or an ICE
   * restart's) starts only after the remote offer is applied: the list must not land in
   * between. An icecandidate event proves the filter has passed the list on; until then
   * the offer's own session is running, so the event comes as soon as the list does.
   * No time bound: rolling back earlier is what breaks the connection.
   * @private
   */
  async _gathered() {
    await this._offering; // an offer being set: its gathering starts once it is
    if (this._gatheredOnce || this.closed) return;
    const pc = this.pc;
    const sdp = pc.localDescription?.sdp ?? "";
    // nothing gathering (no local description, or one without a transport), or done already
    if (!/^a=ice-ufrag:/m.test(sdp) || pc.iceGatheringState === "complete" || /^a=candidate:/m.test(sdp)) return;
    await this._firstCandidate;
  }

  /** @private */
  _enqueue(/** @type {() => Promise<void>} */ job) {
    this._queue = this._queue.then(job).catch((err) => this.emit("error", err));
    return this._queue;
  }

  /**
   * A frame from the remote peer (the client routes offer/answer/candidate/bye here).
   * Frames are handled one at a time, in order.
   * @param {any} frame
   */
  _handle(frame) {
    if (this.closed) return Promise.resolve();
    return this._enqueue(() => this._process(frame));
  }

  /** @private */
  async _process(/** @type {any} */ frame) {
    if (this.closed) return;
    const pc = this.pc;
    if (frame.type === "offer" || frame.type === "answer") {
      const description = frame[frame.type];
      if (description.type === "answer" && pc.signalingState !== "have-local-offer") return; // to an offer we rolled back
      const collision = description.type === "offer" && (this._makingOffer || pc.signalingState !== "stable");
      this._ignoreOffer = !this.polite && collision;
      if (this._ignoreOffer) return;
      if (collision) {
        // glare, and we are polite: roll our offer back (once it gathered: see _gathered), take theirs
        await this._gathered();
        if (this.closed) return;
        await Promise.all([pc.setLocalDescription({ type: "rollback" }), pc.setRemoteDescription(description)]);
      } else {
        await pc.setRemoteDescription(description);
      }
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this._signal({ type: "answer", answer: pc.localDescription?.toJSON() });
      } else {
        clearTimeout(this._offerTimer);
      }
      this.negotiations++;
      this.emit("negotiated", { negotiations: this.negotiations, description: description.type });
    } else if (frame.type === "candidate") {
      try {
        if (frame.candidate) await pc.addIceCandidate(frame.candidate);
        else await pc.addIceCandidate();
      } catch (err) {
        if (!this._ignoreOffer) throw err; // a candidate of the offer we ignored
      }
    } else if (frame.type === "bye") {
      this.emit("bye", frame);
      this.close({ bye: false });
    }
  }

  /** Restart ICE (renegotiates through `negotiationneeded`). */
  restartIce() {
    if (this.closed) return;
    this._enqueue(async () => {
      if (this.pc.signalingState === "have-local-offer") await this._gathered();
      if (this.closed) return;
      if (this.pc.signalingState === "have-local-offer") await this.pc.setLocalDescription({ type: "rollback" });
      this.pc.restartIce();
    });
  }

  /**
   * Hang up: send `bye` (unless `bye: false`), close the connection, forget the link.
   * @param {{bye?: boolean, reason?: string}} [opts]
   */
  close({ bye = true, reason = "hangup" } = {}) {
    if (this.closed) return;
    if (bye) this._signal({ type: "bye", reason });
    this.closed = true;
    clearTimeout(this._restartTimer);
    clearTimeout(this._offerTimer);
    this._sawCandidate(); // a rollback waiting for it has nothing left to wait for
    for (const off of this._offs) off();
    if (this.client.links.get(this.remote) === this) this.client.links.delete(this.remote);
    this.pc.close();
    this.emit("closed", { remote: this.remote });
  }
}

/** The `/ws` of the page's own host. */
function defaultUrl() {
  if (typeof location === "undefined") throw new TypeError("SignalingClient needs a URL outside a page");
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

function randomToken() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(36).padStart(2, "0")).join("");
}
