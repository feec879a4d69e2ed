"""The Redis bus: nodes reach each other's peers through Redis pub/sub, one channel per peer.

A delivery is one script in the recipient's hash slot: append to its inbox stream
(the seq is the stream id) and publish a msgpack envelope on its channel, in one round
trip. Only the node holding the recipient is subscribed to that channel, so a message
costs work on two nodes whatever the size of the cluster. Inboxes, ownership, rooms
and grace deadlines all live in Redis: a node can die at any moment and the others
take over its peers' grace (see `_sweep`).

A node serves (attaches, relays, acks, delivers) only while it holds a **lease**: an
entry in the nodes zset that Redis's clock says is current, renewed every third of
`node_ttl`. The node counts its lease from the moment it SENT the renewal, on its own
monotonic clock, minus a margin, so it always runs out here before it runs out in
Redis, where the other nodes' sweepers may then orphan its peers. A node that finds
its lease gone (it was paused, or cut off from Redis) closes every socket at once so
its clients resume elsewhere, and takes a new lease before serving again. Every
script that acts for a connection checks that connection's **fence** (its epoch, see
redis_scripts) so a write from a node that lost its lease, or from a connection that
was superseded, is refused. docs/CLUSTER.md has the whole model.

Redis is reached through a `RedisLink` (redis_link.py): one Redis, found directly or
through Sentinel, or Redis Cluster; every command is sent on call, in order per server.
When a pub/sub connection drops, it reconnects, subscribes every channel again and,
holding new messages back, this bus registers the node's live peers again and hands each
what reached its inbox meanwhile; then the held messages follow, so a live session misses
nothing and sees nothing out of order.

On Redis Cluster every key and channel of a peer shares the hash tag `{p:<id>}`, scripts
publish with SPUBLISH (sharded pub/sub, Redis 7), and the node-wide keys (grace
schedule, node sets) are in other slots, so what touches them is a command of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import envelope
from ..inbox import TRIM_HORIZON, seq_key
from ..outcome import Attached, Outcome, Result
from ..protocol import room_event
from ..quota import Snapshot
from . import redis_scripts as lua
from . import redis_wire
from .base import AttachRefused, Bus, BusUnavailable, LeaseLost, Mailbox
from .redis_link import RedisLink, open_link
from .redis_pipeline import CommandNotSent
from .redis_url import parse
from .retention import Retention

log = logging.getLogger("signaling.bus.redis")
T = TypeVar("T")  # what an attempt of _until_known returns
PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")
NODE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")

ATTACH_WINDOW = 15.0  # s: an ATTACH reaching Redis later after its handshake began is refused (a storm lags)
LEASE_MARGIN = 0.2  # of node_ttl: the lease runs out here this much before it does in Redis
RETRY_PAUSE = 0.05  # s: between tries of a send whose first reply was lost
AUDIT_BATCH = 500  # peer states the sweeper checks a sweep (see _audit)
REGISTER_BATCH = 500  # peers registered again per round trip after Redis lost them (see _register_again)
OFFSET_JITTER = 0.005  # s: how far the estimate of Redis's clock may wander before it is updated


@dataclass(eq=False, slots=True)
class _Local:
    """One connection of a peer on this node, as the bus tracks it."""

    mailbox: Mailbox
    peer: str
    epoch: int | None = None  # None until its attach script has answered
    pending: list[envelope.Envelope] = field(default_factory=list)  # arrived before the epoch was known
    last_seq: str = "0-0"  # last seq handed to the mailbox (for gap repair after a reconnect)
    rooms: frozenset[str] = frozenset()  # its rooms, to register again if Redis loses them (replaced on change)


# replies that say Redis (or the link) cannot serve anyone right now; every other error
# reply (a full Redis, a script refusing its data) fails the one request that caused it
_NODE_LEVEL = ("LOADING", "READONLY", "NOSCRIPT", "MASTERDOWN", "CLUSTERDOWN", "NOPERM", "NOAUTH", "WRONGPASS",
               "BUSY", "TRYAGAIN", "MOVED", "ASK", "Client sent AUTH", "Redis is loading")


def _request_error(exc: BaseException) -> bool:
    """True when `exc` is Redis refusing this one request (OOM, a script's error): the
    request fails, the node stays healthy."""
    return type(exc) in (ResponseError, OutOfMemoryError) and not str(exc).startswith(_NODE_LEVEL)


def _outcome_unknown(exc: BaseException) -> bool:
    """True when a command that failed with `exc` may still have run in Redis."""
    if isinstance(exc, CommandNotSent):
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError))


class RedisBus(Bus):
    def __init__(self, url: str, *, node_id: str, grace: float, inbox_limit: int, prefix: str = "signaling",
                 node_ttl: float = 3.0, metrics: Any = None, quota_memory: float = 10.0,
                 inbox_bytes: int = 1 << 40, replicas: int = 0, replay_window: float = 3.0,
                 replay_bytes: int = 64 << 20) -> None:
        if not PREFIX.fullmatch(prefix):
            raise ValueError("key prefix must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        if not NODE_ID.fullmatch(node_id):
            raise ValueError("node id must be 1-64 characters of A-Z a-z 0-9 . _ : @ - (it names Redis keys)")
        self.url, self.node_id, self.grace, self.inbox_limit = url, node_id, grace, inbox_limit
        self.prefix, self.node_ttl, self.metrics = prefix, node_ttl, metrics
        self.inbox_bytes = inbox_bytes
        self.replicas = replicas  # every write on this many replicas before it is acknowledged
        # what it acked, until surely passed on; with replicas confirming every write a lost
        # primary's data is on the one promoted, so there is nothing to hand in again
        self._retention = Retention(replay_window if not replicas else 0.0, replay_bytes)
        self._replay_due = False  # Redis lost the data set the retained messages were acked in
        self.quota_memory = quota_memory  # s: after it a quota snapshot says nothing (Limits.memory)
        self.target = target = parse(url)  # (a bad URL is refused here, at start-up)
        # Redis Cluster: a peer's keys share a slot, the node-wide keys (schedule, node sets) do not
        self.clustered = target.topology == "cluster"
        self._link: RedisLink | None = None
        self._local: dict[str, list[_Local]] = {}  # peer id -> its connections on this node
        self._channel_peer: dict[bytes, str] = {}  # channel name -> peer id, for subscribed channels
        self._healthy = False  # the last command connection use succeeded
        self._recovery = asyncio.Lock()  # one registration round at a time
        self._recovery_task: asyncio.Future[None] | None = None  # one the heartbeat started
        self._send_keys: dict[str, tuple[str, bytes]] = {}  # peer -> its state key, its SEND keys packed (bounded)
        self._sender_keys: dict[str, bytes] = {}  # peer -> its state key packed, as a sender (bounded)
        self._send_head = self._send_tail = b""
        self._send_ids = itertools.count(1)
        self._send_prefix = secrets.token_hex(6).encode() + b":"  # this process: with a counter, a key per send
        self._settle_until = 0.0  # monotonic; before it, Redis may still miss peers other nodes re-register
        self._lease_until = 0.0  # monotonic: this node may serve until then (0: it holds no lease)
        self._lease_timer: asyncio.TimerHandle | None = None
        self._offset_us = 0.0  # Redis's clock minus this node's monotonic clock, in us (from lease replies)
        self._offset_rtt = 0.0  # s: the round trip the estimate came from (0: none yet)
        self._last_started, self._last_began = 0.0, 0  # the latest handshake converted (see _handshake_time)
        self._era_ms = 0  # when Redis's data set began (Redis's clock), from lease replies
        self._era_lost = False  # it began by losing an earlier one that nodes were serving from
        self._tasks: list[asyncio.Task[None]] = []
        self._expired = 0
        self._detach_failed = False  # a detach could not reach Redis: reconcile at the next heartbeat
        self._recovering = False  # a recovery round is due (the last one failed part-way)
        self._audit_cursors: dict[str, int] = {}  # where the sweeper's walk over peer states is, per primary
        self._background: set[asyncio.Future[None]] = set()  # fire-and-forget notices (quota reports)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.nodes_key = f"{prefix}:nodes"  # zset: node id -> end of its lease (ms, Redis's clock)
        self.grace_key = f"{prefix}:grace"  # zset: peer id -> end of its grace (ms, Redis's clock)
        # pub/sub channels are global to a Redis server, its databases share them: a channel
        # names the database too, or deployments on db 0 and db 1 would hear each other
        self._channels = f"{prefix}@{target.db}"

    # -- keys ------------------------------------------------------------------------
    def _peer_keys(self, peer: str) -> tuple[str, str, str, str]:
        """state, inbox and rooms keys, and the pub/sub channel (all in one hash slot)."""
        tag = f"{self.prefix}:{{p:{peer}}}"
        return f"{tag}:state", f"{tag}:inbox", f"{tag}:rooms", f"{self._channels}:{{p:{peer}}}"

    def _quota_key(self, peer: str) -> str:
        return f"{self.prefix}:{{p:{peer}}}:quota"

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}:{{r:{room}}}:members"

    def _node_peers_key(self, node: str) -> str:
        return f"{self.prefix}:{{n:{node}}}:peers"

    @property
    def _ttl_ms(self) -> int:
        """Backstop expiry of a reconnecting peer's keys: the grace plus a margin."""
        return int((self.grace + max(10.0, self.grace)) * 1000)

    @property
    def quota_ttl_ms(self) -> int:
        """How long a peer's quota snapshot is kept after its connection ends (see quota.py)."""
        return int(self.quota_memory * 1000) + 1000

    @property
    def _retry_horizon_ms(self) -> int:
        """TRIM keeps entries this young (inbox.TRIM_HORIZON), and at least as long as a
        retry of a send may still come: the pipeline gives a reply up after 5 s, and a node
        retries only while its lease holds."""
        return int(max(TRIM_HORIZON, 5.0 + 3 * self.node_ttl) * 1000)

    @property
    def _grace_ms(self) -> int:
        return int(self.grace * 1000)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def _subscribed(self) -> bool:
        return self._link is not None and self._link.subscribed

    @property
    def serving(self) -> bool:
        return time.monotonic() < self._lease_until

    @property
    def ready(self) -> bool:
        return self._subscribed and self._healthy and self.serving

    def local_peers(self) -> int:
        return len(self._local)

    def expired_messages(self) -> int:
        return self._expired

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        scripts = {name: getattr(lua, name) for name in lua.NAMES}
        self._link = open_link(self.target, scripts, on_message=self._on_message, on_reconnect=self._on_reconnect,
                               on_changed=self._on_changed, on_unsettled=self._on_unsettled, replicas=self.replicas)
        self._prepare_send()
        try:
            await self._link.start()
            await self._take_lease()
        except (RedisError, OSError) as exc:
            log.warning("redis unreachable at start (%s); retrying in the background", exc)
        self._tasks = [asyncio.create_task(self._heartbeat_forever(), name="bus-heartbeat"),
                       asyncio.create_task(self._sweep_forever(), name="bus-sweeper")]
        deadline = time.monotonic() + 5
        while not self.ready and time.monotonic() < deadline:  # noqa: ASYNC110 - `ready` is 3 flags, no event
            await asyncio.sleep(0.02)

    def _on_unsettled(self) -> None:
        """Part of Redis is unreachable: until a heartbeat after it is back, "no such peer"
        may only mean a replica had not caught up (called again at each failed reconnect)."""
        self._settle_until = max(self._settle_until, time.monotonic() + self.node_ttl)

    async def _on_changed(self) -> None:
        """Redis failed over (or moved slots): the new primary may lack what the old one had
        not replicated, peers' state included, while their nodes register them again; so
        "no such peer" is not trusted for a heartbeat, even by a node none of whose own
        channels moved. Then what the new primary lost of this node's peers is restored."""
        self._settle_until = time.monotonic() + self.node_ttl
        with contextlib.suppress(RedisError, OSError, BusUnavailable):
            await self._recover()

    async def close(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        tasks = [*self._tasks, *([self._recovery_task] if self._recovery_task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._link is not None:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self._cmd("ZREM", self.nodes_key, self.node_id)  # the others need not wait for its lease
            await self._link.close()

    @contextlib.asynccontextmanager
    async def _guard(self, strict: bool = True) -> AsyncIterator[Any]:
        """Redis trouble becomes BusUnavailable; success marks the bus healthy again.

        `strict`: also refuse while a pub/sub connection is recovering, for operations
        whose answer depends on room membership that recovery may still restore."""
        if self._link is None:
            raise BusUnavailable("the bus is not started")
        if strict and not self._subscribed:
            raise BusUnavailable("the bus is reconnecting")
        try:
            yield self._link
        except (RedisError, OSError) as exc:
            if not _request_error(exc):
                self._healthy = False
            raise BusUnavailable(str(exc)) from exc
        self._healthy = True

    # -- the lease -------------------------------------------------------------------
    def _check_serving(self) -> None:
        """Raise (after closing every connection, if the lease just ran out) unless this
        node may serve right now."""
        if time.monotonic() < self._lease_until:
            return
        if self._lease_until:
            self._lose_lease("it ran out before it could be renewed (paused, or cut off from Redis)")
        raise LeaseLost("this node holds no lease")

    def _redis_time_us(self, monotonic: float) -> int:
        """Redis's clock at local monotonic time `monotonic`, as known from the last lease reply."""
        return int(monotonic * 1e6 + self._offset_us)

    def _handshake_time(self, started: float) -> int:
        """Redis's clock when a handshake began (`started`, monotonic). A handshake that began
        after the last one converted is never placed before it: a lease reply that corrects the
        estimate of Redis's clock backwards between two attaches would otherwise order them
        the wrong way round, and the later one would be refused as older."""
        began = self._redis_time_us(started)
        if started > self._last_started:
            began = max(began, self._last_began + 1)
            self._last_started, self._last_began = started, began
        return began

    def _held_lease(self, sent: float, redis_us: int) -> None:
        """A lease request sent at `sent` (monotonic) was granted by Redis at `redis_us`."""
        received = time.monotonic()
        until = sent + self.node_ttl * (1 - LEASE_MARGIN)
        if until <= received:
            return  # granted, but too late to use: the next step takes a new one
        # Redis read its clock between `sent` and `received`: the midpoint is at most half a
        # round trip off, so a sample is taken only from a round trip no slower than the one
        # the estimate came from (a reply held up by a stalled link would put it far ahead);
        # the bar eases 10 % a lease so the estimate can follow drift. Kept while it moves less
        # than OFFSET_JITTER, so this node's handshakes are ordered by its monotonic clock alone
        rtt = received - sent
        if not self._offset_rtt or rtt <= self._offset_rtt:
            offset = redis_us - (sent + received) / 2 * 1e6
            if abs(offset - self._offset_us) > OFFSET_JITTER * 1e6:
                self._offset_us = offset
            self._offset_rtt = max(rtt, 0.001)
        else:
            self._offset_rtt *= 1.1
        self._lease_until = until
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._lease_timer = loop.call_later(until - received + 0.001, self._lease_check)

    def _lease_check(self) -> None:
        self._lease_timer = None
        if self._lease_until and time.monotonic() >= self._lease_until:
            self._lose_lease(f"not renewed within {self.node_ttl * (1 - LEASE_MARGIN):.1f}s (cut off from Redis?)")

    def _lose_lease(self, why: str) -> None:
        """The lease ran out: the others may take this node's peers over at any moment.
        Close every connection at once (clients resume on another node, from their
        inboxes) before anything else."""
        if not self._lease_until:
            return
        self._lease_until = 0.0
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        mailboxes = [local.mailbox for locals_ in self._local.values() for local in locals_]
        for mailbox in mailboxes:
            mailbox.fenced()
        log.warning("lease lost: %s; closed %d connections so they resume elsewhere", why, len(mailboxes))

    async def _lease(self, mode: str) -> tuple[float, int, int]:
        """One LEASE call: (sent at, monotonic; Redis's clock, us; status)."""
        sent = time.monotonic()
        assert self._link is not None
        us, status, era, lost = await self._link.script("LEASE", [self.nodes_key], [
            self.node_id, int(self.node_ttl * 1000), mode, self._era_ms or ""], control=True)
        self._healthy = True
        if self._era_ms and int(era) != self._era_ms:
            self._replay_due = True  # a new data set: what was acked in the old one may be gone
        elif not self._replay_due:
            self._retention.confirm(sent)  # the same data set, alive now
        if self._retention.dropped and self.metrics is not None:
            self.metrics.replay_dropped.inc(self._retention.dropped)
            self._retention.dropped = 0
        self._era_ms, self._era_lost = int(era), bool(lost)
        return sent, int(us), int(status)

    async def _take_lease(self) -> None:
        """A new lease (at start, or after losing one): then the peers Redis still places on
        this node without a connection here start their grace."""
        sent, us, _ = await self._lease("join")
        await self._reconcile()
        self._held_lease(sent, us)

    async def _renew_lease(self) -> bool:
        """Extend the lease; False if Redis had lost it while it was valid here."""
        sent, us, status = await self._lease("renew")
        if status == 1:
            self._held_lease(sent, us)
            return True
        if status == 0:
            # Redis restarted empty or failed over: nobody can have taken this node's peers
            # while its lease was valid, so it takes a new one and registers them again
            log.warning("Redis lost this node's lease (restarted empty?): registering its peers again")
            self._settle_until = time.monotonic() + self.node_ttl
            await self._take_lease()
            return False
        self._lose_lease("Redis says it ran out (this node's clock runs slow?)")
        raise LeaseLost("the lease ran out in Redis")

    async def _mark_lost(self) -> None:
        """A resume too recent to have expired found nothing: Redis lost its data. Say so to
        every node (a node started since may not know an earlier data set existed)."""
        with contextlib.suppress(RedisError, OSError):
            era = await self._eval("MARK_LOST", [self.nodes_key], [])
            if era is not None:
                self._era_ms, self._era_lost = int(float(era)), True
                log.warning("a peer's recent state is gone: Redis lost its data")

    def _after_loss(self, window: float) -> bool:
        """True within `window` seconds of Redis's data set starting over after a loss."""
        if not self._era_lost:
            return False
        return self._redis_time_us(time.monotonic()) / 1000 - self._era_ms < window * 1000

    def _reshaping(self) -> None:
        """Room membership may be incomplete until every live node has registered its peers
        again (a heartbeat after Redis lost data): refuse what would act on a partial room."""
        if time.monotonic() < self._settle_until or self._after_loss(self.node_ttl):
            raise BusUnavailable("nodes are registering their peers again after Redis lost its data")

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                if self._lease_until:
                    self._check_serving()
                    if not await self._renew_lease() or self._recovering:
                        self._recover_soon()  # not awaited: the lease is renewed on, however long it takes
                    elif self._detach_failed:
                        self._detach_failed = False
                        await self._reconcile()
                    elif self._replay_due:  # a replay after taking a new lease failed part-way
                        await self._replay()
                else:
                    await self._take_lease()
                    await self._replay()
            except LeaseLost:
                pass  # the next step takes a new one
            except (RedisError, OSError, BusUnavailable) as exc:
                if self._healthy:
                    log.warning("bus heartbeat failed: %s", exc)
                self._healthy = False
            except Exception:
                log.exception("bus heartbeat failed")
            await asyncio.sleep(self.node_ttl / 3)

    # -- connections -----------------------------------------------------------------
    async def attach(self, peer: str, mailbox: Mailbox, resume: str | None = None, *,
                     started: float | None = None) -> Attached:
        self._check_serving()
        state, inbox, rooms, channel = self._peer_keys(peer)
        began = self._handshake_time(time.monotonic() if started is None else started)
        local = _Local(mailbox, peer)
        locals_ = self._local.setdefault(peer, [])
        locals_.append(local)
        try:
            if len(locals_) == 1:
                await self._subscribe(channel.encode(), peer)
            args = [self.node_id, resume or "", self.inbox_limit, peer, began, began + int(ATTACH_WINDOW * 1e6),
                    self._grace_ms]
            quota = self._quota_key(peer)
            async with self._guard():
                if self.clustered:  # the schedule and the node's set are in other slots
                    registered = self._cmd("SADD", self._node_peers_key(self.node_id), peer)
                    res = await self._eval("ATTACH", [state, inbox, rooms, channel, quota], args)
                    await registered
                    if res[0] != -1:
                        with contextlib.suppress(RedisError, OSError):
                            await self._cmd("ZREM", self.grace_key, peer)
                else:  # one round trip: the script leaves the schedule and registers too
                    res = await self._eval("ATTACH", [state, inbox, rooms, channel, quota, self.grace_key,
                                                      self._node_peers_key(self.node_id)], args)
            if res[0] == -1:
                raise AttachRefused(bool(res[1]))
            self._check_serving()
        except BaseException:
            await self._forget(peer, local)
            raise
        epoch, replaced, resumed, replay, members, delivered, point, lost, quota_left, quota_age = res
        # evidence only from a seq older than this data set (a client can write any seq; one
        # from before the data set began can only be a server's from the lost one)
        if lost and not self._era_lost and resume and seq_key(resume)[0] < self._era_ms:
            await self._mark_lost()
        if int(replaced) >= 0:  # a connection on this node: told now, not when the notice comes round
            for other in list(locals_):
                if other.epoch == int(replaced):
                    self._handle(other, envelope.Envelope("r", int(replaced)))
        local.epoch, local.last_seq = int(epoch), delivered.decode()
        local.rooms = frozenset(m.decode() for m in members) if members else frozenset()
        pending, local.pending = local.pending, []
        for env in pending:
            self._handle(local, env)
        return Attached(int(epoch), int(replaced) if int(replaced) >= 0 else None, bool(resumed),
                        [(seq.decode(), body) for seq, body in replay], local.rooms, point.decode(),
                        Snapshot.unpack(quota_left), int(quota_age) / 1000)

    async def detach(self, peer: str, epoch: int, *, final: bool, delivered: str | None = None,
                     quota: Snapshot | None = None) -> None:
        local = next((x for x in self._local.get(peer, []) if x.epoch == epoch), None)
        if local is not None:
            await self._forget(peer, local)
        state, inbox, rooms, _ = self._peer_keys(peer)
        args = [epoch, int(final), delivered or "", self._grace_ms, self._ttl_ms, peer,
                quota.pack() if quota is not None else "", self.quota_ttl_ms]
        try:
            res = await self._detach(peer, [state, inbox, rooms, self._quota_key(peer)], args)
        except BusUnavailable:
            self._detach_failed = True  # its peer stays connected here in Redis until reconciled
            raise
        if res[0] == 2:
            await self._leave_all(peer, [m.decode() for m in res[1]])

    async def _detach(self, peer: str, keys: list[str], args: list[Any]) -> Any:
        async with self._guard(strict=False):
            if self.clustered:
                res = await self._eval("DETACH", keys, args)
                if res[0] == 1:  # the schedule is in another slot (the keys' TTL backs it up)
                    await self._cmd("ZADD", self.grace_key, res[1], peer)
            else:
                res = await self._eval("DETACH", [*keys, self.grace_key], args)
            if peer not in self._local:
                await self._cmd("SREM", self._node_peers_key(self.node_id), peer)
        return res

    async def trim(self, peer: str, epoch: int, seq: str) -> bool:
        state, inbox, _, _ = self._peer_keys(peer)
        try:
            done = await self._eval("TRIM", [state, inbox], [epoch, seq, self.inbox_limit + 1, self._retry_horizon_ms])
        except (RedisError, OSError):
            return False  # only memory to give back: the next tick tries again
        return bool(done)

    async def forget(self, peer: str, epoch: int) -> None:
        local = next((x for x in self._local.get(peer, []) if x.epoch == epoch), None)
        if local is not None:
            await self._forget(peer, local)

    async def _forget(self, peer: str, local: _Local) -> None:
        locals_ = self._local.get(peer, [])
        if local in locals_:
            locals_.remove(local)
        if not locals_ and peer in self._local:
            del self._local[peer]
            await self._unsubscribe(self._peer_keys(peer)[3].encode())

    # -- messages --------------------------------------------------------------------
    async def send(self, to: str, body: bytes, *, origin: tuple[str, int] | None = None) -> Result:
        if time.monotonic() >= self._lease_until:
            self._check_serving()
        key = self._send_prefix + b"%d" % next(self._send_ids)
        link = self._link
        assert link is not None
        if origin is not None and self.clustered:  # the sender's fence is in another slot: checked first
            if not await self._owns(origin):
                return Result(Outcome.REPLACED)
            origin = None
        route, keys = self._send_route(to)
        # the hot path: packed from cached pieces straight into the link (the first try without
        # the retry loop's closure and frame: this runs per message)
        try:
            res = await link.call_packed(route, self._packed_send(keys, body, origin, key, False))
            self._healthy = True
        except RedisError as exc:
            if not _outcome_unknown(exc):
                self._healthy = self._healthy and _request_error(exc)
                raise BusUnavailable(str(exc)) from exc
            res = await self._until_known(lambda retry: link.call_packed(
                route, self._packed_send(keys, body, origin, key, True)), retry=True)
        kind = res[0]
        if kind == 1 or kind == 2:
            self._retention.add(time.monotonic(), to, res[1], body, key)
        elif kind == 4:
            return Result(Outcome.REPLACED)
        elif kind == 3:
            raise BusUnavailable("this connection is not registered in Redis right now")
        elif kind == 0 and (self._settling() or not self._subscribed):
            raise BusUnavailable("Redis may have been reset; nodes are registering their peers again")
        return Result((Outcome.NO_PEER, Outcome.DELIVERED, Outcome.QUEUED)[kind])

    async def _until_known(self, attempt: Callable[[bool], Awaitable[T]], *, retry: bool = False) -> T:
        """Run `attempt(retry)` until its outcome is known. A first try that certainly did not
        run raises BusUnavailable; one whose reply was lost is tried again with `retry`
        (the script then finds the first try if it ran) for as long as the lease lasts.
        `retry`: the first try was made already, and its outcome is unknown."""
        if retry:
            await asyncio.sleep(RETRY_PAUSE)
            self._check_serving()
        while True:
            try:
                res = await attempt(retry)
            except RedisError as exc:
                if not retry and not _outcome_unknown(exc):
                    self._healthy = self._healthy and _request_error(exc)
                    raise BusUnavailable(str(exc)) from exc
                retry = True
                log.info("a send's outcome is unknown (%s); trying again", exc)
                await asyncio.sleep(RETRY_PAUSE)
                self._check_serving()
                continue
            self._healthy = True
            return res

    async def _owns(self, origin: tuple[str, int]) -> bool:
        """Redis Cluster: the sender's fence, checked on its own shard before sending; False
        when a newer connection owns the sender's id."""
        owns = await self._until_known(lambda retry: self._eval("OWNS", [self._peer_keys(origin[0])[0]],
                                                                [origin[1]]))
        if owns == 3:
            raise BusUnavailable("this connection is not registered in Redis right now")
        return bool(owns != 4)

    def _prepare_send(self) -> None:
        # EVALSHA sha 4 state inbox channel sender-state body limit ttl key epoch retry bytes
        # (3 keys and no epoch without a sender): head, limit and ttl are constant
        assert self._link is not None
        self._send_head = redis_wire.bulk(("EVALSHA", self._link.sha("SEND")))
        self._send_tail = redis_wire.bulk((self.inbox_limit, self._ttl_ms))
        self._send_end = redis_wire.bulk((self.inbox_bytes,))

    def _send_route(self, to: str) -> tuple[str, bytes]:
        """`to`'s state key (it routes the command) and its SEND keys packed (both cached)."""
        cached = self._send_keys.get(to)
        if cached is None:
            if len(self._send_keys) >= 65536:
                self._send_keys.clear()
            state, inbox, _, channel = self._peer_keys(to)
            cached = self._send_keys[to] = (state, redis_wire.bulk((state, inbox, channel)))
        return cached

    def _packed_send(self, keys: bytes, body: bytes, origin: tuple[str, int] | None, key: bytes,
                     retry: bool) -> bytes:
        """EVALSHA SEND in RESP from the cached pieces."""
        flag = b"$1\r\n1\r\n" if retry else b"$1\r\n0\r\n"
        if origin is None:
            return b"".join((b"*13\r\n", self._send_head, b"$1\r\n3\r\n", keys, b"$%d\r\n" % len(body), body, b"\r\n",
                             self._send_tail, b"$%d\r\n" % len(key), key, b"\r\n$0\r\n\r\n", flag, self._send_end))
        sender, epoch = origin
        fence = self._sender_keys.get(sender)
        if fence is None:
            if len(self._sender_keys) >= 65536:
                self._sender_keys.clear()
            fence = self._sender_keys[sender] = redis_wire.bulk((self._peer_keys(sender)[0],))
        e = b"%d" % epoch
        return b"".join((b"*14\r\n", self._send_head, b"$1\r\n4\r\n", keys, fence, b"$%d\r\n" % len(body), body,
                         b"\r\n", self._send_tail, b"$%d\r\n" % len(key), key, b"\r\n$%d\r\n" % len(e), e, b"\r\n",
                         flag, self._send_end))

    def _settling(self) -> bool:
        """True for a while after Redis came back empty: until every live node has had a
        heartbeat to register its peers again, and every peer whose node had to close its
        connection has had its grace to come back, `no such peer` cannot be trusted."""
        return time.monotonic() < self._settle_until or self._after_loss(self.grace)

    async def broadcast(self, sender: str, room: str, body: bytes, *, epoch: int | None = None) -> Result:
        self._check_serving()
        self._reshaping()
        async with self._guard():
            members = await self._eval("MEMBERS_IF_IN", [self._room_key(room)], [sender])
        if members is None:
            return Result(Outcome.NOT_IN_ROOM)
        origin = (sender, epoch) if epoch is not None else None
        results = await self._fan_out(room, sender, [m.decode() for m in members], body, origin=origin)
        kinds = {res[0] for res in results}
        if 4 in kinds:
            return Result(Outcome.REPLACED)
        if 3 in kinds:
            raise BusUnavailable("this connection is not registered in Redis right now")
        return Result(Outcome.QUEUED if 2 in kinds else Outcome.DELIVERED)

    async def _fan_out(self, room: str, sender: str, members: list[str], body: bytes, *, repair: bool = True,
                       origin: tuple[str, int] | None = None) -> list[Any]:
        """`body` to every member but `sender`, in one pipelined round trip; the SEND answers."""
        targets = sorted(m for m in members if m != sender)
        if not targets:
            return []
        key = self._send_prefix + b"%d" % next(self._send_ids)
        link = self._link
        assert link is not None
        if origin is not None and self.clustered:  # the sender's fence is in another slot: checked first
            if not await self._owns(origin):
                return [[4]]
            origin = None
        routes = [self._send_route(m) for m in targets]

        def attempt(retry: bool) -> list[Any]:
            return [link.call_packed(route, self._packed_send(keys, body, origin, key, retry))
                    for route, keys in routes]
        results = await self._until_known(lambda retry: _all(attempt(retry)))
        now = time.monotonic()
        for m, res in zip(targets, results, strict=True):
            if res[0] == 1 or res[0] == 2:
                self._retention.add(now, m, res[1], body, key)
        ghosts = [m for m, res in zip(targets, results, strict=True) if res[0] == 0]
        # left without their rooms being cleaned (a crash mid-way): repair now
        if ghosts and repair and not self._settling():
            for ghost in ghosts:
                await self._leave_room(ghost, room)
        return results

    # -- rooms -----------------------------------------------------------------------
    async def join(self, peer: str, room: str, *, room_limit: int, rooms_per_peer: int,
                   epoch: int | None = None) -> Result:
        self._check_serving()
        self._reshaping()
        state, _, rooms_key, _ = self._peer_keys(peer)
        async with self._guard():
            added = await self._eval("JOIN_PEER", [rooms_key, state], [room, rooms_per_peer, _fence(epoch)])
            if added == -1:
                raise BusUnavailable("this connection does not own its peer id in Redis right now")
            if added == 0:
                return Result(Outcome.TOO_MANY_ROOMS)
            res = await self._eval("JOIN_ROOM", [self._room_key(room)], [peer, room_limit])
            if res[0] == 0:
                if added == 1:
                    await self._cmd("SREM", rooms_key, room)
                return Result(Outcome.ROOM_FULL)
        others = sorted(m.decode() for m in res[1] if m.decode() != peer)
        for local in self._local.get(peer, ()):
            local.rooms = local.rooms | {room}
        if res[0] == 1:
            await self._fan_out(room, peer, others, room_event("peer-joined", room, peer))
        return Result(Outcome.OK, peers=others)

    async def leave(self, peer: str, room: str, *, epoch: int | None = None) -> Result:
        self._check_serving()
        if epoch is not None:
            state, _, rooms_key, _ = self._peer_keys(peer)
            async with self._guard():
                if await self._eval("LEAVE_PEER", [rooms_key, state], [room, epoch]) == -1:
                    raise BusUnavailable("this connection does not own its peer id in Redis right now")
        for local in self._local.get(peer, ()):
            local.rooms = local.rooms - {room}
        if not await self._leave_room(peer, room):
            return Result(Outcome.NOT_IN_ROOM)
        return Result(Outcome.OK)

    async def _leave_room(self, peer: str, room: str) -> bool:
        async with self._guard():
            left = self._cmd("SREM", self._peer_keys(peer)[2], room)
            remaining = await self._eval("LEAVE_ROOM", [self._room_key(room)], [peer])
            await left
        if remaining is None:
            return False
        await self._fan_out(room, peer, [m.decode() for m in remaining], room_event("peer-left", room, peer),
                            repair=False)
        return True

    async def _leave_all(self, peer: str, rooms: list[str]) -> None:
        for room in sorted(rooms):
            await self._leave_room(peer, room)

    # -- pub/sub ---------------------------------------------------------------------
    async def _subscribe(self, channel: bytes, peer: str) -> None:
        self._channel_peer[channel] = peer
        assert self._link is not None
        await self._link.subscribe(channel)

    async def _unsubscribe(self, channel: bytes) -> None:
        self._channel_peer.pop(channel, None)
        if self._link is not None:
            with contextlib.suppress(BusUnavailable):
                await self._link.unsubscribe(channel)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        peer = self._channel_peer.get(channel)
        if peer is None:
            return
        try:
            env = envelope.unpack(data)
        except envelope.EnvelopeError as exc:
            log.warning("dropping a bad envelope on %r: %s", channel, exc)
            return
        for local in list(self._local.get(peer, ())):
            self._handle(local, env)

    async def _on_reconnect(self) -> None:
        if self.metrics is not None:
            self.metrics.bus_reconnects.inc()
        await self._recover()

    def _eval(self, name: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Run script `name`: sent now, in order, on the server of its first key."""
        assert self._link is not None
        return self._link.script(name, keys, args)

    def _cmd(self, *args: Any) -> asyncio.Future[Any]:
        """Run one command on the server of its key (every command the bus sends names one key first)."""
        assert self._link is not None
        return self._link.call(args[1], *args)

    async def _run_scripts(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Several scripts at once: one batch on one Redis, concurrent calls on a cluster
        (each goes to the shard of its keys)."""
        if not calls:
            return []
        return list(await asyncio.gather(*(self._eval(n, k, a) for n, k, a in calls)))

    def _handle(self, local: _Local, env: envelope.Envelope) -> None:
        if local.epoch is None:
            local.pending.append(env)
        elif env.epoch != local.epoch:
            return  # for another connection of the same peer
        elif env.kind == "d":
            if time.monotonic() >= self._lease_until:  # not ours to hand over: it waits in the inbox
                if self._lease_until:
                    self._lose_lease("it ran out before it could be renewed (paused, or cut off from Redis)")
                return
            local.last_seq = env.seq
            if self.metrics is not None and env.sent_ms:
                self.metrics.publish_latency.observe(max(0.0, time.time() - env.sent_ms / 1000))
            local.mailbox.deliver(env.seq, env.body)
        elif env.kind == "r":
            local.mailbox.replaced()  # its session ends with 4409 and forgets it (Bus.forget)
            locals_ = self._local.get(local.peer, ())
            if env.successor and all(x is local for x in locals_):  # its successor is on another node
                self._spawn(self._report_quota(local.peer, env.successor, local.mailbox.quota()))
        elif env.kind == "q":
            snapshot = Snapshot.unpack(env.body)
            if snapshot is not None:
                age = (self._redis_time_us(time.monotonic()) / 1000 - env.sent_ms) / 1000
                local.mailbox.quota_report(snapshot, age)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_quota(self, peer: str, successor: int, snapshot: Snapshot) -> None:
        """Tell the connection that replaced one of ours (on another node) what the peer's
        quota had left, so a takeover buys nothing (quota.py)."""
        channel = self._peer_keys(peer)[3]
        env = envelope.Envelope("q", successor, body=snapshot.pack().encode(),
                                sent_ms=self._redis_time_us(time.monotonic()) / 1000)
        with contextlib.suppress(RedisError, OSError):
            await self._cmd("SPUBLISH" if self.clustered else "PUBLISH", channel, envelope.pack(env))

    def _recover_soon(self) -> None:
        if self._recovery_task is None or self._recovery_task.done():
            self._recovery_task = asyncio.ensure_future(self._recover_logged())

    async def _recover_logged(self) -> None:
        try:
            await self._recover()
        except (RedisError, OSError, BusUnavailable) as exc:
            log.warning("recovery failed (the next heartbeat tries again): %s", exc)
        except Exception:
            log.exception("recovery failed")

    async def _recover(self) -> None:
        """After Redis comes back (or came back empty): make it agree with what this node
        holds, then hand each connection what reached its inbox meanwhile, all before any
        newer delivery (the subscribers hold those back until this returns)."""
        self._recovering = True  # until a round succeeds: the heartbeat tries again
        async with self._recovery:
            with self._holding():
                if self._lease_until:  # (none: its connections are closed already)
                    self._check_serving()
                    await self._renew_lease()
                    await self._register_again()
                    await self._reconcile()
                    await self._replay()
                    self._healthy = True
        self._recovering = False

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        assert self._link is not None
        with self._link.holding():
            yield

    async def _register_again(self) -> None:
        """Register every live connection, its rooms and this node again; hand each what its
        inbox got after the last seq it was given. Idempotent, so it runs after every
        reconnect: Redis may have restarted empty, failed over to a lagging replica, or
        dropped a pub/sub connection. No peer-joined/peer-left churn.

        REGISTER_BATCH peers a round trip, each batch's set and schedule updates folded into
        one command per key: 10,000 peers at once queued 30,000 commands ahead of everything
        else on the connection, and other work waited seconds behind them."""
        peers = list(self._local)
        restored = refused = gaps = 0
        for i in range(0, len(peers), REGISTER_BATCH):
            live: list[tuple[str, _Local]] = []
            for peer in peers[i:i + REGISTER_BATCH]:  # as they are now: some may have ended meanwhile
                owned = [x for x in self._local.get(peer, ()) if x.epoch is not None]
                if owned:
                    live.append((peer, owned[-1]))
            if not live:
                continue
            calls = [("REGISTER", list(self._peer_keys(peer)[:3]), [local.epoch, self.node_id, local.last_seq,
                                                                     self.inbox_limit, *sorted(local.rooms)])
                     for peer, local in live]
            results = await self._run_scripts(calls)
            # what follows is sent whatever happened to the lease meanwhile: a restored peer must
            # not stay without its place in its rooms (deliveries check the lease themselves)
            registered: list[str] = []
            rooms: dict[str, list[str]] = {}
            for (peer, local), res in zip(live, results, strict=True):
                kind = res[0]
                if kind == 0:  # a newer connection took the peer, or it was taken for gone: resume
                    refused += 1
                    local.mailbox.lost()
                    continue
                if kind == 3:
                    gaps += 1
                    local.mailbox.lost()
                    continue
                if len(res) > 1:  # (kind 1, or 2 with what senders handed in again)
                    epoch: int = local.epoch  # type: ignore[assignment]  # (only attached connections register)
                    for seq, body in res[1]:
                        self._handle(local, envelope.Envelope("d", epoch, seq.decode(), body))
                restored += kind == 2
                registered.append(peer)
                for room in local.rooms:
                    rooms.setdefault(room, []).append(peer)
            if registered:
                await asyncio.gather(self._cmd("SADD", self._node_peers_key(self.node_id), *registered),
                                     self._cmd("ZREM", self.grace_key, *registered),
                                     *(self._cmd("SADD", self._room_key(room), *members)
                                       for room, members in rooms.items()))
        if restored:
            self._settle_until = time.monotonic() + self.node_ttl
            log.warning("Redis had lost %d live peers of this node: registered them again", restored)
        if refused or gaps:
            log.warning("%d connections no longer own their peer and %d missed messages the inbox bound pushed "
                        "out: closed so they resume", refused, gaps)

    async def _replay(self) -> None:
        """After Redis lost the data set: hand in again what this node had acked in it and
        Redis may not have passed on (retention.py), oldest first, REGISTER_BATCH a round
        trip. What a batch could not reach Redis with is kept for the next try."""
        if not self._replay_due:
            return
        self._replay_due = False
        entries = self._retention.take()
        handed = waiting = 0
        for i in range(0, len(entries), REGISTER_BATCH):
            batch = entries[i:i + REGISTER_BATCH]
            calls = []
            for e in batch:
                state, inbox, _, channel = self._peer_keys(e.to)
                calls.append(("REPLAY", [state, inbox, channel], [e.seq, e.body, e.key, self._grace_ms]))
            try:
                results = await self._run_scripts(calls)
            except (RedisError, OSError, BusUnavailable):
                self._retention.give_back(entries[i:])
                self._replay_due = True
                raise
            handed += sum(1 for r in results if r == 1)
            waiting += sum(1 for r in results if r == 2)
        if self.metrics is not None:
            self.metrics.replay_handed_in.inc(handed + waiting)
        if entries:
            log.warning("Redis lost its data set: handed in again %d of the %d messages this node had acked in it "
                        "in the last %gs (%d to a connected peer, %d to an inbox)", handed + waiting, len(entries),
                        self._retention.window, handed, waiting)

    async def _reconcile(self) -> None:
        """Peers Redis still places on this node that ended while it was unreachable
        (their detach failed): they start their grace now."""
        held = [p.decode() for p in await self._cmd("SMEMBERS", self._node_peers_key(self.node_id))]
        gone = [p for p in held if p not in self._local]
        if not gone:
            return
        await self._orphan(self.node_id, gone, None)
        await self._cmd("SREM", self._node_peers_key(self.node_id), *gone)

    async def _orphan(self, node: str, peers: list[str], lease_end_ms: int | None) -> list[str]:
        """Peers `node` held and can no longer serve, attached before its lease ended
        (None: any): reconnecting from now. Returns those that are not `node`'s any more."""
        bound = "" if lease_end_ms is None else lease_end_ms * 1000
        calls = []
        for peer in peers:
            keys = list(self._peer_keys(peer)[:3]) + ([] if self.clustered else [self.grace_key])
            calls.append(("ORPHAN", keys, [node, self._grace_ms, self._ttl_ms, peer, bound]))
        results = await self._run_scripts(calls)
        if self.clustered:
            due = {p: int(d) for p, d in zip(peers, results, strict=True) if int(d) > 0}
            if due:
                await self._cmd("ZADD", self.grace_key, *itertools.chain.from_iterable((d, p) for p, d in due.items()))
        return [p for p, d in zip(peers, results, strict=True) if int(d) >= 0]

    # -- liveness ----------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.grace / 4))
            try:
                await self._sweep()
            except (RedisError, OSError, BusUnavailable):
                pass  # the heartbeat and the reader report Redis trouble
            except Exception:
                log.exception("bus sweep failed")

    async def _sweep(self) -> None:
        """Every node runs this; each step is idempotent and decided by Redis's clock, so
        they need no lock and no two node clocks are ever compared.

        1. Nodes whose lease has run out: their connected peers become reconnecting, with
           a grace from now.
        2. Peers whose grace has run out leave their rooms (`peer-left`) and are dropped.
        """
        dead = await self._eval("DEAD_NODES", [self.nodes_key], [])
        for i in range(0, len(dead), 2):
            node, lease_end = dead[i].decode(), int(float(dead[i + 1]))
            if node == self.node_id:
                continue
            peers = [p.decode() for p in await self._cmd("SMEMBERS", self._node_peers_key(node))]
            if peers:
                gone = await self._orphan(node, peers, lease_end)
                if gone:
                    await self._cmd("SREM", self._node_peers_key(node), *gone)
                log.warning("node %s stopped renewing its lease: %d of its peers are reconnecting", node, len(gone))
            await self._eval("FORGET_NODE", [self.nodes_key], [node])
        for peer in (p.decode() for p in await self._eval("DUE", [self.grace_key], [200])):
            gone = await self._eval("EXPIRE", list(self._peer_keys(peer)[:3]), [])
            if gone and gone[0] == 0:  # scheduled early: keep it for its real deadline
                await self._cmd("ZADD", self.grace_key, gone[1], peer)
                continue
            await self._eval("UNSCHEDULE", [self.grace_key], [peer])
            if gone:
                _, rooms, undelivered = gone
                self._expired += int(undelivered)
                await self._leave_all(peer, [m.decode() for m in rooms])
        await self._audit()

    async def _scan_step(self, pattern: str) -> list[bytes]:
        """The next AUDIT_BATCH-sized step of a SCAN over every key matching `pattern` (a
        step on each primary, each with its own cursor)."""
        assert self._link is not None
        found: list[bytes] = []
        for server in self._link.servers():
            cursor, keys = await self._link.call_on(server, "SCAN", self._audit_cursors.get(server, 0),
                                                    "MATCH", pattern, "COUNT", AUDIT_BATCH)
            self._audit_cursors[server] = int(cursor)
            found += keys
        return found

    async def _audit(self) -> None:
        """3. A step of a slow walk over every peer's state (SCAN, AUDIT_BATCH keys a
        sweep): a peer marked connected to a node that has no lease entry, or to this node
        without a connection here, starts its grace; a reconnecting peer with no expiry
        gets one. No path leaves such ghosts; this repairs them whatever made them."""
        keys = await self._scan_step(f"{self.prefix}:{{p:*}}:state")
        if not keys:
            return
        states = await asyncio.gather(*(self._cmd("HMGET", k, "node", "connected") for k in keys),
                                      *(self._cmd("PTTL", k) for k in keys))
        # the leases after the states: a node takes its lease before it registers a peer, so
        # a state that names a node is never judged by a list read before that node came back
        # (after Redis restarted empty, a live node's peers were orphaned that way)
        live_nodes = {n.decode() for n in await self._cmd("ZRANGE", self.nodes_key, 0, -1)}
        head, tail = len(self.prefix) + 4, len("}:state")
        ghosts: dict[str, list[str]] = {}
        for key, (node, connected), ttl in zip(keys, states[:len(keys)], states[len(keys):], strict=True):
            peer = key.decode()[head:-tail]
            if connected == b"1" and node is not None:
                owner = node.decode()
                if owner not in live_nodes or (owner == self.node_id and peer not in self._local):
                    ghosts.setdefault(owner, []).append(peer)
            elif connected == b"0" and int(ttl) == -1:
                await self._cmd("ZADD", self.grace_key, "NX", 0, peer)  # EXPIRE keeps its real deadline
        for owner, peers in ghosts.items():
            gone = await self._orphan(owner, peers, None)
            log.warning("%d peers were marked connected to %s, which does not hold them: their grace runs now",
                        len(gone), owner)


def _fence(epoch: int | None) -> str:
    return "" if epoch is None else str(epoch)


async def _all(calls: list[Any]) -> list[Any]:
    """Await every call; if any failed, raise the failure that says least is known (a
    lost reply over a refusal), every other failure retrieved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise next((f for f in failures if _outcome_unknown(f)), failures[0])
    return results
