"""signaling.config: flag > env > default, conversion, validation, secrets, reference table."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from signaling.config import (
    ConfigError,
    Settings,
    add_arguments,
    env_name,
    load,
    parse_args,
    redact_url,
    reference_table,
)

SECRET = "k" * 32


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def checked(**kw) -> Settings:
    return Settings(**kw).check()


def config_error(**kw) -> str:
    with pytest.raises(ConfigError) as exc:
        Settings(**kw).check()
    return str(exc.value)


# -- precedence ---------------------------------------------------------------------

def test_defaults_when_nothing_given():
    s = load(None, {})
    assert (s.port, s.grace, s.turn_urls, s.jwt_secret) == (8080, 15.0, [], "")


def test_env_overrides_default():
    assert load(None, {"SIGNALING_PORT": "9000"}).port == 9000


def test_flag_overrides_env():
    assert load(flags("--port", "9001"), {"SIGNALING_PORT": "9000"}).port == 9001


def test_env_fills_what_flags_leave_out():
    s = load(flags("--port", "9001"), {"SIGNALING_GRACE": "3.5"})
    assert (s.port, s.grace) == (9001, 3.5)


def test_load_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SIGNALING_ROOM_LIMIT", "7")
    assert load().room_limit == 7


def test_parse_args_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("SIGNALING_PORT", "9000")
    assert parse_args([]).port == 8080
    assert parse_args(["--port", "1234"]).port == 1234


def test_env_names_are_prefixed_upper_case():
    assert env_name("jwt_secret") == "SIGNALING_JWT_SECRET"


# -- conversion ---------------------------------------------------------------------

def test_list_from_comma_separated_env():
    s = load(None, {"SIGNALING_TURN_URLS": " turn:a:3478 , turns:b:5349,,", "SIGNALING_TURN_SECRET": "t"})
    assert s.turn_urls == ["turn:a:3478", "turns:b:5349"]


def test_list_from_repeated_flags():
    s = parse_args(["--turn-urls", "turn:a", "--turn-urls", "turn:b", "--turn-secret", "t"])
    assert s.turn_urls == ["turn:a", "turn:b"]


def test_list_flag_overrides_list_env():
    s = load(flags("--turn-urls", "turn:f"), {"SIGNALING_TURN_URLS": "turn:e1,turn:e2", "SIGNALING_TURN_SECRET": "t"})
    assert s.turn_urls == ["turn:f"]


def test_float_and_int_conversion():
    s = load(None, {"SIGNALING_RATE": "2.5", "SIGNALING_BURST": "7", "SIGNALING_HOST": "0.0.0.0",
                    "SIGNALING_OPEN": "1"})
    assert (s.rate, s.burst, s.host) == (2.5, 7, "0.0.0.0")


@pytest.mark.parametrize("name,value", [("SIGNALING_PORT", "abc"), ("SIGNALING_PORT", "1.5"),
                                        ("SIGNALING_RATE", "fast")])
def test_unconvertible_value_is_config_error(name, value):
    with pytest.raises(ConfigError):
        load(None, {name: value})


def test_bad_flag_value_is_config_error():
    with pytest.raises(ConfigError):
        parse_args(["--burst", "lots"])


# -- check() ------------------------------------------------------------------------

def test_check_fills_node_id():
    assert checked().node_id
    assert checked(node_id="n1").node_id == "n1"


@pytest.mark.parametrize("kw,needle", [
    ({"jwt_secret": "short"}, "32 bytes"),
    ({"jwt_secret": "é" * 15}, "32 bytes"),  # 30 bytes: counted in bytes, not characters
    ({"jwt_secret": SECRET, "jwt_public_key": "/k.pem"}, "not both"),
    ({"tls_cert": "/c.pem"}, "--tls-cert and --tls-key"),
    ({"tls_key": "/k.pem"}, "--tls-cert and --tls-key"),
    ({"log_format": "xml"}, "--log-format"),
    ({"log_level": "verbose"}, "--log-level"),
    ({"ice_servers": "not json"}, "--ice-servers is not JSON"),
    ({"ice_servers": '{"urls": "stun:x"}'}, "--ice-servers must be"),
    ({"ice_servers": '[{"url": "stun:x"}]'}, "--ice-servers must be"),
    ({"ice_servers": '["stun:x"]'}, "--ice-servers must be"),
    ({"turn_urls": ["turn:x"]}, "--turn-urls needs --turn-secret"),
    ({"drain_window": -1.0}, "--drain-window must be zero or more"),
    ({"jwt_leeway": -0.5}, "--jwt-leeway must be zero or more"),
])
def test_check_rejects(kw, needle):
    assert needle in config_error(**kw)


@pytest.mark.parametrize("name", ["max_frame_bytes", "burst", "abuse_strikes", "room_limit", "rooms_per_peer",
                                  "inbox_limit", "send_buffer", "max_connections", "turn_ttl", "backlog", "token_ttl",
                                  "rate", "abuse_window", "grace", "heartbeat"])
@pytest.mark.parametrize("value", [0, -1])
def test_check_rejects_non_positive(name, value):
    assert f"--{name.replace('_', '-')} must be positive" in config_error(**{name: value})


def test_check_accepts_valid_settings():
    s = checked(jwt_secret="é" * 16, ice_servers='[{"urls": ["stun:a", "stun:b"]}]', turn_urls=["turn:t"],
                turn_secret="t", tls_cert="/c", tls_key="/k", log_level="DEBUG", log_format="json",
                drain_window=0.0, jwt_leeway=0.0)
    assert s.auth_enabled and s.tls_enabled


def test_turn_urls_accept_secret_file(tmp_path):
    path = tmp_path / "turn"
    path.write_text("turn-secret\n")
    assert checked(turn_urls=["turn:t"], turn_secret_file=str(path)).turn_secret == "turn-secret"


def test_auth_and_tls_off_by_default():
    s = checked()
    assert not s.auth_enabled and not s.tls_enabled


NUMERIC = ["port", "max_frame_bytes", "burst", "abuse_strikes", "room_limit", "rooms_per_peer", "inbox_limit",
           "send_buffer", "max_connections", "turn_ttl", "backlog", "token_ttl", "rate", "abuse_window", "grace",
           "heartbeat", "drain_window", "jwt_leeway"]
FLOATS = ["rate", "abuse_window", "grace", "heartbeat", "drain_window", "jwt_leeway"]


@pytest.mark.parametrize("name", NUMERIC)
def test_check_rejects_nan(name):
    assert f"--{name.replace('_', '-')} must be" in config_error(**{name: float("nan")})


@pytest.mark.parametrize("name", FLOATS)
def test_nan_from_the_environment_is_refused(name):
    with pytest.raises(ConfigError):
        load(None, {env_name(name): "nan"})


@pytest.mark.parametrize("name", FLOATS)
def test_check_rejects_infinity(name):
    assert f"--{name.replace('_', '-')} must be" in config_error(**{name: float("inf")})


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_in_range_is_accepted(port):
    assert parse_args(["--port", str(port)]).port == port


@pytest.mark.parametrize("port", [-1, 65536, 10**6])
def test_port_out_of_range_is_refused(port):
    assert "--port must be 0-65535" in config_error(port=port)


# -- *_file secrets ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jwt_secret", "turn_secret"])
def test_secret_file_is_read_and_stripped(tmp_path, name):
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n")
    assert getattr(checked(**{f"{name}_file": str(path)}), name) == SECRET


def test_secret_file_via_env(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    s = load(None, {"SIGNALING_JWT_SECRET_FILE": str(path)})
    assert s.jwt_secret == SECRET and s.auth_enabled


@pytest.mark.parametrize("name", ["jwt_secret", "turn_secret"])
def test_secret_and_secret_file_together_is_error(tmp_path, name):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    assert "not both" in config_error(**{name: SECRET, f"{name}_file": str(path)})


@pytest.mark.parametrize("name", ["jwt_secret", "turn_secret"])
def test_missing_secret_file_is_error(tmp_path, name):
    msg = config_error(**{f"{name}_file": str(tmp_path / "nope")})
    assert f"--{name.replace('_', '-')}-file" in msg


@pytest.mark.parametrize("name", ["jwt_secret", "turn_secret"])
def test_empty_secret_file_is_error(tmp_path, name):
    path = tmp_path / "secret"
    path.write_text(" \n")
    assert "is empty" in config_error(**{f"{name}_file": str(path)})


def test_short_secret_from_file_is_error(tmp_path):
    path = tmp_path / "secret"
    path.write_text("short")
    assert "32 bytes" in config_error(jwt_secret_file=str(path))


def test_secret_file_with_public_key_is_error(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    assert "not both" in config_error(jwt_secret_file=str(path), jwt_public_key="/k.pem")


# -- redacted / reference -------------------------------------------------------------

def test_redacted_masks_secrets():
    out = checked(jwt_secret=SECRET, turn_secret="turn-pass").redacted()
    assert out["jwt_secret"] == "***" and out["turn_secret"] == "***"
    assert SECRET not in repr(out) and "turn-pass" not in repr(out)


def test_redacted_masks_secret_read_from_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    out = checked(jwt_secret_file=str(path)).redacted()
    assert out["jwt_secret"] == "***" and out["jwt_secret_file"] == str(path)


def test_redacted_keeps_empty_secrets_and_other_values():
    out = checked(port=1234).redacted()
    assert out["jwt_secret"] == "" and out["port"] == 1234
    assert set(out) == {f.name for f in dataclasses.fields(Settings)}


def test_reference_table_has_a_row_per_setting():
    table = reference_table()
    rows = table.strip().splitlines()
    fields = dataclasses.fields(Settings)
    assert len(rows) == len(fields) + 2
    for f in fields:
        flag = f"`--{f.name.replace('_', '-')}`"
        assert any(row.startswith(f"| {flag} | `{env_name(f.name)}` |") for row in rows), f.name


def test_every_setting_has_a_flag_and_help():
    ns = flags()
    for f in dataclasses.fields(Settings):
        assert hasattr(ns, f.name) and getattr(ns, f.name) is None
        assert f.metadata["help"]


def test_replace_returns_changed_copy():
    s = checked()
    assert s.replace(port=1).port == 1 and s.port == 8080


# -- safe defaults when exposed (issue 11) ------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "signaling.example.com"])
def test_open_mode_is_refused_on_an_address_that_is_not_loopback(host):
    message = config_error(host=host)
    assert "not a loopback address" in message and "--open" in message and "SIGNALING_JWT_SECRET_FILE" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_open_mode_runs_on_loopback(host):
    assert not Settings(host=host).check().auth_enabled


def test_open_mode_elsewhere_only_when_asked_for():
    assert Settings(host="0.0.0.0", open=True).check().open
    assert load(None, {"SIGNALING_HOST": "0.0.0.0", "SIGNALING_OPEN": "true"}).open
    assert parse_args(["--host", "0.0.0.0", "--open"]).open
    assert not Settings(host="0.0.0.0", jwt_secret=SECRET).check().open


def test_open_with_a_key_is_a_contradiction():
    assert "--open" in config_error(open=True, jwt_secret=SECRET)


def test_a_public_key_needs_an_audience(tmp_path):
    assert "--jwt-audience" in config_error(jwt_public_key=str(tmp_path / "k.pem"))


def test_the_redis_password_never_reaches_the_settings_line():
    s = Settings(redis_url="rediss://app:s3cr3t@redis.internal:6380/2").check()
    shown = json.dumps(s.redacted())
    assert "s3cr3t" not in shown and "rediss://app:***@redis.internal:6380/2" in shown
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    # every form the bus takes: a lone password, sentinel and TLS key passwords in the query
    assert redact_url("redis://pw@h/0") == "redis://***@h/0"
    assert redact_url("redis+sentinel://app:pw@s1:1,s2:2/m/0?sentinel_password=sp&db=0") == \
        "redis+sentinel://app:***@s1:1,s2:2/m/0?sentinel_password=***&db=0"
    assert redact_url("rediss://u:pw@h/0?ssl_ca_certs=/ca.pem&ssl_password=kp") == \
        "rediss://u:***@h/0?ssl_ca_certs=/ca.pem&ssl_password=***"
    assert redact_url("unix://u:pw@/run/redis.sock?db=1") == "unix://u:***@/run/redis.sock?db=1"


def test_the_redis_url_can_come_from_a_file(tmp_path):
    path = tmp_path / "redis-url"
    path.write_text("redis://app:s3cr3t@h:6379/0\n")
    assert Settings(redis_url_file=str(path)).check().redis_url == "redis://app:s3cr3t@h:6379/0"
    assert "not both" in config_error(redis_url_file=str(path), redis_url="redis://h")


def test_replay_limits_are_checked():
    assert "--replay-window must be zero or more" in config_error(replay_window=-1)
    assert "--replay-window must be zero or more" in config_error(replay_window=float("nan"))
    assert "--replay-bytes must be at least --max-frame-bytes" in config_error(replay_bytes=1000,
                                                                             max_frame_bytes=4096)
    s = parse_args(["--replay-window", "0", "--replay-bytes", "1048576"])
    assert (s.replay_window, s.replay_bytes) == (0.0, 1048576)
    assert load(None, {"SIGNALING_REPLAY_WINDOW": "2.5"}).replay_window == 2.5
