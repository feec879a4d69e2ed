"""Auto-pipelining: every command to one Redis server shares one connection.

Each command is packed (RESP) as `call` is called and written with the others of the
same event-loop turn in one `write`; replies are parsed by hiredis as they arrive and
handed to the waiting futures in order, so any number of commands are in flight at
once (one syscall each way per batch, no connection pool to run dry, no task per
command). Order is kept: commands reach Redis in the order `call` was called.

A connection is made on first use and again after it is lost, to the address
`locate()` gives then (a fixed one, or the primary Sentinel names now). It is used only
once its handshake (AUTH, SELECT, the scripts loaded, ROLE when it must be a primary)
has succeeded; a connection that fails any step is closed there and then, whatever
the failure. Scripts are loaded on every new connection, so EVALSHA works after a Redis
restart; on a NOSCRIPT reply the pipeline loads them again and sends that command once
more, so callers never see it. A READONLY reply means the server is no longer the
primary (a failover demoted it): the connection is dropped so the next command goes to
the primary found anew.

With `replicas` > 0, every batch is followed by `WAIT n timeout` and its replies are
handed on only once n replicas have what it wrote: a failover to a replica then cannot
lose what a caller was told was done. n is `replicas`, or fewer while fewer are
connected (ROLE says): a primary without replicas has none a failover could promote, and
a replica that connects later gets everything in its first sync. A batch not
replicated in time fails as outcome unknown (it ran on the primary; the new primary may
not have it).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from .redis_url import Endpoint, RedisTarget
from .redis_wire import copy_outcome, open_connection, pack, retrieved

__all__ = ["CommandNotSent", "Pipeline", "pack"]


class CommandNotSent(RedisConnectionError):
    """The command never reached Redis (no connection): it certainly did not run. Any
    other connection error leaves a command's outcome unknown: it may have run."""


