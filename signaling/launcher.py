"""`signaling cluster`: the production topology on one machine, without Docker.

`redis-server` (unless a Redis URL is given), N `signaling serve` processes and nginx,
whose site config is rendered from the same `nginx/` templates the compose stack uses,
with the nodes' local ports as the upstream. Every process is started in a session of
its own (a Ctrl-C in the terminal reaches only the launcher, which then stops them in
order: nodes drain, nginx quits, Redis last) and is stopped by PID.

As a Python API, for tests and benchmarks:

    async with LocalCluster(nodes=3, node_args=["--rate", "1000"]) as cluster:
        cluster.endpoint                    # "ws://127.0.0.1:PORT": connect to /ws there
        await cluster.nodes[0].drain()      # SIGTERM: /readyz 503, 1001 closes, exit
        await cluster.nodes[0].start()      # same port and node id again
        await cluster.add_node()            # scale up: start, render, reload nginx
        await cluster.remove_node(cluster.nodes[-1])   # scale down: drain, render, reload
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp

# the templates: inside an installed package (pyproject ships nginx/ as signaling/nginx), or the checkout's
_HERE = Path(__file__).resolve().parent
NGINX_DIR = next((d for d in (_HERE / "nginx", _HERE.parent / "nginx") if (d / "templates").is_dir()), _HERE / "nginx")
TEMPLATE_SUFFIX = ".template"
TLS_TEMPLATE = "signaling-tls.conf.template"
_VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
UPSTREAM_PARAMS = "max_fails=0"  # see nginx/templates/signaling.conf.template
LOCAL_PROXIES = "127.0.0.1/32,::1/128"


class LaunchError(RuntimeError):
    """A part of the local cluster could not be started; the message says which and why."""


# -- rendering the nginx config ----------------------------------------------------------

def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill in `${NAME}` as the nginx image's envsubst does; every name must be given."""
    missing = sorted(set(_VARIABLE.findall(text)) - set(values))
    if missing:
        raise LaunchError(f"nginx template variables without a value: {', '.join(missing)}")
    return _VARIABLE.sub(lambda m: values[m.group(1)], text)


def template_variables(source: Path = NGINX_DIR) -> set[str]:
    """Every `${NAME}` the templates under `source` use."""
    return {name for path in (source / "templates").rglob(f"*{TEMPLATE_SUFFIX}")
            for name in _VARIABLE.findall(path.read_text())}


def render_nginx(dest: Path, values: Mapping[str, str], *, tls: bool = True, source: Path = NGINX_DIR) -> Path:
    """Lay out a complete nginx config in `dest`, the way the compose stack gets it:
    `nginx.conf` as shipped, and every template rendered into `conf.d/` (subfolders
    kept; the HTTPS server only with `tls`). Returns the path of the main config."""
    templates = source / "templates"
    if not templates.is_dir():
        raise LaunchError(f"no nginx templates at {templates} (the package was installed without signaling/nginx)")
    conf_d = dest / "conf.d"
    for path in sorted(templates.rglob(f"*{TEMPLATE_SUFFIX}")):
        if path.name == TLS_TEMPLATE and not tls:
            continue
        target = conf_d / path.relative_to(templates).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_template(path.read_text(), values))
    (dest / "temp").mkdir(parents=True, exist_ok=True)
    main = dest / "nginx.conf"
    shutil.copyfile(source / "nginx.conf", main)
    return main


def local_values(listen: str, upstreams: Sequence[str], *, listen_tls: str = "", cert: str = "", key: str = "",
                 limit_conn: int = 10000, limit_rate: str = "1000r/s", limit_burst: int = 2000) -> dict[str, str]:
    """Template values for nginx in front of local nodes (`upstreams`: "127.0.0.1:PORT").

    The per-address limits default high: locally every client comes from 127.0.0.1."""
    if not upstreams:
        raise LaunchError("an upstream needs at least one node")
    return {
        "NGINX_UPSTREAM_SERVERS": " ".join(f"server {address} {UPSTREAM_PARAMS};" for address in upstreams),
        "NGINX_RESOLVER": "127.0.0.1",  # unused: local upstreams are addresses, not names
        "NGINX_LISTEN_HTTP": listen,
        "NGINX_LISTEN_HTTPS": listen_tls or "127.0.0.1:0",
        "NGINX_REDIRECT_HTTPS": "0",
        "NGINX_TLS_CERT": cert,
        "NGINX_TLS_KEY": key,
        "NGINX_LIMIT_CONN": str(limit_conn),
        "NGINX_LIMIT_RATE": limit_rate,
        "NGINX_LIMIT_BURST": str(limit_burst),
    }


