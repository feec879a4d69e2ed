"""A peer's inbox: its recent deliveries, numbered by `seq`, kept for resume.

Sequence numbers have the shape of Redis Stream ids, `<milliseconds>-<counter>`, so
the Redis bus can use stream ids as they are and both buses hand clients the same
kind of opaque, increasing string. Compare them with `parse_seq`, never as strings.
"""

from __future__ import annotations

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
    return int(ms), int(n)


def format_seq(seq: Seq) -> str:
    return f"{seq[0]}-{seq[1]}"


@dataclass(slots=True)
class Entry:
    seq: Seq
    at: float  # when it was appended (seconds, the directory's clock)
    body: bytes


@dataclass
class Inbox:
    """Bounded by count (`limit`) and age (`max_age` seconds); `trimmed` marks the gap.

    A resume from `seq` S can be served exactly when nothing after S was trimmed:
    `trimmed <= S <= last`.
    """

    limit: int
    max_age: float
    entries: deque[Entry] = field(default_factory=deque)
    last: Seq = ZERO  # highest seq ever appended
    trimmed: Seq = ZERO  # highest seq dropped by a bound

    def next_seq(self, now: float) -> Seq:
        ms = int(now * 1000)
        return (ms, 0) if ms > self.last[0] else (self.last[0], self.last[1] + 1)

    def append(self, body: bytes, now: float) -> tuple[Seq, int]:
        """Store a delivery; return its seq and how many older entries it pushed out."""
        seq = self.next_seq(now)
        self.last = seq
        self.entries.append(Entry(seq, now, body))
        dropped = self.trim(now)
        return seq, dropped

    def trim(self, now: float) -> int:
        dropped = 0
        while self.entries and (len(self.entries) > self.limit or now - self.entries[0].at > self.max_age):
            self.trimmed = self.entries.popleft().seq
            dropped += 1
        return dropped

    def covers(self, after: Seq) -> bool:
        return self.trimmed <= after <= self.last

    def after(self, after: Seq) -> list[Entry]:
        return [e for e in self.entries if e.seq > after]
