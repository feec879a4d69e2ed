"""A TCP proxy a test can break as a network would: between a client and a node, or
between a node and Redis.

- `cut()` aborts every proxied connection at once, on both sides, without a close frame
  (the node sees a connection vanish and starts the peer's grace).
- While `blocked`, new connections are accepted and dropped at once, so reconnects fail
  until `unblock()`.
- `stall()` black-holes the link as a dead route does under TCP, until `heal()`: open
  connections stay open and nothing crosses; what a side sent meanwhile crosses after
  the heal only if that side's connection is still open then (its kernel would still be
  retransmitting it), and a connection opened meanwhile and given up before the heal
  never reaches the target (its SYN would never have arrived). `stall("down")` holds only
  what the target sends back (a command arrives and runs, its reply does not come back);
  `stall("up")` only what the client sends.
- `hold_replies()` / `drop_commands()`: the same for a Redis link's command connections
  alone (those that never sent SUBSCRIBE), while its pub/sub connection flows on: Redis
  ran a command and only its reply is lost.
- `delay`: every chunk is held that long in each direction, in order (a node far from
  its Redis).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from support import free_port


@dataclass(eq=False)
class Link:
    """One proxied connection."""

    client: asyncio.BaseTransport
    upstream: asyncio.BaseTransport
    replies: asyncio.Event = field(default_factory=asyncio.Event)  # clear: what the target sends is held
    pubsub: bool = False  # it subscribed: a Redis pub/sub connection, not a command connection


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.delay = delay
        self.blocked = False
        self._up, self._down = asyncio.Event(), asyncio.Event()  # clear while that direction is stalled
        self._up.set()
        self._down.set()
        self.accepted = 0  # connections proxied so far
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None
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
        held, reading = bytearray(), None
        try:  # black-holed: what the client sends waits for the heal, unless it gives up first
            while not self._up.is_set():
                reading = reading or asyncio.ensure_future(reader.read(65536))
                healed = asyncio.ensure_future(self._up.wait())
                await asyncio.wait({reading, healed}, return_when=asyncio.FIRST_COMPLETED)
                healed.cancel()
                if reading.done():
                    data, reading = reading.result(), None
                    if not data:
                        writer.transport.abort()
                        return
                    held += data
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (ConnectionError, OSError):
            if reading is not None:
                reading.cancel()
            writer.transport.abort()
            return
        self.accepted += 1
        link = Link(writer.transport, up_writer.transport)
        link.replies.set()
        self.links.append(link)
        self._spawn(self._pipe(reader, up_writer, link, (self._up,), held, reading))
        self._spawn(self._pipe(up_reader, writer, link, (self._down, link.replies)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: Link,
                    gates: tuple[asyncio.Event, ...], held: bytearray | None = None,
                    reading: asyncio.Future[bytes] | None = None) -> None:
        """src -> dst, chunk by chunk: each waits `delay`, then for every gate to be open;
        when src is gone, what was still held dies with it (as under a black hole)."""
        loop = asyncio.get_running_loop()
        queue: list[tuple[float, bytes]] = [(loop.time() + self.delay, bytes(held))] if held else []
        upstream = self._up in gates
        waiter: asyncio.Future[Any] | None = None
        try:
            while True:
                while queue and all(g.is_set() for g in gates) and queue[0][0] <= loop.time():
                    dst.write(queue.pop(0)[1])
                    await dst.drain()
                if reading is None:
                    reading = asyncio.ensure_future(src.read(65536))
                waiting: set[asyncio.Future[Any]] = {reading}
                if queue:  # wake for the next chunk's time, or for a gate to open
                    closed = [g for g in gates if not g.is_set()]
                    waiter = asyncio.ensure_future(closed[0].wait() if closed
                                                   else asyncio.sleep(queue[0][0] - loop.time()))
                    waiting.add(waiter)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if waiter is not None:
                    waiter.cancel()
                    waiter = None
                if reading.done():
                    data, reading = reading.result(), None
                    if not data:  # src is gone: what a mere delay holds still arrives, a black hole's does not
                        while queue and all(g.is_set() for g in gates):
                            await asyncio.sleep(max(0.0, queue[0][0] - loop.time()))
                            dst.write(queue.pop(0)[1])
                        break
                    if upstream and (b"\r\nSUBSCRIBE\r\n" in data.upper() or b"\r\nSSUBSCRIBE\r\n" in data.upper()):
                        link.pubsub = True
                    queue.append((loop.time() + self.delay, data))
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for future in (reading, waiter):
                if future is not None:
                    future.cancel()
            dst.transport.abort()
            if link in self.links:
                self.links.remove(link)

    def cut(self) -> None:
        """Every open connection vanishes: no FIN from the node, no close frame."""
        for link in list(self.links):
            link.client.abort()
            link.upstream.abort()
        self.links.clear()

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

    def hold_replies(self) -> None:
        """Commands still reach Redis and run; their replies are held. Pub/sub flows on."""
        for link in self.links:
            if not link.pubsub:
                link.replies.clear()

    def drop_commands(self) -> None:
        """The command connections vanish (held replies with them); pub/sub stays up."""
        for link in [x for x in self.links if not x.pubsub]:
            link.client.abort()
            link.upstream.abort()
            self.links.remove(link)

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
