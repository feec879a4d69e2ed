"""Processes the suite starts, and what it reads about them from /proc.

Every process is started in a session of its own (a Ctrl-C in the terminal reaches
only the orchestrator), dies with the orchestrator even if that is SIGKILLed
(PR_SET_PDEATHSIG), is recorded in `LIVE`, and is stopped by its PID: SIGTERM, then
SIGKILL after a timeout. `stop_all()` runs on every way out (normal end, exception,
Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover
    _prctl = None


def _child_setup() -> None:  # between fork and exec: die with the orchestrator
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    """One child process, stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, pipes: bool = False) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._logfile = open(log, "ab")
        self.popen = subprocess.Popen(
            self.argv, cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._logfile, stderr=self._logfile,
            preexec_fn=_child_setup if _prctl is not None else None)
        self.pid = self.popen.pid
        LIVE[self.pid] = self

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float:
        """utime + stime of the whole process (every thread), in seconds."""
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def send_signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        if self.alive:
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
                    pass
        LIVE.pop(self.pid, None)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._logfile.close()
        return self.popen.poll()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


LIVE: dict[int, Proc] = {}  # pid -> every process started and not yet stopped
INTERRUPTED: list[int] = []  # the signals that asked the suite to stop (Ctrl-C, SIGTERM)


def stop_all(timeout: float = 3.0) -> None:
    for proc in list(LIVE.values())[::-1]:  # the newest first: load generators before servers
        proc.stop(timeout)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    # after the ")" that ends comm: field 3 is at index 0, so utime (14) is 11, stime (15) is 12
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def system_busy() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.poll()}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on port {port} within {timeout:.0f}s:\n{proc.tail()}")


def http_status(port: int, path: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = s.recv(64).decode("latin1")
        return int(head.split()[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Sample:
    """CPU seconds of every watched process and of the whole machine at one instant."""

    at: float
    cpu: dict[int, float]
    busy: float

    @classmethod
    def take(cls, pids: Sequence[int]) -> "Sample":
        cpu = {}
        for pid in pids:
            try:
                cpu[pid] = cpu_seconds(pid)
            except (OSError, IndexError):
                cpu[pid] = float("nan")
        return cls(time.monotonic(), cpu, system_busy())


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one (children inherit it); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
