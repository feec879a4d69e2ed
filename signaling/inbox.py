"""A peer's inbox: its recent deliveries, numbered by `seq`, kept for resume.

Sequence numbers have the shape of Redis Stream ids, `<milliseconds>-<counter>`, so
the Redis bus can use stream ids as they are and both buses hand clients the same
kind of opaque, increasing string. Compare them with `parse_seq`, never as strings.
"""

from __future__ import annotations

import builtins
from collections import deque
from dataclasses import dataclass, field

Seq = tuple[int, int]
ZERO: Seq = (0, 0)


def parse_seq(text: str | None) -> Seq | None:
    """`"1700000000000-3"` -> (1700000000000, 3); None for anything else."""
    if not text or len(text) > 41:
        return None
    ms, dash, n = text.partition("-")
    if not dash or not ms.isdigit() or not n.isdigit() or not ms.isascii() or not n.isascii():
        return None
    seq = int(ms), int(n)
    if seq[0] >= 1 << 64 or seq[1] >= 1 << 64:
        return None  # beyond what a Redis stream id can hold
    return seq


RESUME_FUTURE_MS = 86_400_000  # a resume may be this far ahead of the node's clock (Redis's may run ahead)
LUA_EXACT = 1 << 53  # the scripts compare seqs as Lua numbers (doubles): exact below this


def parse_resume(text: str, now: float) -> Seq | None:
    """A client's `resume`: a seq in the shape and range the server hands out, or None.

    Stricter than `parse_seq`: written as the server writes it (no leading zeros), each
    part below 2^53 (what the Redis scripts compare exactly), and not from the future
    (beyond a day ahead of `now`, seconds: clocks differ, a day does not). Anything else
    never reaches Redis, where it could make a script fail."""
    seq = parse_seq(text)
    if seq is None or format_seq(seq) != text:
        return None
    if seq[0] >= LUA_EXACT or seq[1] >= LUA_EXACT or seq[0] > now * 1000 + RESUME_FUTURE_MS:
        return None
    return seq


def seq_key(text: str) -> Seq:
    """`parse_seq` for a seq the bus made (trusted, well formed): no checks."""
    ms, _, n = text.partition("-")
    return int(ms), int(n)


def format_seq(seq: Seq) -> str:
    return f"{seq[0]}-{seq[1]}"


def next_seq(last: Seq, now: float) -> Seq:
    """The seq after `last` at time `now` (seconds), as Redis numbers stream entries:
    the current millisecond, or `last` plus one when the clock has not moved past it."""
    ms = int(now * 1000)
    return (ms, 0) if ms > last[0] else (last[0], last[1] + 1)


@dataclass(slots=True)
class Entry:
    seq: Seq
    body: bytes


# Entries a connected client has read stay this long (seconds) all the same: its app may
# not have processed them when it dies (it resumes from what it processed), and on the
# Redis bus a send retried after a lost reply looks for its first try among them.
TRIM_HORIZON = 10.0

ENTRY_OVERHEAD = 64  # bytes an inbox entry costs beyond its body (the seq, the send key, the stream's own)


def entry_size(body: bytes) -> int:
    return len(body) + ENTRY_OVERHEAD


@dataclass
class Inbox:
    """The last `limit` deliveries, at most `max_bytes` of them (`entry_size`; past a bound
    the oldest go down to 15/16 of it, so a full inbox is trimmed in batches); `trimmed`
    marks the gap the bounds have made, and what `trim_through` let go of.

    There is no age bound: the whole inbox goes when its peer's grace runs out, so a
    peer that resumes within its grace finds every message acked while it was away or
    still in flight to its dead connection (the Redis bus has the same shape: a capped
    stream whose key expires with the grace). A resume from `seq` S can be served
    exactly when nothing after S was trimmed: `trimmed <= S <= last`.
    """

    limit: int
    max_bytes: int = 1 << 62
    entries: deque[Entry] = field(default_factory=deque)
    last: Seq = ZERO  # highest seq ever appended
    trimmed: Seq = ZERO  # highest seq dropped by a bound
    bytes: int = 0  # entry_size of the entries held

    def append(self, body: builtins.bytes, now: float) -> tuple[Seq, list[Entry]]:  # (`bytes` here is the field)
        """Store a delivery; return its seq and the oldest entries the bounds pushed out
        (never the new one)."""
        seq = next_seq(self.last, now)
        self.last = seq
        self.entries.append(Entry(seq, body))
        self.bytes += entry_size(body)
        dropped = []
        if len(self.entries) > self.limit or self.bytes > self.max_bytes:
            # a sixteenth of each bound at a time, as the Redis bus does (its SEND trims in batches)
            keep, keep_bytes = self.limit - self.limit // 16, self.max_bytes - self.max_bytes // 16
            while len(self.entries) > 1 and (len(self.entries) > keep or self.bytes > keep_bytes):
                dropped.append(self._drop())
        return seq, dropped

    def trim_through(self, seq: Seq, now: float) -> bool:
        """The connected client's WebSocket has read every entry up to `seq`: let those go
        that are older than TRIM_HORIZON (a resume from before them then has a gap, as
        after a bound). False if some are too young yet: ask again later."""
        cutoff = (now - TRIM_HORIZON) * 1000
        while self.entries and self.entries[0].seq <= seq:
            if self.entries[0].seq[0] > cutoff:
                return False
            self._drop()
        return True

    def _drop(self) -> Entry:
        entry = self.entries.popleft()
        self.bytes -= entry_size(entry.body)
        self.trimmed = entry.seq
        return entry

    def covers(self, after: Seq) -> bool:
        return self.trimmed <= after <= self.last

    def after(self, after: Seq) -> list[Entry]:
        return [e for e in self.entries if e.seq > after]
