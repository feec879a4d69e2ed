"""A private network namespace for tests with real WebRTC stacks.

Chromium gathers no ICE candidates when only `lo` exists, and on the host it would use
the machine's external interface; aioice leaves 127.0.0.1 out of its host candidates.
So the browsers and aiortc peers of the tests run inside a namespace the test makes
itself: `lo` plus one end of a veth pair, with an address in 198.18.0.0/15 (the range
reserved for benchmarking) and a default route through the pair. The other end of the
pair stays in the host's namespace, where the signaling nodes listen on its address.
Every packet stays on this machine.

A thread enters the namespace with setns(2) (`NetNamespace.entered()`): processes it
starts meanwhile (the Playwright driver and its Chromium) live in the namespace, and so
do sockets it opens (aioice's). `NetNamespace.destroy()` deletes the namespace, which
takes the veth pair with it; it runs in the fixtures' finalizers, even after a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
PREFIX = "sigtest"  # namespace names: sigtest-<pid>-<hex>; stale ones are swept
NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ip")
    assert binary, "`ip` is not installed: run .ci/run (or apt-get install iproute2)"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=check, timeout=10)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Delete namespaces a killed test run left behind (their pid is gone)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-[0-9a-f]+", entry.name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "del", entry.name, check=False)


class NetNamespace:
    """`ip netns add` + a veth pair in 198.18.<n>.0/30: host end .1, namespace end .2."""

    def __init__(self) -> None:
        token = f"{random.getrandbits(24):06x}"
        self.name = f"{PREFIX}-{os.getpid()}-{token}"
        self.host_if = f"sgh{token}"  # at most 15 characters
        self.ns_if = f"sgn{token}"
        self.subnet = 0
        self.created = False

    @property
    def host_address(self) -> str:
        """The host end of the pair: where servers listen for the namespace."""
        return f"198.18.{self.subnet}.1"

    @property
    def address(self) -> str:
        """The namespace's own address (its WebRTC host candidates)."""
        return f"198.18.{self.subnet}.2"

    def create(self) -> NetNamespace:
        assert os.geteuid() == 0, "network namespaces need root (CI runs as root)"
        sweep_stale()
        used = set(re.findall(r"inet 198\.18\.(\d+)\.", _ip("-4", "addr", "show").stdout))
        free = [n for n in range(1, 255) if str(n) not in used]
        assert free, "no free 198.18.<n>.0/30 subnet"
        self.subnet = random.choice(free)
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            inside = ("-n", self.name)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{self.address}/30", "dev", self.ns_if)
            _ip(*inside, "link", "set", self.ns_if, "up")
            _ip(*inside, "route", "add", "default", "via", self.host_address)
        except BaseException:
            self.destroy()
            raise
        return self

    def pids(self) -> list[int]:
        """Processes inside the namespace (never this one, whose thread may be visiting)."""
        if not self.created:
            return []
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]

    def kill_remaining(self) -> None:
        """SIGKILL, by PID, whatever the test started in here and did not stop."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Delete the namespace (and with it the pair). Safe to call twice."""
        if not self.created:
            return
        self.kill_remaining()  # a process left inside would keep the namespace alive
        self.created = False
        _ip("netns", "del", self.name, check=False)
        if _ip("link", "show", self.host_if, check=False).returncode == 0:
            _ip("link", "del", self.host_if, check=False)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into the namespace, and back afterwards."""
        with open("/proc/thread-self/ns/net") as home, open(NETNS_DIR / self.name) as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def run(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              **kwargs)  # type: ignore[call-overload]  # the caller's subprocess.run keywords

    def popen_args(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]
