"""`building-twin-connector check` with a BIMlink source, over real sockets: the CLI runs in a
worker thread (its own event loop) against the BIMlink and BuildingMinds emulators served by
the test's loop, with no Kafka broker (bootstrap_servers points at a closed port).

A passing check rotates the refresh token and stores the new one as a poll would, so a second
check passes too; each failure prints the fix its error carries and exits 1; no secret or token
reaches the output."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
import yaml

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from connector.sources.bimlink.auth import RefreshTokenFile
from tests.bimlink.helpers import Bimlink, free_port, options_for, running_bimlink
from tests.integration.helpers import running_emulator
from twin_emulators.bimlink_data import demo_id
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.integration.helpers import Emulator
    from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio

SECRET = "demo-secret"
RELOGIN = "run `building-twin-connector auth bimlink --config FILE` again"


@pytest.fixture
async def sink() -> AsyncIterator[Emulator]:
    async with running_emulator(EmulatorOptions()) as emulator:
        yield emulator


async def logged_in(emu: Bimlink, path: Path) -> str:
    token: str = (await emu.tokens())["refresh_token"]
    RefreshTokenFile(path).save(token, token_url=f"{emu.url}/connect/token", client_id="x")
    return token


def stored(path: Path) -> str:
    token: str = orjson.loads(path.read_text())["refresh_token"]
    return token


async def check(
    tmp_path: Path, sink: Emulator, emu: Bimlink, **source: Any
) -> tuple[int, str, str]:
    """`check --config FILE` with one BIMlink source (overridable) in a worker thread."""
    config = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # nothing listens there
        "sink": {
            "base_url": sink.base_url, "token_url": sink.token_url, "client_id": "demo-client",
            "client_secret": SECRET, "scope": "api://buildingminds-emulator/.default",
        },
        "sources": [{
            "type": "bimlink", "base_url": emu.url, "authority_url": emu.url,
            "client_id": "demo-client", "client_secret": SECRET,
            "refresh_token_file": str(tmp_path / "token.json"), "request_timeout_seconds": 5,
            **source,
        }],
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    out, err = io.StringIO(), io.StringIO()
    argv = ["check", "--skip-kafka", "--config", str(path)]  # no broker in these tests
    code = await anyio.to_thread.run_sync(main, argv, out, err)
    return code, out.getvalue(), err.getvalue()


def assert_no_secrets(text: str, *tokens: str) -> None:
    assert SECRET not in text
    assert "eyJ" not in text, "an access token (a JWT) was printed"
    for token in tokens:
        assert token not in text


async def test_a_good_login_passes_and_the_rotated_token_is_stored(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    token_file = tmp_path / "token.json"
    first = await logged_in(bimlink, token_file)

    code, out, err = await check(tmp_path, sink, bimlink)

    assert code == EXIT_OK, err
    assert "GET /batch: ok" in out, "the sink is still checked first"
    assert "source bimlink: ok (2 domain accounts visible)" in out
    second = stored(token_file)
    assert second != first, "BIMlink rotated the refresh token; the new one is stored"
    assert oct(token_file.stat().st_mode & 0o777) == oct(0o600)
    code, out2, err2 = await check(tmp_path, sink, bimlink)  # runs on the stored token
    assert code == EXIT_OK, err2
    assert_no_secrets(out + err + out2 + err2, first, second, stored(token_file))
    api = [e["path"] for e in (await bimlink.admin("GET", "/requests"))["requests"]]
    assert [p for p in api if p.startswith("/api/")] == ["/api/v1/domainaccounts"] * 2


async def test_configured_domain_accounts_that_are_visible_pass(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    await logged_in(bimlink, tmp_path / "token.json")
    code, out, err = await check(tmp_path, sink, bimlink, domain_account_ids=[demo_id("da-2")])
    assert code == EXIT_OK, err
    assert "source bimlink: ok (2 domain accounts visible, the 1 configured among them)" in out


async def test_a_domain_account_the_user_cannot_see_is_named_with_the_visible_ones(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    await logged_in(bimlink, tmp_path / "token.json")
    hidden = demo_id("da-3")
    code, out, err = await check(
        tmp_path, sink, bimlink, domain_account_ids=[demo_id("da-1"), hidden]
    )
    assert code == EXIT_CHECK_FAILED
    assert "GET /batch: ok" in out
    assert f"source bimlink: FAILED: domain_account_ids lists {hidden}, not among" in err
    assert f"Demo Vastgoed BV ({demo_id('da-1')})" in err
    assert "remove them from domain_account_ids" in err


async def test_a_missing_token_file_says_to_log_in(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    code, _, err = await check(tmp_path, sink, bimlink, name="plant")
    assert code == EXIT_CHECK_FAILED
    assert "source plant: FAILED: no BIMlink refresh token at" in err
    assert RELOGIN in err
    assert str(tmp_path / "token.json") in err


@pytest.mark.parametrize("how", ["expired", "revoked"])
async def test_a_dead_refresh_token_says_to_log_in_again(
    how: str, sink: Emulator, tmp_path: Path, clock: FakeClock
) -> None:
    port = free_port()
    options = options_for(port, refresh_token_lifetime_seconds=600)
    async with running_bimlink(options, clock=clock, port=port) as emu:
        token = await logged_in(emu, tmp_path / "token.json")
        if how == "expired":
            clock.advance(601)
        else:
            await emu.admin("POST", "/revoke", {})
        code, out, err = await check(tmp_path, sink, emu)
    assert code == EXIT_CHECK_FAILED
    assert "source bimlink: FAILED:" in err
    assert "invalid_grant" in err
    assert RELOGIN in err
    assert_no_secrets(out + err, token)


async def test_a_wrong_client_secret_names_the_keys(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    token = await logged_in(bimlink, tmp_path / "token.json")
    code, out, err = await check(tmp_path, sink, bimlink, client_secret="not-the-secret")
    assert code == EXIT_CHECK_FAILED
    assert "re-copy client_id and client_secret" in err
    assert_no_secrets(out + err, token, "not-the-secret")


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the file to another user needs root")
async def test_a_token_file_of_another_user_is_not_used(
    bimlink: Bimlink, sink: Emulator, tmp_path: Path
) -> None:
    token_file = tmp_path / "token.json"
    token = await logged_in(bimlink, token_file)
    os.chown(token_file, 65534, 65534)
    code, _, err = await check(tmp_path, sink, bimlink)
    assert code == EXIT_CHECK_FAILED
    assert "belongs to another user (uid 65534): run the command as that user" in err
    assert stored(token_file) == token, "the token was not used, so it is still valid"
    assert (await bimlink.token(grant_type="refresh_token", refresh_token=token)).status == 200
