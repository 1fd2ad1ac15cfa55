"""Contract of the BIMlink emulator's auth server over a real socket: authorization code with
PKCE, the errors of both endpoints, JWT-shaped tokens, refresh-token rotation and the sliding
refresh-token lifetime."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.bimlink.helpers import Bimlink, redirect_params, running_bimlink

if TYPE_CHECKING:
    from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio


def claims(jwt: str) -> dict[str, Any]:
    parts = jwt.split(".")
    assert len(parts) == 3
    decoded: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=="))
    return decoded


async def test_code_flow_with_pkce_gives_jwt_access_and_refresh_tokens(bimlink: Bimlink) -> None:
    reply, verifier = await bimlink.authorize(scope="bimlink_publicapi offline_access openid")
    params = redirect_params(reply)
    assert reply.headers["Location"].startswith(bimlink.redirect_uri + "?")
    assert params["state"] == "st-1"
    assert params["code"]

    answer = await bimlink.token(
        grant_type="authorization_code", code=params["code"],
        redirect_uri=bimlink.redirect_uri, code_verifier=verifier,
    )  # fmt: skip
    assert answer.status == 200, answer
    body = answer.body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["refresh_token"]
    assert body["id_token"]
    access = claims(body["access_token"])
    assert access["sub"] == "demo-user"
    assert access["exp"] - access["iat"] == 3600
    assert answer.headers["Cache-Control"] == "no-store"

    again = await bimlink.token(
        grant_type="authorization_code", code=params["code"],
        redirect_uri=bimlink.redirect_uri, code_verifier=verifier,
    )  # fmt: skip
    assert (again.status, again.body["error"]) == (400, "invalid_grant"), "codes are single use"


async def test_without_offline_access_there_is_no_refresh_token(bimlink: Bimlink) -> None:
    body = await bimlink.tokens(scope="bimlink_publicapi")
    assert "refresh_token" not in body
    assert body["access_token"]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"scope": "offline_access"}, "invalid_scope"),
        ({"scope": "bimlink_publicapi everything"}, "invalid_scope"),
        ({"scope": "bimlink_publicapi email"}, "invalid_scope"),
        ({"code_challenge": "<omit>"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
async def test_authorize_problems_are_redirected_with_the_state(
    bimlink: Bimlink, overrides: dict[str, str], error: str
) -> None:
    reply, _ = await bimlink.authorize(**overrides)
    params = redirect_params(reply)
    assert params["error"] == error
    assert params["state"] == "st-1"
    assert "code" not in params


async def test_a_denied_login_redirects_access_denied(bimlink: Bimlink) -> None:
    await bimlink.admin("POST", "/login", {"approve": False})
    params = redirect_params((await bimlink.authorize())[0])
    assert params["error"] == "access_denied"
    assert params["state"] == "st-1"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"client_id": "nobody"}, "unauthorized_client"),
        ({"redirect_uri": "http://127.0.0.1:1/callback"}, "invalid_request"),
    ],
)
async def test_untrusted_redirects_get_an_error_page_not_a_redirect(
    bimlink: Bimlink, overrides: dict[str, str], error: str
) -> None:
    reply, _ = await bimlink.authorize(**overrides)
    assert reply.status == 400
    assert reply.body["error"] == error
    if "redirect_uri" in overrides:
        assert "not whitelisted" in reply.body["error_description"]


async def test_code_exchange_errors(bimlink: Bimlink, clock: FakeClock) -> None:
    async def exchange(
        *, secret: str = "demo-secret",  # noqa: S107 - the emulator's documented demo secret
        redirect: str | None = None, wrong_verifier: bool = False, advance: float = 0,
    ) -> tuple[int, str]:  # fmt: skip
        reply, verifier = await bimlink.authorize()
        code = redirect_params(reply)["code"]
        clock.advance(advance)
        answer = await bimlink.token(
            grant_type="authorization_code", code=code, client_secret=secret,
            redirect_uri=redirect or bimlink.redirect_uri,
            code_verifier=("x" * 43) if wrong_verifier else verifier,
        )  # fmt: skip
        return answer.status, answer.body["error"]

    assert await exchange(secret="wrong") == (400, "invalid_client")
    assert await exchange(wrong_verifier=True) == (400, "invalid_grant")
    assert await exchange(redirect="http://127.0.0.1:2/other") == (400, "invalid_grant")
    assert await exchange(advance=301) == (400, "invalid_grant")
    unsupported = await bimlink.token(grant_type="password")
    assert (unsupported.status, unsupported.body["error"]) == (400, "unsupported_grant_type")
    assert set(unsupported.body) == {"error", "error_description"}


async def test_refresh_tokens_rotate_and_the_old_one_is_revoked(bimlink: Bimlink) -> None:
    first = (await bimlink.tokens())["refresh_token"]
    renewed = await bimlink.token(grant_type="refresh_token", refresh_token=first)
    assert renewed.status == 200
    second = renewed.body["refresh_token"]
    assert second != first
    assert renewed.body["access_token"]
    reused = await bimlink.token(grant_type="refresh_token", refresh_token=first)
    assert (reused.status, reused.body["error"]) == (400, "invalid_grant")
    assert (await bimlink.token(grant_type="refresh_token", refresh_token=second)).status == 200


async def test_refresh_token_lifetime_slides_with_each_use(clock: FakeClock) -> None:
    from tests.bimlink.helpers import free_port, options_for  # noqa: PLC0415

    port = free_port()
    options = options_for(port, refresh_token_lifetime_seconds=100)
    async with running_bimlink(options, clock=clock, port=port) as emu:
        token = (await emu.tokens())["refresh_token"]
        for _ in range(3):  # 270 s in all: longer than one lifetime, fine while used
            clock.advance(90)
            reply = await emu.token(grant_type="refresh_token", refresh_token=token)
            assert reply.status == 200, reply
            token = reply.body["refresh_token"]
        clock.advance(100)
        expired = await emu.token(grant_type="refresh_token", refresh_token=token)
        assert (expired.status, expired.body["error"]) == (400, "invalid_grant")
        assert "expired" in expired.body["error_description"].lower()


async def test_revoked_refresh_tokens_are_invalid_grant(bimlink: Bimlink) -> None:
    token = (await bimlink.tokens())["refresh_token"]
    assert (await bimlink.admin("POST", "/revoke", {}))["revoked"] == 1
    reply = await bimlink.token(grant_type="refresh_token", refresh_token=token)
    assert (reply.status, reply.body["error"]) == (400, "invalid_grant")


async def test_basic_client_authentication_is_accepted(bimlink: Bimlink) -> None:
    token = (await bimlink.tokens())["refresh_token"]
    basic = base64.b64encode(b"demo-client:demo-secret").decode()
    reply = await bimlink.call(
        "POST", "/connect/token", data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"Authorization": f"Basic {basic}"},
    )  # fmt: skip
    assert reply.status == 200, reply
