"""One frozen `Settings`, built from command-line flags and `SIGNALING_*` variables.

Every option is declared once, in `Settings`, with its help text in the field's
metadata. The argument parser, the environment reader and the README's configuration
reference (`signaling config-reference`) are all generated from those declarations, so
they cannot drift apart. Precedence: flag, then environment variable, then default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .quota import Limits

ENV_PREFIX = "SIGNALING_"


class ConfigError(ValueError):
    """A setting has a value the node cannot run with; the message names it."""


def _opt(default: Any, help: str, *, secret: bool = False, metavar: str | None = None) -> Any:
    meta = {"help": help, "secret": secret, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Settings:
    # -- listening -------------------------------------------------------------------
    host: str = _opt("127.0.0.1", "Address to listen on (0.0.0.0 in containers).")
    port: int = _opt(8080, "TCP port to listen on.")
    backlog: int = _opt(1024, "Listen backlog; keep it large so a reconnect storm does not overflow it.")
    node_id: str = _opt("", "Name of this node, sent in `welcome.node` (default: hostname plus a random suffix).")
    tls_cert: str = _opt("", "PEM certificate chain: serve wss:// directly (where no proxy terminates TLS).",
                         metavar="PATH")
    tls_key: str = _opt("", "PEM private key for --tls-cert.", metavar="PATH")
    trusted_proxies: list[str] = _opt([], "Proxies (addresses or CIDR networks) whose `X-Forwarded-For` / `X-Real-IP` "
                                      "name the client in logs; from anyone else those headers are ignored "
                                      "(repeatable; comma-separated in the environment).", metavar="CIDR")
    # -- cluster ---------------------------------------------------------------------
    redis_url_file: str = _opt("", "File holding --redis-url (it may carry a password).", metavar="PATH")
    redis_url: str = _opt("", "Bus to join: empty or memory:// for the embedded single-node bus; "
                          "redis://[user:pass@]host:port[/db] (rediss:// for TLS, options "
                          "?ssl_ca_certs=&ssl_certfile=&ssl_keyfile=&ssl_cert_reqs=) for nodes on one Redis; "
                          "redis+sentinel://host:port[,host:port...]/service[/db] through Sentinel; "
                          "redis+cluster://host:port[,host:port...] for Redis Cluster (rediss+ forms for TLS).",
                          metavar="URL")
    redis_replicas: int = _opt(0, "Replicas every write must reach before it is acknowledged (Redis WAIT after each "
                               "batch): with 1 or more, a Sentinel or Cluster failover cannot lose a message a client "
                               "was told was delivered or queued. 0: acknowledged once the primary has it.")
    replay_window: float = _opt(3.0, "Seconds a node keeps each message Redis acknowledged, counted while Redis is "
                                "seen alive, so that if Redis loses its data (restarted empty) before passing a "
                                "message on to the recipient's node, the sender's node hands it in again. Keep it at "
                                "least 0.8 x --node-ttl: a recipient's node that reads nothing for that long closes "
                                "its sockets, and its clients learn of a loss from `resumed: false`. 0: off; off too "
                                "with --redis-replicas, where a promoted replica holds every acknowledged message.")
    replay_bytes: int = _opt(67108864, "Bytes of messages a node keeps for --replay-window; past it the oldest go "
                             "(counted in signaling_replay_dropped_total) and rely on Redis's own durability.")
    key_prefix: str = _opt("signaling", "Prefix of every Redis key and channel, so several clusters can share one "
                           "Redis.")
    node_ttl: float = _opt(3.0, "Length of a node's lease in Redis: a node that cannot renew it for this many seconds "
                           "is dead (its peers enter their grace) and closes its own sockets after 80% of it. Keep it "
                           "above how long a Redis restart or failover takes, or every socket is closed during one.")
    # -- auth ------------------------------------------------------------------------
    jwt_secret: str = _opt("", "HS256 shared secret; turns on JWT auth. Prefer the _FILE form or the environment.",
                           secret=True)
    jwt_secret_file: str = _opt("", "File holding the HS256 secret.", metavar="PATH")
    jwt_public_key: str = _opt("", "PEM public key file (RSA: RS256, EC P-256: ES256); turns on JWT auth.",
                               metavar="PATH")
    jwt_audience: str = _opt("", "Required `aud` claim, when set; required with --jwt-public-key (an identity "
                             "provider's key signs tokens for other services too).")
    jwt_issuer: str = _opt("", "Required `iss` claim, when set.")
    jwt_leeway: float = _opt(5.0, "Clock skew allowed on `exp`/`nbf`/`iat`, in seconds.")
    open: bool = _opt(False, "Run without JWT auth on a non-loopback address (any client may connect as any peer id): "
                      "for a trusted network only. Without a JWT key a node listens in open mode only on a loopback "
                      "address unless this is given.")
    token_ttl: int = _opt(3600, "Default lifetime of tokens minted by `signaling token`, in seconds.")
    # -- ICE -------------------------------------------------------------------------
    ice_servers: str = _opt("[]", "JSON list of RTCIceServer objects sent in `welcome.iceServers` as they are.",
                            metavar="JSON")
    turn_urls: list[str] = _opt([], "TURN server URLs that get per-connection REST credentials (repeatable; "
                                "comma-separated in the environment).", metavar="URL")
    turn_secret: str = _opt("", "TURN REST API shared secret (coturn `static-auth-secret`).", secret=True)
    turn_secret_file: str = _opt("", "File holding the TURN secret.", metavar="PATH")
    turn_ttl: int = _opt(86400, "Lifetime of minted TURN credentials, in seconds.")
    # -- limits ----------------------------------------------------------------------
    max_frame_bytes: int = _opt(65536, "Largest accepted frame; a bigger one closes the connection with 1009.")
    rate: float = _opt(50.0, "Sustained messages per second per peer id (token bucket refill); kept across its "
                       "reconnects, on any node. Over it a message gets `rate-limited`.")
    burst: int = _opt(100, "Token bucket size: messages a peer may send at once.")
    byte_rate: float = _opt(262144.0, "Sustained bytes of frames per second per peer id (a second token bucket, like "
                            "--rate).")
    byte_burst: int = _opt(1048576, "Bytes of frames a peer may send at once; at least --max-frame-bytes.")
    abuse_strikes: int = _opt(200, "Rejected frames (invalid or rate-limited) within --abuse-window that close the "
                              "connection with 1008 (counted per peer id, like --rate).")
    abuse_window: float = _opt(10.0, "Window for --abuse-strikes, in seconds.")
    room_limit: int = _opt(50, "Members per room; a join beyond it gets `room-full`.")
    rooms_per_peer: int = _opt(32, "Rooms one peer may be in at once; a join beyond it gets `forbidden`.")
    grace: float = _opt(15.0, "Reconnect grace: seconds a dropped peer keeps its id, rooms and inbox.")
    inbox_limit: int = _opt(256, "Messages kept per peer for resume; older ones are dropped (the resume then says "
                            "resumed: false).")
    inbox_bytes: int = _opt(1048576, "Bytes kept per peer for resume (bodies plus 64 bytes an entry), the same way; at "
                            "least --max-frame-bytes. A connected peer's inbox also lets go of what its client "
                            "certainly has (it answered a ping sent after it).")
    send_buffer: int = _opt(1048576, "Bytes of outgoing frames a connection may leave unread (beyond the kernel's "
                            "socket buffer); a consumer that falls further behind is closed with 1011 and resumes from "
                            "its inbox.")
    max_connections: int = _opt(10000, "Connections per node; beyond it the upgrade is refused with HTTP 503.")
    heartbeat: float = _opt(25.0, "Seconds between server WebSocket pings (sent in `welcome.heartbeat`); no pong "
                            "within half of it closes the socket.")
    drain_delay: float = _opt(0.0, "On SIGTERM, answer /readyz with 503 for this many seconds before the first 1001 "
                              "close, so a load balancer that polls it stops sending new clients first.")
    drain_window: float = _opt(0.0, "On SIGTERM, spread the 1001 closes over this many seconds (no reconnect "
                               "thundering herd).")
    # -- connections -----------------------------------------------------------------
    header_timeout: float = _opt(10.0, "Seconds a new connection has, from its accept, to send its whole first request "
                                 "line and headers (a WebSocket handshake's included; a TLS handshake spends from the "
                                 "same time); one still sending is closed, however steadily it trickles bytes "
                                 "(Slowloris).")
    keepalive_timeout: float = _opt(15.0, "Seconds an HTTP keep-alive connection may sit idle after a response, or "
                                    "take to send its next request line and headers, before it is closed.")
    connection_headroom: int = _opt(100, "TCP connections a node accepts beyond --max-connections, to serve health "
                                    "probes and /metrics and to answer upgrades with 503; a connection beyond both is "
                                    "closed at once, unread. Every open connection counts: half-sent requests, idle "
                                    "keep-alive ones, WebSockets.")
    # -- logging ---------------------------------------------------------------------
    log_level: str = _opt("info", "debug, info, warning or error.")
    log_format: str = _opt("text", "text or json.")

    # ----------------------------------------------------------------------------------
    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    @property
    def limits(self) -> Limits:
        return Limits(self.rate, self.burst, self.abuse_strikes, self.abuse_window, self.byte_rate, self.byte_burst)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked: safe to log."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        out["redis_url"] = redact_url(self.redis_url)
        return out

    def check(self) -> Settings:
        """Validate, read `*_file` secrets, fill the node id; return the final settings."""
        changes: dict[str, Any] = {}
        if not self.node_id:
            changes["node_id"] = _default_node_id()
        for name in ("jwt_secret", "turn_secret", "redis_url"):
            path = getattr(self, f"{name}_file")
            if path:
                if getattr(self, name):
                    raise ConfigError(f"give either --{_flag(name)} or --{_flag(name)}-file, not both")
                try:
                    changes[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"--{_flag(name)}-file: {exc}") from None
                if not changes[name]:
                    raise ConfigError(f"--{_flag(name)}-file: {path} is empty")
        secret = changes.get("jwt_secret", self.jwt_secret)
        if secret and self.jwt_public_key:
            raise ConfigError("give either a JWT secret or a JWT public key, not both")
        if self.jwt_public_key and not self.jwt_audience:
            raise ConfigError("--jwt-public-key needs --jwt-audience: tokens its key signs for other services "
                              "must not be taken here")
        keyed = bool(secret or self.jwt_public_key)
        if keyed and self.open:
            raise ConfigError("--open is for running without a JWT key; one is configured")
        if not keyed and not self.open and not _loopback(self.host):
            raise ConfigError(
                f"no JWT key is configured and --host {self.host} is not a loopback address: any client could "
                "connect as any peer id. Configure a key (SIGNALING_JWT_SECRET_FILE / --jwt-secret-file, or "
                "--jwt-public-key with --jwt-audience), or pass --open (SIGNALING_OPEN=1) to run open on purpose")
        if secret and len(secret.encode()) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes (RFC 7518 §3.2)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.log_format not in ("text", "json"):
            raise ConfigError("--log-format must be text or json")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level must be debug, info, warning or error")
        try:
            ice = json.loads(self.ice_servers)
        except ValueError as exc:
            raise ConfigError(f"--ice-servers is not JSON: {exc}") from None
        if not isinstance(ice, list) or not all(isinstance(s, dict) and "urls" in s for s in ice):
            raise ConfigError("--ice-servers must be a JSON list of objects with `urls`")
        if self.turn_urls and not (self.turn_secret or self.turn_secret_file):
            raise ConfigError("--turn-urls needs --turn-secret (or --turn-secret-file)")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be 0-65535 (0: any free port)")
        if self.inbox_bytes < self.max_frame_bytes + 64:
            raise ConfigError("--inbox-bytes must be above --max-frame-bytes (a largest frame must fit)")
        if self.byte_burst < self.max_frame_bytes:
            raise ConfigError("--byte-burst must be at least --max-frame-bytes (a largest frame must pass)")
        for name in ("max_frame_bytes", "burst", "byte_rate", "byte_burst", "abuse_strikes", "room_limit",
                     "rooms_per_peer", "inbox_limit", "inbox_bytes", "send_buffer", "max_connections", "turn_ttl",
                     "backlog", "token_ttl", "rate", "abuse_window", "grace", "heartbeat", "node_ttl"):
            if not getattr(self, name) > 0:  # written so that NaN fails too
                raise ConfigError(f"--{_flag(name)} must be positive")
        for name in ("drain_delay", "drain_window", "jwt_leeway"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"--{_flag(name)} must be zero or more")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"--trusted-proxies: {proxy!r} is not an IP address or CIDR network") from None
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", self.key_prefix):
            raise ConfigError("--key-prefix must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        for name in ("rate", "byte_rate", "abuse_window", "grace", "heartbeat", "node_ttl"):
            if getattr(self, name) == float("inf"):
                raise ConfigError(f"--{_flag(name)} must be finite")
        for name in ("header_timeout", "keepalive_timeout"):
            if not 0 < getattr(self, name) < float("inf"):  # written so that NaN fails too
                raise ConfigError(f"--{_flag(name)} must be positive and finite")
        if not self.connection_headroom >= 0:
            raise ConfigError("--connection-headroom must be zero or more")
        if not self.replay_window >= 0:
            raise ConfigError("--replay-window must be zero or more")
        if not self.replay_bytes >= self.max_frame_bytes:
            raise ConfigError("--replay-bytes must be at least --max-frame-bytes (a largest message must fit)")
        if not self.redis_replicas >= 0:
            raise ConfigError("--redis-replicas must be zero or more")
        if self.redis_url and not self.redis_url.startswith("memory://"):
            from .bus.redis_url import parse  # (no Redis client imported: URL and TLS options only)

            try:
                parse(self.redis_url)
            except (ValueError, OSError) as exc:  # OSError: a TLS file that cannot be read
                raise ConfigError(f"--redis-url: {exc}") from None
        return dataclasses.replace(self, **changes)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def redact_url(url: str) -> str:
    """`url` without its passwords, in the credentials and in the query (sentinel_password,
    ssl_password); user names stay: they help, and say nothing secret."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, q, query = rest.partition("?")
    if query:
        query = re.sub(r"((?:^|&)[a-z_]*password=)[^&]*", r"\1***", query)
    authority, slash, path = rest.partition("/") if scheme != "unix" else (rest, "", "")
    if "@" in authority:
        creds, _, host = authority.rpartition("@")
        user, colon, _ = creds.partition(":")
        authority = f"{user}{colon}***@{host}" if colon else f"***@{host}"
    return f"{scheme}://{authority}{slash}{path}{q}{query}"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    if kind is list:
        if isinstance(raw, str):
            return [item.strip() for item in raw.split(",") if item.strip()]
        return list(raw)
    if kind is bool:
        return str(raw).lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}: expected {kind.__name__}, got {raw!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so env and defaults can fill in."""
    for f in dataclasses.fields(Settings):
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}]"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if f.default is dataclasses.MISSING:  # list
            kwargs["action"] = "append"
        elif isinstance(f.default, bool):  # a switch: `--open`, no value
            kwargs.update(action="store_const", const=True)
        parser.add_argument(f"--{_flag(f.name)}", **kwargs)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings: flags (when given) over `SIGNALING_*` variables over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f, raw)
    return Settings(**values).check()


def reference_table() -> str:
    """The markdown configuration reference that the README embeds."""
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else []
        shown = "" if default in ("", []) else f"`{default}`"
        rows.append(f"| `--{_flag(f.name)}` | `{env_name(f.name)}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


README_START = "<!-- config-reference:start (generated by `make docs`; do not edit) -->"
README_END = "<!-- config-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """`readme` with the text between the reference markers replaced by `reference_table()`."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ConfigError("README has no configuration reference markers")
    return f"{head}{README_START}\n{reference_table()}{README_END}{tail}"


def parse_args(argv: Sequence[str]) -> Settings:
    """Convenience for tests and embedding: `parse_args(["--port", "0"])`."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(list(argv)), environ={})
