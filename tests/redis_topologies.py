"""Redis as production runs it, as real `redis-server` processes on free ports: TLS (with a
private CA and client certificates), ACL users, Sentinel (1 primary, 1 replica, 3 sentinels)
and Redis Cluster with ACL and TLS. Every process is started and stopped by PID; every wait is
bounded and fails with a diagnostic (the state it saw and the tail of each process's log); a
missing program (redis-server, redis-cli) fails, never skips.

URL forms (credentials and query values percent-encoded):
  rediss://user:pass@127.0.0.1:P/0?ssl_ca_certs=<ca>&ssl_certfile=<crt>&ssl_keyfile=<key>&ssl_cert_reqs=required
  redis+sentinel://[user:pass@]127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster/0
      (rediss+sentinel://...?ssl_... with TLS)
  redis+cluster://user:pass@127.0.0.1:P1,...  or  rediss+cluster://user:pass@127.0.0.1:P1,...?ssl_ca_certs=...
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.crc import key_slot

import support
from support import RedisClusterServers, _free_cluster_port, free_port

# The signaling node's ACL user: `node_acl_rules(prefix, password)` fills in PASSWORD and {prefix}.
# Every rule is accepted by Redis 7.0.15 (test_node_acl_rules_accepted_one_by_one checks each alone).
NODE_ACL_RULES = [
    "on", ">PASSWORD", "resetkeys", "~{prefix}:*", "~{prefix}@*", "resetchannels", "&{prefix}@*", "-@all",
    "+ping", "+auth", "+select", "+evalsha", "+script|load", "+wait", "+asking",
    "+subscribe", "+unsubscribe", "+ssubscribe", "+sunsubscribe", "+publish", "+spublish",
    "+scan", "+sadd", "+srem", "+smembers", "+sismember", "+scard",
    "+zadd", "+zrem", "+zrange", "+zrangebyscore", "+zscore",
    "+hmget", "+hset", "+hincrby", "+pttl", "+pexpire", "+persist", "+exists", "+get", "+set", "+del",
    "+xadd", "+xdel", "+xinfo|stream", "+xlen", "+xrange", "+xrevrange",
    "+time", "+role", "+cluster|slots",
]

ADMIN_RULES = ["on", "~*", "&*", "+@all"]  # the fixtures' own user (replication, sentinels, cluster create)
MASTER_NAME = "mymaster"


def node_acl_rules(prefix: str, password: str) -> list[str]:
    """NODE_ACL_RULES for one key prefix and password."""
    return [">" + password if rule == ">PASSWORD" else rule.format(prefix=prefix) for rule in NODE_ACL_RULES]


def new_password() -> str:
    return secrets.token_hex(16)


def program(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run .ci/run (or apt-get install redis-server redis-tools)"
    return path


def wait_for(what: str, check: Callable[[], Any], timeout: float, diagnostic: Callable[[], str] = lambda: "",
              interval: float = 0.05) -> Any:
    """Poll `check` until it returns something true; AssertionError (raised by `check`) ends it at
    once, any other exception counts as "not yet". Fails after `timeout` with `diagnostic()`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - not ready yet; reported on timeout
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last error: {last!r})\n{diagnostic()}")
        time.sleep(interval)


