"""The Redis bus: nodes reach each other's peers through Redis pub/sub, one channel per peer.

A delivery is one script in the recipient's hash slot: append to its inbox stream
(the seq is the stream id) and publish a msgpack envelope on its channel, in one round
trip. Only the node holding the recipient is subscribed to that channel, so a message
costs work on two nodes whatever the size of the cluster. Inboxes, ownership, rooms
and grace deadlines all live in Redis: a node can die at any moment and the others
take over its peers' grace (see `_sweep`).

One pub/sub connection per Redis server (`Subscriber`), one reader task each. When a
connection drops, its reader reconnects with back-off, subscribes every channel again,
registers this node's live peers again (Redis may have come back empty) and fills the
gap from each local peer's inbox, so a live session misses nothing.

`redis+cluster://host:port[,host:port...]` runs on Redis Cluster: every key and channel
of a peer shares the hash tag `{p:<id>}`, scripts publish with SPUBLISH (sharded
pub/sub, Redis 7), and the node keeps one subscriber per primary, so the bus scales
with the cluster's shards (classic PUBLISH would be broadcast to every shard).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from .. import envelope
from ..directory import Attached, Outcome, Result
from ..inbox import ZERO, format_seq, next_seq, parse_seq
from ..protocol import room_event
from . import redis_scripts as lua
from .base import Bus, BusUnavailable, Mailbox
from . import redis_wire
from .redis_batcher import Batcher
from .redis_subscriber import Subscriber

log = logging.getLogger("signaling.bus.redis")
PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(eq=False, slots=True)
class _Local:
    """One connection of a peer on this node, as the bus tracks it."""

    mailbox: Mailbox
    epoch: int | None = None  # None until its attach script has answered
    pending: list[envelope.Envelope] = field(default_factory=list)  # arrived before the epoch was known
    last_seq: str = "0-0"  # last seq handed to the mailbox (for gap repair after a reconnect)
    rooms: frozenset[str] = frozenset()  # its rooms, to register again if Redis loses them (replaced on change)


def _ms() -> int:
    return int(time.time() * 1000)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """`redis+cluster://h1:p1,h2:p2` -> [(h1, p1), (h2, p2)]."""
    rest = url.partition("://")[2].split("/")[0].split("@")[-1]
    out = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad cluster node {part!r} in {url!r}: use host:port")
        out.append((host, int(port)))
    return out


_CONNECTION = dict(socket_timeout=5, socket_connect_timeout=2, health_check_interval=2, retry_on_timeout=False)


class RedisBus(Bus):
    def __init__(self, url: str, *, node_id: str, grace: float, inbox_limit: int, prefix: str = "signaling",
                 node_ttl: float = 3.0, metrics: Any = None) -> None:
        if not PREFIX.fullmatch(prefix):
            raise ValueError("key prefix must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        self.url, self.node_id, self.grace, self.inbox_limit = url, node_id, grace, inbox_limit
        self.prefix, self.node_ttl, self.metrics = prefix, node_ttl, metrics
        self.clustered = url.startswith("redis+cluster://")
        self._redis: Any = None  # redis.asyncio.Redis, or RedisCluster
        self._batcher: Batcher | None = None  # one Redis: the hot path's auto-pipelined connection
        self._sha: dict[str, str] = {}  # script name -> its SHA1
        self._subscribers: dict[str, Subscriber] = {}  # server name -> its pub/sub connection
        self._local: dict[str, list[_Local]] = {}  # peer id -> its connections on this node
        self._channel_peer: dict[bytes, str] = {}  # channel name -> peer id, for subscribed channels
        self._healthy = False  # the last command connection use succeeded
        self._topology_lock = asyncio.Lock()  # cluster: one topology refresh at a time
        self._send_keys: dict[str, bytes] = {}  # peer -> its keys packed for SEND (bounded)
        self._send_head = self._send_limit = self._send_ttl = b""
        self._settle_until = 0.0  # monotonic; before it, Redis may still miss peers other nodes re-register
        self._tasks: list[asyncio.Task[None]] = []
        self._expired = 0
        self.nodes_key = f"{prefix}:nodes"  # zset: node id -> last heartbeat (ms)
        self.grace_key = f"{prefix}:grace"  # zset: peer id -> end of its grace (ms)
        self.control = f"{prefix}:{{n:{node_id}}}".encode()  # this node's own channel

    # -- keys ------------------------------------------------------------------------
    def _peer_keys(self, peer: str) -> tuple[str, str, str, str]:
        tag = f"{self.prefix}:{{p:{peer}}}"
        return f"{tag}:state", f"{tag}:inbox", f"{tag}:rooms", tag

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}:{{r:{room}}}:members"

    def _node_peers_key(self, node: str) -> str:
        return f"{self.prefix}:{{n:{node}}}:peers"

    @property
    def _ttl_ms(self) -> int:
        """Backstop expiry of a reconnecting peer's keys: the grace plus a margin."""
        return int((self.grace + max(10.0, self.grace)) * 1000)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def _subscribed(self) -> bool:
        return bool(self._subscribers) and all(sub.up for sub in self._subscribers.values())

    @property
    def ready(self) -> bool:
        return self._subscribed and self._healthy

    def local_peers(self) -> int:
        return len(self._local)

    def expired_messages(self) -> int:
        return self._expired

    async def start(self) -> None:
        scripts = {name: getattr(lua, name) for name in (
            "ATTACH", "DETACH", "ORPHAN", "EXPIRE", "SEND", "JOIN_PEER", "JOIN_ROOM", "LEAVE_ROOM",
            "MEMBERS_IF_IN", "UNSCHEDULE", "REGISTER")}
        if self.clustered:
            nodes = [ClusterNode(host, port) for host, port in cluster_nodes(self.url)]
            self._redis = RedisCluster(startup_nodes=nodes, socket_timeout=5, socket_connect_timeout=2)
            await self._redis.initialize()
            # sharded pub/sub: a delivery is published on the shard that owns the peer
            scripts = {k: v.replace("'PUBLISH'", "'SPUBLISH'") for k, v in scripts.items()}
            for primary in self._redis.get_primaries():
                self._add_subscriber(primary.name, {"host": primary.host, "port": primary.port})
        else:
            # background work (sweeper, heartbeat, recovery) borrows from a bounded pool that
            # waits rather than failing; the hot path goes through the batcher's connection
            pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=16, timeout=5, **_CONNECTION)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._add_subscriber("redis", redis_wire.options(self.url))
            self._sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in scripts.items()}
            self._batcher = Batcher(self.url, {self._sha[n]: t for n, t in scripts.items()})
            self._prepare_send()
            self._batcher.start()
        self._scripts = {name: self._redis.register_script(text) for name, text in scripts.items()}
        try:
            await self._redis.zadd(self.nodes_key, {self.node_id: _ms()})
            self._healthy = True
        except (RedisError, OSError) as exc:
            log.warning("redis unreachable at start (%s); retrying in the background", exc)
        self._tasks = [asyncio.create_task(self._heartbeat_forever(), name="bus-heartbeat"),
                       asyncio.create_task(self._sweep_forever(), name="bus-sweeper")]
        deadline = time.monotonic() + 5
        while not self.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _add_subscriber(self, name: str, options: dict[str, Any]) -> Subscriber:
        sub = Subscriber(options, name=name, sharded=self.clustered, on_message=self._on_message,
                         on_reconnect=self._on_reconnect, on_lost=self._on_lost if self.clustered else None)
        self._subscribers[name] = sub
        sub.start()
        return sub

    async def _on_lost(self, lost: Subscriber) -> None:
        """Cluster: a primary's pub/sub connection dropped. If the cluster has failed over
        (or moved slots), follow it: subscribe each channel on the primary that owns its
        slot now, drop subscribers of servers that are no longer primaries."""
        # while a primary is unreachable, and for a heartbeat after, "no such peer" may
        # only mean its replica had not caught up (see below): called again after each
        # failed reconnect, this keeps the window open for the whole outage
        self._settle_until = max(self._settle_until, time.monotonic() + self.node_ttl)
        async with self._topology_lock:
            try:
                await self._redis.nodes_manager.initialize()
            except (RedisError, OSError) as exc:
                log.info("cluster topology not readable yet: %s", exc)
                return
            primaries = {p.name: p for p in self._redis.get_primaries()}
            moved = 0
            for channel in list(self._channel_peer):
                owner = self._redis.get_node_from_key(channel).name
                target = self._subscribers.get(owner)
                if target is None:
                    node = primaries[owner]
                    target = self._add_subscriber(owner, {"host": node.host, "port": node.port})
                if channel not in target.channels:
                    for sub in self._subscribers.values():
                        sub.channels.discard(channel)
                    target.channels.add(channel)  # its reader subscribes it on (re)connect
                    if target.up:
                        with contextlib.suppress(BusUnavailable):
                            await target.subscribe(channel)
                    moved += 1
            stale = [self._subscribers.pop(n) for n in list(self._subscribers) if n not in primaries]
            for name, node in primaries.items():
                if name not in self._subscribers:
                    self._add_subscriber(name, {"host": node.host, "port": node.port})
            if moved or stale:
                # a failover: the new primary may lack what the old one had not yet
                # replicated (peers' state included) while their nodes register them
                # again, so "no such peer" is not trusted for a heartbeat, even by a node
                # none of whose own channels moved
                log.warning("cluster changed: %d channels now on other primaries, %d primaries gone",
                            moved, len(stale))
                self._settle_until = time.monotonic() + self.node_ttl
                with contextlib.suppress(RedisError, OSError, BusUnavailable):
                    await self._register_again()  # what the new primary lost of our peers
            if moved:
                with contextlib.suppress(RedisError, OSError):
                    await self._repair_gaps()
        for sub in stale:  # last: the caller may be one of them, and closing cancels it
            asyncio.ensure_future(sub.close())

    def _subscriber_for(self, channel: bytes) -> Subscriber:
        if not self.clustered:
            return self._subscribers["redis"]
        name = self._redis.get_node_from_key(channel).name
        sub = self._subscribers.get(name)
        if sub is None:
            raise BusUnavailable(f"no pub/sub connection to {name} (the cluster changed?)")
        return sub

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subscribers.values():
            await sub.close()
        if self._batcher is not None:
            await self._batcher.close()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.zrem(self.nodes_key, self.node_id)
            await self._redis.aclose()

    @contextlib.asynccontextmanager
    async def _guard(self, strict: bool = True) -> AsyncIterator[Any]:
        """Redis trouble becomes BusUnavailable; success marks the bus healthy again.

        `strict`: also refuse while a pub/sub connection is recovering, for operations
        whose answer depends on room membership that recovery may still restore."""
        if self._redis is None:
            raise BusUnavailable("the bus is not started")
        if strict and not self._subscribed:
            raise BusUnavailable("the bus is reconnecting")
        try:
            yield self._redis
        except (RedisError, OSError) as exc:
            self._healthy = False
            raise BusUnavailable(str(exc)) from exc
        self._healthy = True

    # -- connections -----------------------------------------------------------------
    async def attach(self, peer: str, mailbox: Mailbox, resume: str | None = None) -> Attached:
        state, inbox, rooms, channel = self._peer_keys(peer)
        local = _Local(mailbox)
        locals_ = self._local.setdefault(peer, [])
        locals_.append(local)
        try:
            if len(locals_) == 1:
                await self._subscribe(channel.encode(), peer)
            async with self._guard():
                if self.clustered:  # the schedule and the node's set are in other slots
                    registered = self._cmd("SADD", self._node_peers_key(self.node_id), peer)
                    res = await self._eval("ATTACH", [state, inbox, rooms, channel],
                                           [self.node_id, resume or "", self.inbox_limit])
                    await registered
                    with contextlib.suppress(RedisError, OSError):
                        await self._cmd("ZREM", self.grace_key, peer)
                else:  # one round trip: the script leaves the schedule and registers too
                    res = await self._eval("ATTACH", [state, inbox, rooms, channel, self.grace_key,
                                                      self._node_peers_key(self.node_id)],
                                           [self.node_id, resume or "", self.inbox_limit, peer])
        except BaseException:
            await self._forget(peer, local)
            raise
        epoch, replaced, resumed, replay, members, delivered = res
        local.epoch, local.last_seq = int(epoch), delivered.decode()
        local.rooms = frozenset(m.decode() for m in members) if members else frozenset()
        if replay:
            local.last_seq = replay[-1][0].decode()
        pending, local.pending = local.pending, []
        for env in pending:
            self._handle(local, env)
        return Attached(int(epoch), int(replaced) if int(replaced) >= 0 else None, bool(resumed),
                        [(seq.decode(), fields[1]) for seq, fields in replay], local.rooms)

    async def detach(self, peer: str, epoch: int, *, final: bool, delivered: str | None = None) -> None:
        local = next((x for x in self._local.get(peer, []) if x.epoch == epoch), None)
        if local is not None:
            await self._forget(peer, local)
        state, inbox, rooms, _ = self._peer_keys(peer)
        deadline = _ms() + int(self.grace * 1000)
        async with self._guard(strict=False):
            # the grace is scheduled first (same batch, in order): a crash after it is harmless
            scheduled = self._cmd("ZADD", self.grace_key, deadline, peer) if not final else None
            res = await self._eval("DETACH", [state, inbox, rooms],
                                   [epoch, int(final), delivered or "", deadline, self._ttl_ms])
            if scheduled is not None:
                await scheduled
            if peer not in self._local:
                await self._cmd("SREM", self._node_peers_key(self.node_id), peer)
        if res[0] == 2:
            await self._leave_all(peer, [m.decode() for m in res[1]])

    async def _forget(self, peer: str, local: _Local) -> None:
        locals_ = self._local.get(peer, [])
        if local in locals_:
            locals_.remove(local)
        if not locals_ and peer in self._local:
            del self._local[peer]
            await self._unsubscribe(self._peer_keys(peer)[3].encode())

    # -- messages --------------------------------------------------------------------
    async def send(self, to: str, body: bytes) -> Result:
        # the hot path: on one Redis the command is packed from cached pieces and goes
        # straight into the batcher (a pub/sub blip here does not stop sending)
        try:
            batcher = self._batcher
            if batcher is None:  # Redis Cluster (or not started: the guard says so)
                async with self._guard(strict=False):
                    state, inbox, _, channel = self._peer_keys(to)
                    res = await self._eval("SEND", [state, inbox, channel],
                                           [body, self.inbox_limit, _ms(), self._ttl_ms])
            else:
                try:
                    res = await batcher.call_packed(self._packed_send(to, body))
                except (RedisError, OSError) as exc:
                    self._healthy = False
                    raise BusUnavailable(str(exc)) from exc
                self._healthy = True
        except BusUnavailable:
            if self._deliver_here(to, body):
                return Result(Outcome.DELIVERED)
            raise
        if res[0] == 0 and (self._settling() or not self._subscribed):
            raise BusUnavailable("Redis may have been reset; nodes are registering their peers again")
        return Result((Outcome.NO_PEER, Outcome.DELIVERED, Outcome.QUEUED)[res[0]])

    def _prepare_send(self) -> None:
        # EVALSHA sha 3 state inbox channel body limit now ttl: head, limit and ttl are constant
        self._send_head = b"*10\r\n" + redis_wire.bulk(("EVALSHA", self._sha["SEND"], 3))
        self._send_limit = redis_wire.bulk((self.inbox_limit,))
        self._send_ttl = redis_wire.bulk((self._ttl_ms,))

    def _packed_send(self, to: str, body: bytes) -> bytes:
        """EVALSHA SEND for `to` in RESP; the constant head and the peer's keys are cached."""
        keys = self._send_keys.get(to)
        if keys is None:
            if len(self._send_keys) >= 65536:
                self._send_keys.clear()
            state, inbox, _, channel = self._peer_keys(to)
            keys = self._send_keys[to] = redis_wire.bulk((state, inbox, channel))
        now = b"%d" % _ms()  # body and now formatted here, not by bulk(): this runs per message
        return b"".join((self._send_head, keys, b"$%d\r\n" % len(body), body, b"\r\n", self._send_limit,
                         b"$%d\r\n" % len(now), now, b"\r\n", self._send_ttl))

    def _settling(self) -> bool:
        """True for a while after Redis came back empty: until every live node has had
        a heartbeat to register its peers again, `no such peer` cannot be trusted."""
        return time.monotonic() < self._settle_until

    def _deliver_here(self, peer: str, body: bytes) -> bool:
        """Without Redis, peers on the same node still reach each other: hand the message
        straight to the connection, numbered after its last seq. (It is not in the inbox:
        a resume cannot replay it; re-registration makes Redis's seqs follow it.)"""
        live = [x for x in self._local.get(peer, ()) if x.epoch is not None]
        if not live:
            return False
        local = live[-1]
        seq = format_seq(next_seq(parse_seq(local.last_seq) or ZERO, time.time()))
        self._handle(local, envelope.Envelope("d", local.epoch, seq, body))  # type: ignore[arg-type]
        return True

    async def broadcast(self, sender: str, room: str, body: bytes) -> Result:
        async with self._guard():
            members = await self._eval("MEMBERS_IF_IN", [self._room_key(room)], [sender])
        if members is None:
            return Result(Outcome.NOT_IN_ROOM)
        queued = await self._fan_out(room, sender, [m.decode() for m in members], body)
        return Result(Outcome.QUEUED if queued else Outcome.DELIVERED)

    async def _fan_out(self, room: str, sender: str, members: list[str], body: bytes, *, repair: bool = True) -> bool:
        """`body` to every member but `sender`, in one pipelined round trip; True if any was queued."""
        targets = sorted(m for m in members if m != sender)
        if not targets:
            return False
        now = _ms()
        calls = []
        for member in targets:
            state, inbox, _, channel = self._peer_keys(member)
            calls.append(("SEND", [state, inbox, channel], [body, self.inbox_limit, now, self._ttl_ms]))
        async with self._guard():
            results = await self._run_scripts(calls)
        ghosts = [m for m, res in zip(targets, results) if res[0] == 0]
        if ghosts and repair and not self._settling():  # left without their rooms being cleaned (a crash mid-way): repair now
            for ghost in ghosts:
                await self._leave_room(ghost, room)
        return any(res[0] == 2 for res in results)

    # -- rooms -----------------------------------------------------------------------
    async def join(self, peer: str, room: str, *, room_limit: int, rooms_per_peer: int) -> Result:
        rooms_key = self._peer_keys(peer)[2]
        async with self._guard():
            added = await self._eval("JOIN_PEER", [rooms_key], [room, rooms_per_peer])
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

    async def leave(self, peer: str, room: str) -> Result:
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
        await self._subscriber_for(channel).subscribe(channel)

    async def _unsubscribe(self, channel: bytes) -> None:
        self._channel_peer.pop(channel, None)
        with contextlib.suppress(BusUnavailable):
            await self._subscriber_for(channel).unsubscribe(channel)

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

    async def _on_reconnect(self, sub: Subscriber) -> None:
        if self.metrics is not None:
            self.metrics.bus_reconnects.inc()
        await self._recover()

    def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script `name` (an awaitable): batched on one Redis, routed by key on a cluster."""
        if self._batcher is not None:
            return self._batcher.call("EVALSHA", self._sha[name], len(keys), *keys, *args)  # sent now, in order
        return self._scripts[name](keys=keys, args=args)

    def _cmd(self, *args: Any) -> Any:
        """Run one plain command (an awaitable), batched like `_eval`."""
        if self._batcher is not None:
            return self._batcher.call(*args)
        return self._redis.execute_command(*args)

    async def _run_scripts(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Several scripts at once: one batch on one Redis, concurrent calls on a cluster
        (each goes to the shard of its keys)."""
        if not calls:
            return []
        return list(await asyncio.gather(*(self._eval(n, k, a) for n, k, a in calls)))

    async def _orphan(self, node: str, peers: list[str], deadline: int) -> list[str]:
        """Peers `node` held and can no longer serve: reconnecting from now, grace until `deadline`."""
        hits = await self._run_scripts([("ORPHAN", list(self._peer_keys(p)[:3]), [node, deadline, self._ttl_ms])
                                        for p in peers])
        return [p for p, hit in zip(peers, hits) if hit]

    def _handle(self, local: _Local, env: envelope.Envelope) -> None:
        if local.epoch is None:
            local.pending.append(env)
        elif env.epoch != local.epoch:
            return  # for another connection of the same peer
        elif env.kind == "d":
            local.last_seq = env.seq
            if self.metrics is not None and env.sent_ms:
                self.metrics.publish_latency.observe(max(0.0, time.time() - env.sent_ms / 1000))
            local.mailbox.deliver(env.seq, env.body)
        else:
            local.mailbox.replaced()

    async def _recover(self) -> None:
        """After Redis comes back: make it agree with what this node holds, then fill gaps."""
        assert self._redis is not None
        if await self._redis.zscore(self.nodes_key, self.node_id) is None:
            # Redis lost this node (reset, failover, or swept during a partition); the other
            # nodes are restoring theirs too: give them a heartbeat before trusting "no such peer"
            self._settle_until = time.monotonic() + self.node_ttl
        await self._register_again()
        await self._reconcile()
        await self._redis.zadd(self.nodes_key, {self.node_id: _ms()})
        self._healthy = True
        await self._repair_gaps()

    async def _register_again(self) -> None:
        """Register every live connection, its rooms and this node again. Idempotent, so it
        runs after every reconnect: Redis may have restarted empty, failed over to a lagging
        replica, or swept this node during a partition. No peer-joined/peer-left churn."""
        r = self._redis
        assert r is not None
        restored = 0
        for peer, locals_ in list(self._local.items()):
            live = [x for x in locals_ if x.epoch is not None]
            if not live:
                continue
            local = live[-1]
            state, inbox, rooms, _ = self._peer_keys(peer)
            res = await self._eval("REGISTER", [state, inbox, rooms], [local.epoch, self.node_id, local.last_seq])
            if res == 0:
                local.mailbox.replaced()  # a newer connection took the peer meanwhile
                continue
            restored += res == 2
            await r.sadd(self._node_peers_key(self.node_id), peer)
            await r.zrem(self.grace_key, peer)
            if local.rooms:
                await r.sadd(rooms, *local.rooms)
                for room in local.rooms:
                    await r.sadd(self._room_key(room), peer)
        if restored:
            self._settle_until = time.monotonic() + self.node_ttl
            log.warning("Redis had lost %d live peers of this node: registered them again", restored)

    async def _reconcile(self) -> None:
        """Peers Redis still places on this node that ended while it was unreachable
        (their detach failed): they start their grace now."""
        r = self._redis
        assert r is not None
        held = [p.decode() for p in await r.smembers(self._node_peers_key(self.node_id))]
        gone = [p for p in held if p not in self._local]
        if not gone:
            return
        deadline = _ms() + int(self.grace * 1000)
        orphaned = await self._orphan(self.node_id, gone, deadline)
        if orphaned:
            await r.zadd(self.grace_key, {p: deadline for p in orphaned})
        await r.srem(self._node_peers_key(self.node_id), *gone)

    async def _repair_gaps(self) -> None:
        """After a reconnect: hand each live connection what reached its inbox meanwhile.
        A connection whose gap the inbox bound has cut into is told it `lost()` messages."""
        assert self._redis is not None
        for peer, locals_ in list(self._local.items()):
            for local in locals_:
                if local.epoch is None:
                    continue
                state, inbox, _, _ = self._peer_keys(peer)
                marked = await self._redis.hget(state, "trimmed")
                trimmed = parse_seq(marked.decode()) if marked else None
                if await self._redis.xlen(inbox) > self.inbox_limit:  # full: see redis_scripts
                    oldest = parse_seq((await self._redis.xrange(inbox, "-", "+", count=1))[0][0].decode())
                    trimmed = max(trimmed or ZERO, oldest or ZERO)
                if trimmed is not None and trimmed > (parse_seq(local.last_seq) or ZERO):
                    local.mailbox.lost()
                    continue
                for seq, fields in await self._redis.xrange(inbox, f"({local.last_seq}", "+"):
                    self._handle(local, envelope.Envelope("d", local.epoch, seq.decode(), fields[b"b"]))

    # -- liveness ----------------------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.node_ttl / 3)
            try:
                assert self._redis is not None
                if await self._redis.zscore(self.nodes_key, self.node_id) is None:
                    # Redis lost this node without a disconnect (reset behind a proxy, or the
                    # others took it for dead): register everything again and fill the gaps
                    await self._recover()
                await self._redis.zadd(self.nodes_key, {self.node_id: _ms()})
                self._healthy = True
            except (RedisError, OSError) as exc:
                if self._healthy:
                    log.warning("bus heartbeat failed: %s", exc)
                self._healthy = False

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
        """Every node runs this; each step is idempotent, so they need no lock.

        1. Nodes whose heartbeat is older than `node_ttl`: their connected peers become
           reconnecting, with a grace from now.
        2. Peers whose grace has run out leave their rooms (`peer-left`) and are dropped.
        """
        r = self._redis
        assert r is not None
        now = _ms()
        dead = await r.zrangebyscore(self.nodes_key, "-inf", now - int(self.node_ttl * 1000))
        for node in (n.decode() for n in dead):
            if node == self.node_id:
                continue
            peers = [p.decode() for p in await r.smembers(self._node_peers_key(node))]
            deadline = now + int(self.grace * 1000)
            if peers:
                orphaned = await self._orphan(node, peers, deadline)
                if orphaned:
                    await r.zadd(self.grace_key, {p: deadline for p in orphaned})
                log.warning("node %s stopped answering: %d of its peers are reconnecting", node, len(orphaned))
            await r.delete(self._node_peers_key(node))
            await r.zrem(self.nodes_key, node)
        for peer in (p.decode() for p in await r.zrangebyscore(self.grace_key, "-inf", now, start=0, num=200)):
            gone = await self._eval("EXPIRE", list(self._peer_keys(peer)[:3]), [now])
            await self._eval("UNSCHEDULE", [self.grace_key], [peer, now])
            if gone:
                rooms, undelivered = gone
                self._expired += int(undelivered)
                await self._leave_all(peer, [m.decode() for m in rooms])
