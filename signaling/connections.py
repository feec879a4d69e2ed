"""The TCP connections of one node, from accept to close: counted, bounded, on deadlines.

aiohttp waits for a request head as long as a client takes to send it (only its
keep-alive timer, an hour by default, ends the wait) and counts nothing before a
request arrives, so sockets that sent half a request line stayed open for that hour
and `--max-connections`, which counted WebSockets, never saw them. `Connections` sits
between the listening socket and aiohttp's own protocol objects
(`loop.create_server(connections.protocol_factory(runner.server), ...)`):

- Every accepted connection counts until it closes, whatever it is doing: in its TLS
  handshake, sending its request head, idle between keep-alive requests, a WebSocket.
- A connection accepted while `--max-connections` + `--connection-headroom` are open
  is closed at once, unread and unanswered: the cheapest refusal there is. Below that
  the headroom still serves health probes and /metrics, and answers an upgrade with the
  documented 503 while more than `--max-connections` are open (`over_limit`).
- A connection whose first request line and headers have not all arrived
  `--header-timeout` seconds after its accept is closed, however steadily it trickles
  bytes: the deadline is on the whole head, not on each read. (A TLS handshake spends
  from the same deadline; the server passes it to asyncio as the handshake timeout.)
  Every later request on a kept-alive connection is held to aiohttp's
  `keepalive_timeout`, which runs from the previous response until the next head has
  arrived whole, so an idle connection and a trickled second head end the same way.

Once a WebSocket handshake's head is in, nothing waits on the client: the 101 is written
as soon as the request is checked, the bus bounds the attach that precedes `welcome`, and
from `welcome` on the heartbeat drops a WebSocket that stops answering pings
(docs/PROTOCOL.md section 4). No deadline here asks a client to send a frame: the
protocol lets one connect and only listen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web


class Connections:
    """The open connections of a node, their limits and their header deadline."""

    def __init__(self, limit: int, headroom: int, header_timeout: float,
                 closed: Callable[[str], None] | None = None) -> None:
        self.limit = limit  # --max-connections: more open than this, an upgrade is refused (503)
        self.capacity = limit + headroom  # this many open, a new connection is closed at once
        self.header_timeout = header_timeout
        self.open = 0  # accepted and not yet closed, in any state
        self._closed = closed or (lambda reason: None)  # told "overflow" / "header-timeout" per connection cut here

    @property
    def over_limit(self) -> bool:
        """More than `limit` connections are open, counting the one that asks: refuse its upgrade."""
        return self.open > self.limit

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """What to listen with: aiohttp's protocols from `server`, each counted and on its deadline."""
        loop = asyncio.get_running_loop()

        def accept() -> asyncio.BaseProtocol:
            if self.open >= self.capacity:
                self._closed("overflow")
                return _Refused()
            self.open += 1
            connection = _Connection(self, server())
            connection.deadline = loop.call_later(self.header_timeout, connection.overdue)
            return connection

        return accept


class _Connection(asyncio.Protocol):
    """One accepted connection, counted until it closes, in front of aiohttp's protocol for it.

    Only the start and the end pass through here. The transport calls aiohttp's own bound
    methods for the rest (the slots below hold them), so the bytes of a connection's life
    cost no call of ours; uvloop reads `data_received` once, when it makes the transport,
    which is why they are set before that."""

    __slots__ = ("_connections", "handler", "deadline", "_transport", "_counted",
                 "data_received", "eof_received", "pause_writing", "resume_writing")

    def __init__(self, connections: Connections, handler: web.RequestHandler) -> None:
        self._connections = connections
        self.handler = handler
        self.deadline: asyncio.TimerHandle | None = None  # `header_timeout` after the accept
        self._transport: asyncio.BaseTransport | None = None  # once made (after TLS)
        self._counted = True  # in `connections.open`
        self.data_received = handler.data_received  # type: ignore[method-assign]  # the handler's: no call of ours
        self.eof_received = handler.eof_received  # type: ignore[method-assign]  # the handler's: no call of ours
        self.pause_writing = handler.pause_writing  # type: ignore[method-assign]  # the handler's: no call of ours
        self.resume_writing = handler.resume_writing  # type: ignore[method-assign]  # the handler's: no call of ours

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # its TLS handshake took the whole deadline: too late
            transport.abort()  # type: ignore[attr-defined]  # a TCP server's transports have abort()
            return
        self._transport = transport
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self._counted:
            self._counted = False
            self._connections.open -= 1
        if self._transport is not None:
            self._transport = None
            self.handler.connection_lost(exc)

    def overdue(self) -> None:
        """`header_timeout` after the accept: close the connection unless a request head is in."""
        self.deadline = None
        if self._transport is None:  # still in its TLS handshake (asyncio ends that one itself)
            self._counted = False
            self._connections.open -= 1
        # aiohttp counts a request the moment its head is parsed (in data_received, which
        # runs before a timer that falls due in the same turn of the loop)
        elif self.handler._request_count == 0:  # noqa: SLF001 - aiohttp has no public count
            self.handler.force_close()  # as aiohttp closes an idle keep-alive connection
        else:
            return
        self._connections._closed("header-timeout")  # noqa: SLF001 - its owner, in this module


class _Refused(asyncio.Protocol):
    """A connection beyond the node's capacity: closed as soon as it is made, nothing read."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]  # a TCP server's transports have abort()
