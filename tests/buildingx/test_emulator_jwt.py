"""The Building X emulator's access tokens are JWTs with an `exp` claim, as the developer guide
says ("In the JWT there is a exp-claim and in the response there is a expires_in property"),
and its API accepts only the JWTs it signed, before they expire, for its audience."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.support.emulators import LOCATIONS
from twin_emulators.buildingx import BuildingXOptions
from twin_emulators.jwt import JwtSigner, b64url, unb64url

if TYPE_CHECKING:
    from tests.support.emulators import BuildingX, StartBuildingX

pytestmark = pytest.mark.anyio


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, signature = token.split(".")
    assert signature
    return orjson.loads(unb64url(header)), orjson.loads(unb64url(payload))


async def test_the_token_is_a_jwt_whose_exp_matches_expires_in(bx: BuildingX) -> None:
    before = time.time()
    reply = await bx.token_reply()

    header, claims = _decode(reply.body["access_token"])
    assert header["alg"] == "HS256"
    assert header["typ"] == "JWT"
    assert claims["iss"] == str(bx.server.make_url("/"))
    assert claims["aud"] == "https://horizon.siemens.com"
    assert claims["azp"] == "demo-client"
    assert claims["sub"] == "demo-client@clients"  # Auth0's subject of a machine user
    assert claims["gty"] == "client-credentials"
    assert claims["jti"]
    assert claims["exp"] - claims["iat"] == reply.body["expires_in"] == 86400
    assert before - 1 <= claims["iat"] <= time.time()
    assert "scope" not in claims
    assert "scope" not in reply.body


async def test_a_requested_scope_is_granted_in_the_token_and_the_response(bx: BuildingX) -> None:
    reply = await bx.token_reply(scope="read:structure write:values")

    assert reply.status == 200
    assert reply.body["scope"] == "read:structure write:values"
    assert _decode(reply.body["access_token"])[1]["scope"] == "read:structure write:values"


async def test_a_non_string_scope_is_a_bad_request(bx: BuildingX) -> None:
    body = {"client_id": "demo-client", "client_secret": "demo-secret",
            "audience": "https://horizon.siemens.com", "grant_type": "client_credentials",
            "scope": ["read"]}  # fmt: skip
    reply = await bx.request(
        "POST", "/oauth/token", json=body, headers={"Content-Type": "application/json"}
    )
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")


async def test_every_token_is_a_different_jwt(bx: BuildingX) -> None:
    assert await bx.token() != await bx.token()


async def test_the_api_refuses_a_token_whose_claims_were_changed(bx: BuildingX) -> None:
    token = await bx.token()
    header, payload, signature = token.split(".")
    claims = orjson.loads(unb64url(payload))
    longer = b64url(orjson.dumps({**claims, "exp": claims["exp"] + 365 * 86400}))

    reply = await bx.api("GET", LOCATIONS, f"{header}.{longer}.{signature}")

    assert reply.status == 401
    assert reply.body["errors"][0]["detail"] == "The access token is not valid."
    assert (await bx.api("GET", LOCATIONS, token)).status == 200


async def test_the_api_refuses_jwts_it_did_not_sign(
    bx: BuildingX, start_bx: StartBuildingX
) -> None:
    token = await bx.token()
    _, claims = _decode(token)
    other = await start_bx()
    none = b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
    unsigned = f"{none}.{token.split('.')[1]}."
    for forged in (JwtSigner().sign(claims), await other.token(), unsigned):
        reply = await bx.api("GET", LOCATIONS, forged)
        assert reply.status == 401, forged
        assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_a_jwt_of_the_emulators_key_for_another_audience_is_refused(bx: BuildingX) -> None:
    token = await bx.token()
    _, claims = _decode(token)
    signer = bx.state.tokens._signer  # the emulator's own key, as a token for another API has
    forged = signer.sign({**claims, "aud": "https://elsewhere.example"})

    reply = await bx.api("GET", LOCATIONS, forged)

    assert reply.status == 401
    assert reply.body["errors"][0]["detail"] == "The access token is not valid for this API."


async def test_the_token_expires_at_its_exp(start_bx: StartBuildingX) -> None:
    bx = await start_bx(BuildingXOptions(token_lifetime_seconds=60))
    token = await bx.token()
    _, claims = _decode(token)
    # how long the token has left on the emulator's clock, from its own exp claim
    left = claims["exp"] - bx.state.wall(bx.clock())
    assert 59 < left <= 60

    bx.clock.advance(left - 0.01)
    assert (await bx.api("GET", LOCATIONS, token)).status == 200
    bx.clock.advance(0.01)
    expired = await bx.api("GET", LOCATIONS, token)
    assert expired.status == 401
    assert expired.body["errors"][0]["detail"] == "The access token has expired."
