"""`BimlinkSource` and its refresh-token grant against the emulator over a real socket: a
complete snapshot read page by page, rotated refresh tokens stored before use, and an
actionable error for each credential or permission failure. Time is the emulator's fake clock
and the source's injected clock; retries sleep through an injected no-op."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import pytest
from pydantic import SecretStr

from connector.auth import TokenProvider
from connector.errors import (
    CredentialsRejected,
    EndpointMisconfigured,
    RequestRejected,
    ServerError,
    TokenEndpointUnavailable,
)
from connector.sources.bimlink.auth import RefreshTokenFile, RefreshTokenGrant
from connector.sources.bimlink.client import BimlinkSource
from tests.bimlink.helpers import (
    Bimlink,
    free_port,
    options_for,
    running_bimlink,
    source_settings,
)
from twin_emulators.bimlink_data import demo_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield http


async def logged_in(emu: Bimlink, path: Path) -> str:
    token: str = (await emu.tokens())["refresh_token"]
    RefreshTokenFile(path).save(token, token_url=f"{emu.url}/connect/token", client_id="x")
    return token


def make_source(
    emu: Bimlink, session: aiohttp.ClientSession, path: Path, clock: FakeClock, **overrides: Any
) -> tuple[BimlinkSource, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    source = BimlinkSource(
        source_settings(emu, path, **overrides), session, clock=clock, sleep=sleep,
        rand=lambda: 0.5,
    )  # fmt: skip
    return source, sleeps


async def test_snapshot_reads_every_page_of_every_visible_account(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock)
    items = await source.snapshot()
    counts = Counter(i.entity.name for i in items)
    # da-1: 2 locations, 3 projects (9 + 3*2*... spaces); da-2: only the visible location
    assert counts == {"Address": 3, "Site": 3, "Building": 4, "Floor": 9, "Space": 27}
    assert source.name == "bimlink"
    log = (await bimlink.admin("GET", "/requests"))["requests"]
    api = [e for e in log if e["path"].startswith("/api/v1/")]
    assert all(e["status"] == 200 for e in api)
    phases = [e for e in api if e["path"].endswith("/spatialstructureelements")]
    assert len(phases) > 4, "page_limit 2 means several pages per phase"
    # only the chosen (last) phase of each project is read
    assert not any(demo_id("prj-1/Ontwerp") in e["path"] for e in phases)
    buildings = {i.external_id for i in items if i.entity.name == "Building"}
    assert f"bimlink:prj:{demo_id('prj-5')}" not in buildings, "a hidden location stays hidden"


async def test_rotated_refresh_token_is_stored_before_use_and_reused_across_restarts(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    first = await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock)
    await source.snapshot()
    second = orjson.loads(token_file.read_text())["refresh_token"]
    assert second != first
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The access token is due for renewal: the stored token is the one the server accepts.
    clock.advance(3600)
    await source.snapshot()
    third = orjson.loads(token_file.read_text())["refresh_token"]
    assert third != second
    restarted, _ = make_source(bimlink, session, token_file, clock)
    assert len(await restarted.snapshot()) > 0


async def test_grant_picks_up_a_new_login_and_tightens_a_loose_file(
    bimlink: Bimlink, tmp_path: Path
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    grant = RefreshTokenGrant(
        f"{bimlink.url}/connect/token", "demo-client", None, RefreshTokenFile(token_file)
    )
    await bimlink.admin("POST", "/revoke", {})
    fresh = await logged_in(bimlink, token_file)  # a new login while the connector runs
    token_file.write_text(fresh)  # pasted by hand, world-readable
    token_file.chmod(0o644)
    assert grant.fields()["refresh_token"] == fresh
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert fresh in grant.secrets()


@pytest.mark.parametrize("how", ["expired", "revoked", "missing"])
async def test_a_dead_refresh_token_says_to_log_in_again(
    how: str, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    port = free_port()
    options = options_for(port, refresh_token_lifetime_seconds=600)
    async with running_bimlink(options, clock=clock, port=port) as emu:
        token_file = tmp_path / "t.json"
        if how != "missing":
            await logged_in(emu, token_file)
        if how == "expired":
            clock.advance(601)
        elif how == "revoked":
            await emu.admin("POST", "/faults", {"profile": "revoked-tokens"})
        source, _ = make_source(emu, session, token_file, clock)
        with pytest.raises(CredentialsRejected) as caught:
            await source.snapshot()
    message = str(caught.value)
    assert "connector auth bimlink" in message
    assert str(token_file) in message
    if how != "missing":
        assert "invalid_grant" in message


async def test_wrong_client_secret_names_the_keys_to_fix(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock, client_secret="wrong")
    with pytest.raises(CredentialsRejected, match="client_secret") as caught:
        await source.snapshot()
    assert "wrong" not in str(caught.value)


async def test_an_unwritable_token_file_is_an_error_not_a_lost_token(
    bimlink: Bimlink,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    real_replace = os.replace

    def full_disk(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("connector.sources.bimlink.auth.os.replace", full_disk)
    source, _ = make_source(bimlink, session, token_file, clock)
    with pytest.raises(CredentialsRejected, match="cannot be written"):
        await source.snapshot()
    assert os.listdir(tmp_path) == ["t.json"], "no temporary file is left behind"
    monkeypatch.setattr("connector.sources.bimlink.auth.os.replace", real_replace)
    # Fixed: the rotated token kept in memory is the one that still works, and is stored.
    assert len(await source.snapshot()) > 0
    assert orjson.loads(token_file.read_text())["refresh_token"] in source.grant.secrets()


async def test_token_endpoint_outage_is_retriable(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    await bimlink.admin("POST", "/faults", {"profile": "token-outage"})
    source, _ = make_source(bimlink, session, token_file, clock)
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await source.snapshot()
    assert caught.value.retriable


async def test_a_hidden_configured_account_is_a_permission_error(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    hidden = demo_id("da-3")
    source, _ = make_source(bimlink, session, token_file, clock, domain_account_ids=[hidden])
    with pytest.raises(EndpointMisconfigured, match="domain_account_ids") as caught:
        await source.snapshot()
    assert caught.value.status == 403


async def test_configured_accounts_only(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(
        bimlink, session, token_file, clock, domain_account_ids=[demo_id("da-2")]
    )
    items = await source.snapshot()
    assert Counter(i.entity.name for i in items)["Site"] == 1


async def test_page_limit_above_the_maximum_is_rejected_with_the_fix(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock, page_limit=500)
    with pytest.raises(RequestRejected, match="lower page_limit"):
        await source.snapshot()


async def test_wrong_api_prefix_is_a_configuration_error(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock, api_prefix="")
    with pytest.raises(EndpointMisconfigured, match="api_prefix"):
        await source.snapshot()


async def test_transient_faults_are_retried_and_the_snapshot_stays_complete(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, sleeps = make_source(bimlink, session, token_file, clock, max_attempts=10)
    expected = {i.external_id: i.digest() for i in await source.snapshot()}
    for profile in ("errors", "resets"):
        await bimlink.admin("POST", "/faults", {"profile": profile, "rate": 0.3, "seed": 3})
        got = {i.external_id: i.digest() for i in await source.snapshot()}
        assert got == expected, profile
    assert sleeps
    assert all(0 < s <= 10 for s in sleeps)
    await bimlink.admin("POST", "/faults", {"profile": "429-storm", "retry_after_seconds": 7})
    with pytest.raises(Exception) as storm:  # noqa: PT011 - the type is checked below
        await source.snapshot()
    assert storm.value.__class__.__name__ == "RateLimited"
    assert sleeps[-1] == 7, "Retry-After is honoured between tries"


async def test_persistent_server_errors_fail_the_poll_after_max_attempts(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    await bimlink.admin("POST", "/faults", {"profile": "errors", "rate": 1.0})
    source, sleeps = make_source(bimlink, session, token_file, clock, max_attempts=3)
    with pytest.raises(ServerError) as caught:
        await source.snapshot()
    assert caught.value.retriable
    assert len(sleeps) == 2


async def test_the_provider_is_single_flight_for_the_rotating_grant(
    bimlink: Bimlink, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    """Two renewals at once must not spend the same refresh token twice (the second would be
    invalid_grant): the shared TokenProvider makes one token request for the wave."""
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    grant = RefreshTokenGrant(
        f"{bimlink.url}/connect/token", "demo-client", SecretStr("demo-secret"),
        RefreshTokenFile(token_file),
    )  # fmt: skip
    provider = TokenProvider(session, grant, clock=clock)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(provider.token)
    log = (await bimlink.admin("GET", "/requests"))["requests"]
    token_posts = [e for e in log if e["path"] == "/connect/token"]
    assert len(token_posts) == 2  # the test's own login, and one renewal for five callers
    assert all(e["status"] == 200 for e in token_posts)


async def test_no_secret_or_token_in_reprs_or_logs(
    bimlink: Bimlink,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token_file = tmp_path / "t.json"
    await logged_in(bimlink, token_file)
    source, _ = make_source(bimlink, session, token_file, clock)
    await bimlink.admin("POST", "/faults", {"profile": "errors", "rate": 0.5, "seed": 1})
    await source.snapshot()
    secrets = [orjson.loads(token_file.read_text())["refresh_token"], "demo-secret"]
    current = source.provider.current
    assert current is not None
    secrets.append(current.value.get_secret_value())
    shown = [repr(source), repr(source.grant), repr(source.provider), repr(source.settings)]
    shown += [r.getMessage() for r in caplog.records]
    assert any("retrying" in line for line in shown), "the faults were logged"
    assert not [line for line in shown for secret in secrets if secret in line]
