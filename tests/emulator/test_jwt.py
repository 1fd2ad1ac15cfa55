"""The emulators' JWTs (`twin_emulators.jwt`): what a signer accepts and what it refuses."""

from __future__ import annotations

import orjson
import pytest

from twin_emulators.jwt import JwtSigner, b64url, unb64url

EXP = 2_000_000_000
CLAIMS: dict[str, object] = {"sub": "demo-client", "exp": EXP}


def _part(data: object) -> str:
    return b64url(orjson.dumps(data))


def test_a_signed_token_is_three_base64url_parts_with_an_hs256_header() -> None:
    token = JwtSigner().sign(CLAIMS)

    header, payload, signature = token.split(".")
    assert orjson.loads(unb64url(header)) == {"alg": "HS256", "typ": "JWT", "kid": "emulator"}
    assert orjson.loads(unb64url(payload)) == CLAIMS
    assert len(unb64url(signature)) == 32  # an HMAC-SHA256
    assert "=" not in token


def test_its_own_unexpired_token_is_accepted_until_exp() -> None:
    signer = JwtSigner()
    token = signer.sign(CLAIMS)

    assert signer.verify(token, now=EXP - 0.001) == CLAIMS
    assert signer.verify(token, now=EXP) == "expired"


def test_another_key_or_a_changed_payload_fails_the_signature() -> None:
    signer = JwtSigner()
    token = signer.sign(CLAIMS)
    header, _, signature = token.split(".")
    longer = f"{header}.{_part({**CLAIMS, 'exp': EXP + 3600})}.{signature}"

    assert signer.verify(JwtSigner().sign(CLAIMS), now=0) == "signature"
    assert signer.verify(longer, now=0) == "signature"


def test_an_unsigned_or_other_algorithm_token_is_refused() -> None:
    signer = JwtSigner()
    payload = _part(CLAIMS)
    unsigned = f"{_part({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    _, _, signature = signer.sign(CLAIMS).split(".")
    relabelled = f"{_part({'alg': 'HS512', 'typ': 'JWT', 'kid': 'emulator'})}.{payload}.{signature}"

    assert signer.verify(unsigned, now=0) == "signature"
    assert signer.verify(relabelled, now=0) == "signature"


@pytest.mark.parametrize(
    "token",
    ["", "opaque", "a.b", "a.b.c.d", "!!.??.xx", f"{_part([1])}.{_part(CLAIMS)}.x",
     f"{_part({'alg': 'HS256'})}.{b64url(b'not json')}.x"],
)  # fmt: skip
def test_malformed_tokens_are_named_so(token: str) -> None:
    assert JwtSigner().verify(token, now=0) == "malformed"


def test_a_token_without_a_numeric_exp_is_malformed() -> None:
    signer = JwtSigner()
    for claims in ({"sub": "x"}, {"exp": "soon"}, {"exp": True}):
        assert signer.verify(signer.sign(claims), now=0) == "malformed"


def test_the_key_is_not_in_the_repr() -> None:
    key = b"k" * 32
    assert repr(JwtSigner(key)) == "JwtSigner(key=***)"
    assert str(key) not in repr(JwtSigner(key))


@pytest.mark.parametrize("text", ["a+b/", "ab==", "a b", "é", "abcde"])
def test_unb64url_takes_only_unpadded_base64url(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        unb64url(text)