def _info(text: str) -> dict[str, str]:
    """INFO/CLUSTER INFO text -> {field: value}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


# -- TLS -------------------------------------------------------------------------------


class PrivateCA:
    """A private CA with a server certificate for 127.0.0.1/localhost (also valid as a client
    certificate: Redis presents it when it connects to other nodes) and a client certificate,
    written as PEM files into `directory` (made with the `cryptography` package)."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_cert, self.ca_key = self.directory / "ca.crt", self.directory / "ca.key"
        self.server_cert, self.server_key = self.directory / "server.crt", self.directory / "server.key"
        self.client_cert, self.client_key = self.directory / "client.crt", self.directory / "client.key"
        now = datetime.datetime.now(datetime.UTC)

        def subject(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"signaling tests {name}"),
                              x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(key: Any, path: Path) -> None:
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            path.chmod(0o600)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = subject(f"{name} private CA")
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False),
                             critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        write_key(ca_key, self.ca_key)

        def leaf(cn: str, usages: list[Any], san: list[Any] | None) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(subject(cn)).issuer_name(ca_name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=2))
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                      critical=False))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), key

        server, server_key = leaf("localhost", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
        self.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        write_key(server_key, self.server_key)
        client, client_key = leaf("signaling-node", [ExtendedKeyUsageOID.CLIENT_AUTH], None)
        self.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
        write_key(client_key, self.client_key)

    def server_args(self, auth_clients: str = "optional") -> list[str]:
        """redis-server TLS flags (the port flags are the caller's)."""
        return ["--tls-cert-file", str(self.server_cert), "--tls-key-file", str(self.server_key),
                "--tls-ca-cert-file", str(self.ca_cert), "--tls-auth-clients", auth_clients]

    def cli_args(self, client_cert: bool = True) -> list[str]:
        """redis-cli TLS flags."""
        args = ["--tls", "--cacert", str(self.ca_cert)]
        return args + (["--cert", str(self.client_cert), "--key", str(self.client_key)] if client_cert else [])

    def client_kwargs(self, client_cert: bool = True) -> dict[str, Any]:
        """redis-py connection keywords (Redis, RedisCluster, Sentinel's connection_kwargs)."""
        kwargs: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.ca_cert), "ssl_cert_reqs": "required"}
        if client_cert:
            kwargs.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return kwargs

    def url_query(self, client_cert: bool = True) -> str:
        """The query string redis-py's from_url reads: ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs."""
        parts = [("ssl_ca_certs", str(self.ca_cert))]
        if client_cert:
            parts += [("ssl_certfile", str(self.client_cert)), ("ssl_keyfile", str(self.client_key))]
        parts.append(("ssl_cert_reqs", "required"))
        return "&".join(f"{k}={quote(v, safe='/')}" for k, v in parts)


def _userinfo(username: str | None, password: str | None) -> str:
    if password is None:
        return f"{quote(username, safe='')}@" if username else ""
    return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"


# -- processes -------------------------------------------------------------------------


