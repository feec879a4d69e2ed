"""Grace expiry on the memory bus after a mass disconnect, before and after the deadline heap.

n peers in rooms of 10 drop (non-final detach) within one second, then the grace of
each runs out. The CPU time of the n detaches and of the expiry of all n is measured
for the code at commit a5080de (a timer per detach, each scanning every peer) and for
this tree (one timer over a deadline heap), each in a subprocess that imports its tree.

    git worktree add /work/wt-memheap-before a5080de
    .venv/bin/python -m bench.grace_expiry [--before /work/wt-memheap-before] [--sizes 2000,5000,20000]
    git worktree remove /work/wt-memheap-before

Time is simulated: the event loop's clock and the bus's clock are one fake clock, moved
by the benchmark, so each timer fires at its fake deadline whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = Path("/work/wt-memheap-before")
WINDOW = 1.0  # fake seconds over which the n peers drop
GRACE = 1.0  # fake seconds
TICK = 0.001  # fake seconds per loop iteration while the graces run out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose timers run on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._fake = clock

    def time(self) -> float:
        return self._fake.now


class Box:
    def deliver(self, seq: str, body: bytes) -> None:
        pass

    def replaced(self) -> None:
        pass


async def scenario(n: int, clock: FakeClock) -> dict[str, float]:
    from signaling.bus.memory import MemoryBus

    bus = MemoryBus(node_id="bench", grace=GRACE, inbox_limit=100, clock=clock)
    epochs = {}
    for i in range(n):
        peer = f"peer-{i:06d}"
        epochs[peer] = (await bus.attach(peer, Box())).epoch
        await bus.join(peer, f"room-{i // 10:05d}", room_limit=10, rooms_per_peer=1)
    loop = asyncio.get_running_loop()
    timers = len(loop._scheduled)  # noqa: SLF001

    start = time.process_time()
    for peer, epoch in epochs.items():
        clock.now += WINDOW / n
        await bus.detach(peer, epoch, final=False)
    detach = time.process_time() - start
    armed = len(loop._scheduled) - timers  # noqa: SLF001

    start = time.process_time()
    while bus.directory.peers:
        clock.now += TICK
        await asyncio.sleep(0)
    expire = time.process_time() - start
    await bus.close()
    return {"detach": detach, "expire": expire, "armed": armed, "expired_messages": bus.expired_messages()}


def worker(n: int, tree: str) -> None:
    import signaling

    where = Path(signaling.__file__).resolve().parent.parent
    if where != Path(tree).resolve():
        raise SystemExit(f"imported signaling from {where}, not {tree}")
    clock = FakeClock()
    loop = FakeTimeLoop(clock)
    try:
        result = loop.run_until_complete(scenario(n, clock))
    finally:
        loop.close()
    print(json.dumps(result))


def measure(tree: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run as a script (not -m): sys.path[0] is then bench/, so `signaling` comes from PYTHONPATH
    out = subprocess.run([sys.executable, __file__, "--worker", str(n), "--tree", str(tree)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=BEFORE, help="a worktree of commit a5080de")
    parser.add_argument("--sizes", default="2000,5000,20000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the least CPU is kept")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.tree)
        return
    if not (args.before / "signaling" / "bus" / "memory.py").exists():
        raise SystemExit(f"no tree at {args.before}: git worktree add {args.before} a5080de")

    print(f"{'n':>6}  {'phase':<7} {'before s':>9} {'after s':>9} {'ratio':>8}  timers armed  expired msgs")
    for n in (int(s) for s in args.sizes.split(",")):
        runs = {name: [measure(tree, n) for _ in range(args.repeat)]
                for name, tree in (("before", args.before), ("after", ROOT))}
        for phase in ("detach", "expire"):
            before = min(r[phase] for r in runs["before"])
            after = min(r[phase] for r in runs["after"])
            extra = ""
            if phase == "detach":
                extra = f"  {runs['before'][0]['armed']:>6} -> {runs['after'][0]['armed']:<4}"
                extra += f"  {runs['before'][0]['expired_messages']} -> {runs['after'][0]['expired_messages']}"
            print(f"{n:>6}  {phase:<7} {before:>9.3f} {after:>9.3f} {before / max(after, 1e-9):>7.1f}x{extra}",
                  flush=True)


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script by `measure`
        sys.path.pop(0)  # bench/ itself: nothing there may shadow the tree under test
    main()
