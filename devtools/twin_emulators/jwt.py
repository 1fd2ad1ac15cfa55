"""JSON Web Tokens as the emulated authorization servers issue them: compact JWS, HS256.

Owns signing a set of claims with an emulator-local key and checking a presented token
against it: the three base64url parts (RFC 7515 compact serialisation), the header's `alg`,
the HMAC-SHA256 signature and the `exp` claim (RFC 7519 §4.1.4). The key is random per
emulator instance and never published, so only the emulator that issued a token accepts it.

Must not: know about HTTP, read the clock (the caller passes the time, in unix seconds), or
put a key or a token into a repr or a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Any, Final

import orjson

__all__ = ["ALGORITHM", "JwtSigner", "b64url", "unb64url"]

ALGORITHM: Final = "HS256"
KEY_ID: Final = "emulator"
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWTs and PKCE use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """The bytes of unpadded base64url; ValueError if `text` is not that."""
    if _BASE64URL.fullmatch(text) is None:
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not unpadded base64url") from exc


class JwtSigner:
    """Signs claims into JWTs and verifies JWTs with one key of its own."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "JwtSigner(key=***)"

    def sign(self, claims: dict[str, Any]) -> str:
        """`claims` as a compact JWS: header.payload.signature."""
        header = b64url(orjson.dumps({"alg": ALGORITHM, "typ": "JWT", "kid": KEY_ID}))
        payload = b64url(orjson.dumps(claims))
        return f"{header}.{payload}.{self._signature(f'{header}.{payload}')}"

    def verify(self, token: str, *, now: float) -> dict[str, Any] | str:
        """The claims of a token this signer issued that has not expired at `now` (unix
        seconds), or why it is refused: "malformed", "signature" or "expired"."""
        decoded = _decode(token)
        if decoded is None:
            return "malformed"
        header, claims, signing_input, signature = decoded
        # The header names the algorithm, but only ours is trusted: a token claiming "none"
        # or another algorithm is refused before its signature is looked at.
        if header.get("alg") != ALGORITHM or not hmac.compare_digest(
            self._signature(signing_input).encode(), signature.encode()
        ):
            return "signature"
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return "malformed"
        if now >= exp:
            return "expired"
        return claims

    def _signature(self, signing_input: str) -> str:
        return b64url(hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest())


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any], str, str] | None:
    """Header, claims, signing input and signature of a compact JWS, or None if malformed."""
    parts = token.split(".")
    if len(parts) != 3:  # header, payload, signature
        return None
    try:
        header = orjson.loads(unb64url(parts[0]))
        claims = orjson.loads(unb64url(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims, f"{parts[0]}.{parts[1]}", parts[2]