class RedisProcess:
    """One redis-server process (data node or sentinel), its log in its own directory."""

    kind = "redis"

    def __init__(self, directory: Path, *, port: int | None = None, ca: PrivateCA | None = None,
                 admin: tuple[str | None, str] | None = None) -> None:
        self.port = port or free_port()
        self.ca, self.admin = ca, admin  # admin: (username or None for the default user, password)
        self.directory = Path(directory) / f"{self.kind}-{self.port}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{self.kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: redis.Redis | None = None  # kept: each new TLS context loads the system CA store (~0.15 s)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def command(self) -> list[str]:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisProcess:
        assert not self.alive(), f"{self.kind} on {self.port} is already running (pid {self.proc.pid})"
        self._drop_admin()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)

        def answers() -> bool:
            assert self.alive(), f"{self.kind} on {self.port} exited with {self.proc.returncode}:\n{self.log_tail()}"
            return self.call("PING") in (True, "PONG")

        wait_for(f"{self.kind} on {self.port} answering PING", answers, timeout, self.log_tail)
        return self

    def stop(self) -> None:
        self._drop_admin()
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()  # by PID
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL by PID (a crash: nothing is flushed, no goodbye to replicas or sentinels)."""
        self._drop_admin()
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        state = "running" if self.alive() else f"exited {self.proc.returncode if self.proc else 'never started'}"
        return f"--- {self.kind} {self.port} ({state}) {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])

    def client(self, username: str | None = None, password: str | None = None, *, client_cert: bool = True,
               ca: PrivateCA | None = None, **kwargs: Any) -> redis.Redis:
        """A sync redis-py client to this process (TLS with this process's CA unless `ca`)."""
        options: dict[str, Any] = dict(host="127.0.0.1", port=self.port, username=username, password=password,
                                       socket_timeout=2, socket_connect_timeout=2, decode_responses=True,
                                       protocol=2)
        if self.tls:
            options.update((ca or self.ca).client_kwargs(client_cert))
        options.update(kwargs)
        return redis.Redis(**options)

    def admin_client(self, **kwargs: Any) -> redis.Redis:
        username, password = self.admin or (None, None)
        return self.client(username, password, **kwargs)

    def call(self, *args: Any) -> Any:
        """One command as the admin user (on a client kept until the process stops or fails)."""
        if self._admin is None:
            self._admin = self.admin_client()
        try:
            return self._admin.execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop_admin()
            raise

    def _drop_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """redis-cli with this process's TLS and admin credentials."""
        command = [program("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port)]
        if self.ca:
            command += self.ca.cli_args()
        if self.admin:
            username, password = self.admin
            command += (["--user", username] if username else []) + ["--pass", password, "--no-auth-warning"]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)


class SecureRedisServer(RedisProcess):
    """A data node: redis-server with no persistence, optionally TLS-only (`--port 0
    --tls-port P`) and ACL-protected: with `admin=(user, password)` the default user is off and
    `user` has every right; with `admin=(None, password)` the default user has a password.
    Users created with `create_user` are created again when the process is restarted."""

    kind = "redis"

    def __init__(self, directory: Path, *, port: int | None = None, ca: PrivateCA | None = None,
                 tls_auth_clients: str = "optional", admin: tuple[str | None, str] | None = None,
                 args: Sequence[str] = ()) -> None:
        assert tls_auth_clients in ("no", "optional", "yes"), tls_auth_clients
        super().__init__(directory, port=port, ca=ca, admin=admin)
        self.tls_auth_clients, self.args = tls_auth_clients, list(args)
        self.replicaof: int | None = None  # a primary's port, for (re)starts as a replica
        self.users: dict[str, list[str]] = {}

    def command(self) -> list[str]:
        args = [program("redis-server"), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--dir", str(self.directory), "--repl-diskless-sync-delay", "0"]
        if self.ca:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-replication", "yes",
                     *self.ca.server_args(self.tls_auth_clients)]
        else:
            args += ["--port", str(self.port)]
        if self.admin:
            username, password = self.admin
            if username and username != "default":
                args += ["--user", "default", "off", "--user", username, *ADMIN_RULES, f">{password}",
                         "--masteruser", username, "--masterauth", password]
            else:
                args += ["--requirepass", password, "--masterauth", password]
        if self.replicaof:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        return args + self.args

    def start(self, timeout: float = 10.0) -> SecureRedisServer:
        super().start(timeout)
        for name, rules in self.users.items():
            acl_setuser(self, name, rules)
        return self

    def url(self, username: str | None = None, password: str | None = None, client_cert: bool = True,
            db: int = 0) -> str:
        """redis://... or, with TLS, rediss://user:pass@127.0.0.1:P/0?ssl_ca_certs=...&ssl_certfile=...
        &ssl_keyfile=...&ssl_cert_reqs=required."""
        if not self.ca:
            return f"redis://{_userinfo(username, password)}127.0.0.1:{self.port}/{db}"
        return f"rediss://{_userinfo(username, password)}127.0.0.1:{self.port}/{db}?{self.ca.url_query(client_cert)}"

    @property
    def admin_url(self) -> str:
        username, password = self.admin or (None, None)
        return self.url(username, password)

    def create_user(self, name: str, rules: Iterable[str]) -> None:
        self.users[name] = list(rules)
        acl_setuser(self, name, self.users[name])

    def role(self) -> list[Any]:
        return self.call("ROLE")

    def replication(self) -> dict[str, str]:
        return _info(self.cli("INFO", "replication").stdout)


class TlsRedisServer(SecureRedisServer):
    """redis-server --port 0 --tls-port P with a private CA; `tls_auth_clients` "optional" or "yes"."""

    def __init__(self, directory: Path, ca: PrivateCA, *, port: int | None = None, tls_auth_clients: str = "optional",
                 admin: tuple[str | None, str] | None = None, args: Sequence[str] = ()) -> None:
        super().__init__(directory, port=port, ca=ca, tls_auth_clients=tls_auth_clients, admin=admin, args=args)


def acl_setuser(server: RedisProcess, name: str, rules: Iterable[str]) -> None:
    """`ACL SETUSER name reset <rules...>` through redis-py as the server's admin; a rule Redis
    rejects fails here with Redis's message."""
    rules = list(rules)
    try:
        server.call("ACL", "SETUSER", name, "reset", *rules)
    except redis.ResponseError as exc:
        raise AssertionError(f"Redis on {server.port} rejected ACL SETUSER {name} {' '.join(rules)}: {exc}") from exc


class NodeUsers:
    """Node ACL users, one per key prefix, created on every data node of a topology."""

    def __init__(self) -> None:
        self.node_users: dict[str, tuple[str, str]] = {}  # prefix -> (username, password)

    def data_nodes(self) -> list[SecureRedisServer]:
        raise NotImplementedError

    def node_user(self, prefix: str, extra_rules: Sequence[str] = ()) -> tuple[str, str]:
        """(username, password) of a user with NODE_ACL_RULES for `prefix` (+ `extra_rules`) on every
        data node, created on first use (or again when `extra_rules` differ)."""
        username, password = self.node_users.get(prefix) or (f"node-{prefix}", new_password())
        rules = node_acl_rules(prefix, password) + list(extra_rules)
        for server in self.data_nodes():
            if server.users.get(username) != rules:
                server.create_user(username, rules)
        self.node_users[prefix] = (username, password)
        return username, password


class AclRedis(NodeUsers):
    """One data node (plain or TLS) with the default user off, an admin user, and node users made
    on demand: `url_for(prefix)` is the URL a signaling node with that key prefix would use."""

    def __init__(self, directory: Path, *, ca: PrivateCA | None = None, tls_auth_clients: str = "optional") -> None:
        super().__init__()
        self.admin = ("admin", new_password())
        self.ca = ca
        self.server = SecureRedisServer(directory, ca=ca, tls_auth_clients=tls_auth_clients, admin=self.admin)

    @property
    def port(self) -> int:
        return self.server.port

    def data_nodes(self) -> list[SecureRedisServer]:
        return [self.server]

    def start(self) -> AclRedis:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def admin_url(self) -> str:
        return self.server.admin_url

    def url(self, username: str | None = None, password: str | None = None, client_cert: bool = True) -> str:
        return self.server.url(username, password, client_cert)

    def url_for(self, prefix: str, client_cert: bool = True, extra_rules: Sequence[str] = ()) -> str:
        return self.server.url(*self.node_user(prefix, extra_rules), client_cert=client_cert)


class SentinelServer(RedisProcess):
    """`redis-server <conf> --sentinel`; the conf file is its own (Sentinel rewrites it)."""

    kind = "sentinel"

    def __init__(self, directory: Path, primary_port: int, *, ca: PrivateCA | None = None,
                 data_auth: tuple[str | None, str] | None = None, quorum: int = 2,
                 debug: dict[str, int] | None = None) -> None:
        super().__init__(directory, ca=ca)
        self.debug = debug or {}  # SENTINEL DEBUG periods (ms), set right after each start
        self.conf = self.directory / "sentinel.conf"
        lines = ["bind 127.0.0.1", "protected-mode no", f'dir "{self.directory}"']
        if ca:
            lines += ["port 0", f"tls-port {self.port}", "tls-replication yes",  # TLS to data nodes and sentinels
                      f'tls-cert-file "{ca.server_cert}"', f'tls-key-file "{ca.server_key}"',
                      f'tls-ca-cert-file "{ca.ca_cert}"', "tls-auth-clients optional"]
        else:
            lines.append(f"port {self.port}")
        lines += [f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}",
                  f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                  f"sentinel failover-timeout {MASTER_NAME} 5000",
                  f"sentinel parallel-syncs {MASTER_NAME} 1"]
        if data_auth:
            username, password = data_auth
            if username and username != "default":
                lines.append(f"sentinel auth-user {MASTER_NAME} {username}")
            lines.append(f"sentinel auth-pass {MASTER_NAME} {password}")
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [program("redis-server"), str(self.conf), "--sentinel"]

    def start(self, timeout: float = 10.0) -> SentinelServer:
        super().start(timeout)
        if self.debug:
            reply = self.call("SENTINEL", "DEBUG", *[str(x) for pair in self.debug.items() for x in pair])
            assert reply in (True, "OK"), f"SENTINEL DEBUG answered {reply!r}"
        return self

    def master(self) -> dict[str, str]:
        """SENTINEL MASTER mymaster as a dict."""
        reply = self.call("SENTINEL", "MASTER", MASTER_NAME)
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def replicas(self) -> list[dict[str, str]]:
        return [dict(zip(r[::2], r[1::2], strict=True)) for r in self.call("SENTINEL", "REPLICAS", MASTER_NAME)]

    def primary_port(self) -> int:
        host, port = self.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)


