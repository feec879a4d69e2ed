"""signaling.auth: JWT verification (HS256 / RS256 / ES256), open mode, TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling.auth import AuthError, Identity, Verifier, ice_servers, mint, turn_credentials
from signaling.config import Settings

SECRET = "s" * 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra) -> dict:
    now = int(time.time())
    out = {"sub": "alice", "iat": now, "exp": now + 600}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def hs(secret: str = SECRET, **extra) -> str:
    return jwt.encode(claims(**extra), secret, algorithm="HS256")


def refused(verifier: Verifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as exc:
        verifier.verify(token)
    assert exc.value.status == 401
    return exc.value


@pytest.fixture
def hs_verifier() -> Verifier:
    return Verifier(Settings(jwt_secret=SECRET))


def _pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rsa_setup(rsa_key, tmp_path):
    path = tmp_path / "rsa.pem"
    path.write_bytes(_pem(rsa_key.public_key()))
    return rsa_key, Verifier(Settings(jwt_public_key=str(path))), path


@pytest.fixture
def ec_setup(ec_key, tmp_path):
    path = tmp_path / "ec.pem"
    path.write_bytes(_pem(ec_key.public_key()))
    return ec_key, Verifier(Settings(jwt_public_key=str(path))), path


# -- HS256 ----------------------------------------------------------------------------

def test_valid_hs256_token_gives_identity(hs_verifier):
    token = hs(rooms=["a", "b*"])
    ident = hs_verifier.identify(token, None)
    assert ident.peer == "alice" and ident.rooms == ("a", "b*")
    assert ident.expires == float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_token_without_rooms_allows_any_room(hs_verifier):
    assert hs_verifier.verify(hs()).rooms is None


def test_minted_token_verifies(hs_verifier):
    ident = hs_verifier.verify(mint(SECRET, "bob", ttl=60, rooms=["r"]))
    assert ident == Identity("bob", ("r",), ident.expires)


def test_requested_peer_is_ignored_when_auth_is_on(hs_verifier):
    assert hs_verifier.identify(hs(), "mallory").peer == "alice"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_401_missing_token(hs_verifier, token):
    with pytest.raises(AuthError) as exc:
        hs_verifier.identify(token, None)
    assert (exc.value.status, exc.value.code) == (401, "missing-token")


def test_expired_token_is_token_expired(hs_verifier):
    now = int(time.time())
    assert refused(hs_verifier, hs(iat=now - 100, exp=now - 60)).code == "token-expired"


def test_expiry_within_leeway_is_accepted(hs_verifier):
    now = int(time.time())
    assert hs_verifier.verify(hs(iat=now - 100, exp=now - 2)).peer == "alice"


def test_nbf_in_the_future_is_invalid(hs_verifier):
    assert refused(hs_verifier, hs(nbf=int(time.time()) + 120)).code == "invalid-token"


def test_iat_in_the_future_is_invalid(hs_verifier):
    assert refused(hs_verifier, hs(iat=int(time.time()) + 120)).code == "invalid-token"


def test_wrong_secret_is_invalid(hs_verifier):
    assert refused(hs_verifier, hs(secret="x" * 32)).code == "invalid-token"


def test_tampered_payload_is_invalid(hs_verifier):
    head, _, sig = hs().split(".")
    payload = b64url(json.dumps(claims(sub="mallory")).encode())
    assert refused(hs_verifier, f"{head}.{payload}.{sig}").code == "invalid-token"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "..", "eyJ.eyJ.x"])
def test_malformed_token_is_invalid(hs_verifier, token):
    assert refused(hs_verifier, token).code == "invalid-token"


def _alg_none(payload: dict) -> str:
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(payload).encode())}."


def test_alg_none_is_refused(hs_verifier):
    assert refused(hs_verifier, _alg_none(claims())).code == "invalid-token"


def test_missing_exp_is_invalid(hs_verifier):
    err = refused(hs_verifier, jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"))
    assert err.code == "invalid-token" and "exp" in err.message


def test_missing_sub_is_invalid(hs_verifier):
    assert refused(hs_verifier, hs(sub=None)).code == "invalid-token"


@pytest.mark.parametrize("sub", ["", "x" * 65, "bad name", "é", 42, ["alice"]])
def test_sub_that_is_not_a_peer_id_is_invalid(hs_verifier, sub):
    token = jwt.encode(claims(sub=sub), SECRET, algorithm="HS256") if isinstance(sub, str) else \
        _hs_raw({**claims(), "sub": sub})
    assert refused(hs_verifier, token).code == "invalid-token"


def _hs_raw(payload: dict, key: bytes = SECRET.encode()) -> str:
    header = b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())
    signing_input = f"{header}.{b64url(json.dumps(payload).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


@pytest.mark.parametrize("rooms", ["room", {"r": 1}, [1], ["a", None], [["a"]]])
def test_rooms_claim_that_is_not_a_list_of_strings_is_invalid(hs_verifier, rooms):
    assert refused(hs_verifier, hs(rooms=rooms)).code == "invalid-token"


def test_empty_rooms_list_allows_no_room(hs_verifier):
    assert hs_verifier.verify(hs(rooms=[])).rooms == ()


# -- audience / issuer ------------------------------------------------------------------

@pytest.fixture
def aud_iss_verifier() -> Verifier:
    return Verifier(Settings(jwt_secret=SECRET, jwt_audience="sig", jwt_issuer="https://idp"))


def test_right_audience_and_issuer_are_accepted(aud_iss_verifier):
    assert aud_iss_verifier.verify(hs(aud="sig", iss="https://idp")).peer == "alice"


@pytest.mark.parametrize("extra", [{"aud": "other", "iss": "https://idp"}, {"iss": "https://idp"},
                                   {"aud": "sig", "iss": "https://evil"}, {"aud": "sig"}])
def test_wrong_or_missing_audience_or_issuer_is_invalid(aud_iss_verifier, extra):
    assert refused(aud_iss_verifier, hs(**extra)).code == "invalid-token"


def test_audience_not_checked_when_not_configured(hs_verifier):
    assert hs_verifier.verify(hs(aud="whatever")).peer == "alice"


# -- RS256 / ES256 ------------------------------------------------------------------------

def test_rs256_token_is_accepted(rsa_setup):
    key, verifier, _ = rsa_setup
    assert verifier.algorithms == ["RS256"]
    assert verifier.verify(jwt.encode(claims(), key, algorithm="RS256")).peer == "alice"


def test_es256_token_is_accepted(ec_setup):
    key, verifier, _ = ec_setup
    assert verifier.algorithms == ["ES256"]
    assert verifier.verify(jwt.encode(claims(), key, algorithm="ES256")).peer == "alice"


def test_rs256_token_signed_by_another_key_is_invalid(rsa_setup):
    _, verifier, _ = rsa_setup
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(verifier, jwt.encode(claims(), other, algorithm="ES256")).code == "invalid-token"


def test_es256_token_signed_by_another_key_is_invalid(ec_setup):
    _, verifier, _ = ec_setup
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(verifier, jwt.encode(claims(), other, algorithm="ES256")).code == "invalid-token"


@pytest.mark.parametrize("setup", ["rsa_setup", "ec_setup"])
def test_hs256_signed_with_public_key_pem_is_refused(setup, request):
    """Algorithm confusion: the public key's PEM bytes used as an HMAC secret."""
    _, verifier, path = request.getfixturevalue(setup)
    assert refused(verifier, _hs_raw(claims(), key=path.read_bytes())).code == "invalid-token"


