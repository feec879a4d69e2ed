"""signaling.logs: token redaction in log messages."""

from __future__ import annotations

import logging

import jwt
import pytest

from signaling.logs import JsonFormatter, RedactingFilter, redact

JWT = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, "s" * 32, algorithm="HS256")


@pytest.mark.parametrize("text,expected", [
    ("GET /ws?token=abc123&peer=x", "GET /ws?token=[redacted]&peer=x"),
    ("GET /ws?peer=x&access_token=abc", "GET /ws?peer=x&access_token=[redacted]"),
    ("turn_secret=hunter2 next", "turn_secret=[redacted] next"),
    ("credential=AbC+/= end", "credential=[redacted] end"),
    ("jwt=xyz", "jwt=[redacted]"),
    ("Authorization: Bearer abc.def-ghi_jkl==", "Authorization: Bearer [redacted]"),
])
def test_redact_masks_key_values_and_bearer(text, expected):
    assert redact(text) == expected


def test_redact_masks_bare_jwt():
    out = redact(f"bad token {JWT} from 1.2.3.4")
    assert JWT not in out and out == "bad token [redacted-jwt] from 1.2.3.4"


def test_redact_masks_jwt_in_query_and_header():
    assert JWT not in redact(f"/ws?token={JWT}") and JWT not in redact(f"Bearer {JWT}")


@pytest.mark.parametrize("text", ["peer alice joined room r", "GET /ws?peer=bob 101", "tokens are fine", ""])
def test_redact_leaves_clean_text_alone(text):
    assert redact(text) == text


def _record(msg, *args) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)


def test_filter_rewrites_record_with_secret_in_args():
    rec = _record("upgrade %s from %s", f"/ws?token={JWT}", "1.2.3.4")
    assert RedactingFilter().filter(rec) is True
    assert rec.getMessage() == "upgrade /ws?token=[redacted] from 1.2.3.4"
    assert rec.args is None


def test_filter_leaves_clean_record_untouched():
    rec = _record("peer %s connected", "alice")
    assert RedactingFilter().filter(rec) is True
    assert (rec.msg, rec.args) == ("peer %s connected", ("alice",))


def test_filter_redacts_through_a_logger(caplog):
    logger = logging.getLogger("test_unit_logs")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test_unit_logs"):
            logger.info("auth header %s", f"Bearer {JWT}")
    finally:
        logger.filters.clear()
    assert JWT not in caplog.text and "Bearer [redacted]" in caplog.text


def test_json_formatter_emits_extra_fields():
    import json
    rec = _record("hi %s", "x")
    rec.peer = "alice"
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "hi x" and out["peer"] == "alice" and out["level"] == "info"
