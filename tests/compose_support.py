"""The Docker Compose stack for real: a Docker Engine, the repo's docker-compose.yml with a
test override, and a stream of timed handshakes.

The engine is this machine's own where `docker info` and `docker compose version` already
work (a developer's machine: the real base images); otherwise the shared
`docker-engine.sh` beside the checkout (`<repo>/../shared/tools/docker-engine.sh`), which
runs Debian's dockerd and builds stand-in base images with the names our files use.
Its first run downloads and builds for about five minutes; later runs reuse that.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import ssl
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from cluster_support import make_cert
from signaling.auth import mint
from support import free_port

ROOT = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT = ROOT.parent / "shared" / "tools" / "docker-engine.sh"
ENGINE_STATE = Path(os.environ.get("S", "/tmp/docker-engine"))  # the script's $S
NOFILE = 16384  # within the shared engine's hard limit (20000); the compose file asks 65536


def log(text: str) -> None:
    print(f"[compose {time.strftime('%H:%M:%S')}] {text}", flush=True)


def base_images() -> dict[str, str]:
    """The script's image variables -> the names the Dockerfile and docker-compose.yml use."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    (python,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    return {"PY_IMAGE": python, "REDIS_IMAGE": compose["redis"]["image"], "NGINX_IMAGE": compose["nginx"]["image"]}


