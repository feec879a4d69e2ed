"""The Redis bus's one way to Redis, whatever the topology.

A `RedisLink` runs commands and scripts and holds the pub/sub subscriptions. Every
command is sent as `call` is called, in call order per server (a `Pipeline` each), so
the bus reads the same on every topology; the bus names a key with each command and
never knows which servers there are, except to walk them (SCAN) by name.

- `SingleLink`: one Redis, found directly (`redis://`, `rediss://`, `unix://`) or through
  Sentinel (`redis+sentinel://`): one command pipeline and one pub/sub connection to the
  primary, both found again at each connect and checked with ROLE, so a failover is
  followed.
- `ClusterLink`: Redis Cluster (`redis+cluster://`): the slot map from CLUSTER SLOTS, a
  pipeline and a sharded pub/sub connection per primary, MOVED and ASK followed, and the
  map read again when a primary is lost or a reply says a slot moved.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from .base import BusUnavailable
from .redis_pipeline import CommandNotSent, Pipeline
from .redis_sentinel import SentinelLocator
from .redis_subscriber import Subscriber
from .redis_url import Endpoint, RedisTarget
from .redis_wire import copy_outcome, pack, retrieved

log = logging.getLogger("signaling.bus.redis")

SLOTS = 16384
MAX_REDIRECTS = 5  # MOVED/ASK hops for one command (a resharding moves a slot once)


class RedisLink(abc.ABC):
    """Commands, scripts and pub/sub on one Redis deployment.

    `on_message(channel, data)` gets each published message; `on_reconnect()` runs after
    a pub/sub connection came back (messages held until it returns, see Subscriber);
    `on_changed()` after the deployment changed under the node (a failover, slots
    moved): what the old primary had not replicated may be gone; `on_unsettled()` while
    part of it is unreachable."""

    sharded = False  # pub/sub is sharded (SSUBSCRIBE / SPUBLISH)

    def __init__(self, target: RedisTarget, scripts: dict[str, str], *,
                 on_message: Callable[[bytes, bytes], None], on_reconnect: Callable[[], Awaitable[None]],
                 on_changed: Callable[[], Awaitable[None]], on_unsettled: Callable[[], None],
                 replicas: int = 0) -> None:
        self.target = target
        self.replicas = replicas  # WAIT for this many after each batch (see Pipeline)
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in scripts.items()}
        self._scripts = {self._shas[name]: text for name, text in scripts.items()}
        self.on_message, self.on_reconnect = on_message, on_reconnect
        self.on_changed, self.on_unsettled = on_changed, on_unsettled

    def sha(self, name: str) -> str:
        return self._shas[name]

    def script(self, name: str, keys: list[str], args: list[Any], *, control: bool = False) -> asyncio.Future[Any]:
        """EVALSHA of script `name`, on the server of its first key. `control`: on a
        connection of its own, so it is never queued behind bulk work (the lease: a
        recovery of thousands of peers must not make its renewal late)."""
        return self.call(keys[0], "EVALSHA", self._shas[name], len(keys), *keys, *args, control=control)

    @abc.abstractmethod
    async def start(self) -> None:
        """Find the servers (it may raise if none answers: the bus retries in the background)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def call(self, key: str | bytes, *args: Any, control: bool = False) -> asyncio.Future[Any]:
        """One command, sent now, on the server that holds `key` (`control`: see `script`)."""

    @abc.abstractmethod
    def call_packed(self, key: str | bytes, command: bytes) -> asyncio.Future[Any]:
        """`call` with the command already in RESP (the bus's hot path packs its own)."""

    @abc.abstractmethod
    def servers(self) -> list[str]:
        """The primaries by name (to walk every key: SCAN runs on each)."""

    @abc.abstractmethod
    def call_on(self, server: str, *args: Any) -> asyncio.Future[Any]:
        """One command on primary `server` (a name from `servers()`)."""

    @property
    @abc.abstractmethod
    def subscribed(self) -> bool:
        """Every pub/sub connection is up, every channel subscribed, recovery done."""

    @abc.abstractmethod
    async def subscribe(self, channel: bytes) -> None:
        """Returns once Redis confirmed it; BusUnavailable if it cannot."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: bytes) -> None: ...

    @abc.abstractmethod
    def _subscribers(self) -> list[Subscriber]: ...

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Messages are held back (in order) while this lasts: a recovery is handing over
        what reached the inboxes, and nothing newer may overtake it."""
        subs = self._subscribers()
        for sub in subs:
            sub.hold()
        try:
            yield
        finally:
            for sub in subs:
                sub.release()

    async def _reconnected(self, sub: Subscriber) -> None:
        await self.on_reconnect()


