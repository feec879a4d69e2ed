"""An asyncio client of the signaling protocol (docs/PROTOCOL.md), and perfect negotiation for aiortc.

`SignalingClient` is one session that survives its connections: it keeps its peer id,
reconnects with jittered back-off passing `resume=<last seq processed>`, handles every
delivery exactly once (by `seq`), resolves each send on its receipt or raises on its
`error`, re-sends what a dead connection left unacknowledged (receivers drop the
repeat), rejoins rooms a lost session dropped, and says so (`resync`) when the server
could not resume, so calls can renegotiate.

`PeerLink` wires an aiortc `RTCPeerConnection` to one remote peer with the perfect
negotiation pattern. aiortc gathers its candidates before `setLocalDescription`
returns and has neither rollback nor ICE restart, so the link sends complete
descriptions followed by a `null` end-of-candidates, and where a browser would roll back
or restart ICE it builds a fresh connection through the app's `setup` callback.

    async with SignalingClient("ws://127.0.0.1:8080/ws", peer="alice") as client:
        client.on("message", lambda m: print(m["from"], m["data"]))
        await client.join("lobby")
        ack = await client.message({"hi": 1}, to="bob")  # raises SignalingError if bob is gone

aiortc is imported only when a `PeerLink` makes a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import json
import logging
import random
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from .inbox import parse_seq
from .protocol import CloseCode

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

log = logging.getLogger("signaling.client")

RELAYED = frozenset({"offer", "answer", "candidate", "bye", "message"})
AUTO_ID = "~"  # auto receipt ids start with it; receivers drop a repeat of one they processed
RECENT_IDS = 4096  # (sender, id) pairs remembered for that
ABNORMAL = 1006

Frame = dict[str, Any]
Handler = Callable[[Any], None | Awaitable[None]]
TokenProvider = Callable[[], str | Awaitable[str]]


class SignalingError(Exception):
    """An `error` frame answering a send, or a failure of the client itself.

    `code` is a protocol error code (`peer-unavailable`, `not-in-room`, ...) or one of
    the client's own: `timeout` (no receipt within `ack_timeout`), `closed` (the client
    stopped), `outbox-full`, `token` (no usable token), `refused` (the server refused
    the connection for good: bad request).
    """

    def __init__(self, code: str, message: str, id: str | int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True)
class Ack:
    id: str
    queued: bool = False  # the recipient (or a room member) is reconnecting: it gets it on resume


class State(str, enum.Enum):  # noqa: UP042 - a StrEnum would print differently (str(), f-strings)
    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


# -- pure policy -------------------------------------------------------------------------


def close_action(code: int | None) -> str:
    """What to do after a close with `code`: `stop` (1000, 1008, 1009, 4409), `now`
    (1001: the node drains), `token` (4401: a new token first), or `backoff` (1011,
    a vanished connection, anything else)."""
    if code in (CloseCode.NORMAL, CloseCode.POLICY, CloseCode.TOO_BIG, CloseCode.REPLACED):
        return "stop"
    if code == CloseCode.DRAINING:
        return "now"
    if code == CloseCode.TOKEN_EXPIRED:
        return "token"
    return "backoff"


@dataclass(frozen=True)
class Backoff:
    """Exponential, capped, with equal jitter: between half and all of the step, so a
    fleet of clients dropped at once spreads its reconnects."""

    initial: float = 0.5
    max: float = 15.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.max, self.initial * self.factor ** max(0, attempt))
        return ceiling / 2 + rand() * ceiling / 2


@dataclass
class Deduper:
    """Which deliveries are new: `seq` above the highest seen, and for relayed frames with
    an auto id, a (sender, id) pair not processed before (a sender's re-send)."""

    highest: tuple[int, int] | None = None
    recent: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    def fresh(self, frame: Mapping[str, Any]) -> bool:
        seq = parse_seq(frame.get("seq"))
        if seq is not None:
            if self.highest is not None and seq <= self.highest:
                return False
            self.highest = seq
        rid = frame.get("id")
        if frame.get("type") in RELAYED and isinstance(rid, str) and rid.startswith(AUTO_ID):
            key = (str(frame.get("from")), rid)
            if key in self.recent:
                return False
            self.recent[key] = None
            if len(self.recent) > RECENT_IDS:
                self.recent.popitem(last=False)
        return True


@dataclass
class _Pending:
    text: str
    type: str
    room: str | None
    future: asyncio.Future[Ack]
    timer: asyncio.TimerHandle


_STOP = object()


class _Events:
    """`on` / `wait_for` and handler calls, shared by the client and its links."""

    _handlers: dict[str, list[Handler]]

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Call `handler(payload)` on each `event`; returns the function that removes it."""
        self._handlers.setdefault(event, []).append(handler)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.get(event, []).remove(handler)

        return off

    async def wait_for(self, event: str, predicate: Callable[[Any], bool] | None = None,
                       timeout: float | None = 10.0) -> Any:
        """The next `event` whose payload satisfies `predicate`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def handler(payload: Any) -> None:
            if not future.done() and (predicate is None or predicate(payload)):
                future.set_result(payload)

        off = self.on(event, handler)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            off()

    async def _call_handlers(self, event: str, payload: Any) -> None:
        """Every handler of `event`, in order; sync or async; one failing does not stop the rest."""
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a %s %r handler failed", type(self).__name__, event)


class SignalingClient(_Events):
    """One signaling session over a WebSocket that reconnects by itself.

    `url` is the `/ws` URL, or several: a reconnect after a failure or a drain moves to
    the next (behind a load balancer give one). Handlers (`on`) get each event once, one
    at a time and in order; a handler may be a coroutine function, and the next event
    waits for it, so keep long work in tasks of your own. Events: `state`, `welcome`,
    `resync` (a reconnect could not resume: renegotiate), `offer` / `answer` /
    `candidate` / `bye` / `message`, `joined` / `left` / `peer-joined` / `peer-left` /
    `presence` ({room, peers}), `error` (a SignalingError no send was waiting for),
    `close` ({code, reason, reconnect, delay}) per lost connection, `closed` once stopped.
    """

    HANDSHAKE_TIMEOUT = 10.0  # seconds for the TCP connect and the upgrade

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        peer: str | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        resume: str | None = None,
        backoff: Backoff = Backoff(),
        ack_timeout: float = 15.0,
        heartbeat: float | None = 20.0,
        max_outbox: int = 1024,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("SignalingClient needs a URL")
        self.peer = peer
        self.node: str | None = None
        self.ice_servers: list[dict[str, Any]] = []
        self.welcome: Frame | None = None
        self.last_seq = resume  # seq of the last delivery processed: sent as `resume`
        self.state = State.IDLE
        self.rooms: dict[str, set[str]] = {}  # room -> the other members, as the server said
        self.links: dict[str, PeerLink] = {}  # remote peer id -> its link
        self._token = token
        self._token_provider = token_provider
        self._refresh_token = token is None and token_provider is not None
        self._backoff = backoff
        self._ack_timeout = ack_timeout
        self._heartbeat = heartbeat
        self._max_outbox = max_outbox
        self._http = session
        self._own_http = session is None
        self._url_index = 0
        self._attempt = 0
        self._welcomes = 0
        self._stopped = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._out: asyncio.Queue[str] | None = None  # frames for the current connection's writer
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue()  # (event, payload) for the handlers, in order
        self._handlers: dict[str, list[Handler]] = {}
        self._pending: dict[str, _Pending] = {}  # receipt id -> a send waiting for its ack, in send order
        self._wanted: set[str] = set()  # rooms the app wants to be in (rejoined after a lost session)
        self._dedupe = Deduper(parse_seq(resume))
        self._ids = itertools.count(1)
        self._id_prefix = f"{AUTO_ID}{secrets.token_hex(5)}."
        self._first: asyncio.Future[Frame] | None = None
        self._fatal: SignalingError | None = None  # why the server refused us for good

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.urls[self._url_index % len(self.urls)]

    async def connect(self, timeout: float | None = None) -> Frame:
        """Start (if not started) and wait for the first welcome."""
        if self._stopped:
            raise SignalingError("closed", "the client was closed")
        if self.state is State.OPEN and self.welcome is not None:
            return self.welcome
        loop = asyncio.get_running_loop()
        if self._first is None:
            self._first = loop.create_future()
            self._first.add_done_callback(lambda f: f.cancelled() or f.exception())  # a caller may give up
        if self._runner is None:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="signaling-dispatch")
            self._runner = asyncio.create_task(self._run(), name="signaling-connection")
        return await asyncio.wait_for(asyncio.shield(self._first), timeout)

    async def close(self, reason: str = "bye") -> None:
        """Leave for good: close with 1000 (the server removes the peer from its rooms),
        fail pending sends with `closed`, stop reconnecting, and let handlers finish.
        Also releases what a client the server stopped (4409, ...) still holds."""
        if not self._stopped:
            for link in list(self.links.values()):
                await link.close(bye=False)
            ws = self._ws
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(code=CloseCode.NORMAL, message=reason.encode()), 3)
            self._finish(CloseCode.NORMAL, reason)
        current = asyncio.current_task()
        if self._runner is not None and self._runner is not current:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._dispatcher is not None and self._dispatcher is not current and not self._dispatcher.done():
            self._events.put_nowait(_STOP)  # the handlers see the events so far, `closed` last
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._dispatcher), 5)
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._own_http and self._http is not None and not self._http.closed:
            await self._http.close()

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- events -----------------------------------------------------------------------------

    def _emit(self, event: str, payload: Any) -> None:
        self._events.put_nowait((event, payload))

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._events.get()
            if item is _STOP:
                return
            event, payload = item
            await self._call_handlers(event, payload)
            if not isinstance(payload, dict):
                continue
            if event in ("offer", "answer", "candidate", "bye"):
                link = self.links.get(payload.get("from", ""))
                if link is not None:  # made now by an `offer` handler, or before
                    link._handle(payload)  # noqa: SLF001 - the client feeds its own links
            elif event in ("frame", "welcome") and isinstance(payload.get("seq"), str):
                # every delivery ends with its `frame`: processed; a welcome's seq is where the
                # connection starts (protocol 1.1), the resume point until a delivery is processed
                self.last_seq = payload["seq"]

    # -- sending ----------------------------------------------------------------------------

    def send_nowait(self, frame: Mapping[str, Any]) -> asyncio.Future[Ack]:
        """Queue `frame` (the client sets `id`); the future resolves on its ack."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        if self._stopped:
            future.set_exception(SignalingError("closed", "the client was closed"))
            return future
        if len(self._pending) >= self._max_outbox:
            future.set_exception(SignalingError("outbox-full", f"more than {self._max_outbox} sends are waiting"))
            return future
        rid = f"{self._id_prefix}{next(self._ids)}"
        text = json.dumps({**frame, "id": rid}, separators=(",", ":"))
        kind = str(frame.get("type"))
        timer = asyncio.get_running_loop().call_later(self._ack_timeout, self._expire, rid, kind)
        self._pending[rid] = _Pending(text, kind, frame.get("room"), future, timer)
        if self.state is State.OPEN:
            self._write(text)
        return future

    async def send(self, frame: Mapping[str, Any]) -> Ack:
        """Send `frame` and wait for its receipt. While disconnected it waits for the
        reconnect; if the connection dies before the ack it is sent again then (the
        receiving client drops the repeat). Raises SignalingError on an `error`, after
        `ack_timeout`, or when the client stops."""
        return await self.send_nowait(frame)

    async def message(self, data: Any, *, to: str | None = None, room: str | None = None) -> Ack:
        """`message` with `data` to one peer or to the other members of a room."""
        target = {"to": to} if to is not None else {"room": room}
        return await self.send({"type": "message", **target, "data": data})

    async def join(self, room: str) -> list[str]:
        """Join `room` (idempotent); returns the other members."""
        self._wanted.add(room)
        try:
            await self.send({"type": "join", "room": room})
        except SignalingError:
            self._wanted.discard(room)
            raise
        return sorted(self.rooms.get(room, ()))

    async def leave(self, room: str) -> None:
        self._wanted.discard(room)
        await self.send({"type": "leave", "room": room})

    def link(self, remote: str, **options: Any) -> PeerLink:
        """The perfect-negotiation link to `remote`, made on first use (see PeerLink)."""
        return self.links.get(remote) or PeerLink(self, remote, **options)

    def _expire(self, rid: str, kind: str) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None and not pending.future.done():
            message = f"no receipt for {kind} within {self._ack_timeout}s"
            pending.future.set_exception(SignalingError("timeout", message, rid))

    def _write(self, text: str) -> None:
        if self._out is not None:
            self._out.put_nowait(text)

    # -- connections ------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self._emit("state", {"state": state.value})

    async def _run(self) -> None:
        """Connect, read until the connection ends, decide what next; until stopped."""
        try:
            await self._reconnect_loop()
        finally:
            if self._stopped and self._own_http and self._http is not None and not self._http.closed:
                await self._http.close()

    async def _reconnect_loop(self) -> None:
        while not self._stopped:
            self._set_state(State.RECONNECTING if self._welcomes else State.CONNECTING)
            code, reason, welcomed = await self._connection()
            if self._stopped:
                return
            action = close_action(code)
            if action == "token" and self._token_provider is None:
                action = "stop"
            if action == "stop":
                self._emit("close", {"code": code, "reason": reason, "reconnect": False, "delay": None})
                self._finish(code, reason)
                return
            if action in ("now", "token"):
                if action == "token":
                    self._refresh_token = True
                else:
                    self._url_index += 1  # that node is going away
                delay = self._backoff.delay(self._attempt - 1) if self._attempt else 0.0
            else:
                if not welcomed:
                    self._url_index += 1  # that URL did not take us: try the next
                delay = self._backoff.delay(self._attempt)
            self._attempt += 1
            self._set_state(State.RECONNECTING)
            self._emit("close", {"code": code, "reason": reason, "reconnect": True, "delay": delay})
            await asyncio.sleep(delay)

    async def _connection(self) -> tuple[int, str, bool]:
        """One connection, from the handshake to its end: (close code, reason, welcomed)."""
        assert self._http is not None
        if self._refresh_token and self._token_provider is not None:
            try:
                token = self._token_provider()
                self._token = await token if inspect.isawaitable(token) else token
                self._refresh_token = False
            except Exception as exc:  # noqa: BLE001 - the app's provider may raise anything: an error event
                self._emit("error", SignalingError("token", f"token provider failed: {exc}"))
                return ABNORMAL, "no token", False
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        elif self.peer:
            params["peer"] = self.peer
        # a first connection resumes only from a seq handed in; a reconnect always does
        # ("0-0": nothing processed yet), so the server says whether it could
        resume = self.last_seq or ("0-0" if self._welcomes else None)
        if resume:
            params["resume"] = resume
        try:
            ws = await asyncio.wait_for(self._http.ws_connect(
                self.url, params=params, headers=headers, heartbeat=self._heartbeat, autoping=True,
                max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)), self.HANDSHAKE_TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            return self._refused(exc.status, exc.message)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return ABNORMAL, f"cannot connect: {exc!r}", False
        self._ws = ws
        self._out = asyncio.Queue()
        writer = asyncio.create_task(self._write_loop(ws, self._out), name="signaling-writer")
        welcomed, reason = False, ""
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        continue
                    if isinstance(frame, dict) and isinstance(frame.get("type"), str):
                        welcomed = welcomed or frame["type"] == "welcome"
                        self._on_frame(frame)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                    if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.extra, str):
                        reason = msg.extra
                    break
            code = ws.close_code if ws.close_code is not None else ABNORMAL
        finally:
            self._ws, self._out = None, None
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not ws.closed and not self._stopped:
                # a dead connection is dropped without a close frame, which would end the peer
                ws._response.close()  # noqa: SLF001 - aiohttp has no public way to drop it unclosed
        return code, reason, welcomed

    def _refused(self, status: int, message: str) -> tuple[int, str, bool]:
        """An HTTP refusal before the upgrade, as a close code to act on."""
        if status == 401:
            if self._token_provider is not None:
                self._refresh_token = True
                return ABNORMAL, f"401 {message}", False  # back off, with a fresh token
            self._fatal = SignalingError("token", f"the server refused the token: {message}")
        elif status in (400, 403, 404, 426):
            self._fatal = SignalingError("refused", f"HTTP {status}: {message}")
        if self._fatal is not None:
            self._emit("error", self._fatal)
            return CloseCode.POLICY, f"{status} {message}", False
        return ABNORMAL, f"{status} {message}", False  # 503 and the like: try again later

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse, out: asyncio.Queue[str]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            while True:
                await ws.send_str(await out.get())

    def _finish(self, code: int, reason: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        error = SignalingError("closed", f"signaling closed ({code}{': ' + reason if reason else ''})")
        for pending in self._pending.values():
            pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        if self._first is not None and not self._first.done():
            self._first.set_exception(self._fatal or error)
        self._set_state(State.CLOSED)
        self._emit("closed", {"code": code, "reason": reason})
        self._events.put_nowait(_STOP)  # the dispatcher ends once the handlers saw `closed`

    # -- frames -----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = frame["type"]
        if kind == "welcome":  # (first: since protocol 1.1 it carries a `seq` too)
            self._on_welcome(frame)
        elif "seq" in frame or kind in RELAYED:
            if self._dedupe.fresh(frame):
                self._deliver(frame)
        elif kind == "ack":
            self._settle(frame.get("id"), Ack(str(frame.get("id")), frame.get("queued") is True))
        elif kind == "error":
            error = SignalingError(str(frame.get("code")), str(frame.get("message", "")), frame.get("id"))
            if not self._settle(frame.get("id"), error):
                self._emit("error", error)
        elif kind == "joined":
            room, peers = frame["room"], {p for p in frame.get("peers", ()) if p != self.peer}
            before = self.rooms.get(room)
            self.rooms[room] = peers
            self._emit("joined", frame)
            if before is not None:  # a rejoin: report what changed while we were away
                for p in sorted(before - peers):
                    self._emit("peer-left", {"type": "peer-left", "room": room, "peer": p})
                for p in sorted(peers - before):
                    self._emit("peer-joined", {"type": "peer-joined", "room": room, "peer": p})
            self._presence(room)
        elif kind == "left":
            self.rooms.pop(frame["room"], None)
            self._emit("left", frame)
            self._presence(frame["room"])
        elif kind != "pong":
            self._emit(kind, frame)

    def _deliver(self, frame: Frame) -> None:
        kind = frame["type"]
        if kind in ("peer-joined", "peer-left"):
            members = self.rooms.get(frame.get("room", ""))
            if members is not None:
                if (frame["peer"] in members) == (kind == "peer-joined"):
                    self._emit("frame", frame)  # known already (a rejoin's snapshot); still processed
                    return
                (members.add if kind == "peer-joined" else members.discard)(frame["peer"])
            self._emit(kind, frame)
            self._presence(frame["room"])
        else:
            self._emit(kind, frame)
        self._emit("frame", frame)

    def _presence(self, room: str) -> None:
        self._emit("presence", {"room": room, "peers": sorted(self.rooms.get(room, ()))})

    def _settle(self, rid: Any, answer: Ack | SignalingError) -> bool:
        pending = self._pending.pop(rid, None) if isinstance(rid, str) else None
        if pending is None:
            return False
        pending.timer.cancel()
        if not pending.future.done():
            if isinstance(answer, SignalingError):
                pending.future.set_exception(answer)
            else:
                pending.future.set_result(answer)
        return True

    def _on_welcome(self, frame: Frame) -> None:
        reconnect = self._welcomes > 0
        self._welcomes += 1
        self._attempt = 0
        self.welcome = frame
        self.peer = frame.get("peer", self.peer)
        self.node = frame.get("node")
        self.ice_servers = list(frame.get("iceServers") or [])
        self._set_state(State.OPEN)
        # what a dead connection left unacknowledged and what waited, in the order sent
        for pending in self._pending.values():
            self._write(pending.text)
        lost = reconnect and not frame.get("resumed")
        if lost:
            joining = {p.room for p in self._pending.values() if p.type == "join"}
            for room in self._wanted - joining:
                self._rejoin(room)
        self._emit("welcome", frame)
        if lost:
            self._emit("resync", frame)
        if self._first is not None and not self._first.done():
            self._first.set_result(frame)

    def _rejoin(self, room: str, attempt: int = 0) -> None:
        """Join a room again after a lost session. Right after the cluster lost its data it
        refuses joins (`unavailable`) until every node has registered its peers again: retry."""
        future = self.send_nowait({"type": "join", "room": room})

        def done(f: asyncio.Future[Ack]) -> None:
            if f.cancelled() or f.exception() is None:
                return
            error = f.exception()
            if isinstance(error, SignalingError) and error.code == "unavailable" and room in self._wanted \
                    and not self._stopped:
                asyncio.get_running_loop().call_later(min(2.0, 0.25 * 2 ** attempt), self._rejoin, room, attempt + 1)
            else:
                self._emit("error", error)

        future.add_done_callback(done)


# -- perfect negotiation for aiortc ---------------------------------------------------------

Setup = Callable[["RTCPeerConnection"], None | Awaitable[None]]
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)


def ice_servers_for_aiortc(servers: Sequence[Mapping[str, Any]]) -> list[Any]:
    """`welcome.iceServers` (RTCIceServer dicts) as aiortc RTCIceServer objects."""
    from aiortc import RTCIceServer

    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers if s.get("urls")]


def candidate_from_json(init: Mapping[str, Any] | None) -> Any:
    """An RTCIceCandidateInit dict (as browsers send) as an aiortc RTCIceCandidate;
    None for end-of-candidates (`null` or an empty candidate string)."""
    if not init or not init.get("candidate"):
        return None
    from aiortc.sdp import candidate_from_sdp

    text = init["candidate"]
    candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def _ufrag(sdp: str) -> str | None:
    match = _UFRAG.search(sdp)
    return match.group(1) if match else None


class PeerLink(_Events):
    """An aiortc RTCPeerConnection to `remote`, negotiated with the perfect negotiation pattern.

    - `setup(pc)` (may be async) prepares every connection the link makes: add tracks,
      create negotiated data channels, attach handlers. Call `negotiate()` to make an
      offer (aiortc has no `negotiationneeded`); either side may.
    - The side whose peer id sorts first is polite. When offers cross, the impolite side
      ignores the other's; the polite side, which cannot roll back in aiortc, starts a
      fresh connection and answers.
    - Descriptions go out complete (aiortc gathers before returning), followed by a
      `null` candidate; candidates trickled by the remote are added as they come.
    - A `failed` connection, a `resync` of the signaling, an ICE restart offer from the
      remote, or an offer unanswered for `offer_timeout` seconds rebuilds the connection
      (aiortc's ICE restart) and negotiates again.

    Signaling frames are handled one at a time, in order, by the link's own task.
    Events (`on`): `pc` (a new RTCPeerConnection), `state` (its connectionState),
    `negotiated`, `bye`, `closed`, `error`.
    """

    def __init__(self, client: SignalingClient, remote: str, *, setup: Setup | None = None,
                 polite: bool | None = None, offer_timeout: float = 10.0,
                 configuration: Any = None) -> None:
        if remote in client.links:
            raise ValueError(f"a link to {remote} exists already")
        if not client.peer:
            raise RuntimeError("connect the client before making links")
        self.client = client
        self.remote = remote
        self.polite = polite if polite is not None else client.peer < remote
        self.offer_timeout = offer_timeout
        self.negotiations = 0  # completed offer/answer exchanges
        self.rebuilds = 0  # connections made after the first
        self.closed = False
        self.pc: RTCPeerConnection | None = None
        self._setup = setup
        self._configuration = configuration
        self._ignore_offer = False
        self._handlers: dict[str, list[Handler]] = {}
        self._jobs: asyncio.Queue[Any] = asyncio.Queue()
        self._offer_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

        def resync(_: Any) -> None:
            self.restart()  # not awaited: the client's other events go on meanwhile

        self._off = [client.on("resync", resync)]
        client.links[remote] = self
        self._worker = asyncio.create_task(self._work(), name=f"peerlink-{remote}")

    # -- events --------------------------------------------------------------------------

    async def _emit(self, event: str, payload: Any) -> None:
        await self._call_handlers(event, payload)

    # -- commands ------------------------------------------------------------------------

    def negotiate(self) -> asyncio.Future[None]:
        """Make an offer (after `setup` added tracks or channels); resolves once sent."""
        return self._enqueue(self._negotiate)

    def restart(self) -> asyncio.Future[None]:
        """Start over with a fresh connection and negotiate it (aiortc's ICE restart)."""
        async def restart() -> None:
            await self._build()
            await self._negotiate()
        return self._enqueue(restart)

    async def close(self, bye: bool = True, reason: str = "hangup") -> None:
        """Hang up: `bye` to the remote (unless bye=False), close the connection."""
        if self.closed:
            return
        self.closed = True
        if bye:
            future = self.client.send_nowait({"type": "bye", "to": self.remote, "reason": reason})
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        for off in self._off:
            off()
        if self.client.links.get(self.remote) is self:
            del self.client.links[self.remote]
        if self._offer_timer is not None:
            self._offer_timer.cancel()
        if self._worker is not asyncio.current_task():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self.pc is not None:
            await self.pc.close()
        await self._emit("closed", {"remote": self.remote})

    # -- the worker ----------------------------------------------------------------------

    def _enqueue(self, job: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_result(None)  # nothing to do on a closed link
        else:
            self._jobs.put_nowait((job, future))
        return future

    def _handle(self, frame: Frame) -> None:
        """A frame from the remote (the client routes offer/answer/candidate/bye here)."""
        if not self.closed:
            self._enqueue(lambda: self._process(frame))

    async def _work(self) -> None:
        while True:
            job, future = await self._jobs.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a job raised goes to its caller and the error event
                log.warning("link to %s: %r", self.remote, exc)
                await self._emit("error", exc)
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: the error event reported it
            else:
                if not future.done():
                    future.set_result(None)

    async def _ensure(self) -> RTCPeerConnection:
        """The current connection; a fresh one if there is none or it has closed (the
        remote side closed its end: it is starting over, and its offer is coming)."""
        if self.pc is None or self.pc.signalingState == "closed" or self.pc.connectionState == "closed":
            await self._build()
        assert self.pc is not None
        return self.pc

    async def _build(self) -> None:
        """A fresh connection, prepared by `setup`; the old one is closed."""
        from aiortc import RTCConfiguration, RTCPeerConnection

        old = self.pc
        configuration = self._configuration or RTCConfiguration(
            iceServers=ice_servers_for_aiortc(self.client.ice_servers))
        pc = RTCPeerConnection(configuration)
        self.pc = pc
        if old is not None:
            self.rebuilds += 1
            await old.close()
        if self._offer_timer is not None:
            self._offer_timer.cancel()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            await self._emit("state", pc.connectionState)
            if pc.connectionState == "failed" and not self.closed:
                self.restart()

        if self._setup is not None:
            result = self._setup(pc)
            if inspect.isawaitable(result):
                await result
        await self._emit("pc", pc)

    async def _negotiate(self) -> None:
        pc = await self._ensure()
        if pc.signalingState != "stable":
            return  # an offer is out already, or we are answering one
        await pc.setLocalDescription(await pc.createOffer())
        self._signal({"type": "offer", "offer": {"type": "offer", "sdp": pc.localDescription.sdp}})
        self._signal({"type": "candidate", "candidate": None})
        self._watch_offer(pc)

    def _watch_offer(self, pc: RTCPeerConnection) -> None:
        if self._offer_timer is not None:
            self._offer_timer.cancel()

        def check() -> None:
            if not self.closed and pc is self.pc and pc.signalingState == "have-local-offer":
                self.restart()  # the offer (or its answer) was lost: start over

        self._offer_timer = asyncio.get_running_loop().call_later(self.offer_timeout, check)

    def _signal(self, frame: Frame) -> None:
        if self.closed:
            return
        future = self.client.send_nowait({**frame, "to": self.remote})

        def done(f: asyncio.Future[Ack]) -> None:
            if not f.cancelled() and f.exception() is not None and not self.closed:
                asyncio.ensure_future(self._emit("error", f.exception()))

        future.add_done_callback(done)

    async def _process(self, frame: Frame) -> None:
        from aiortc import RTCSessionDescription

        kind: str = frame["type"]
        if kind in ("offer", "answer"):
            desc_init: dict[str, Any] = frame.get(kind) or {}
            description = RTCSessionDescription(sdp=desc_init.get("sdp", ""), type=desc_init.get("type", kind))
            pc = await self._ensure()
            if description.type == "answer":
                if pc.signalingState != "have-local-offer":
                    return  # the answer to an offer of a connection we have replaced
                await pc.setRemoteDescription(description)
                if self._offer_timer is not None:
                    self._offer_timer.cancel()
            else:
                collision = pc.signalingState != "stable"
                self._ignore_offer = not self.polite and collision
                if self._ignore_offer:
                    return
                remote = pc.remoteDescription
                restart = remote is not None and _ufrag(remote.sdp) != _ufrag(description.sdp)
                if collision or restart:
                    # aiortc can neither roll back nor restart ICE: start over, then answer
                    await self._build()
                    pc = await self._ensure()
                await pc.setRemoteDescription(description)
                await pc.setLocalDescription(await pc.createAnswer())
                self._signal({"type": "answer", "answer": {"type": "answer", "sdp": pc.localDescription.sdp}})
                self._signal({"type": "candidate", "candidate": None})
            self.negotiations += 1
            await self._emit("negotiated", {"negotiations": self.negotiations, "description": description.type})
        elif kind == "candidate":
            pc = await self._ensure()
            init = frame.get("candidate")
            remote = pc.remoteDescription
            if isinstance(init, dict) and init.get("usernameFragment") and remote is not None \
                    and init["usernameFragment"] != _ufrag(remote.sdp):
                return  # a candidate of an earlier session
            try:
                await pc.addIceCandidate(candidate_from_json(init))
            except Exception:
                if not self._ignore_offer:
                    raise
        elif kind == "bye":
            await self._emit("bye", frame)
            self._closing = asyncio.ensure_future(self.close(bye=False))  # it ends this worker
