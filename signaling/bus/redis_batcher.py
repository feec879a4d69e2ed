"""Auto-pipelining: the commands of the bus's hot path share one connection, in batches.

Whatever the event loop has gathered by the time the previous batch has been answered
is written in one go and its replies are read in order. Under load that pipelines
hundreds of scripts per round trip (one syscall each way instead of hundreds, and no
connection pool to run dry); alone, a command costs one round trip as before. Order
is kept: commands reach Redis in the order `call` was called.

Scripts are loaded on every new connection, so EVALSHA works after a Redis restart;
a NOSCRIPT reply (someone flushed the scripts) loads them again and retries once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any, Callable

from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Batcher:
    def __init__(self, connect: Callable[[], Connection], scripts: dict[str, str], *, timeout: float = 5.0) -> None:
        self._connect = connect
        self._scripts = scripts  # sha -> script text, loaded on every new connection
        self._timeout = timeout
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []  # commands not yet sent
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bus-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail(self._queue, RedisConnectionError("the bus is closing"))
        self._queue = []
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or the error (RedisError)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            conn = await self._connection()
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(conn.pack_commands([args for args, _ in batch]), check_health=False)
                retry = []
                for args, future in batch:
                    try:
                        reply = await conn.read_response(timeout=math.inf, disconnect_on_error=True)
                    except NoScriptError:
                        retry.append((args, future))
                    except RedisError as exc:
                        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
                            raise
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(reply)
            if retry:  # the scripts were flushed: load them again, then once more
                await self._load_scripts(conn)
                self._queue[:0] = retry
                self._wake.set()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await self._drop()
            self._fail(batch, exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc) or "timeout"))

    async def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._connect()
            await conn.connect()
            await self._load_scripts(conn)
            self._conn = conn
        return self._conn

    async def _load_scripts(self, conn: Connection) -> None:
        for text in self._scripts.values():
            await conn.send_command("SCRIPT", "LOAD", text)
            await conn.read_response()

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        self._conn = None

    @staticmethod
    def _fail(batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
