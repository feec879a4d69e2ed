"""Trusted proxies: which address is the client (signaling.proxies.client_address), and the
settings that configure it and the drain."""

from __future__ import annotations

import ipaddress

import pytest

from signaling.config import ConfigError, Settings, load
from signaling.proxies import client_address

TRUSTED = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
           ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize("peer, xff, real_ip, expected", [
    # not from a trusted proxy: the headers are ignored, whatever they say
    ("203.0.113.5", ["198.51.100.1"], "198.51.100.2", "203.0.113.5"),
    # from a trusted proxy: the rightmost hop that is not a proxy of ours
    ("127.0.0.1", ["198.51.100.1"], None, "198.51.100.1"),
    ("10.0.0.2", ["198.51.100.1, 10.9.9.9"], None, "198.51.100.1"),
    ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], None, "198.51.100.1"),  # a client-sent first hop is not believed
    ("10.0.0.2", ["6.6.6.6", "198.51.100.1, 10.1.1.1"], None, "198.51.100.1"),  # several headers, in order
    ("10.0.0.2", ["10.3.3.3, 10.1.1.1"], None, "10.3.3.3"),  # all ours: the farthest one seen
    ("10.0.0.2", ["198.51.100.1:4711"], None, "198.51.100.1"),  # with a port
    ("10.0.0.2", ["[2001:db8::7]:4711"], None, "2001:db8::7"),
    ("fd00::1", ["2001:db8::8"], None, "2001:db8::8"),
    ("::ffff:127.0.0.1", ["198.51.100.1"], None, "198.51.100.1"),  # IPv4-mapped proxy address
    ("10.0.0.2", ["junk, 10.1.1.1"], None, "10.1.1.1"),  # unparsable: stop at the last vouched hop
    ("10.0.0.2", ["junk"], None, "10.0.0.2"),
    ("10.0.0.2", [], "198.51.100.9", "198.51.100.9"),  # X-Real-IP when there is no X-Forwarded-For
    ("10.0.0.2", [], "junk", "10.0.0.2"),
    ("10.0.0.2", [" , "], None, "10.0.0.2"),
    (None, ["198.51.100.1"], None, None),
])
def test_client_address(peer, xff, real_ip, expected):
    assert client_address(peer, xff, real_ip, TRUSTED) == expected


def test_no_trusted_proxies_means_the_socket_peer():
    assert client_address("127.0.0.1", ["198.51.100.1"], "198.51.100.2", ()) == "127.0.0.1"


def test_trusted_proxies_from_env_and_flags():
    s = load(None, {"SIGNALING_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1"})
    assert s.trusted_proxies == ["10.0.0.0/8", "127.0.0.1", "::1"]
    assert Settings().trusted_proxies == []


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "1.2.3"])
def test_trusted_proxies_must_be_addresses_or_networks(bad):
    with pytest.raises(ConfigError, match="--trusted-proxies"):
        Settings(trusted_proxies=[bad]).check()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_drain_delay_must_be_finite_and_not_negative(bad):
    with pytest.raises(ConfigError, match="--drain-delay"):
        Settings(drain_delay=bad).check()


def test_drain_delay_defaults_to_none():
    assert Settings().check().drain_delay == 0.0
    assert load(None, {"SIGNALING_DRAIN_DELAY": "2.5"}).drain_delay == 2.5
