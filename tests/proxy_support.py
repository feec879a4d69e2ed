"""A TCP proxy between a client and a node that a test can cut, as a network would.

`cut()` aborts every proxied connection at once, on both sides, without a close frame
(the node sees a connection vanish and starts the peer's grace); while `blocked`, new
connections are accepted and dropped at once, so the client's reconnects fail until
`unblock()`. `stall()` black-holes the link as a dead route does: open connections stay
open but nothing crosses in either direction, and new connections are accepted but
never reach the target, until `heal()` lets everything that was held through in order.
`stall("down")` holds only what the target sends back (a command arrives and runs, its
reply does not come back); `stall("up")` only what the client sends.
"""

from __future__ import annotations

import asyncio
import contextlib

from support import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.blocked = False
        self._up, self._down = asyncio.Event(), asyncio.Event()  # clear while that direction is stalled
        self._up.set()
        self._down.set()
        self.accepted = 0  # connections proxied so far
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        await self._up.wait()  # stalled: the connection is accepted but goes nowhere yet
        if writer.transport.is_closing():
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._transports |= {writer.transport, up_writer.transport}
        for src, dst, gate in ((reader, up_writer, self._up), (up_reader, writer, self._down)):
            task = asyncio.create_task(self._pipe(src, dst, gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                await gate.wait()  # stalled: held, neither delivered nor dropped
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def cut(self) -> None:
        """Every open connection vanishes: no FIN from the node, no close frame."""
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def stall(self, direction: str = "both") -> None:
        """Black-hole the link ("up": client to target, "down": back, or "both") until `heal()`."""
        assert direction in ("up", "down", "both"), direction
        if direction in ("up", "both"):
            self._up.clear()
        if direction in ("down", "both"):
            self._down.clear()

    def heal(self) -> None:
        self._up.set()
        self._down.set()

    @property
    def stalled(self) -> bool:
        return not (self._up.is_set() and self._down.is_set())

    def block(self) -> None:
        self.blocked = True

    def unblock(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        self.heal()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
