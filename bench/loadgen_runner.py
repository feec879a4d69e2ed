"""Run the Node.js load generator (bench/loadgen/loadgen.js) and sample CPU at its window edges.

The generator prints one JSON event per line; at `measure-start` and `measure-end` the
orchestrator reads /proc/<pid>/stat of every server process and redis-server (and the
machine's total from /proc/stat), so the CPU figures cover exactly the measured window.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from .procs import INTERRUPTED, LIVE, Proc, Sample, _child_setup, _prctl, cpu_seconds
from .servers import BENCH, node_binary

LOADGEN = BENCH / "loadgen" / "loadgen.js"
EventHook = Callable[["Loadgen", dict[str, Any]], Awaitable[None] | None]


def ensure_node_modules() -> None:
    """`npm ci` inside bench/ when node_modules is missing (from package-lock.json)."""
    if (BENCH / "node_modules" / "ws").is_dir() and (BENCH / "node_modules" / "socket.io").is_dir():
        return
    npm = "npm"
    print("bench: installing the load generator's packages (npm ci in bench/)", file=sys.stderr, flush=True)
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {BENCH} failed:\n{done.stdout}\n{done.stderr}")


class Loadgen:
    """One load generator process; `events` gathers everything it printed."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "loadgen") -> None:
        self.config, self.workdir, self.name = config, workdir, name
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.record: Proc | None = None
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".json", dir=workdir)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        self.config_path = Path(path)
        self.log = workdir / f"{name}.log"

    async def start(self) -> None:
        self._log = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(), str(LOADGEN), str(self.config_path), cwd=BENCH, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
            preexec_fn=_child_setup if _prctl is not None else None, limit=1 << 24)
        LIVE[self.proc.pid] = _AsyncRecord(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def next_event(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if INTERRUPTED:  # a cancel that raced with a line arriving must not be lost
            raise asyncio.CancelledError()
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.stderr_tail()}")
        event = json.loads(line)
        self.events.append(event)
        if event.get("event") == "fatal":
            raise RuntimeError(f"{self.name}: {event.get('message')}")
        return event

    async def until(self, name: str, timeout: float, hook: EventHook | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no {name!r} event within {timeout:.0f}s:\n{self.stderr_tail()}")
            event = await self.next_event(left)
            if hook is not None:
                maybe = hook(self, event)
                if asyncio.iscoroutine(maybe):
                    await maybe
            if event.get("event") == name:
                return event

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                _kill(proc.pid, 15)
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except asyncio.TimeoutError:
                    _kill(proc.pid, 9)
                    await proc.wait()
        LIVE.pop(proc.pid, None)
        self._log.close()
        self.config_path.unlink(missing_ok=True)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _AsyncRecord:
    """Stands in `procs.LIVE` for a load generator, so `stop_all()` can end it by PID."""

    def __init__(self, lg: Loadgen) -> None:
        self.lg = lg

    def stop(self, timeout: float = 3.0) -> None:
        proc = self.lg.proc
        if proc is not None and proc.returncode is None:
            _kill(proc.pid, 15)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(proc.pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.02)
            else:
                _kill(proc.pid, 9)
        if proc is not None:
            LIVE.pop(proc.pid, None)


class Window:
    """CPU samples at the generator's window edges."""

    def __init__(self, pids: Sequence[int], watch_loadgen: bool = True) -> None:
        self.pids = list(pids)
        self.watch_loadgen = watch_loadgen
        self.start: Sample | None = None
        self.end: Sample | None = None

    def hook(self, lg: Loadgen, event: dict[str, Any]) -> None:
        name = event.get("event")
        pids = self.pids + ([lg.pid] if self.watch_loadgen else [])
        if name == "measure-start":
            self.start = Sample.take(pids)
        elif name == "measure-end":
            self.end = Sample.take(pids)

    def cpu(self, pid: int) -> float:
        assert self.start is not None and self.end is not None
        return self.end.cpu[pid] - self.start.cpu[pid]

    @property
    def seconds(self) -> float:
        assert self.start is not None and self.end is not None
        return self.end.at - self.start.at

    @property
    def machine_busy(self) -> float:
        assert self.start is not None and self.end is not None
        return self.end.busy - self.start.busy
