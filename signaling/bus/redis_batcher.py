"""Auto-pipelining: the commands of the bus's hot path share one connection.

Each command is packed (RESP) as `call` is called and written with the others of the
same event-loop turn in one `write`; replies are parsed by hiredis as they arrive and
handed to the waiting futures in order, so any number of commands are in flight at
once (one syscall each way per batch, no connection pool to run dry, no task per
command). Order is kept: commands reach Redis in the order `call` was called.

Scripts are loaded on every new connection, so EVALSHA works after a Redis restart;
on a NOSCRIPT reply (someone flushed the scripts) the batcher loads them again and
sends that command once more, so callers never see it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from .redis_wire import auth_command, open_connection, options, pack, retrieved

__all__ = ["Batcher", "CommandNotSent", "pack"]


class CommandNotSent(RedisConnectionError):
    """The command never reached Redis (no connection): it certainly did not run. Any
    other connection error leaves a command's outcome unknown: it may have run."""


class _Protocol(asyncio.Protocol):
    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()  # in the order sent
        self.commands: collections.deque[bytes] = collections.deque()  # what each of those was
        self.transport: asyncio.Transport | None = None
        self.replies = 0  # replies received (the watchdog looks for silence)
        self.watch: asyncio.TimerHandle | None = None
        self.silent_checks = 0  # watchdog checks in a row that found commands in flight and no reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.replies += 1
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future, command = self.waiting.popleft(), self.commands.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                if text.startswith("NOSCRIPT"):
                    self.batcher._noscript(future, command, text)  # noqa: SLF001
                else:
                    future.set_exception(ResponseError(text))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.batcher._lost(self, RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))  # noqa: SLF001


class Batcher:
    def __init__(self, url: str, scripts: dict[str, str], *, timeout: float = 5.0) -> None:
        self._options = options(url)
        self._scripts = scripts  # sha -> script text, loaded on every new connection
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._out: list[bytes] = []  # packed, not yet written (this loop turn)
        self._waits: list[asyncio.Future[Any]] = []  # their futures, in the same order
        self._flush_scheduled = False
        self._retried: set[asyncio.Future[Any]] = set()  # commands sent again after a NOSCRIPT
        self._loop: asyncio.AbstractEventLoop | None = None  # (asyncio.get_running_loop() is a getpid syscall)

    def start(self) -> None:
        """Nothing to start: the connection is made on first use."""

    async def close(self) -> None:
        self._loop = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._fail(self._waits, CommandNotSent("the bus is closing"))
        self._out, self._waits = [], []

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the error (a RedisError)."""
        return self.call_packed(pack(args))

    def call_packed(self, command: bytes) -> asyncio.Future[Any]:
        """`call` with the command already in RESP (a hot path that packs its own)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
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
            if future.done():
                return
            if done.exception() is not None:
                future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                future.set_result(done.result())
        again.add_done_callback(settle)

    # ------------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # written once connected
        out, waits, self._out, self._waits = self._out, self._waits, [], []
        protocol.waiting.extend(waits)
        protocol.commands.extend(out)
        protocol.transport.write(b"".join(out))
        if protocol.watch is None:
            self._arm(protocol)

    # A connection with commands in flight that stays silent for `timeout` is dead. One
    # watchdog per connection checks every half `timeout` while anything is in flight (a
    # timer per batch would cost a timer-heap entry and a callback per message under light
    # load): three checks in a row that find commands waiting and no reply since the one
    # before (silence for at least `timeout`, at most 1.5 x) abort the connection, which
    # fails everything in flight.
    def _arm(self, protocol: _Protocol) -> None:
        loop = self._loop or asyncio.get_running_loop()
        protocol.watch = loop.call_later(self._timeout / 2, self._check, protocol, protocol.replies)

    def _check(self, protocol: _Protocol, replies: int) -> None:
        protocol.watch = None
        if protocol.transport is None or protocol.transport.is_closing() or not protocol.waiting:
            protocol.silent_checks = 0
            return  # disarmed until the next write
        protocol.silent_checks = protocol.silent_checks + 1 if protocol.replies == replies else 0
        if protocol.silent_checks >= 3:
            protocol.transport.abort()  # connection_lost fails everything in flight
            return
        self._arm(protocol)

    async def _connect(self) -> None:
        o = self._options
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                protocol = await open_connection(o, lambda: _Protocol(self))
                self._protocol = protocol
                head: list[asyncio.Future[Any]] = []
                auth = auth_command(o)
                if auth:
                    head.append(self._send_now(protocol, auth))
                if o.get("db"):
                    head.append(self._send_now(protocol, ("SELECT", o["db"])))
                for text in self._scripts.values():
                    head.append(self._send_now(protocol, ("SCRIPT", "LOAD", text)))
                await asyncio.gather(*head)
        except (OSError, asyncio.TimeoutError, ResponseError, RedisConnectionError) as exc:
            self._protocol = None
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()  # half set up (AUTH refused, LOADING, a timeout): never reused
            self._fail(self._waits, CommandNotSent(f"cannot connect to Redis: {exc!r}"))
            self._out, self._waits = [], []
            return  # the callers got the error; the next call tries again
        finally:
            self._connecting = None
        if self._out:
            self._flush()

    def _send_now(self, protocol: _Protocol, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        command = pack(args)
        protocol.waiting.append(future)
        protocol.commands.append(command)
        assert protocol.transport is not None
        protocol.transport.write(command)
        return future

    def _lost(self, protocol: _Protocol, exc: Exception) -> None:
        if protocol.watch is not None:
            protocol.watch.cancel()
            protocol.watch = None
        if self._protocol is protocol:
            self._protocol = None
        self._fail(list(protocol.waiting), exc)
        protocol.waiting.clear()
        protocol.commands.clear()

    @staticmethod
    def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(exc)
