"""Who a connection is: JWT verification, open-mode peer ids, TURN REST credentials.

Pure functions of their inputs (the clock is a parameter). Algorithms are pinned by the
kind of key configured, never taken from the token header, so `alg: none` and
HS256-signed-with-the-public-key confusion are refused by construction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_encode

from .config import Settings
from .protocol import is_name

if TYPE_CHECKING:
    from jwt.types import Options  # typing only: an older pyjwt (>=2.8 runs us) may not have it


class AuthError(Exception):
    """Rejected before the upgrade: HTTP `status` with `{"error": code, "message": ...}`."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Identity:
    peer: str
    rooms: tuple[str, ...] | None  # None: any room
    expires: float | None  # unix time; None in open mode


class Verifier:
    """Checks tokens against the one configured key (HS256 secret, or RS256/ES256 public key)."""

    def __init__(self, settings: Settings) -> None:
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        self.leeway = settings.jwt_leeway
        self.key: Any
        if settings.jwt_secret:
            self.key, self.algorithms = _hs256_key(settings.jwt_secret), ["HS256"]
        elif settings.jwt_public_key:
            self.key, self.algorithms = _load_public_key(settings.jwt_public_key)
        else:
            self.key, self.algorithms = None, []

    @property
    def open_mode(self) -> bool:
        return self.key is None

    def identify(self, token: str | None, requested_peer: str | None) -> Identity:
        if self.open_mode:
            if requested_peer is None:
                return Identity("peer-" + secrets.token_hex(6), None, None)
            if not is_name(requested_peer):
                raise AuthError("bad-request", "`peer` must be 1-64 characters of A-Z a-z 0-9 . _ - : @", 400)
            return Identity(requested_peer, None, None)
        if not token:
            raise AuthError("missing-token", "a token is required: ?token=<jwt> or Authorization: Bearer <jwt>")
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        options: Options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, audience=self.audience,
                issuer=self.issuer, leeway=self.leeway, options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token-expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("invalid-token", "the token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid-token", "the token's audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid-token", "the token's issuer is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("invalid-token", f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid-token", f"the token is invalid ({type(exc).__name__})") from None
        peer = claims.get("sub")
        if not is_name(peer):
            raise AuthError("invalid-token", "`sub` must be a peer id: 1-64 characters of A-Z a-z 0-9 . _ - : @")
        rooms = claims.get("rooms")
        if rooms is not None and not (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)):
            raise AuthError("invalid-token", "`rooms` must be a list of room names")
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthError("invalid-token", "`exp` must be a number")
        return Identity(peer, tuple(rooms) if rooms is not None else None, float(exp))


class _PreparedHMAC(HMACAlgorithm):
    """HS256 with the secret prepared once: pyjwt prepares (and vets) the key on every
    decode, a tenth of a connection's CPU in a connect storm."""

    def __init__(self, secret: str) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._secret = secret
        self._prepared = super().prepare_key(secret)

    def prepare_key(self, key: Any) -> bytes:
        return self._prepared if key == self._secret else super().prepare_key(key)


def _hs256_key(secret: str) -> jwt.PyJWK:
    """The secret as a JWK bound to HS256: pyjwt then verifies with exactly that
    algorithm, whatever a token's header claims."""
    jwk = jwt.PyJWK({"kty": "oct", "k": base64url_encode(secret.encode()).decode(), "alg": "HS256"})
    jwk.Algorithm = _PreparedHMAC(jwk.key)
    return jwk


def _load_public_key(path: str) -> tuple[Any, list[str]]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    with open(path, "rb") as fh:
        key = load_pem_public_key(fh.read())
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return key, ["ES256"]
    raise ValueError(f"{path}: only RSA (RS256) and EC P-256 (ES256) public keys are supported")


def mint(secret: str, sub: str, *, ttl: float, rooms: list[str] | None = None,
         audience: str | None = None, issuer: str | None = None, now: float | None = None) -> str:
    """An HS256 token for development and tests (`signaling token`)."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl)}
    if rooms is not None:
        claims["rooms"] = rooms
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def turn_credentials(secret: str, peer: str, ttl: int, now: float) -> tuple[str, str]:
    """TURN REST API (draft-uberti-behave-turn-rest): username `<expiry>:<peer>`."""
    username = f"{int(now) + ttl}:{peer}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(static: list[dict[str, Any]], turn_urls: list[str], turn_secret: str,
                turn_ttl: int, peer: str, now: float) -> list[dict[str, Any]]:
    """What `welcome.iceServers` holds for this connection."""
    servers = list(static)
    if turn_urls and turn_secret:
        username, credential = turn_credentials(turn_secret, peer, turn_ttl, now)
        servers.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return servers
