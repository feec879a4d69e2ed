"""What a node acknowledged as in a recipient's inbox, kept until Redis has surely passed it on.

An ack means "in the inbox", but Redis holds an inbox in memory: a message acked as
delivered may still sit in Redis's output buffer to the recipient's node when Redis dies,
and an empty restart takes it along while the recipient stays connected, never told. So
each node keeps what it acked for `window` seconds of Redis being seen alive (a lease
renewal in the same data set), and hands it in again (the REPLAY script) when it finds
the data set was lost. Bounded in bytes: past the bound the oldest go, counted, and for
those the promise is Redis's own durability again (replicas with --redis-replicas).

Sans-I/O: the bus feeds it times and entries; it never touches Redis or a clock.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

ENTRY_OVERHEAD = 128  # bytes counted per entry beyond its body: the tuple, the ids, the deque slot


class Retained(NamedTuple):
    at: float  # monotonic, when Redis acknowledged it
    to: str  # the recipient peer id
    seq: bytes  # its id in the recipient's inbox
    body: bytes
    key: bytes  # the sending node's key for that send (the inbox entry's `k`)


class Retention:
    def __init__(self, window: float, max_bytes: int) -> None:
        self.window, self.max_bytes = window, max_bytes
        self._entries: deque[tuple[float, str, bytes, bytes, bytes]] = deque()  # Retained's fields: a plain
        # tuple per message is the cheapest record there is (this runs for every acked send)
        self.bytes = 0
        self.dropped = 0  # let go by the byte bound before Redis had been seen alive for `window`

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, at: float, to: str, seq: bytes, body: bytes, key: bytes) -> None:
        if self.window <= 0:
            return
        self._entries.append((at, to, seq, body, key))
        self.bytes += len(body) + ENTRY_OVERHEAD
        while self.bytes > self.max_bytes and self._entries:
            self._pop()
            self.dropped += 1

    def confirm(self, alive_at: float) -> None:
        """Redis was alive, with the same data set, at `alive_at` (monotonic): what it
        acknowledged `window` seconds or more before that has been passed on."""
        entries, horizon = self._entries, alive_at - self.window
        while entries and entries[0][0] <= horizon:
            self._pop()

    def take(self) -> list[Retained]:
        """Everything kept, oldest first (to hand in again after a loss); kept no longer."""
        out = [Retained(*e) for e in self._entries]
        self._entries.clear()
        self.bytes = 0
        return out

    def give_back(self, entries: list[Retained]) -> None:
        """Entries taken but not handed in (Redis went away again): first in line again."""
        self._entries.extendleft((e.at, e.to, e.seq, e.body, e.key) for e in reversed(entries))
        self.bytes += sum(len(e.body) + ENTRY_OVERHEAD for e in entries)

    def _pop(self) -> None:
        self.bytes -= len(self._entries.popleft()[3]) + ENTRY_OVERHEAD