@pytest.mark.parametrize("setup", ["rsa_setup", "ec_setup"])
def test_alg_none_is_refused_with_public_key(setup, request):
    _, verifier, _ = request.getfixturevalue(setup)
    assert refused(verifier, _alg_none(claims())).code == "invalid-token"


def test_hs256_token_is_refused_by_public_key_verifier(rsa_setup):
    _, verifier, _ = rsa_setup
    assert refused(verifier, hs()).code == "invalid-token"


def test_rs256_token_is_refused_by_secret_verifier(rsa_key, hs_verifier):
    assert refused(hs_verifier, jwt.encode(claims(), rsa_key, algorithm="RS256")).code == "invalid-token"


def test_unsupported_public_key_curve_is_rejected(tmp_path):
    path = tmp_path / "p384.pem"
    path.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1()).public_key()))
    with pytest.raises(ValueError):
        Verifier(Settings(jwt_public_key=str(path)))


# -- open mode ------------------------------------------------------------------------

def test_open_mode_without_peer_assigns_random_id():
    v = Verifier(Settings())
    assert v.open_mode
    a, b = v.identify(None, None), v.identify(None, None)
    assert a.peer != b.peer and a.peer.startswith("peer-")
    assert a.rooms is None and a.expires is None


def test_open_mode_uses_requested_peer():
    assert Verifier(Settings()).identify(None, "bob") == Identity("bob", None, None)


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "ü"])
def test_open_mode_bad_peer_is_400(bad):
    with pytest.raises(AuthError) as exc:
        Verifier(Settings()).identify(None, bad)
    assert (exc.value.status, exc.value.code) == (400, "bad-request")


def test_auth_error_has_status_code_and_message():
    err = AuthError("x-code", "text")
    assert (err.status, err.code, err.message, str(err)) == (401, "x-code", "text", "text")


# -- TURN REST credentials -----------------------------------------------------------------

def test_turn_credentials_follow_the_rest_api_scheme():
    username, credential = turn_credentials("turnsecret", "alice", 3600, 1_700_000_000.7)
    assert username == "1700003600:alice"
    expected = base64.b64encode(hmac.new(b"turnsecret", username.encode(), hashlib.sha1).digest()).decode()
    assert credential == expected


def test_ice_servers_appends_turn_entry_when_configured():
    static = [{"urls": "stun:stun.example.org"}]
    out = ice_servers(static, ["turn:t1", "turns:t2"], "sec", 60, "bob", 100)
    assert out[0] == static[0]
    assert out[1]["urls"] == ["turn:t1", "turns:t2"] and out[1]["username"] == "160:bob"
    assert out[1]["credential"] == turn_credentials("sec", "bob", 60, 100)[1]
    assert static == [{"urls": "stun:stun.example.org"}]  # not mutated


@pytest.mark.parametrize("urls,secret", [([], "sec"), (["turn:t"], "")])
def test_ice_servers_without_turn_urls_or_secret_is_static_only(urls, secret):
    static = [{"urls": "stun:s"}]
    assert ice_servers(static, urls, secret, 60, "bob", 0) == static