def _works(args: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(args, env=env, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Engine:
    """A Docker Engine with Compose v2; `stop()` stops it only if `start()` started it."""

    def __init__(self, env: dict[str, str], script: Path | None) -> None:
        self.env, self.script = env, script

    @classmethod
    def start(cls) -> Engine:
        env = dict(os.environ)
        if shutil.which("docker") and _works(["docker", "info"], env) and _works(["docker", "compose", "version"], env):
            log("using this machine's Docker Engine")
            return cls(env, None)
        if not ENGINE_SCRIPT.is_file():
            raise RuntimeError(f"no working `docker` and no engine script at {ENGINE_SCRIPT}")
        engine = cls(env, ENGINE_SCRIPT)
        engine.env.update(base_images())  # the stand-ins get exactly our names
        exports = engine._script("env", capture=True)
        for name, value in re.findall(r"(\w+)=(\S+)", exports):
            engine.env[name] = value.replace("$PATH", os.environ.get("PATH", ""))
        downloaded = [ENGINE_STATE / "root/usr/sbin/dockerd"] + [ENGINE_STATE / "dl" / f"{n}.tgz"
                                                                  for n in ("py", "redis", "nginx")]
        if not all(p.exists() for p in downloaded):
            engine._script("prepare")  # ~2 min of downloads, once per machine
        engine._script("start")
        images = [engine.env[k] for k in ("PY_IMAGE", "REDIS_IMAGE", "NGINX_IMAGE")]
        if not _works(["docker", "image", "inspect", *images], engine.env):
            engine._script("images")  # ~2.5 min, once per machine
        return engine

    def _script(self, command: str, capture: bool = False) -> str:
        assert self.script is not None
        began = time.monotonic()
        done = subprocess.run(["bash", str(self.script), command], env=self.env, text=True, timeout=900,
                              capture_output=capture)
        if done.returncode != 0:
            raise RuntimeError(f"docker-engine.sh {command} failed ({done.returncode}): {done.stderr or ''}")
        if not capture:
            log(f"docker-engine.sh {command}: {time.monotonic() - began:.1f} s")
        return done.stdout or ""

    def stop(self) -> None:
        if self.script is not None:
            self._script("stop")


class Stack:
    """docker-compose.yml under its own project name, with an override file in `workdir`:
    endpoint ports free on 127.0.0.1, a generated JWT secret and TLS certificate (never in
    the repo tree), an image tag of its own, and `ulimits` within the host's hard limit."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.engine, self.workdir = engine, workdir
        self.project = f"signaling-test-{secrets.token_hex(3)}"
        self.http_port, self.https_port = free_port(), free_port()
        self.secret = secrets.token_urlsafe(48)
        (workdir / "jwt-secret").write_text(self.secret)
        (workdir / "grafana-admin-password").write_text(secrets.token_urlsafe(18))
        certs = workdir / "certs"
        certs.mkdir()
        cert, key = make_cert(certs)
        cert.rename(certs / "tls.crt")
        key.rename(certs / "tls.key")
        self.ca = certs / "tls.crt"
        limits = {"nofile": {"soft": NOFILE, "hard": NOFILE}}
        override = {
            "services": {
                "signaling": {"image": "signaling:compose-test", "ulimits": limits},
                "nginx": {"ulimits": limits, "volumes": [f"{certs}:/etc/nginx/certs:ro"]},
            },
            "secrets": {"jwt_secret": {"file": str(workdir / "jwt-secret")},
                        "grafana_admin_password": {"file": str(workdir / "grafana-admin-password")}},
        }
        self.override = workdir / "compose.override.yml"
        self.override.write_text(yaml.safe_dump(override, sort_keys=False))
        self.env = {**engine.env, "ENDPOINT_HTTP_PORT": f"127.0.0.1:{self.http_port}",
                    "ENDPOINT_HTTPS_PORT": f"127.0.0.1:{self.https_port}"}

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def token(self, peer: str) -> str:
        return mint(self.secret, peer, ttl=3600)

    def args(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"),
                "-f", str(self.override), *args]

    async def compose(self, *args: str, timeout: float = 300) -> str:
        """Run `docker compose ...`; its output, or AssertionError with it on failure."""
        return await self.docker(*self.args(*args)[1:], timeout=timeout)

    async def docker(self, *args: str, timeout: float = 120) -> str:
        proc = await asyncio.create_subprocess_exec("docker", *args, cwd=ROOT, env=self.env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"docker {' '.join(args)}: no end within {timeout} s") from None
        text = out.decode(errors="replace")
        assert proc.returncode == 0, f"docker {' '.join(args)} exited {proc.returncode}:\n{text[-6000:]}"
        return text

    async def replicas(self) -> dict[str, str]:
        """Running signaling containers: hostname (the node id's prefix) -> container name."""
        out = await self.compose("ps", "--format", "{{.ID}} {{.Name}}", "signaling")
        return {line.split()[0][:12]: line.split()[1] for line in out.splitlines() if line.strip()}

    async def leftovers(self) -> list[str]:
        """Containers and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        out = await self.docker("ps", "-a", "-q", "--filter", label)
        out += await self.docker("network", "ls", "-q", "--filter", label)
        out += await self.docker("volume", "ls", "-q", "--filter", label)
        return out.split()

    def down_quietly(self) -> None:
        """The finalizer's cleanup: never raises."""
        try:
            subprocess.run(self.args("down", "-v", "--remove-orphans", "-t", "5"), cwd=ROOT, env=self.env,
                           capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"compose down failed: {exc}")


# -- the handshake stream -------------------------------------------------------------------

@dataclass
class Handshake:
    started: float  # monotonic
    seconds: float  # TCP + TLS + upgrade, until the 101
    node: str = ""
    error: str = ""


@dataclass
class HandshakeStream:
    """New WebSocket connections at `rate` per second, each timed to its 101, read to its
    welcome, then closed; every failure is kept with its error."""

    stack: Stack
    http: aiohttp.ClientSession
    rate: float = 10.0
    results: list[Handshake] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        began = time.monotonic()
        while not stop.is_set():
            n += 1
            task = asyncio.create_task(self._one(f"stream-{n}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(max(0.0, began + n / self.rate - time.monotonic()))
        await asyncio.gather(*self._tasks)

    async def _one(self, peer: str) -> None:
        started = time.monotonic()
        params = {"peer": peer, "token": self.stack.token(peer)}
        try:
            ws = await self.http.ws_connect(f"{self.stack.wss}/ws", params=params, heartbeat=None,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=2))
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            # the type and status, never the URL (it carries the token)
            error = f"{type(exc).__name__} {getattr(exc, 'status', '')}".strip()
            self.results.append(Handshake(started, time.monotonic() - started, error=error))
            return
        shake = Handshake(started, time.monotonic() - started)
        self.results.append(shake)
        try:
            welcome = (await ws.receive_json(timeout=5))
            shake.node = welcome.get("node", "")
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            shake.error = f"no welcome: {exc!r}"
        finally:
            await ws.close()

    @property
    def failed(self) -> list[Handshake]:
        return [h for h in self.results if h.error]

    def slower_than(self, seconds: float) -> list[Handshake]:
        return [h for h in self.results if h.seconds > seconds]


def distribution(seconds: list[float]) -> str:
    if not seconds:
        return "no handshakes"
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return (f"count {len(ms)}, min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
