"""Two Python peers chat over a WebRTC data channel, negotiated through the signaling server.

Run a node (`make run`), then in two terminals:

    python examples/aiortc_datachannel.py --peer alice
    python examples/aiortc_datachannel.py --peer bob

or both peers in one process:

    python examples/aiortc_datachannel.py --both --count 3

Each peer joins a room; the one that finds somebody there already makes the call. The
chat channel is pre-negotiated (`id` 0, label `chat`) and speaks `{"from", "text"}`
JSON, like the demo page, so a peer started here can also chat with the demo page in a
browser (click "Call" next to its name). Needs `pip install aiortc`.

aioice leaves 127.0.0.1 out of its host candidates: the two peers need a machine with
a network interface that has an address (any; the traffic stays between the two).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from signaling.client import PeerLink, SignalingClient


class ChatPeer:
    """One peer: joins `room`, calls whoever is there, chats on the data channel."""

    def __init__(self, url: str | list[str], peer: str, room: str, count: int, interval: float) -> None:
        self.client = SignalingClient(url, peer=peer)
        self.room = room
        self.count = count  # messages to send; 0 = until interrupted
        self.interval = interval
        self.link: PeerLink | None = None
        self.channel = None
        self.received: list[str] = []
        self.done = asyncio.Event()
        self.joined = asyncio.Event()
        self.opened = asyncio.Event()
        self.all_received = asyncio.Event()  # `count` messages came from the other side

    @property
    def name(self) -> str:
        return self.client.peer or "?"

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)

    async def run(self) -> None:
        client = self.client
        client.on("welcome", lambda w: self.say(f"on {w['node']} (resumed={w['resumed']})"))
        client.on("offer", self.on_offer)
        client.on("peer-left", self.on_peer_left)
        await client.connect(timeout=15)
        others = await client.join(self.room)
        self.say(f"joined {self.room}: {', '.join(others) or 'nobody else yet'}")
        self.joined.set()
        if others:
            self.call(others[0])
        sender = asyncio.create_task(self.chat())
        try:
            await self.done.wait()
        finally:
            sender.cancel()
            await client.close()

    def call(self, remote: str) -> None:
        self.say(f"calling {remote}")
        self.make_link(remote).negotiate()

    def on_offer(self, frame: dict) -> None:
        if self.link is None:
            self.say(f"call from {frame['from']}")
            self.make_link(frame["from"])  # the client hands it this offer next

    def on_peer_left(self, event: dict) -> None:
        if self.link is not None and event["peer"] == self.link.remote:
            self.say(f"{event['peer']} left")
            self.remote_gone()

    def remote_gone(self) -> None:
        """The other side hung up: stop, unless everything is in (then chat() ends on its
        own and says so: the other side, done first, may hang up while this one's last
        message is still on its way out, and its `bye` can overtake the data channel)."""
        if not (self.count and len(self.received) >= self.count):
            self.done.set()

    def make_link(self, remote: str) -> PeerLink:
        self.link = self.client.link(remote, setup=self.setup)
        self.link.on("state", lambda state: self.say(f"connection {state}"))
        self.link.on("bye", lambda _: self.remote_gone())
        return self.link

    def setup(self, pc) -> None:
        """Prepare each connection the link makes (the first, and any rebuild)."""
        channel = pc.createDataChannel("chat", negotiated=True, id=0)
        self.channel = channel
        self.opened.clear()

        @channel.on("open")
        def on_open() -> None:
            self.say("data channel open")
            self.opened.set()

        @channel.on("message")
        def on_message(data: str) -> None:
            msg = json.loads(data)
            self.received.append(msg["text"])
            self.say(f"{msg['from']}: {msg['text']}")
            if self.count and len(self.received) >= self.count:
                self.all_received.set()

        @pc.on("track")
        def on_track(track) -> None:
            self.say(f"receiving {track.kind} (not shown)")

    async def chat(self) -> None:
        sent = 0
        while not self.count or sent < self.count:
            await self.opened.wait()
            sent += 1
            self.channel.send(json.dumps({"from": self.name, "text": f"hello #{sent} from {self.name}"}))
            await asyncio.sleep(self.interval)
        # stay until the other side's messages are in too (bounded by the caller's timeout)
        if self.count:
            await self.all_received.wait()
        self.say(f"sent {sent}, received {len(self.received)}")
        self.done.set()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", help="the /ws URL (repeat for several nodes); default ws://127.0.0.1:8080/ws")
    parser.add_argument("--room", default="aiortc-demo")
    parser.add_argument("--peer", default=None, help="peer id (default: the server picks one)")
    parser.add_argument("--both", action="store_true", help="run two peers, alice and bob, in this process")
    parser.add_argument("--count", type=int, default=0, help="messages each peer sends before it ends (0: forever)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    parser.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    url = args.url or ["ws://127.0.0.1:8080/ws"]
    if args.both:
        peers = [ChatPeer(url, "alice", args.room, args.count, args.interval),
                 ChatPeer(list(reversed(url)), "bob", args.room, args.count, args.interval)]
    else:
        peers = [ChatPeer(url, args.peer, args.room, args.count, args.interval)]

    async def run_all() -> None:
        if args.both:
            first = asyncio.create_task(peers[0].run())  # alice first, so bob finds her and calls
            await asyncio.wait([first, asyncio.create_task(peers[0].joined.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(first, peers[1].run())
        else:
            await peers[0].run()

    try:
        await asyncio.wait_for(run_all(), args.timeout or None)
    except TimeoutError:
        print("timed out", file=sys.stderr)
        return 1
    ok = all(len(p.received) >= args.count for p in peers)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        raise SystemExit(asyncio.run(main()))
    except KeyboardInterrupt:
        pass
