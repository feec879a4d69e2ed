"""Where Redis is and how to talk to it, from the bus URL.

    redis://[[user]:password@]host[:port][/db][?options]       one Redis
    rediss://...                                               the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]        one Redis on a unix socket
    redis+cluster://[[user]:password@]host:port[,host:port...][?options]    Redis Cluster
    rediss+cluster://...                                       the same over TLS
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?options]
    rediss+sentinel://...                                      Sentinel (TLS to sentinels and data nodes)

The options are redis-py's names (`from_url` accepts the same): `ssl_ca_certs`,
`ssl_ca_path`, `ssl_certfile`, `ssl_keyfile`, `ssl_password`, `ssl_cert_reqs`
(none | optional | required), `ssl_check_hostname`, `db`; and for Sentinel
`sentinel_username` / `sentinel_password` when the sentinels require their own. An
option the node does not use is an error, never silently dropped.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote

Topology = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("single", False), "rediss": ("single", True), "unix": ("single", False),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
}
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
                "ssl_check_hostname"}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str = ""
    port: int = 6379
    path: str = ""  # a unix socket instead of host:port

    @property
    def name(self) -> str:
        return self.path or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    topology: Topology
    endpoints: tuple[Endpoint, ...]  # the server; a cluster's seed nodes; the sentinels
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None
    service: str = ""  # Sentinel: the monitored primary's name
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def auth(self, *, sentinel: bool = False) -> tuple[str, ...] | None:
        """The AUTH command for a data node (or a sentinel), None without a password."""
        user, password = ((self.sentinel_username, self.sentinel_password) if sentinel
                          else (self.username, self.password))
        if not password:
            return None
        return ("AUTH", user, password) if user else ("AUTH", password)


def parse(url: str) -> RedisTarget:
    """The target of a bus URL; ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}: use {', '.join(sorted(_SCHEMES))}")
    topology, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - _TLS_OPTIONS - {"db", "sentinel_username", "sentinel_password"}
    if unknown:
        raise ValueError(f"Redis URL option(s) {', '.join(sorted(unknown))} not supported; supported: db, "
                         f"{', '.join(sorted(_TLS_OPTIONS))}, sentinel_username, sentinel_password")
    if not tls and any(o in options for o in _TLS_OPTIONS):
        raise ValueError(f"TLS options need a rediss scheme, not {scheme}://")
    if "sentinel_" in "".join(options) and topology != "sentinel":
        raise ValueError("sentinel_username / sentinel_password are for redis+sentinel:// URLs")
    authority, _, path = rest.partition("/") if scheme != "unix" else ("", "", rest)
    username = password = None
    if scheme == "unix":
        creds, at, path = path.rpartition("@")
        if not at:
            creds = ""
    else:
        creds, at, authority = authority.rpartition("@")
    if creds:
        user, colon, secret = creds.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
        if not colon:  # redis-py reads `redis://secret@host` as a password alone
            username, password = None, unquote(user)
    db = 0
    service = ""
    if scheme == "unix":
        if not path.startswith("/"):
            raise ValueError(f"unix:// needs an absolute socket path, got {path!r}")
        endpoints: tuple[Endpoint, ...] = (Endpoint(path=unquote(path)),)
    else:
        endpoints = tuple(_endpoint(part, url, 26379 if topology == "sentinel" else 6379)
                          for part in authority.split(","))
        if topology == "single" and len(endpoints) != 1:
            raise ValueError(f"{scheme}:// names one server; for several use redis+cluster:// or redis+sentinel://")
        parts = [p for p in path.split("/") if p]
        if topology == "sentinel":
            if not parts:
                raise ValueError("redis+sentinel:// needs the service name: redis+sentinel://host:port/mymaster[/db]")
            service, parts = unquote(parts[0]), parts[1:]
        if len(parts) > 1 or (parts and not parts[0].isdigit()):
            raise ValueError(f"bad database in {path!r}: use /<number>")
        db = int(parts[0]) if parts else 0
    if "db" in options:
        if not options["db"].isdigit():
            raise ValueError(f"bad db option {options['db']!r}")
        db = int(options["db"])
    if topology == "cluster" and db:
        raise ValueError("Redis Cluster has only database 0")
    context = _tls_context(options) if tls else None
    return RedisTarget(topology, endpoints, username, password, db, context, service,
                       options.get("sentinel_username") or None, options.get("sentinel_password") or None)


def _endpoint(part: str, url: str, default_port: int) -> Endpoint:
    part = part.strip()
    if part.startswith("["):  # [ipv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad Redis address {part!r} in the bus URL: use host:port")
    return Endpoint(host, int(port) if port else default_port)


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"expected true or false, got {value!r}")
    return lowered in ("1", "true", "yes", "on")


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """The context redis-py would build from the same options (verification on by default)."""
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    context.check_hostname = reqs != "none" and _flag(options.get("ssl_check_hostname", "true"))
    context.verify_mode = _CERT_REQS[reqs]
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile") or None,
                                options.get("ssl_password") or None)
    elif options.get("ssl_keyfile"):
        raise ValueError("ssl_keyfile needs ssl_certfile")
    return context