class _Protocol(asyncio.Protocol):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()  # in the order sent
        self.commands: collections.deque[bytes] = collections.deque()  # what each of those was
        self.transport: asyncio.Transport | None = None
        self.replies = 0  # chunks received (the watchdog looks for silence)
        self.watch: asyncio.TimerHandle | None = None
        self.silent_checks = 0  # watchdog checks in a row that found commands in flight and no reply
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def send(self, commands: list[bytes], futures: list[asyncio.Future[Any]]) -> None:
        assert self.transport is not None
        self.waiting.extend(futures)
        self.commands.extend(commands)
        self.transport.write(b"".join(commands))

    def data_received(self, data: bytes) -> None:
        self.replies += 1
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(f"unreadable reply: {exc}")
                return
            if reply is False:
                return
            if not self.waiting:
                self.abort("a reply nobody asked for")
                return
            future, command = self.waiting.popleft(), self.commands.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                if text.startswith("NOSCRIPT"):
                    self.pipeline._noscript(future, command, text)  # noqa: SLF001 - a connection reports to its pipeline
                    continue
                redirect = self.pipeline.on_redirect
                if redirect is not None and text.startswith(("MOVED ", "ASK ")):
                    redirect(future, command, text)  # the command did not run: sent where Redis says
                    continue
                future.set_exception(ResponseError(text))
                if text.startswith("READONLY"):
                    self.abort("the server is a replica now (failover)")
                    return
            else:
                future.set_result(reply)

    def abort(self, why: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.end(RedisConnectionError(f"connection to Redis dropped: {why}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def end(self, exc: Exception) -> None:
        if self.ended:
            return
        self.ended = True
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        waiting = list(self.waiting)
        self.waiting.clear()
        self.commands.clear()
        self.pipeline._lost(self, waiting, exc)  # noqa: SLF001 - a connection reports to its pipeline


class Pipeline:
    """One Redis server (or whichever server `locate` names at each connect)."""

    def __init__(self, locate: Callable[[], Awaitable[Endpoint]], target: RedisTarget, scripts: dict[str, str], *,
                 timeout: float = 5.0, require_primary: bool = False,
                 on_lost: Callable[[Pipeline], None] | None = None,
                 on_connected: Callable[[Endpoint], None] | None = None, name: str = "redis",
                 replicas: int = 0, replica_timeout: float = 1.0,
                 on_redirect: Callable[[asyncio.Future[Any], bytes, str], None] | None = None) -> None:
        self.name = name
        self._locate = locate
        self._target = target
        self._scripts = scripts  # sha -> script text, loaded on every new connection
        self._timeout = timeout
        self._require_primary = require_primary  # Sentinel: a demoted primary is refused
        self._on_lost = on_lost  # the connection dropped, or could not be made
        self._on_connected = on_connected
        # Redis Cluster: a MOVED / ASK reply goes here with the command and the future that waits
        self.on_redirect = on_redirect
        self._replicas = replicas
        self._connected_replicas = replicas  # as the last ROLE reply said
        self._role_asked = False
        self._wait_ms = max(1, int(replica_timeout * 1000))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # packed, not yet written (this loop turn)
        self._waits: list[asyncio.Future[Any]] = []  # their futures, in the same order
        self._flush_scheduled = False
        self._retried: set[asyncio.Future[Any]] = set()  # commands sent again after a NOSCRIPT
        self._loop: asyncio.AbstractEventLoop | None = None  # (asyncio.get_running_loop() is a getpid syscall)
        self._closed = False
        self.endpoint: Endpoint | None = None  # where the current connection goes

    @staticmethod
    def fixed(endpoint: Endpoint, target: RedisTarget, scripts: dict[str, str] | None = None,
              **kwargs: Any) -> Pipeline:
        async def here() -> Endpoint:
            return endpoint
        return Pipeline(here, target, scripts or {}, name=endpoint.name, **kwargs)

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._protocol is not None:
            self._protocol.abort("the bus is closing")
        self._fail(self._waits, CommandNotSent("the bus is closing"))
        self._out, self._waits = [], []

    def restart(self, why: str) -> None:
        """Drop the connection (it goes to a server that is no longer the one to use); the
        next command connects again to where `locate` says."""
        if self._protocol is not None:
            self._protocol.abort(why)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the error (a RedisError)."""
        return self.call_packed(pack(args))

    def call_packed(self, command: bytes) -> asyncio.Future[Any]:
        """`call` with the command already in RESP (a hot path that packs its own)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(CommandNotSent("the bus is closing"))
            return future
        self._out.append(command)
        self._waits.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _noscript(self, future: asyncio.Future[Any], command: bytes, error: str) -> None:
        """Redis lost the scripts: load them again and send `command` once more (in
        order after the loads); a second NOSCRIPT is the caller's error."""
        if future in self._retried:
            future.set_exception(NoScriptError(error))
            return
        for text in self._scripts.values():
            self.call("SCRIPT", "LOAD", text).add_done_callback(retrieved)  # (a failure shows in the retry)
        again = self.call_packed(command)
        self._retried.add(again)

        def settle(done: asyncio.Future[Any]) -> None:
            self._retried.discard(done)
            copy_outcome(done, future)
        again.add_done_callback(settle)

    # ------------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        protocol = self._protocol
        if protocol is None:
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # written once connected
        out, waits, self._out, self._waits = self._out, self._waits, [], []
        if self._replicas:
            need = min(self._replicas, self._connected_replicas)
            if need:
                self._send_replicated(protocol, out, waits, need)
            else:
                protocol.send(out, waits)
            if need < self._replicas:
                self._ask_role(protocol)  # a replica may have come (back)
        else:
            protocol.send(out, waits)
        if protocol.watch is None:
            self._arm(protocol)

    def _ask_role(self, protocol: _Protocol) -> None:
        if self._role_asked:
            return
        self._role_asked = True
        future = (self._loop or asyncio.get_running_loop()).create_future()

        def learn(done: asyncio.Future[Any]) -> None:
            self._role_asked = False
            if done.exception() is None:
                self._learn_role(done.result())
        future.add_done_callback(learn)
        protocol.send([pack(("ROLE",))], [future])

    def _learn_role(self, role: Any) -> None:
        if role and role[0] == b"master":
            self._connected_replicas = len(role[2])

    def _send_replicated(self, protocol: _Protocol, out: list[bytes], waits: list[asyncio.Future[Any]],
                         need: int) -> None:
        loop = self._loop or asyncio.get_running_loop()
        replies = [loop.create_future() for _ in waits]
        gate = loop.create_future()
        protocol.send([*out, pack(("WAIT", need, self._wait_ms))], [*replies, gate])

        def release(done: asyncio.Future[Any]) -> None:
            exc = done.exception()
            if exc is None and int(done.result()) < need:
                exc = RedisConnectionError(f"not on {need} replica(s) in time: a failover could lose it")
                if not protocol.ended:
                    self._ask_role(protocol)  # one went away?
            for reply, wait in zip(replies, waits, strict=True):
                if wait.done():
                    continue
                if not reply.done():  # sent again after a NOSCRIPT: its own batch's WAIT gates it
                    reply.add_done_callback(functools.partial(copy_outcome, target=wait))
                elif (failure := reply.exception()) is not None:
                    wait.set_exception(failure)
                elif exc is not None:
                    wait.set_exception(exc)
                else:
                    wait.set_result(reply.result())
        gate.add_done_callback(release)

    # A connection with commands in flight that stays silent for `timeout` is dead. One
    # watchdog per connection checks every half `timeout` while anything is in flight (a
    # timer per batch would cost a timer-heap entry and a callback per message): three
    # checks in a row that find commands waiting and no reply since the one before abort
    # the connection, which fails everything in flight.
    def _arm(self, protocol: _Protocol) -> None:
        loop = self._loop or asyncio.get_running_loop()
        protocol.watch = loop.call_later(self._timeout / 2, self._check, protocol, protocol.replies)

    def _check(self, protocol: _Protocol, replies: int) -> None:
        protocol.watch = None
        if protocol.ended or not protocol.waiting:
            protocol.silent_checks = 0
            return  # disarmed until the next write
        protocol.silent_checks = protocol.silent_checks + 1 if protocol.replies == replies else 0
        if protocol.silent_checks >= 3:
            protocol.abort(f"no reply in {self._timeout:.1f}s")
            return
        self._arm(protocol)

    async def _connect(self) -> None:
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                endpoint = await self._locate()
                protocol = await open_connection(endpoint, self._target.tls, lambda: _Protocol(self))
                await self._handshake(protocol)
        except BaseException as exc:  # whatever the failure (cancel included), the socket is released
            if protocol is not None:
                protocol.abort(f"handshake failed: {exc!r}")
            self._connecting = None
            self._fail(self._waits, CommandNotSent(f"cannot connect to Redis ({self.name}): {exc!r}"))
            self._out, self._waits = [], []
            if not isinstance(exc, Exception):
                raise
            if self._on_lost is not None and not self._closed:
                self._on_lost(self)
            return  # the callers got the error; the next call tries again
        self._connecting = None
        if protocol.ended:  # lost between the handshake's last reply and here
            self._fail(self._waits, CommandNotSent("connection to Redis lost during the handshake"))
            self._out, self._waits = [], []
            return
        self.endpoint = endpoint
        self._protocol = protocol
        if self._on_connected is not None:
            self._on_connected(endpoint)
        if self._out:
            self._flush()

    async def _handshake(self, protocol: _Protocol) -> None:
        commands: list[tuple[Any, ...]] = []
        auth = self._target.auth()
        if auth:
            commands.append(auth)
        if self._target.db:
            commands.append(("SELECT", self._target.db))
        if self._require_primary or self._replicas:
            commands.append(("ROLE",))
        commands += [("SCRIPT", "LOAD", text) for text in self._scripts.values()]
        if not commands:
            commands.append(("PING",))
        loop = self._loop or asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.send([pack(c) for c in commands], futures)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for command, result in zip(commands, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if command[0] == "ROLE":
                if self._require_primary and result[0] != b"master":
                    raise ResponseError(f"{protocol_name(protocol)} is a {result[0].decode()}, not the primary")
                self._learn_role(result)

    def _lost(self, protocol: _Protocol, waiting: list[asyncio.Future[Any]], exc: Exception) -> None:
        was_current = self._protocol is protocol
        if was_current:
            self._protocol = None
        self._fail(waiting, exc)
        if was_current and self._on_lost is not None and not self._closed:
            self._on_lost(self)

    @staticmethod
    def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(exc)


def protocol_name(protocol: _Protocol) -> str:
    transport = protocol.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "the server"
