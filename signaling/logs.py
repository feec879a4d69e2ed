"""Logging set-up: text or JSON lines, with tokens redacted from every record.

Tokens travel in query strings (`?token=`) and `Authorization` headers; the access log
records paths without query strings, and a filter on the root handler masks anything
that still looks like a token (`token=...`, `Bearer ...`, a JWT) in any message.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_SECRET = re.compile(
    r"(?P<kv>((?:token|access_token|jwt|secret|credential)=)[^&\s\"']+)"
    r"|(?P<bearer>Bearer\s+[A-Za-z0-9\-_.~+/]+=*)"
    r"|(?P<jwt>eyJ[A-Za-z0-9\-_]+\.[A-Za-z0-9\-_]+\.[A-Za-z0-9\-_]*)"
)


def redact(text: str) -> str:
    def mask(m: re.Match[str]) -> str:
        if m.group("kv"):
            return m.group(2) + "[redacted]"
        if m.group("bearer"):
            return "Bearer [redacted]"
        return "[redacted-jwt]"

    return _SECRET.sub(mask, text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("peer", "node", "code", "remote", "path", "status", "host", "forwarded_proto"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """One line per HTTP request; the path only, never the query string."""

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        remote = request.remote or "-"
        # What the proxy in front forwarded, as received (request.host would resolve a missing Host)
        extra = {"remote": remote, "path": request.path, "status": response.status,
                 "host": request.headers.get("Host"), "forwarded_proto": request.headers.get("X-Forwarded-Proto")}
        self.logger.info(
            "%s %s %s %d %.1fms", remote, request.method, request.path, response.status, time_taken * 1000,
            extra=extra,
        )