def open_link(target: RedisTarget, scripts: dict[str, str], **callbacks: Any) -> RedisLink:
    """The link for a bus URL's target (`redis_url.parse`)."""
    if target.topology == "cluster":
        return ClusterLink(target, {k: v.replace("'PUBLISH'", "'SPUBLISH'") for k, v in scripts.items()},
                           **callbacks)
    return SingleLink(target, scripts, **callbacks)


class SingleLink(RedisLink):
    def __init__(self, target: RedisTarget, scripts: dict[str, str], **callbacks: Any) -> None:
        super().__init__(target, scripts, **callbacks)
        sentinel = target.topology == "sentinel"
        if sentinel:
            locate: Callable[[], Awaitable[Endpoint]] = SentinelLocator(target)
        else:
            endpoint = target.endpoints[0]

            async def locate() -> Endpoint:
                return endpoint
        self.name = f"sentinel:{target.service}" if sentinel else target.endpoints[0].name
        self._primary: Endpoint | None = None  # where the pipeline last connected
        self._pipeline = Pipeline(locate, target, self._scripts, require_primary=sentinel, name=self.name,
                                  on_connected=self._connected, replicas=self.replicas)
        self._control = Pipeline(locate, target, self._scripts, require_primary=sentinel, name=self.name)
        self._subscriber = Subscriber(locate, target, name=self.name, sharded=False, on_message=self.on_message,
                                      on_reconnect=self._reconnected, require_primary=sentinel)

    async def start(self) -> None:
        self._subscriber.start()

    async def close(self) -> None:
        await self._subscriber.close()
        await self._pipeline.close()
        await self._control.close()

    def call(self, key: str | bytes, *args: Any, control: bool = False) -> asyncio.Future[Any]:
        return (self._control if control else self._pipeline).call(*args)

    def call_packed(self, key: str | bytes, command: bytes) -> asyncio.Future[Any]:
        return self._pipeline.call_packed(command)

    def servers(self) -> list[str]:
        return [self.name]

    def call_on(self, server: str, *args: Any) -> asyncio.Future[Any]:
        return self._pipeline.call(*args)

    @property
    def subscribed(self) -> bool:
        return self._subscriber.up

    async def subscribe(self, channel: bytes) -> None:
        await self._subscriber.subscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        await self._subscriber.unsubscribe(channel)

    def _subscribers(self) -> list[Subscriber]:
        return [self._subscriber]

    def _connected(self, endpoint: Endpoint) -> None:
        """The command pipeline (re)connected: if the primary moved (Sentinel failed over),
        the pub/sub connection follows and the bus learns that data may be missing."""
        previous, self._primary = self._primary, endpoint
        self._subscriber.retry_now()
        if previous is None or previous == endpoint:
            return
        log.warning("the Redis primary moved from %s to %s (failover)", previous.name, endpoint.name)
        self.on_unsettled()
        if self._subscriber.endpoint is not None and self._subscriber.endpoint != endpoint:
            self._subscriber.restart(f"the primary moved to {endpoint.name}")
        task = asyncio.ensure_future(self.on_changed())
        task.add_done_callback(retrieved)

    async def _reconnected(self, sub: Subscriber) -> None:
        if sub.endpoint is not None and self._primary is not None and sub.endpoint != self._primary:
            self._pipeline.restart(f"the primary moved to {sub.endpoint.name}")
        await self.on_reconnect()


