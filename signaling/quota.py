"""A peer's quota: message and byte rates and abuse strikes, kept per peer id, not per
connection, so reconnecting buys nothing. Pure: time is passed in (`now`, seconds).

Every connection of a peer on one node shares one `Quota` (the node's `Quotas` table,
bounded); a connection that ends leaves a `Snapshot` in the bus, and the peer's next
connection, on any node, starts from it. A takeover of a live connection on another
node starts from the last snapshot and is corrected when the replaced connection's
node reports what it had left (`Quota.restrict`), minus what the new one spent since.
"""

from __future__ import annotations

import builtins
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    rate: float = 50.0  # messages a second, sustained
    burst: int = 100  # messages at once
    abuse_strikes: int = 200  # rejected frames within abuse_window that close the connection (1008)
    abuse_window: float = 10.0
    byte_rate: float = 262_144.0  # bytes of frames a second, sustained
    byte_burst: int = 1_048_576  # bytes at once

    @property
    def memory(self) -> float:
        """Seconds after which an unused quota is as good as new (a snapshot older than this
        says nothing)."""
        return max(self.burst / self.rate, self.byte_burst / self.byte_rate, self.abuse_window)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A quota as it stood: what was left of each budget, and the strikes in the window."""

    messages: float
    bytes: float
    strikes: int

    def pack(self) -> str:
        return f"{self.messages:.3f} {self.bytes:.0f} {self.strikes}"

    @classmethod
    def unpack(cls, text: str | builtins.bytes | None) -> Snapshot | None:  # (`bytes` here is the field)
        try:
            m, b, s = (text.decode() if isinstance(text, bytes) else text or "").split()
            return cls(float(m), float(b), int(s))
        except ValueError:
            return None


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up. Tokens may go negative (a debt
    learnt after the fact, see Quota.restrict): nothing passes until it is paid."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def level(self, now: float) -> float:
        tokens = self.tokens + (now - self.stamp) * self.rate
        return tokens if tokens < self.burst else self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        tokens = self.level(now)
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def give_back(self, cost: float) -> None:
        self.tokens += cost

    def lower(self, tokens: float, now: float) -> None:
        """At most `tokens` left now."""
        self.tokens, self.stamp = min(self.level(now), tokens), now


class StrikeMeter:
    """Counts rejected frames; more than `limit` within `window` seconds is abuse."""

    __slots__ = ("limit", "window", "times")

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: deque[float] | None = None  # made at the first strike: most peers never get one

    def strike(self, now: float) -> bool:
        if self.times is None:
            self.times = deque(maxlen=self.limit + 1)
        self.times.append(now)
        self._forget(now)
        return len(self.times) > self.limit

    def count(self, now: float) -> int:
        if not self.times:
            return 0
        self._forget(now)
        return len(self.times)

    def at_least(self, n: int, now: float) -> None:
        """Carry `n` strikes from a snapshot; they count as made now (the stricter reading)."""
        have = self.count(now)
        if n > have:
            if self.times is None:
                self.times = deque(maxlen=self.limit + 1)
            self.times.extend([now] * min(n - have, self.limit + 1))

    def _forget(self, now: float) -> None:
        times = self.times
        assert times is not None
        while times and now - times[0] > self.window:
            times.popleft()


class Quota:
    __slots__ = ("messages", "bytes", "strikes", "spent_messages", "spent_bytes", "users")  # one per peer on a node

    def __init__(self, limits: Limits, now: float) -> None:
        self.messages = TokenBucket(limits.rate, limits.burst, now)
        self.bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self.strikes = StrikeMeter(limits.abuse_strikes, limits.abuse_window)
        self.spent_messages = 0.0  # ever taken: a correction subtracts what was spent since a point
        self.spent_bytes = 0.0
        self.users = 0  # connections using it on this node (the table keeps it while any does)

    def take(self, size: int, now: float) -> bool:
        """One frame of `size` bytes: True if both budgets allow it (then both are charged)."""
        if not self.messages.take(now):
            return False
        if not self.bytes.take(now, size):
            self.messages.give_back(1.0)
            return False
        self.spent_messages += 1.0
        self.spent_bytes += size
        return True

    def strike(self, now: float) -> bool:
        """A rejected frame; True when that makes it abuse."""
        return self.strikes.strike(now)

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(self.messages.level(now), self.bytes.level(now), self.strikes.count(now))

    def spent(self) -> tuple[float, float]:
        return self.spent_messages, self.spent_bytes

    def restrict(self, snapshot: Snapshot, age: float, now: float,
                 spent_since: tuple[float, float] = (0.0, 0.0)) -> None:
        """Never more than `snapshot` allows, taken `age` seconds ago and refilled since,
        minus what was spent here since then (`spent_since`, from `spent()` differences)."""
        age = max(0.0, age)
        m, b = self.messages, self.bytes
        m.lower(min(snapshot.messages + age * m.rate, m.burst) - spent_since[0], now)
        b.lower(min(snapshot.bytes + age * b.rate, b.burst) - spent_since[1], now)
        if age < self.strikes.window:
            self.strikes.at_least(snapshot.strikes, now)


class Quotas:
    """The node's quotas by peer id. An entry lives while a connection of its peer does,
    and after, until it is as good as new; at most `capacity` idle ones are kept (the
    oldest go first: a peer id whose entry went starts from its bus snapshot)."""

    def __init__(self, limits: Limits, capacity: int) -> None:
        self.limits, self.capacity = limits, capacity
        self._entries: dict[str, Quota] = {}
        self._idle: dict[str, float] = {}  # peer -> when its last connection ended (insertion-ordered)

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, peer: str, now: float) -> Quota:
        quota = self._entries.get(peer)
        if quota is None:
            quota = self._entries[peer] = Quota(self.limits, now)
        self._idle.pop(peer, None)
        quota.users += 1
        return quota

    def release(self, peer: str, now: float) -> None:
        quota = self._entries.get(peer)
        if quota is None:
            return
        quota.users -= 1
        if quota.users <= 0:
            self._idle[peer] = now
            while len(self._idle) > self.capacity:
                del self._entries[next(iter(self._idle))]
                del self._idle[next(iter(self._idle))]

    def prune(self, now: float) -> None:
        """Drop the idle entries that are as good as new."""
        horizon = now - self.limits.memory
        for peer, since in list(self._idle.items()):
            if since > horizon:
                break  # insertion order is release order
            del self._idle[peer]
            del self._entries[peer]
