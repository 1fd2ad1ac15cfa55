"""`check` against the BuildingMinds emulator fails for a token URL naming a tenant the
emulator does not serve, as it would against Entra ID, and passes for the configured one."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
from aiohttp.test_utils import TestServer

from connector.commands import run_check
from connector.config import Settings
from twin_emulators.buildingminds import DEFAULT_TENANT, EmulatorOptions, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture
async def emulator_url() -> AsyncIterator[str]:
    server = TestServer(create_app(EmulatorOptions()), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def _settings(url: str, tenant: str) -> Settings:
    return Settings.model_validate(
        {
            "sink": {
                "base_url": f"{url}/api/digitaltwinintegration",
                "token_url": f"{url}/{tenant}/oauth2/v2.0/token",
                "client_id": "demo-client",
                "client_secret": "demo-secret",
                "scope": "api://buildingminds-emulator",
            }
        }
    )


async def test_check_fails_for_a_wrong_tenant_and_names_aadsts90002(emulator_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()

    ok = await run_check(_settings(emulator_url, "contoso.onmicrosoft.com"), out, err, kafka=False)

    assert not ok
    assert "AADSTS90002" in err.getvalue()
    assert "contoso.onmicrosoft.com" in err.getvalue()


async def test_check_passes_for_the_configured_tenant(emulator_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()

    assert await run_check(_settings(emulator_url, DEFAULT_TENANT), out, err, kafka=False), (
        err.getvalue()
    )
    assert "GET /batch: ok" in out.getvalue()