class ClusterLink(RedisLink):
    sharded = True

    def __init__(self, target: RedisTarget, scripts: dict[str, str], **callbacks: Any) -> None:
        super().__init__(target, scripts, **callbacks)
        self._owners: list[str | None] = [None] * SLOTS  # slot -> primary name
        self._primaries: dict[str, Endpoint] = {}
        self._pipelines: dict[str, Pipeline] = {}  # primaries, and servers a redirect named
        self._controls: dict[str, Pipeline] = {}  # the same, for control commands (see RedisLink.script)
        self._hops: weakref.WeakKeyDictionary[asyncio.Future[Any], int] = weakref.WeakKeyDictionary()  # redirects
        self._subs: dict[str, Subscriber] = {}  # primary name -> its sharded pub/sub connection
        self._channels: set[bytes] = set()  # every channel subscribed (they follow their slot)
        self._refreshing: asyncio.Task[None] | None = None
        self._topology = asyncio.Lock()
        self._started = False

    async def start(self) -> None:
        self._started = True
        await self.refresh()

    async def close(self) -> None:
        self._started = False
        if self._refreshing is not None:
            self._refreshing.cancel()
        for sub in list(self._subs.values()):
            await sub.close()
        for pipeline in [*self._pipelines.values(), *self._controls.values()]:
            await pipeline.close()

    # -- commands ----------------------------------------------------------------------
    def call(self, key: str | bytes, *args: Any, control: bool = False) -> asyncio.Future[Any]:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return self._routed(slot, pack(args), self._owners[slot], control=control)

    def call_packed(self, key: str | bytes, command: bytes) -> asyncio.Future[Any]:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return self._routed(slot, command, self._owners[slot], control=False)

    def servers(self) -> list[str]:
        return sorted(self._primaries)

    def call_on(self, server: str, *args: Any) -> asyncio.Future[Any]:
        pipeline = self._pipelines.get(server)
        if pipeline is None:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(CommandNotSent(f"{server} is not a primary of the cluster now"))
            return future
        return pipeline.call(*args)

    def _pipeline(self, name: str, control: bool = False) -> Pipeline:
        pipelines = self._controls if control else self._pipelines
        pipeline = pipelines.get(name)
        if pipeline is None:
            host, _, port = name.rpartition(":")
            pipeline = pipelines[name] = Pipeline.fixed(
                Endpoint(host, int(port)), self.target, self._scripts, on_lost=self._lost, on_connected=self._reached,
                replicas=0 if control else self.replicas,
                on_redirect=functools.partial(self._redirect, control=control))
        return pipeline

    def _routed(self, slot: int, command: bytes, owner: str | None, *, control: bool) -> asyncio.Future[Any]:
        if owner is None:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(CommandNotSent(f"no primary serves slot {slot} (the cluster is changing)"))
            self._refresh_soon()
            return future
        return self._pipeline(owner, control).call_packed(command)  # redirects: see _redirect

    def _redirect(self, future: asyncio.Future[Any], command: bytes, reply: str, control: bool) -> None:
        """A MOVED or ASK for `command` (which did not run): send it where Redis says and let
        `future` have that answer. MOVED also corrects the slot map and has it read again."""
        kind, slot_text, target = reply.split(" ", 2)
        hops = self._hops.get(future, 0) + 1
        if hops > MAX_REDIRECTS:
            future.set_exception(ResponseError(reply))
            return
        if kind == "MOVED":
            self._owners[int(slot_text)] = target
            self._refresh_soon()
        pipeline = self._pipeline(target, control)
        if kind == "ASK":
            pipeline.call("ASKING").add_done_callback(retrieved)  # (sent just before: nothing comes between)
        self._hops[future] = hops
        again = pipeline.call_packed(command)
        self._hops[again] = hops  # (if it is redirected in turn, the count goes on)

        def answered(done: asyncio.Future[Any]) -> None:  # (a redirect of `again` is handled on its own)
            self._hops.pop(future, None)
            copy_outcome(done, future)
        again.add_done_callback(answered)

    # -- topology ----------------------------------------------------------------------
    def _lost(self, pipeline: Pipeline) -> None:
        self._refresh_soon()

    def _reached(self, endpoint: Endpoint) -> None:
        sub = self._subs.get(endpoint.name)
        if sub is not None:
            sub.retry_now()

    def _refresh_soon(self) -> None:
        if self._started and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.ensure_future(self._follow())
            self._refreshing.add_done_callback(retrieved)

    async def refresh(self) -> bool:
        """Read the slot map again (from any server that answers); True if it changed."""
        candidates = list(dict.fromkeys([*self._primaries.values(), *self.target.endpoints]))
        errors = []
        for endpoint in candidates:
            probe = Pipeline.fixed(endpoint, self.target, timeout=2.0)
            try:
                slots = await probe.call("CLUSTER", "SLOTS")
            except (TimeoutError, RedisError, OSError) as exc:
                errors.append(f"{endpoint.name}: {exc}")
                continue
            finally:
                await probe.close()
            return self._apply(slots, endpoint)
        raise RedisConnectionError(f"no cluster node answers CLUSTER SLOTS: {'; '.join(errors)}")

    def _apply(self, slots: list[Any], asked: Endpoint) -> bool:
        owners: list[str | None] = [None] * SLOTS
        primaries: dict[str, Endpoint] = {}
        for start, end, primary, *_ in slots:
            host = primary[0].decode() or asked.host  # an empty host: the node asked
            endpoint = Endpoint(host, int(primary[1]))
            primaries[endpoint.name] = endpoint
            owners[int(start):int(end) + 1] = [endpoint.name] * (int(end) - int(start) + 1)
        changed = owners != self._owners
        self._owners, self._primaries = owners, primaries
        for name in primaries:
            self._pipeline(name)
            if name not in self._subs:
                self._add_subscriber(name, recovering=bool(self._subs))
        return changed

    async def _follow(self) -> None:
        """A primary was lost or a slot moved: read the map again and move every channel to
        the primary that owns its slot now; tell the bus when anything moved."""
        self.on_unsettled()
        async with self._topology:
            try:
                changed = await self.refresh()
            except RedisError as exc:
                log.info("cluster topology not readable yet: %s", exc)
                return
            moved = 0
            for channel in sorted(self._channels):
                owner = self._owners[key_slot(channel)]
                target = self._subs.get(owner) if owner is not None else None
                if target is None or channel in target.channels:
                    continue
                for sub in self._subs.values():
                    sub.channels.discard(channel)
                target.channels.add(channel)  # its reader subscribes it on (re)connect
                if target.up:
                    with contextlib.suppress(BusUnavailable):
                        await target.subscribe(channel)
                moved += 1
            stale = [name for name in self._subs if name not in self._primaries]
            closing = [self._subs.pop(name) for name in stale]
            for pipelines in (self._pipelines, self._controls):
                for name in [n for n in pipelines if n not in self._primaries]:
                    asyncio.ensure_future(pipelines.pop(name).close()).add_done_callback(retrieved)
        if changed or moved or stale:
            log.warning("cluster changed: %d channels now on other primaries, %d primaries gone", moved, len(stale))
            with contextlib.suppress(RedisError, OSError, BusUnavailable):
                await self.on_changed()
        for sub in closing:  # last: the caller may be one of them, and closing cancels it
            asyncio.ensure_future(sub.close()).add_done_callback(retrieved)

    def _add_subscriber(self, name: str, *, recovering: bool) -> None:
        endpoint = self._primaries[name]

        async def here() -> Endpoint:
            return endpoint
        sub = Subscriber(here, self.target, name=name, sharded=True, on_message=self.on_message,
                         on_reconnect=self._reconnected, on_lost=self._sub_lost)
        self._subs[name] = sub
        sub.start(recovering=recovering)  # channels it takes over may have missed messages

    async def _sub_lost(self, sub: Subscriber) -> None:
        # while a primary is unreachable, "no such peer" may only mean its replica has not
        # caught up: called after each failed reconnect, this keeps the bus wary throughout
        self.on_unsettled()
        await self._follow()

    # -- pub/sub -----------------------------------------------------------------------
    @property
    def subscribed(self) -> bool:
        return bool(self._subs) and all(sub.up for sub in self._subs.values())

    def _sub_for(self, channel: bytes) -> Subscriber:
        owner = self._owners[key_slot(channel)]
        sub = self._subs.get(owner) if owner is not None else None
        if sub is None:
            raise BusUnavailable(f"no pub/sub connection for {channel!r} (the cluster is changing)")
        return sub

    async def subscribe(self, channel: bytes) -> None:
        self._channels.add(channel)
        await self._sub_for(channel).subscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        self._channels.discard(channel)
        with contextlib.suppress(BusUnavailable):
            await self._sub_for(channel).unsubscribe(channel)

    def _subscribers(self) -> list[Subscriber]:
        return list(self._subs.values())