def nginx_test(binary: str, main: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a config laid out by `render_nginx` (no root needed)."""
    prefix = main.parent
    return subprocess.run([binary, "-t", "-q", "-p", f"{prefix}/", "-c", str(main), "-e", str(prefix / "error.log"),
                           "-g", f"pid {prefix / 'nginx.pid'};"], capture_output=True, text=True, timeout=30)


# -- processes ----------------------------------------------------------------------------

def find_program(name: str) -> str:
    """A system program on PATH or in the sbin directories (where Debian puts nginx)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if not found:
        raise LaunchError(f"{name} is not installed (apt-get install {'redis-server' if 'redis' in name else name})")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _child_setup() -> None:
    # runs in the child between fork and exec: die with the launcher even if it is SIGKILLed.
    # (Linux ties this to the thread that started the child: start clusters from the
    # event loop's thread, not from a short-lived worker thread.)
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None, start_new_session=True,
                                preexec_fn=_child_setup if _prctl is not None else None)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a Popen has nothing to await
        await asyncio.sleep(0.02)
    return proc.poll()


async def _end(proc: subprocess.Popen[bytes] | None, first: int, timeout: float) -> int | None:
    """Send `first`; after `timeout` SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        with _suppress_gone():
            proc.send_signal(first)
        if await _wait_exit(proc, timeout) is None:
            with _suppress_gone():
                proc.kill()
            await _wait_exit(proc, 5)
    return proc.poll()


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is ProcessLookupError


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def http_status(http: aiohttp.ClientSession, url: str) -> int | None:
    """The status of GET `url`, or None when nothing answers within 2 s."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


