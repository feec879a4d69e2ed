"""Bus URLs: every form Redis is run in, its credentials and TLS options kept, nothing dropped."""

from __future__ import annotations

import ssl

import pytest

from redis_topologies import PrivateCA
from signaling.bus.redis_url import Endpoint, parse
from signaling.config import ConfigError, Settings


def test_one_redis_with_acl_credentials_and_a_database():
    t = parse("redis://app:s%40cret@10.0.0.5:6380/3")
    assert (t.topology, t.endpoints, t.username, t.password, t.db, t.tls) == (
        "single", (Endpoint("10.0.0.5", 6380),), "app", "s@cret", 3, None)
    assert t.auth() == ("AUTH", "app", "s@cret")
    assert parse("redis://:pw@h").auth() == ("AUTH", "pw")
    assert parse("redis://pw@h").auth() == ("AUTH", "pw")  # redis-py reads a lone name as the password
    assert parse("redis://h").auth() is None and parse("redis://h").endpoints == (Endpoint("h", 6379),)


def test_a_unix_socket():
    t = parse("unix://u:p@/run/redis/redis.sock?db=2")
    assert t.endpoints == (Endpoint(path="/run/redis/redis.sock"),) and t.db == 2 and t.username == "u"


def test_cluster_keeps_its_credentials_and_every_seed():
    t = parse("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert t.topology == "cluster" and t.username == "app" and t.password == "pw"
    assert t.endpoints == (Endpoint("10.0.0.1", 7000), Endpoint("10.0.0.2", 7001))
    with pytest.raises(ValueError, match="host:port"):
        parse("redis+cluster://:7000")
    with pytest.raises(ValueError, match="database 0"):
        parse("redis+cluster://h:1/2")


def test_sentinel_names_its_service_its_database_and_its_own_credentials():
    t = parse("redis+sentinel://app:pw@s1:26379,s2,[::1]:5000/mymaster/2?sentinel_password=sp")
    assert t.topology == "sentinel" and t.service == "mymaster" and t.db == 2
    assert t.endpoints == (Endpoint("s1", 26379), Endpoint("s2", 26379), Endpoint("::1", 5000))
    assert t.auth() == ("AUTH", "app", "pw") and t.auth(sentinel=True) == ("AUTH", "sp")
    with pytest.raises(ValueError, match="service name"):
        parse("redis+sentinel://s1:26379")


@pytest.mark.parametrize("url, error", [
    ("redis://h/0?socket_keepalive=1", "not supported"),  # an option the node would ignore
    ("redis://h/0?ssl_ca_certs=/x", "rediss"),  # TLS options without TLS
    ("rediss://h/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    ("redis://h/0?sentinel_password=x", "sentinel"),
    ("redis://h1:1,h2:2", "one server"),
    ("redis://h/x", "database"),
    ("http://h", "scheme"),
])
def test_what_the_node_cannot_honour_is_refused_at_start(url, error):
    with pytest.raises(ValueError, match=error):
        parse(url)
    with pytest.raises(ConfigError, match="--redis-url"):
        Settings(redis_url=url).check()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("pki"), name="test-ca")


def test_tls_options_build_the_context_redis_py_would(pki):
    t = parse(f"rediss://u:p@h:6380/0?ssl_ca_certs={pki.ca_cert}&ssl_certfile={pki.client_cert}"
              f"&ssl_keyfile={pki.client_key}&ssl_cert_reqs=required")
    assert t.tls is not None and t.tls.verify_mode == ssl.CERT_REQUIRED and t.tls.check_hostname
    assert len(t.tls.get_ca_certs()) == 1
    relaxed = parse("rediss+cluster://h:1?ssl_cert_reqs=none").tls
    assert relaxed is not None and relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
    assert parse("rediss+sentinel://s:1/m?ssl_check_hostname=false").tls.check_hostname is False
    with pytest.raises(ConfigError, match="--redis-url"):
        Settings(redis_url="rediss://h/0?ssl_ca_certs=/no/such/ca.pem").check()
