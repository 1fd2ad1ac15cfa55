"""The emulated Entra ID token endpoint: success shape, each AADSTS error, expiry, 401s."""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING

import pytest

from tests.support.emulators import DEMO_FORM, TOKEN_PATH
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds, StartBuildingMinds

pytestmark = pytest.mark.anyio


async def test_token_success_has_the_entra_shape(emulator: BuildingMinds) -> None:
    reply = await emulator.token_reply()

    assert reply.status == 200
    assert reply.body["token_type"] == "Bearer"
    assert reply.body["expires_in"] == 3599
    assert isinstance(reply.body["access_token"], str)
    assert len(reply.body["access_token"]) >= 32
    assert (await emulator.token()) != reply.body["access_token"]  # random per request


async def test_an_unknown_tenant_is_refused_as_entra_does(emulator: BuildingMinds) -> None:
    """A token URL naming another directory must not pass: Entra answers 400 AADSTS90002
    before it looks at the credential, with its usual error members."""
    reply = await emulator.request(
        "POST", "/tstbuildingminds.onmicrosoft.com/oauth2/v2.0/token", data=_demo_form()
    )

    assert reply.status == 400
    body = reply.body
    assert body["error"] == "invalid_request"
    assert body["error_codes"] == [90002]
    assert body["error_description"].startswith(
        "AADSTS90002: Tenant 'tstbuildingminds.onmicrosoft.com' not found."
    )
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]
    assert f"Correlation ID: {body['correlation_id']}" in body["error_description"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z", body["timestamp"])
    assert "access_token" not in body


async def test_the_tenant_is_checked_before_the_credential(emulator: BuildingMinds) -> None:
    form = {**_demo_form(), "client_secret": "wrong"}
    reply = await emulator.request("POST", "/x/oauth2/v2.0/token", data=form)

    assert reply.body["error_codes"] == [90002]


async def test_configured_tenants_are_served_case_insensitively(
    start_emulator: StartBuildingMinds,
) -> None:
    emulator = await start_emulator(
        EmulatorOptions(tenants=("tstbuildingminds.onmicrosoft.com", "contoso.example"))
    )
    for tenant in ("tstbuildingminds.onmicrosoft.com", "Contoso.Example"):
        path = f"/{tenant}/oauth2/v2.0/token"
        reply = await emulator.request("POST", path, data=_demo_form())
        assert reply.status == 200, (tenant, reply.body)
    default = await emulator.request("POST", TOKEN_PATH, data=_demo_form())
    assert default.body["error_codes"] == [90002]


def test_tenants_must_be_names() -> None:
    for tenants in ((), ("",), ("a/b",), (" a",), "buildingminds.onmicrosoft.com"):
        with pytest.raises(ValueError, match="tenant"):
            EmulatorOptions(tenants=tenants)


async def test_basic_authentication_of_the_client_is_accepted(emulator: BuildingMinds) -> None:
    form = {k: v for k, v in _demo_form().items() if k not in ("client_id", "client_secret")}
    basic = base64.b64encode(b"demo-client:demo-secret").decode()
    reply = await emulator.request(
        "POST", TOKEN_PATH, data=form, headers={"Authorization": f"Basic {basic}"}
    )
    assert reply.status == 200


@pytest.mark.parametrize(
    ("overrides", "error", "code", "text"),
    [
        pytest.param(
            {"client_id": "nobody"},
            "unauthorized_client",
            700016,
            "Application with identifier 'nobody' was not found",
            id="unknown-client",
        ),
        pytest.param(
            {"client_secret": "wrong"},
            "invalid_client",
            7000215,
            "Invalid client secret provided",
            id="wrong-secret",
        ),
        pytest.param(
            {"scope": "api://buildingminds-emulator"},
            "invalid_scope",
            1002012,
            "must have a scope value with /.default suffixed",
            id="scope-without-default",
        ),
        pytest.param(
            {"scope": "api://someone-else/.default"},
            "invalid_scope",
            70011,
            "is not valid",
            id="wrong-scope",
        ),
        pytest.param({"scope": ""}, "invalid_scope", 70011, "'scope'", id="empty-scope"),
        pytest.param(
            {"grant_type": None},
            "invalid_request",
            900144,
            "must contain the following parameter: 'grant_type'",
            id="missing-grant-type",
        ),
        pytest.param(
            {"client_id": None},
            "invalid_request",
            900144,
            "must contain the following parameter: 'client_id'",
            id="missing-client-id",
        ),
        pytest.param(
            {"scope": None},
            "invalid_request",
            900144,
            "must contain the following parameter: 'scope'",
            id="missing-scope",
        ),
        pytest.param(
            {"client_secret": None},
            "invalid_client",
            7000218,
            "'client_assertion' or 'client_secret'",
            id="missing-secret",
        ),
        pytest.param(
            {"grant_type": "password"},
            "unsupported_grant_type",
            70003,
            "unsupported grant type",
            id="other-grant-type",
        ),
    ],
)
async def test_token_errors_have_the_entra_shape(
    emulator: BuildingMinds, overrides: dict[str, str | None], error: str, code: int, text: str
) -> None:
    reply = await emulator.token_reply(**overrides)

    assert reply.status == 400
    body = reply.body
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert text in body["error_description"]
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]
    assert re.fullmatch(r"[0-9a-f-]{36}", body["correlation_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", body["timestamp"])


async def test_a_token_is_valid_until_its_lifetime_ends(emulator: BuildingMinds) -> None:
    token = await emulator.token()

    emulator.clock.advance(3598.9)
    assert (await emulator.api("GET", "/batch", token=token)).status == 200

    emulator.clock.advance(0.1)
    expired = await emulator.api("GET", "/batch", token=token)
    assert expired.status == 401
    assert expired.body["code"] == 401
    assert "expired" in expired.body["message"]

    fresh = await emulator.token()
    assert (await emulator.api("GET", "/batch", token=fresh)).status == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Basic ZGVtbzpkZW1v", "Bearer "],
    ids=["missing", "unknown", "wrong-scheme", "empty"],
)
async def test_requests_without_a_valid_token_get_401(
    emulator: BuildingMinds, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = await emulator.request("GET", "/api/digitaltwinintegration/batch", headers=headers)

    assert reply.status == 401
    assert reply.body["code"] == 401
    assert reply.body["message"]


async def test_token_requests_do_not_use_the_rate_budget(
    start_emulator: StartBuildingMinds,
) -> None:
    emulator = await start_emulator(EmulatorOptions(rate_limit_requests=2))
    for _ in range(5):
        await emulator.token()
    token = await emulator.token()

    statuses = [(await emulator.api("GET", "/batch", token=token)).status for _ in range(3)]

    assert statuses == [200, 200, 429]


def _demo_form() -> dict[str, str]:
    return dict(DEMO_FORM)