class LocalNode:
    """One `signaling serve` process on 127.0.0.1; it keeps its port and id across restarts."""

    def __init__(self, node_id: str, port: int, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.node_id, self.port, self.argv, self.env, self.log_path = node_id, port, list(argv), dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.address}"

    @property
    def ws_base(self) -> str:
        return f"ws://{self.address}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        if self.running:
            raise LaunchError(f"{self.node_id} is already running (pid {self.pid})")
        self.proc = _spawn(self.argv, self.log_path, self.env)

    async def wait_ready(self, timeout: float = 20.0, http: aiohttp.ClientSession | None = None) -> None:
        own = http is None
        http = http or aiohttp.ClientSession()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.running:
                    raise LaunchError(f"{self.node_id} exited with {self.proc and self.proc.poll()}:\n"
                                      f"{_tail(self.log_path)}")
                if await http_status(http, f"{self.base}/readyz") == 200:
                    return
                await asyncio.sleep(0.05)
            raise LaunchError(f"{self.node_id} not ready after {timeout:.0f}s:\n{_tail(self.log_path)}")
        finally:
            if own:
                await http.close()

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until /readyz answers 200."""
        self.spawn()
        await self.wait_ready(timeout)

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with _suppress_gone():
                self.proc.send_signal(sig)

    async def drain(self, wait: bool = True, timeout: float = 60.0) -> int | None:
        """SIGTERM: the node leaves the load balancer, closes its sockets with 1001 and exits.
        With `wait`, return its exit code once it has (None if it outlives `timeout`, and
        then its log ends with what its tasks were waiting for: SIGUSR1 dumps them)."""
        self.signal(signal.SIGTERM)
        if not wait or self.proc is None:
            return None
        code = await _wait_exit(self.proc, timeout)
        if code is None:
            self.signal(signal.SIGUSR1)
            await asyncio.sleep(0.5)
        return code

    async def wait(self, timeout: float = 60.0) -> int | None:
        return await _wait_exit(self.proc, timeout) if self.proc else None

    async def kill(self) -> None:
        """SIGKILL, as a crash: no drain; its peers' grace starts when the cluster notices."""
        await _end(self.proc, signal.SIGKILL, 5)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """Drain, and SIGKILL if it does not exit within `timeout`."""
        return await _end(self.proc, signal.SIGTERM, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalRedis:
    """A throwaway `redis-server` on 127.0.0.1 (no persistence: inboxes live for a grace)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log_path = port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout: float = 10.0) -> None:
        self.proc = _spawn([find_program("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                            "--maxmemory-policy", "noeviction"], self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"redis-server exited with {self.proc.poll()}:\n{_tail(self.log_path)}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                pong = await asyncio.wait_for(reader.read(16), 1)
                writer.close()
                if pong.startswith(b"+PONG"):
                    return
            except (TimeoutError, OSError):
                pass
            await asyncio.sleep(0.02)
        raise LaunchError(f"redis-server did not answer on port {self.port}")

    async def stop(self) -> None:
        await _end(self.proc, signal.SIGTERM, 10)


class LocalNginx:
    """nginx in the foreground (`daemon off`), its whole prefix in `workdir`."""

    def __init__(self, workdir: Path, source: Path = NGINX_DIR) -> None:
        self.workdir, self.source = workdir, source
        self.binary = find_program("nginx")
        self.main = workdir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def render(self, values: Mapping[str, str], tls: bool) -> None:
        render_nginx(self.workdir, values, tls=tls, source=self.source)
        checked = nginx_test(self.binary, self.main)
        if checked.returncode != 0:
            raise LaunchError(f"nginx -t failed on {self.main}:\n{checked.stderr}")

    def start(self) -> None:
        w = self.workdir
        self.proc = _spawn([self.binary, "-p", f"{w}/", "-c", str(self.main), "-e", str(w / "error.log"),
                            "-g", f"daemon off; pid {w / 'nginx.pid'};"], w / "nginx.log")

    def reload(self) -> None:
        """SIGHUP: the master re-reads the (re-rendered) config and starts new workers;
        the old ones finish their open WebSockets first."""
        if self.proc is None or self.proc.poll() is not None:
            raise LaunchError("nginx is not running")
        self.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        # SIGQUIT: graceful (the nodes have closed their sockets by now); then SIGTERM
        if self.proc is not None and self.proc.poll() is None:
            with _suppress_gone():
                self.proc.send_signal(signal.SIGQUIT)
            if await _wait_exit(self.proc, 5) is None:
                await _end(self.proc, signal.SIGTERM, 5)

    def log(self) -> str:
        return "\n".join(_tail(self.workdir / name, 200) for name in ("error.log", "nginx.log"))


class LocalCluster:
    """Redis, N nodes and nginx in front of them, on this machine; see the module docstring."""

    def __init__(self, nodes: int = 3, *, port: int = 0, host: str = "127.0.0.1", redis_url: str | None = None,
                 key_prefix: str | None = None, node_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 workdir: str | Path | None = None, tls_port: int | None = None, tls_cert: str = "",
                 tls_key: str = "", limit_conn: int = 10000, limit_rate: str = "1000r/s", limit_burst: int = 2000,
                 nginx_dir: str | Path | None = None) -> None:
        if nodes < 1:
            raise LaunchError("a cluster needs at least one node")
        if bool(tls_cert) != bool(tls_key) or (tls_port is not None and not tls_cert):
            raise LaunchError("TLS needs a port, a certificate and a key")
        self.size, self.host, self.port = nodes, host, port or free_port(host)
        self.tls_port = (tls_port or free_port(host)) if tls_cert else None
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.limits = (limit_conn, limit_rate, limit_burst)
        self.external_redis = redis_url
        self.key_prefix = key_prefix
        self.node_args = list(node_args)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("SIGNALING_TRUSTED_PROXIES", LOCAL_PROXIES)  # nginx is on this machine
        self.env["PYTHONUNBUFFERED"] = "1"
        package_root = str(Path(__file__).resolve().parent.parent)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, self.env.get("PYTHONPATH", "")) if p)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="signaling-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis: LocalRedis | None = None
        self.nginx = LocalNginx(self.workdir / "nginx", Path(nginx_dir) if nginx_dir else NGINX_DIR)
        self.nodes: list[LocalNode] = []
        self._next_index = 1

    # -- addresses -------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The WebSocket base through nginx: connect to `{endpoint}/ws`."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_endpoint(self) -> str | None:
        return f"wss://{self.host}:{self.tls_port}" if self.tls_port else None

    @property
    def redis_url(self) -> str:
        if self.external_redis:
            return self.external_redis
        assert self.redis is not None, "the cluster is not started"
        return self.redis.url

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self, timeout: float = 30.0) -> None:
        """Start Redis (unless external), the nodes and nginx; return once all are ready."""
        try:
            if not self.external_redis:
                self.redis = LocalRedis(free_port(), self.workdir / "redis.log")
                await self.redis.start()
            new = [self._new_node() for _ in range(self.size)]
            for node in new:
                node.spawn()
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(node.wait_ready(timeout, http) for node in new))
            self._render()
            self.nginx.start()
            await self._wait_endpoint(timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Drain every node (in parallel), then stop nginx, then Redis; all by PID."""
        await asyncio.gather(*(node.stop() for node in self.nodes))
        await self.nginx.stop()
        if self.redis is not None:
            await self.redis.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        out = {node.node_id: node.pid for node in self.nodes if node.running and node.pid}
        if self.nginx.proc is not None and self.nginx.proc.poll() is None:
            out["nginx"] = self.nginx.proc.pid
        if self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is None:
            out["redis"] = self.redis.proc.pid
        return out

    # -- scaling ---------------------------------------------------------------------
    async def add_node(self, timeout: float = 20.0) -> LocalNode:
        """Scale up by one: start a node, add it to the upstream, reload nginx."""
        node = self._new_node()
        await node.start(timeout)
        self._render()
        self.nginx.reload()
        return node

    async def remove_node(self, node: LocalNode, timeout: float = 60.0) -> int | None:
        """Scale down by one: drain the node (its clients reconnect to the others through
        nginx), then take it out of the upstream and reload nginx. Returns its exit code."""
        if len(self.nodes) == 1:
            raise LaunchError("cannot remove the last node")
        code = await node.stop(timeout)
        self.nodes.remove(node)
        self._render()
        self.nginx.reload()
        return code

    async def rolling_restart(self, pause: float = 1.0, timeout: float = 60.0) -> None:
        """Drain and start every node again, one at a time, `pause` seconds apart."""
        for node in list(self.nodes):
            await node.stop(timeout)
            await node.start()
            await asyncio.sleep(pause)

    # -- internals -------------------------------------------------------------------
    def _new_node(self) -> LocalNode:
        index, self._next_index = self._next_index, self._next_index + 1
        node_id, port = f"node-{index}", free_port()
        argv = [sys.executable, "-m", "signaling", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--node-id", node_id, "--redis-url", self.redis_url]
        if self.key_prefix:
            argv += ["--key-prefix", self.key_prefix]
        node = LocalNode(node_id, port, argv + self.node_args, self.env, self.workdir / f"{node_id}.log")
        self.nodes.append(node)
        return node

    def _render(self) -> None:
        conn, rate, burst = self.limits
        values = local_values(f"{self.host}:{self.port}", [n.address for n in self.nodes],
                              listen_tls=f"{self.host}:{self.tls_port}" if self.tls_port else "",
                              cert=self.tls_cert, key=self.tls_key, limit_conn=conn, limit_rate=rate,
                              limit_burst=burst)
        self.nginx.render(values, tls=bool(self.tls_cert))

    async def _wait_endpoint(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                proc = self.nginx.proc
                if proc is None or proc.poll() is not None:
                    raise LaunchError(f"nginx exited with {proc and proc.poll()}:\n{self.nginx.log()}")
                if await http_status(http, f"{self.http_endpoint}/healthz") == 200:
                    return
                await asyncio.sleep(0.05)
        raise LaunchError(f"nginx did not answer on {self.http_endpoint}:\n{self.nginx.log()}")


# -- the command ----------------------------------------------------------------------------

async def run(cluster: LocalCluster, out: IO[str] = sys.stdout) -> int:
    """Start `cluster`, print where it is, run until SIGINT/SIGTERM, stop it. Exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await cluster.start()
        except LaunchError as exc:
            print(f"signaling cluster: {exc}", file=sys.stderr)
            return 1
        redis = f"{cluster.redis_url} (pid {cluster.redis.proc.pid})" if cluster.redis and cluster.redis.proc \
            else f"{cluster.redis_url} (external)"
        lines = [f"signaling cluster: {len(cluster.nodes)} nodes behind nginx", f"  redis   {redis}"]
        lines += [f"  {n.node_id:<7} {n.base} (pid {n.pid})" for n in cluster.nodes]
        lines += [f"  nginx   pid {cluster.nginx.pid}, config {cluster.nginx.main}",
                  f"  logs    {cluster.workdir}",
                  f"endpoint: {cluster.endpoint}/ws"]
        if cluster.tls_endpoint:
            lines.append(f"endpoint: {cluster.tls_endpoint}/ws")
        lines += [f"demo page: {cluster.http_endpoint}/", "Ctrl-C (or SIGTERM) drains the nodes and stops everything."]
        print("\n".join(lines), file=out, flush=True)
        reported: set[str] = set()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            for node in cluster.nodes:
                if not node.running and node.node_id not in reported:
                    reported.add(node.node_id)
                    print(f"signaling cluster: {node.node_id} exited ({node.proc and node.proc.poll()}); "
                          f"see {node.log_path}", file=sys.stderr, flush=True)
        print("signaling cluster: stopping (nodes drain first)", file=out, flush=True)
        await cluster.stop()
        print("signaling cluster: stopped", file=out, flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