# Sentinel's fixed periods, shortened (Redis 7.0's SENTINEL DEBUG) so a test never waits on
# them: INFO to replicas every 1 s (10 s), hello every 0.5 s (2 s; it also sets how long a
# sentinel leaves a returning old primary a master before demoting it: 4 periods, 8 s), PING
# every 0.25 s (1 s). The PING period matters with down-after 1 s: a sentinel sends its first
# PING on a new link one period after making it, and counts the link down one down-after
# after making it, so with both at 1 s the link it opens to a just-promoted primary could be
# judged down before the first PONG, and (with the other sentinels' "down" answers from the
# last failover still on record) the sentinels failed over again at once, back to the old one.
FAST_SENTINEL = {"info-period": 1000, "publish-period": 500, "ping-period": 250}


class SentinelTopology(NodeUsers):
    """One primary, one replica and three sentinels (quorum 2, down after 1 s, failover timeout
    5 s). With `password` the data nodes require it (for `username`, or the default user when
    `username` is None) and the sentinels log in with `sentinel auth-user/auth-pass`; the
    sentinels themselves need no password. With `tls` everything speaks TLS only. `fast`
    applies FAST_SENTINEL (without it a failover takes ~20 s to settle: the old primary stays
    a master ~10 s, and the sentinels see it replicate only at their next 10 s INFO)."""

    def __init__(self, directory: Path, password: str | None = None, username: str | None = None,
                 tls: PrivateCA | None = None, tls_auth_clients: str = "optional", fast: bool = True) -> None:
        super().__init__()
        self.debug = dict(FAST_SENTINEL) if fast else {}
        self.directory = Path(directory)
        self.username, self.password, self.ca = username, password, tls
        self.admin = (username, password) if password else None
        self.data = [SecureRedisServer(self.directory, ca=tls, tls_auth_clients=tls_auth_clients, admin=self.admin)
                     for _ in range(2)]
        self.sentinels: list[SentinelServer] = []

    def data_nodes(self) -> list[SecureRedisServer]:
        return self.data

    def server(self, port: int) -> SecureRedisServer:
        return next(s for s in self.data if s.port == port)

    # -- URLs and clients --

    @property
    def url(self) -> str:
        return self._url(self.username, self.password)

    def url_for(self, prefix: str, client_cert: bool = True, extra_rules: Sequence[str] = ()) -> str:
        return self._url(*self.node_user(prefix, extra_rules), client_cert=client_cert)

    def _url(self, username: str | None, password: str | None, client_cert: bool = True) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        base = f"{'rediss' if self.ca else 'redis'}+sentinel://{_userinfo(username, password)}{hosts}/{MASTER_NAME}/0"
        return f"{base}?{self.ca.url_query(client_cert)}" if self.ca else base

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def sentinel_kwargs(self, client_cert: bool = True) -> dict[str, Any]:
        """redis-py Sentinel(sentinel_kwargs=...) for the sentinels themselves."""
        return self.ca.client_kwargs(client_cert) if self.ca else {}

    def connection_kwargs(self, client_cert: bool = True) -> dict[str, Any]:
        """redis-py Sentinel(**...) for the data nodes, as the admin user."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        return {**kwargs, **(self.ca.client_kwargs(client_cert) if self.ca else {})}

    # -- lifecycle --

    def start(self) -> SentinelTopology:
        try:
            primary, replica = self.data
            primary.start()
            replica.replicaof = primary.port
            replica.start()
            self._wait_replicated(primary, replica, 10)
            self.sentinels = [SentinelServer(self.directory, primary.port, ca=self.ca, data_auth=self.admin,
                                             debug=self.debug)
                              for _ in range(3)]
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait_sentinels_settled(primary.port, 10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in [*self.sentinels, *self.data]:
            process.stop()

    def diagnostic(self) -> str:
        views = []
        for s in self.sentinels:
            try:
                m = s.master() if s.alive() else {}
                views.append(f"sentinel {s.port}: primary {m.get('port')} flags={m.get('flags')} "
                             f"replicas={m.get('num-slaves')} other-sentinels={m.get('num-other-sentinels')} "
                             f"failover-state={m.get('failover-state')}")
            except Exception as exc:  # noqa: BLE001 - a diagnostic shows what it could not read
                views.append(f"sentinel {s.port}: {exc!r}")
        for d in self.data:
            try:
                views.append(f"data {d.port}: {d.role() if d.alive() else 'down'}")
            except Exception as exc:  # noqa: BLE001 - the same
                views.append(f"data {d.port}: {exc!r}")
        return "\n".join(views + [p.log_tail(15) for p in [*self.data, *self.sentinels]])

    def _wait_replicated(self, primary: SecureRedisServer, replica: SecureRedisServer, timeout: float) -> None:
        def linked() -> bool:
            role = replica.role()
            return role[0] == "slave" and int(role[2]) == primary.port and role[3] == "connected"

        wait_for(f"replica {replica.port} linked to primary {primary.port} (master_link_status:up)", linked,
                 timeout, self.diagnostic)

    def _wait_sentinels_settled(self, primary_port: int, timeout: float) -> None:
        """Every live sentinel names `primary_port`, knows the other sentinels and every live
        replica as healthy (so the next failover, planned or not, can go ahead)."""
        live_sentinels = [s for s in self.sentinels if s.alive()]
        live_replicas = {d.port for d in self.data if d.alive() and d.port != primary_port}

        def settled() -> bool:
            for s in live_sentinels:
                m = s.master()
                if int(m["port"]) != primary_port or m["flags"] != "master" or \
                        int(m["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
                healthy = {int(r["port"]) for r in s.replicas()
                           if r["flags"] == "slave" and r.get("master-link-status") == "ok"}
                if not live_replicas <= healthy:
                    return False
            return True

        wait_for(f"sentinels settled on primary {primary_port}", settled, timeout, self.diagnostic)

    # -- the primary and failovers --

    def primary(self) -> int:
        """The primary's port as the sentinels report it (the first live one that answers)."""
        errors = []
        for s in self.sentinels:
            if s.alive():
                try:
                    return s.primary_port()
                except redis.RedisError as exc:
                    errors.append(f"{s.port}: {exc!r}")
        raise AssertionError(f"no sentinel answered: {errors}\n{self.diagnostic()}")

    def _wait_new_primary(self, old: int, timeout: float) -> int:
        def moved() -> int | None:
            ports = {s.primary_port() for s in self.sentinels if s.alive()}
            if len(ports) != 1 or old in ports:
                return None
            port = ports.pop()
            return port if self.server(port).role()[0] == "master" else None

        return wait_for(f"sentinels report a primary other than {old}, answering ROLE as master", moved, timeout,
                        self.diagnostic)

    def failover(self, timeout: float = 15.0) -> int:
        """SENTINEL FAILOVER mymaster; waits until every sentinel names the new primary, it answers
        ROLE master, the old primary replicates from it and the sentinels see that (so another
        failover can follow). Returns the new primary's port."""
        old = self.primary()
        live = [s for s in self.sentinels if s.alive()]  # (not next(): see SecureRedisCluster.replica_of)
        assert live, f"no sentinel alive\n{self.diagnostic()}"
        reply = live[0].call("SENTINEL", "FAILOVER", MASTER_NAME)
        assert reply in (True, "OK"), f"SENTINEL FAILOVER answered {reply!r}\n{self.diagnostic()}"
        new = self._wait_new_primary(old, timeout)
        if self.server(old).alive():
            self._wait_replicated(self.server(new), self.server(old), timeout)
        self._wait_sentinels_settled(new, timeout)
        return new

    def kill_primary(self, timeout: float = 25.0) -> int:
        """SIGKILL the primary by PID and wait until the sentinels promote the replica (an
        unplanned failover: ~2 s, but ~12 s within 10 s of the last one, as sentinels that voted
        then wait 2 x failover-timeout before trying again). Returns the killed port; `revive()`
        brings it back as a replica."""
        old = self.primary()
        self.server(old).kill()
        self._wait_new_primary(old, timeout)
        return old

    def revive(self, timeout: float = 15.0) -> None:
        """Start every stopped data node again as a replica of the current primary, and wait
        until it replicates and the sentinels count it healthy."""
        primary = self.primary()
        for server in self.data:
            if not server.alive():
                server.replicaof = primary
                server.start()
                self._wait_replicated(self.server(primary), server, timeout)
        self._wait_sentinels_settled(primary, timeout)


