"""The Bimplus emulator's OIDC server says only what it does: every endpoint its discovery
document names answers, every grant type it advertises is granted, and refreshing is the OIDC
server's ("Refreshing and revoking of the tokens are also managed by OIDC, not BimPlus"):
refresh tokens for the password grant (offline ones for `offline_access`), none for
client_credentials, and the `refresh_token` grant."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.support.emulators import BIMPLUS_TOKEN_PATH, CLIENT_FORM, LEGACY_BODY
from twin_emulators import bimplus as bimplus_module
from twin_emulators.bimplus import BimplusOptions, options_from_args
from twin_emulators.bimplus_state import DEMO_PASSWORD, DEMO_USER, PUBLIC_CLIENT_ID
from twin_emulators.common import add_emulator_arguments
from twin_emulators.jwt import unb64url

if TYPE_CHECKING:
    from tests.support.emulators import Bimplus, StartBimplus
    from tests.support.served import Reply

pytestmark = pytest.mark.anyio

DISCOVERY = "/v2/.well-known/openid-configuration"
USERINFO = "/realms/bimplus/protocol/openid-connect/userinfo"
REVOKE = "/realms/bimplus/protocol/openid-connect/revoke"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
PASSWORD_FORM = {"grant_type": "password", "client_id": PUBLIC_CLIENT_ID,
                 "username": DEMO_USER, "password": DEMO_PASSWORD}  # fmt: skip


async def _grant(bimplus: Bimplus, **form: str) -> Reply:
    return await bimplus.request("POST", BIMPLUS_TOKEN_PATH, data=form)


async def _refresh(bimplus: Bimplus, handle: str, **form: str) -> Reply:
    sent = {"grant_type": "refresh_token", "client_id": PUBLIC_CLIENT_ID,
            "refresh_token": handle, **form}  # fmt: skip
    return await _grant(bimplus, **sent)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = orjson.loads(unb64url(token.split(".")[1]))
    return claims


# -- discovery says only what the server does -------------------------------------------------


async def test_every_endpoint_in_the_discovery_document_is_served(bimplus: Bimplus) -> None:
    doc = (await bimplus.request("GET", DISCOVERY)).body
    token = await bimplus.token()
    auth = {"Authorization": f"Bearer {token}"}

    endpoints = {k: v for k, v in doc.items() if k.endswith(("_endpoint", "_uri"))}
    assert set(endpoints) == {
        "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "revocation_endpoint",
        "jwks_uri",
    }  # fmt: skip
    assert "end_session_endpoint" not in doc  # no browser session to end
    posted = {"token_endpoint": CLIENT_FORM, "revocation_endpoint": {**CLIENT_FORM, "token": "x"}}
    for name, url in endpoints.items():
        assert url.startswith(bimplus.url), name
        data = posted.get(name)
        method = "GET" if data is None else "POST"
        reply = await bimplus.request(method, url[len(bimplus.url) :], data=data, headers=auth)
        assert reply.status not in (404, 405), (name, reply.status)
        if name == "revocation_endpoint":
            assert (reply.status, reply.body) == (200, None)  # RFC 7009: 200, nothing to say
        else:
            assert isinstance(reply.body, dict), name


async def test_the_advertised_grant_types_are_exactly_those_granted(bimplus: Bimplus) -> None:
    doc = (await bimplus.request("GET", DISCOVERY)).body
    assert doc["grant_types_supported"] == ["client_credentials", "password", "refresh_token"]
    assert "offline_access" in doc["scopes_supported"]

    password = await _grant(bimplus, **PASSWORD_FORM)
    granted = {
        "client_credentials": await _grant(bimplus, **CLIENT_FORM),
        "password": password,
        "refresh_token": await _refresh(bimplus, password.body["refresh_token"]),
    }
    for grant_type, reply in granted.items():
        assert reply.status == 200, (grant_type, reply.body)
    for refused in ("authorization_code", "implicit", DEVICE_CODE):
        reply = await _grant(bimplus, **{**CLIENT_FORM, "grant_type": refused})
        assert (reply.status, reply.body["error"]) == (400, "unsupported_grant_type"), refused


# -- which grants give a refresh token ------------------------------------------------------


async def test_client_credentials_give_no_refresh_token(bimplus: Bimplus) -> None:
    reply = await _grant(bimplus, **CLIENT_FORM, scope="offline_access")

    assert reply.status == 200
    assert "refresh_token" not in reply.body
    assert reply.body["refresh_expires_in"] == 0


async def test_the_password_grant_gives_a_session_refresh_token(bimplus: Bimplus) -> None:
    reply = await _grant(bimplus, **PASSWORD_FORM)

    assert reply.status == 200
    assert reply.body["refresh_token"]
    assert reply.body["refresh_expires_in"] == 1800  # Keycloak's SSO session idle default
    assert reply.body["token_type"] == "Bearer"
    assert reply.body["scope"] == "openid"
    id_claims = _claims(reply.body["id_token"])
    assert (id_claims["sub"], id_claims["aud"]) == (DEMO_USER, PUBLIC_CLIENT_ID)
    assert id_claims["exp"] - id_claims["iat"] == reply.body["expires_in"]


async def test_offline_access_gives_an_offline_refresh_token(bimplus: Bimplus) -> None:
    reply = await _grant(bimplus, **PASSWORD_FORM, scope="offline_access")

    assert reply.status == 200
    assert reply.body["refresh_token"]
    assert reply.body["refresh_expires_in"] == 0  # Keycloak's: an offline token has no fixed end
    assert reply.body["scope"].split() == ["openid", "offline_access"]

    bimplus.clock.advance(1800 + 1)  # past a session token's life, not an offline one's
    later = await _refresh(bimplus, reply.body["refresh_token"])
    assert later.status == 200, later.body
    assert later.body["refresh_expires_in"] == 0
    assert later.body["scope"] == reply.body["scope"]

    bimplus.clock.advance(30 * 24 * 3600)  # unused for 30 days: Keycloak's offline idle time
    assert (await _refresh(bimplus, later.body["refresh_token"])).body["error"] == "invalid_grant"


# -- the refresh_token grant ----------------------------------------------------------------


async def test_a_refresh_gives_new_working_tokens(bimplus: Bimplus) -> None:
    first = (await _grant(bimplus, **PASSWORD_FORM)).body
    bimplus.clock.advance(301)  # the access token (300 s) has expired
    assert (await bimplus.api("/teams", first["access_token"])).status == 401

    refreshed = await _refresh(bimplus, first["refresh_token"])

    assert refreshed.status == 200, refreshed.body
    body = refreshed.body
    assert body["access_token"] != first["access_token"]
    assert body["refresh_token"] != first["refresh_token"]
    assert body["refresh_expires_in"] == 1800
    assert _claims(body["access_token"])["sub"] == DEMO_USER
    assert (await bimplus.api("/teams", body["access_token"])).status == 200
    # Keycloak's default: a refresh token is not revoked by its use
    assert (await _refresh(bimplus, first["refresh_token"])).status == 200


async def test_a_confidential_client_refreshes_with_its_secret(bimplus: Bimplus) -> None:
    form = {**PASSWORD_FORM, "client_id": "demo-client", "client_secret": "demo-secret"}
    handle = (await _grant(bimplus, **form)).body["refresh_token"]

    wrong = await _refresh(bimplus, handle, client_id="demo-client", client_secret="nope")
    right = await _refresh(bimplus, handle, client_id="demo-client", client_secret="demo-secret")

    assert (wrong.status, wrong.body["error"]) == (401, "invalid_client")
    assert right.status == 200, right.body


@pytest.mark.parametrize(
    ("form", "error", "description"),
    [
        ({"refresh_token": ""}, "invalid_request", "Missing parameter: refresh_token"),
        ({"refresh_token": "not-a-refresh-token"}, "invalid_grant", "Invalid refresh token"),
        ({"client_id": "demo-client", "client_secret": "demo-secret"}, "invalid_grant",
         "Invalid refresh token. Token client and authorized client don't match"),
    ],
)  # fmt: skip
async def test_refresh_errors_are_keycloaks(
    bimplus: Bimplus, form: dict[str, str], error: str, description: str
) -> None:
    handle = (await _grant(bimplus, **PASSWORD_FORM)).body["refresh_token"]

    reply = await _refresh(bimplus, handle, **form)

    assert reply.status == 400
    assert reply.body == {"error": error, "error_description": description}


async def test_a_session_refresh_token_expires(bimplus: Bimplus) -> None:
    handle = (await _grant(bimplus, **PASSWORD_FORM)).body["refresh_token"]
    bimplus.clock.advance(1800)

    reply = await _refresh(bimplus, handle)

    assert reply.status == 400
    assert reply.body["error"] == "invalid_grant"


async def test_the_refresh_lifetime_is_an_option(start_bimplus: StartBimplus) -> None:
    bimplus = await start_bimplus(BimplusOptions(refresh_token_lifetime_seconds=60))
    reply = await _grant(bimplus, **PASSWORD_FORM)
    assert reply.body["refresh_expires_in"] == 60
    bimplus.clock.advance(59)
    assert (await _refresh(bimplus, reply.body["refresh_token"])).status == 200


async def test_revoked_tokens_revoke_refresh_tokens_too(bimplus: Bimplus) -> None:
    handle = (await _grant(bimplus, **PASSWORD_FORM)).body["refresh_token"]
    switched = await bimplus.request(
        "POST", "/_emulator/faults", json={"profile": "revoked-tokens"}
    )
    assert switched.status == 200

    reply = await _refresh(bimplus, handle)
    assert (reply.status, reply.body["error"]) == (400, "invalid_grant")
    fresh = (await _grant(bimplus, **PASSWORD_FORM)).body["refresh_token"]
    assert (await _refresh(bimplus, fresh)).status == 200


# -- revocation -----------------------------------------------------------------------------


async def test_a_revoked_refresh_token_no_longer_refreshes(bimplus: Bimplus) -> None:
    handle = (await _grant(bimplus, **PASSWORD_FORM)).body["refresh_token"]

    reply = await bimplus.request(
        "POST", REVOKE, data={"client_id": PUBLIC_CLIENT_ID, "token": handle,
                              "token_type_hint": "refresh_token"},
    )  # fmt: skip

    assert (reply.status, reply.body) == (200, None)
    refused = await _refresh(bimplus, handle)
    assert (refused.status, refused.body["error"]) == (400, "invalid_grant")


async def test_a_revoked_access_token_is_refused_by_the_api(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    assert (await bimplus.api("/teams", token)).status == 200

    reply = await bimplus.request("POST", REVOKE, data={**CLIENT_FORM, "token": token})

    assert reply.status == 200
    assert (await bimplus.api("/teams", token)).status == 401


async def test_revocation_needs_the_tokens_own_client(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    bad = await bimplus.request(
        "POST", REVOKE, data={**CLIENT_FORM, "client_secret": "nope", "token": token}
    )
    other = await bimplus.request(
        "POST", REVOKE, data={"client_id": PUBLIC_CLIENT_ID, "token": token}
    )
    missing = await bimplus.request("POST", REVOKE, data=CLIENT_FORM)

    assert (bad.status, bad.body["error"]) == (401, "invalid_client")
    assert other.status == 200  # RFC 7009: no error, and the token stays
    assert (missing.status, missing.body["error"]) == (400, "invalid_request")
    assert (await bimplus.api("/teams", token)).status == 200


# -- userinfo -------------------------------------------------------------------------------


async def test_userinfo_names_the_user_of_an_oidc_token(bimplus: Bimplus) -> None:
    user_token = (await _grant(bimplus, **PASSWORD_FORM)).body["access_token"]
    service_token = await bimplus.token()

    for method in ("GET", "POST"):
        reply = await bimplus.request(
            method, USERINFO, headers={"Authorization": f"Bearer {user_token}"}
        )
        assert reply.status == 200
        assert reply.body == {"sub": DEMO_USER, "preferred_username": DEMO_USER,
                              "email": DEMO_USER}  # fmt: skip
    service = await bimplus.request(
        "GET", USERINFO, headers={"Authorization": f"Bearer {service_token}"}
    )
    assert service.body["sub"] == "service-account-demo-client"
    assert "email" not in service.body


async def test_userinfo_refuses_what_is_not_a_live_oidc_token(bimplus: Bimplus) -> None:
    legacy = (await bimplus.request("POST", "/v2/authorize", json=LEGACY_BODY)).body
    oidc = await bimplus.token()
    bimplus.clock.advance(300)
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"BimPlus {legacy['access_token']}"},
                    {"Authorization": f"Bearer {legacy['access_token']}"},
                    {"Authorization": f"Bearer {oidc}"}):  # fmt: skip
        reply = await bimplus.request("GET", USERINFO, headers=headers)
        assert reply.status == 401, headers
        assert reply.body["error"] == "invalid_token"
        assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="bimplus"')


# -- command line ---------------------------------------------------------------------------


def test_the_refresh_lifetime_flag_reaches_the_options() -> None:
    parser = argparse.ArgumentParser()
    add_emulator_arguments(parser, bimplus_module)

    assert options_from_args(parser.parse_args([])).refresh_token_lifetime_seconds == 1800
    options = options_from_args(parser.parse_args(["--refresh-token-lifetime=90"]))
    assert options.refresh_token_lifetime_seconds == 90
