"""`connector auth bimlink` end to end over real sockets: the login listener, the emulator's
auto-approving authorize endpoint, the code exchange, and the token file; plus an actionable
error for each way a login fails."""

from __future__ import annotations

import io
import os
import stat
import threading
from typing import TYPE_CHECKING

import aiohttp
import anyio
import orjson
import pytest
import yaml

from connector.cli import main
from tests.bimlink.helpers import (
    Bimlink,
    drive_login,
    free_port,
    options_for,
    running_bimlink,
    source_settings,
)
from tests.kafka_fixtures import wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


async def test_login_stores_the_refresh_token_privately(bimlink: Bimlink, tmp_path: Path) -> None:
    token_file = tmp_path / "secrets" / "bimlink.json"
    result = await drive_login(source_settings(bimlink, token_file))
    assert result.error is None
    assert result.path == token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    stored = orjson.loads(token_file.read_text())
    assert stored["refresh_token"]
    assert stored["client_id"] == "demo-client"
    assert result.pages == [(200, result.pages[0][1])]
    assert "Logged in" in result.pages[0][1]
    assert "/connect/authorize?" in result.output
    assert "code_challenge_method=S256" in result.output
    assert "Logged in as demo-user" in result.output
    assert stored["refresh_token"] not in result.output
    refreshed = await bimlink.token(
        grant_type="refresh_token", refresh_token=stored["refresh_token"]
    )
    assert refreshed.status == 200


async def test_login_replaces_a_world_readable_file_with_a_private_one(
    bimlink: Bimlink, tmp_path: Path
) -> None:
    token_file = tmp_path / "bimlink.json"
    token_file.write_text("old")
    token_file.chmod(0o644)
    assert (await drive_login(source_settings(bimlink, token_file))).error is None
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


async def test_denied_login(bimlink: Bimlink, tmp_path: Path) -> None:
    await bimlink.admin("POST", "/login", {"approve": False})
    result = await drive_login(source_settings(bimlink, tmp_path / "t.json"))
    assert result.error is not None
    assert "access_denied" in str(result.error)
    assert "approve" in str(result.error)
    assert not (tmp_path / "t.json").exists()


async def test_refused_scope(bimlink: Bimlink, tmp_path: Path) -> None:
    settings = source_settings(
        bimlink, tmp_path / "t.json", scope="bimlink_publicapi offline_access email"
    )
    result = await drive_login(settings)
    assert result.error is not None
    assert "invalid_scope" in str(result.error)
    assert "bimlink_publicapi offline_access" in str(result.error)


async def test_state_mismatch(bimlink: Bimlink, tmp_path: Path) -> None:
    def forge(url: str) -> str:
        return url.replace("state=", "state=forged")

    result = await drive_login(source_settings(bimlink, tmp_path / "t.json"), tamper=forge)
    assert result.error is not None
    assert "state mismatch" in str(result.error)
    assert not (tmp_path / "t.json").exists()


async def test_wrong_client_secret(bimlink: Bimlink, tmp_path: Path) -> None:
    settings = source_settings(bimlink, tmp_path / "t.json", client_secret="wrong")
    result = await drive_login(settings)
    assert result.error is not None
    assert "invalid_client" in str(result.error)
    assert "client_secret" in str(result.error)
    assert "wrong" not in str(result.error)


async def test_redirect_uri_not_whitelisted_times_out_with_the_fix(
    bimlink: Bimlink, tmp_path: Path
) -> None:
    other_port = free_port()
    settings = source_settings(bimlink, tmp_path / "t.json", redirect_port=other_port)
    result = await drive_login(settings, wait_seconds=0.5)
    assert result.pages[0][0] == 400
    assert "not whitelisted" in result.pages[0][1]
    assert result.error is not None
    message = str(result.error)
    assert "no login arrived within 0.5 s" in message
    assert f"whitelist http://127.0.0.1:{other_port}/callback" in message


async def test_no_refresh_token_without_offline_access(tmp_path: Path) -> None:
    port = free_port()
    async with running_bimlink(options_for(port, refresh_tokens=False), port=port) as emu:
        result = await drive_login(source_settings(emu, tmp_path / "t.json"))
    assert result.error is not None
    assert "no refresh token" in str(result.error)
    assert "offline access" in str(result.error)


async def test_port_in_use(bimlink: Bimlink, tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", bimlink.redirect_port))
        busy.listen()
        from connector.sources.bimlink.auth import LoginFailed, login  # noqa: PLC0415

        with pytest.raises(LoginFailed, match=r"cannot listen on 127\.0\.0\.1"):
            await login(source_settings(bimlink, tmp_path / "t.json"), out=io.StringIO())


async def test_cli_command_end_to_end(bimlink: Bimlink, tmp_path: Path) -> None:
    token_file = tmp_path / "bimlink.json"
    source = source_settings(bimlink, token_file).model_dump(mode="json", exclude_none=True)
    source["client_secret"] = "demo-secret"
    config = tmp_path / "connector.yaml"
    config.write_text(
        yaml.safe_dump({"sink": {"client_id": "a", "client_secret": "b", "scope": "s"},
                        "sources": [source]})
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    codes: list[int] = []
    argv = ["auth", "bimlink", "--config", str(config), "--no-browser", "--timeout", "20"]
    thread = threading.Thread(target=lambda: codes.append(main(argv, out, err)))
    thread.start()
    try:
        await wait_until(lambda: "/connect/authorize?" in out.getvalue(), what="the login URL")
        url = next(w for w in out.getvalue().split() if "/connect/authorize?" in w)
        async with aiohttp.ClientSession() as browser, browser.get(url) as page:
            assert page.status == 200
        await wait_until(lambda: bool(codes), what="the command to finish")
    finally:
        await anyio.to_thread.run_sync(thread.join)
    assert codes == [0], err.getvalue()
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600


def test_cli_without_a_bimlink_source(tmp_path: Path) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text("sink: {client_id: a, client_secret: b, scope: s}\n")
    err = io.StringIO()
    assert main(["auth", "bimlink", "--config", str(config)], io.StringIO(), err) == 2
    assert "no bimlink source found" in err.getvalue()
