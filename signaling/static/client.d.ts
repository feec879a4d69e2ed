// Types of /client.js, the browser client of the signaling protocol (docs/PROTOCOL.md).

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  DRAINING: 1001;
  ABNORMAL: 1006;
  POLICY: 1008;
  TOO_BIG: 1009;
  INTERNAL: 1011;
  TOKEN_EXPIRED: 4401;
  REPLACED: 4409;
}>;

/** A protocol error code, or one of the client's own (`timeout`, `closed`, `outbox-full`, `token`, `bad-url`). */
export type ErrorCode =
  | "bad-json" | "bad-message" | "unknown-type" | "peer-unavailable" | "not-in-room" | "room-full"
  | "forbidden" | "rate-limited" | "unavailable"
  | "timeout" | "closed" | "outbox-full" | "token" | "bad-url";

export declare class SignalingError extends Error {
  constructor(code: string, message: string, id?: string | number);
  readonly code: ErrorCode | string;
  readonly id?: string | number;
}

/** Compare two `seq` strings (`"<ms>-<n>"`) as pairs of integers: negative, zero or positive. */
export declare function compareSeq(a: string, b: string): number;

/** What to do after a close with `code`: stop, reconnect now, get a new token, or back off. */
export declare function closeAction(code: number): "stop" | "now" | "token" | "backoff";

/** Delay (ms) before reconnect attempt `attempt` (0-based): exponential, capped, half of it jittered. */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;

export interface BackoffOptions {
  /** first delay in ms (default 500) */
  initial?: number;
  /** cap in ms (default 15000) */
  max?: number;
  /** growth per attempt (default 2) */
  factor?: number;
}

export interface SignalingOptions {
  /** open mode: the peer id to ask for (default: the server picks one; kept across reconnects) */
  peer?: string;
  /** a JWT (its `sub` is the peer id) */
  token?: string;
  /** called for a fresh token after a 4401 close, and after a failed connection attempt (it may have been a 401) */
  getToken?: () => string | Promise<string>;
  /** seq to resume from on the first connection (e.g. kept in sessionStorage across a page reload) */
  resume?: string;
  backoff?: BackoffOptions;
  /** ms to wait for a receipt before a send rejects with `timeout` (default 15000) */
  ackTimeout?: number;
  /** ms between liveness pings (default: the welcome's heartbeat) */
  pingInterval?: number;
  /** ms without any frame after a ping before the connection is given up (default 10000) */
  pongTimeout?: number;
  /** sends that may wait for a connection or a receipt (default 1024); beyond it send rejects with `outbox-full` */
  maxOutbox?: number;
  /** a WebSocket implementation (tests) */
  WebSocket?: typeof WebSocket;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface Welcome {
  type: "welcome";
  peer: string;
  node: string;
  iceServers: RTCIceServer[];
  heartbeat: number;
  resumed: boolean;
}

export interface Ack {
  id: string;
  /** the recipient (or a room member) is reconnecting: it gets the frame when it resumes */
  queued: boolean;
}

/** A frame relayed from another peer: what it sent, plus `from` and `seq`. */
export interface Relayed {
  type: "offer" | "answer" | "candidate" | "bye" | "message";
  from: string;
  seq: string;
  to?: string;
  room?: string;
  id?: string | number;
  offer?: RTCSessionDescriptionInit;
  answer?: RTCSessionDescriptionInit;
  candidate?: RTCIceCandidateInit | null;
  reason?: string;
  data?: unknown;
  [field: string]: unknown;
}

export interface PresenceEvent {
  type: "peer-joined" | "peer-left";
  room: string;
  peer: string;
  /** absent on events the client made up from a rejoin's snapshot */
  seq?: string;
}

export interface SignalingEvents {
  state: { state: ClientState };
  welcome: Welcome;
  /** a reconnect could not resume (`welcome.resumed` false): renegotiate calls */
  resync: Welcome;
  offer: Relayed;
  answer: Relayed;
  candidate: Relayed;
  bye: Relayed;
  message: Relayed;
  joined: { type: "joined"; room: string; peers: string[] };
  left: { type: "left"; room: string };
  "peer-joined": PresenceEvent;
  "peer-left": PresenceEvent;
  presence: { room: string; peers: string[] };
  error: SignalingError;
  close: { code: number; reason: string; reconnect: boolean; delay: number | null };
  closed: { code: number; reason: string };
  frame: Record<string, unknown>;
}

declare class Emitter<Events> {
  on<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): () => void;
  once<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): void;
  emit<K extends keyof Events>(type: K, detail?: Events[K]): void;
}

export declare class SignalingClient extends Emitter<SignalingEvents> {
  /** `url`: the `/ws` URL, or several to rotate through on failure and drain (default: this page's host) */
  constructor(url?: string | string[], options?: SignalingOptions);
  readonly url: string;
  /** our peer id (known after the first welcome when the server picks it) */
  peer: string | null;
  /** the node of the current connection */
  node: string | null;
  iceServers: RTCIceServer[];
  heartbeat: number;
  /** seq of the last delivery processed; sent as `resume` on reconnect */
  lastSeq: string | null;
  state: ClientState;
  welcome: Welcome | null;
  /** room -> the other members */
  rooms: Map<string, Set<string>>;
  links: Map<string, PeerLink>;
  /** start, and wait for the first welcome */
  connect(): Promise<Welcome>;
  /** leave for good (close 1000) */
  close(reason?: string): void;
  /** send a frame (the client sets `id`) and wait for its receipt */
  send(frame: Record<string, unknown> & { type: string }): Promise<Ack>;
  message(target: { to: string } | { room: string }, data: unknown): Promise<Ack>;
  /** join (idempotent); resolves with the other members */
  join(room: string): Promise<string[]>;
  leave(room: string): Promise<void>;
  /** the perfect-negotiation link to `remote`, made on first use */
  link(remote: string, options?: PeerLinkOptions): PeerLink;
}

export interface PeerLinkOptions {
  /** an RTCPeerConnection to use (default: a new one with the welcome's iceServers) */
  pc?: RTCPeerConnection;
  /** merged into the new RTCPeerConnection's configuration */
  rtcConfig?: RTCConfiguration;
  /** default: our peer id sorts before the remote's */
  polite?: boolean;
  /** ms ICE may stay `disconnected` before an ICE restart (default 3000) */
  restartDelay?: number;
  /** ms an offer may go unanswered before it is rolled back and made again (default 10000) */
  offerTimeout?: number;
}

export interface PeerLinkEvents {
  track: RTCTrackEvent;
  datachannel: RTCDataChannelEvent;
  state: { connectionState: RTCPeerConnectionState; iceConnectionState: RTCIceConnectionState; signalingState: RTCSignalingState };
  negotiated: { negotiations: number; description: "offer" | "answer" };
  bye: Relayed;
  closed: { remote: string };
  error: unknown;
}

export declare class PeerLink extends Emitter<PeerLinkEvents> {
  constructor(client: SignalingClient, remote: string, options?: PeerLinkOptions);
  readonly client: SignalingClient;
  readonly remote: string;
  readonly polite: boolean;
  readonly pc: RTCPeerConnection;
  /** completed offer/answer exchanges */
  negotiations: number;
  closed: boolean;
  restartIce(): void;
  /** hang up: `bye` to the remote (unless `bye: false`), close the connection */
  close(opts?: { bye?: boolean; reason?: string }): void;
}
