"""`signaling serve | token | cluster | config-reference`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__, auth, config, logs, server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signaling", description="Horizontally scalable WebRTC signaling.")
    parser.add_argument("--version", action="version", version=f"signaling {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one signaling node")
    config.add_arguments(serve)

    token = sub.add_parser("token", help="mint an HS256 token with the configured secret (development, tests)")
    token.add_argument("sub", help="the peer id (`sub` claim)")
    token.add_argument("--room", action="append", dest="rooms", metavar="ROOM",
                       help="a room the token allows (repeatable; a trailing * is a prefix); default: any room")
    token.add_argument("--ttl", type=float, default=None, help="lifetime in seconds (default: --token-ttl)")
    config.add_arguments(token)

    cluster = sub.add_parser(
        "cluster", help="run redis-server, N nodes and nginx in front of them on this machine (development, tests)",
        description="Start redis-server (unless --redis-url), N `signaling serve` processes and nginx rendered "
                    "from nginx/ with the nodes as its upstream; print the endpoint; Ctrl-C or SIGTERM drains the "
                    "nodes and stops everything. Node flags go after `--`; SIGNALING_* variables reach every node.")
    cluster.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    cluster.add_argument("--port", type=int, default=8080,
                         help="port nginx listens on (default 8080; 0: any free port)")
    cluster.add_argument("--host", default="127.0.0.1", help="address nginx listens on (default 127.0.0.1)")
    cluster.add_argument("--redis-url", metavar="URL", help="join this Redis instead of starting a redis-server")
    cluster.add_argument("--tls-port", type=int, help="also serve wss:// on this port (needs --tls-cert, --tls-key)")
    cluster.add_argument("--tls-cert", default="", metavar="PATH", help="PEM certificate chain for --tls-port")
    cluster.add_argument("--tls-key", default="", metavar="PATH", help="PEM private key for --tls-cert")
    cluster.add_argument("--log-dir", metavar="DIR", help="keep the rendered config and every log here (default: a "
                         "temporary directory, removed on exit)")
    cluster.add_argument("node_args", nargs="*", metavar="-- NODE-FLAGS", help="flags for every `signaling serve`")

    ref = sub.add_parser("config-reference", help="print the configuration reference (markdown)")
    ref.add_argument("--readme", metavar="PATH", help="rewrite the reference section of this README instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-reference":
        if args.readme:
            with open(args.readme, encoding="utf-8") as fh:
                text = config.readme_with_reference(fh.read())
            with open(args.readme, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            sys.stdout.write(config.reference_table())
        return 0
    if args.command == "cluster":
        return _cluster(args)
    try:
        settings = config.load(args)
    except config.ConfigError as exc:
        print(f"signaling: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        if not settings.jwt_secret:
            print("signaling token: needs a JWT secret (SIGNALING_JWT_SECRET or --jwt-secret-file)", file=sys.stderr)
            return 2
        ttl = args.ttl if args.ttl is not None else settings.token_ttl
        print(auth.mint(settings.jwt_secret, args.sub, ttl=ttl, rooms=args.rooms,
                        audience=settings.jwt_audience or None, issuer=settings.jwt_issuer or None))
        return 0
    logs.setup(settings.log_level, settings.log_format)
    logging.getLogger("signaling").info("settings: %s", json.dumps(settings.redacted()))
    try:
        server.run(settings)
    except KeyboardInterrupt:
        pass
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from .launcher import LaunchError, LocalCluster, run

    try:
        cluster = LocalCluster(args.nodes, port=args.port, host=args.host, redis_url=args.redis_url,
                               node_args=args.node_args, workdir=args.log_dir, tls_port=args.tls_port,
                               tls_cert=args.tls_cert, tls_key=args.tls_key)
    except LaunchError as exc:
        print(f"signaling cluster: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(cluster))


if __name__ == "__main__":
    raise SystemExit(main())