# -- Redis Cluster -------------------------------------------------------------------


def _cluster_port() -> int:
    """_free_cluster_port, never the same port twice in this process (nor one free_port hands out)."""
    while True:
        port = _free_cluster_port()
        if port not in support._HANDED_OUT and port + 10000 not in support._HANDED_OUT:
            support._HANDED_OUT.update((port, port + 10000))
            return port


class SecureRedisCluster(NodeUsers, RedisClusterServers):
    """RedisClusterServers with an admin user (default user off; replicas log in with
    --masteruser/--masterauth; `redis-cli --cluster create --user --pass`) and optionally TLS for
    clients, replication and the cluster bus (--tls-cluster yes --tls-replication yes)."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1, *, username: str = "admin",
                 password: str | None = None, tls: PrivateCA | None = None,
                 tls_auth_clients: str = "optional") -> None:
        NodeUsers.__init__(self)
        RedisClusterServers.__init__(self, Path(directory), primaries, replicas)
        self.username, self.password, self.ca = username, password or new_password(), tls
        self.admin = (username, self.password)
        self.tls_auth_clients = tls_auth_clients
        self.servers: list[SecureRedisServer] = []  # type: ignore[assignment]  # SecureRedisServer plays RedisServer's part

    def data_nodes(self) -> list[SecureRedisServer]:
        return self.servers

    def server(self, port: int) -> SecureRedisServer:
        return next(s for s in self.servers if s.port == port)

    def _url(self, username: str | None, password: str | None, client_cert: bool = True) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        base = f"{'rediss' if self.ca else 'redis'}+cluster://{_userinfo(username, password)}{hosts}"
        return f"{base}?{self.ca.url_query(client_cert)}" if self.ca else base

    @property
    def url(self) -> str:
        return self._url(self.username, self.password)

    def url_for(self, prefix: str, client_cert: bool = True, extra_rules: Sequence[str] = ()) -> str:
        return self._url(*self.node_user(prefix, extra_rules), client_cert=client_cert)

    def client_kwargs(self, client_cert: bool = True) -> dict[str, Any]:
        """redis-py RedisCluster(host, port, **...) keywords as the admin user."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        return {**kwargs, **(self.ca.client_kwargs(client_cert) if self.ca else {})}

    def start(self) -> SecureRedisCluster:
        try:
            for _ in range(self.primaries * (1 + self.replicas)):
                port = _cluster_port()
                workdir = self.directory / f"redis-{port}"
                args = ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
                        "--cluster-node-timeout", "1000"]
                if self.ca:
                    args += ["--tls-cluster", "yes"]
                self.servers.append(SecureRedisServer(self.directory, port=port, ca=self.ca,
                                                      tls_auth_clients=self.tls_auth_clients, admin=self.admin,
                                                      args=args))
            for server in self.servers:
                server.start()
            created = self.servers[0].cli("--cluster", "create", *[f"127.0.0.1:{s.port}" for s in self.servers],
                                          "--cluster-replicas", str(self.replicas), "--cluster-yes", timeout=30)
            assert created.returncode == 0, f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}"
            self.wait_healthy(15)
        except BaseException:
            self.stop()
            raise
        return self

    # -- state --

    def nodes(self, server: SecureRedisServer | None = None) -> list[dict[str, Any]]:
        """CLUSTER NODES as `server` (or the first live node) sees it: [{id, port, flags, master, slots}]."""
        for s in [server] if server else self.servers:
            if s.alive():
                out = []
                for line in s.cli("CLUSTER", "NODES").stdout.splitlines():
                    f = line.split()
                    if len(f) >= 8:
                        out.append({"id": f[0], "port": int(f[1].split(":")[1].split("@")[0]),
                                    "flags": set(f[2].split(",")), "master": f[3], "slots": f[8:]})
                if out:
                    return out
        raise AssertionError("no live cluster node answered CLUSTER NODES")

    def diagnostic(self) -> str:
        lines = []
        for s in self.servers:
            if not s.alive():
                lines.append(f"{s.port}: down")
                continue
            state = _info(s.cli("CLUSTER", "INFO").stdout).get("cluster_state")
            repl = s.replication()
            lines.append(f"{s.port}: cluster_state={state} role={repl.get('role')} "
                         f"master_port={repl.get('master_port')} link={repl.get('master_link_status')}")
        tails = [s.log_tail(10) for s in self.servers]
        return "\n".join(lines + tails)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Every live node says cluster_state:ok and flags no live node as failing, and every live
        replica's link to its primary is up."""
        live = {s.port for s in self.servers if s.alive()}

        def healthy() -> bool:
            for s in self.servers:
                if not s.alive():
                    continue
                if _info(s.cli("CLUSTER", "INFO").stdout).get("cluster_state") != "ok":
                    return False
                view = self.nodes(s)
                if len(view) != len(self.servers) or any(
                        n["flags"] & {"fail", "fail?", "handshake", "noaddr"} for n in view if n["port"] in live):
                    return False
                repl = s.replication()
                if repl.get("role") != "master" and repl.get("master_link_status") != "up":
                    return False
            return True

        wait_for("Redis Cluster healthy (cluster_state:ok, replicas linked)", healthy, timeout, self.diagnostic)

    def primaries_ports(self) -> list[int]:
        return [n["port"] for n in self.nodes() if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]]

    def replica_of(self, primary_port: int, timeout: float = 10.0) -> int:
        """A healthy replica of a primary, as CLUSTER NODES lists it: a node that has just become
        its replica (after a failover) can take a moment to appear there, so this waits for one."""
        def linked() -> int | None:
            nodes = self.nodes()
            ids = [n["id"] for n in nodes if n["port"] == primary_port]
            ports = [n["port"] for n in nodes if ids and n["master"] == ids[0] and "fail" not in n["flags"]]
            return ports[0] if ports else None
        # (not next(): a StopIteration out of asyncio.to_thread leaves the awaiting future pending
        # for ever, and the test hung to the suite's timeout)
        port: int = wait_for(f"a replica of {primary_port} in CLUSTER NODES", linked, timeout, self.diagnostic)
        return port

    def primary_of(self, key: str) -> SecureRedisServer:  # type: ignore[override]  # SecureRedisServer plays RedisServer's part
        slot = key_slot(key.encode())
        for node in self.nodes():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for span in node["slots"]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return self.server(node["port"])
        raise AssertionError(f"no primary for {key!r}\n{self.diagnostic()}")

    def command_calls(self, command: str) -> int:
        total = 0
        for s in self.servers:
            if s.alive():
                for line in s.cli("INFO", "commandstats").stdout.splitlines():
                    if line.startswith(f"cmdstat_{command}:"):
                        total += int(line.split("calls=")[1].split(",")[0])
        return total

    # -- failovers --

    def failover(self, replica_port: int, timeout: float = 15.0) -> None:
        """CLUSTER FAILOVER on a replica; waits until it is a primary, its old primary replicates
        from it and every node says cluster_state:ok."""
        replica = self.server(replica_port)
        assert replica.role()[0] == "slave", f"{replica_port} is not a replica\n{self.diagnostic()}"
        reply = replica.call("CLUSTER", "FAILOVER")
        assert reply in (True, "OK"), f"CLUSTER FAILOVER answered {reply!r}"
        wait_for(f"{replica_port} promoted by CLUSTER FAILOVER", lambda: replica.role()[0] == "master", timeout,
                 self.diagnostic)
        self.wait_healthy(timeout)

    def kill_primary(self, port: int, timeout: float = 15.0) -> int:
        """SIGKILL a primary by PID; waits until one of its replicas took over and every live node
        says cluster_state:ok. Returns the new primary's port; `revive()` restarts the dead node."""
        replica = self.replica_of(port)
        self.server(port).kill()
        wait_for(f"replica {replica} took over from killed primary {port}",
                 lambda: self.server(replica).role()[0] == "master", timeout, self.diagnostic)
        self.wait_healthy(timeout)
        return replica

    def revive(self, timeout: float = 15.0) -> None:
        """Start every stopped node again (its nodes.conf makes it rejoin, as a replica)."""
        for server in self.servers:
            if not server.alive():
                server.start()
        self.wait_healthy(timeout)
