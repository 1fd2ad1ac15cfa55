"""The emulator's command-line options, the --clients file, and a real server process."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from typing import TYPE_CHECKING

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from connector.errors import ConfigError
from tests.support.emulators import DEMO_FORM
from twin_emulators import buildingminds
from twin_emulators.buildingminds import (
    EmulatorOptions,
    options_from_args,
    run_from_args,
)
from twin_emulators.buildingminds_auth import DEMO_CLIENT
from twin_emulators.common import add_emulator_arguments

if TYPE_CHECKING:
    from pathlib import Path


def parser() -> argparse.ArgumentParser:
    # What `emulate buildingminds` parses: the flags shared by every emulator, then its own.
    parsed = argparse.ArgumentParser(prog="emulate buildingminds")
    add_emulator_arguments(parsed, buildingminds)
    return parsed


def test_the_defaults_are_the_documented_platform() -> None:
    options = options_from_args(parser().parse_args([]))

    assert options == EmulatorOptions()
    assert (options.rate_limit_requests, options.rate_limit_seconds) == (100, 60.0)
    assert options.token_lifetime_seconds == 3599
    assert options.clients == (DEMO_CLIENT,)
    assert options.tenants == ("buildingminds.onmicrosoft.com",)


def test_every_option_reaches_the_emulator() -> None:
    args = parser().parse_args(
        [
            "--rate-limit=50/10",
            "--token-lifetime=60",
            "--processing-delay=0.5",
            "--fault-profile=errors",
            "--fault-rate=0.3",
            "--seed=9",
            "--max-body-bytes=2048",
            "--tenant=tstbuildingminds.onmicrosoft.com",
            "--tenant",
            "contoso.example",
        ]
    )

    options = options_from_args(args)

    assert (options.rate_limit_requests, options.rate_limit_seconds) == (50, 10.0)
    assert (options.token_lifetime_seconds, options.processing_delay_seconds) == (60, 0.5)
    assert (options.fault_profile, options.fault_rate, options.seed) == ("errors", 0.3, 9)
    assert options.max_body_bytes == 2048
    assert options.tenants == ("tstbuildingminds.onmicrosoft.com", "contoso.example")


@pytest.mark.parametrize(
    "argv", [["--rate-limit=100"], ["--rate-limit=0/60"], ["--fault-profile=chaos"]]
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(argv)
    assert caught.value.code == 2


def test_a_clients_file_in_yaml_with_allowed_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(
        "- client_id: writer\n"
        "  client_secret: s1\n"
        "  scope: api://tenant-a/.default\n"
        "- client_id: reader\n"
        "  client_secret: s2\n"
        "  scope: api://tenant-a\n"
        "  allowed_endpoints: [/batch, building]\n",
        encoding="utf-8",
    )

    options = options_from_args(parser().parse_args(["--clients", str(path)]))

    writer, reader = options.clients
    assert (writer.client_id, writer.scope, writer.allowed_endpoints) == (
        "writer",
        "api://tenant-a",
        None,
    )
    assert reader.allowed_endpoints == frozenset({"batch", "building"})
    assert "s2" not in repr(reader)


def test_a_clients_file_in_json(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps({"clients": [{"client_id": "a", "client_secret": "b", "scope": "c"}]}),
        encoding="utf-8",
    )

    options = options_from_args(parser().parse_args(["--clients", str(path)]))

    assert [c.client_id for c in options.clients] == ["a"]


def test_a_bad_clients_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(
        "- client_id: a\n- client_id: b\n  client_secret: s\n  scope: x\n  role: admin\n",
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as caught:
        options_from_args(parser().parse_args(["--clients", str(path)]))

    text = str(caught.value)
    assert "clients[0].client_secret" in text
    assert "clients[0].scope" in text
    assert "clients[1]: unknown keys ['role']" in text


def test_run_from_args_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parser().parse_args(["--clients", str(tmp_path / "missing.yaml")])

    assert run_from_args(args) == 2
    assert "missing.yaml" in capsys.readouterr().err


SERVE = (
    "import argparse, sys\n"
    "from twin_emulators import buildingminds, common\n"
    "p = argparse.ArgumentParser()\n"
    "common.add_emulator_arguments(p, buildingminds)\n"
    "sys.exit(buildingminds.run_from_args(p.parse_args(sys.argv[1:])))\n"
)


@pytest.mark.anyio
async def test_run_from_args_serves_until_sigterm() -> None:
    command = [sys.executable, "-c", SERVE, "--port=0", "--host=127.0.0.1"]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        try:
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
            announcement = line.decode()
            urls = re.search(r"base URL (\S+) \| token URL (\S+)", announcement)
            assert urls is not None, announcement
            base_url, token_url = urls.groups()
            assert "client_id=demo-client client_secret=demo-secret" in announcement
            assert "scope=api://buildingminds-emulator" in announcement

            async with aiohttp.ClientSession() as session:
                async with session.post(token_url, data=DEMO_FORM) as response:
                    token = (await response.json())["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                async with session.get(f"{base_url}/batch", headers=headers) as response:
                    assert response.status == 200
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await process.wait()
    assert code == 0


def test_a_bad_tenant_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tenant"):
        options_from_args(parser().parse_args(["--tenant=contoso/example"]))


def test_the_announced_token_url_names_the_first_configured_tenant() -> None:
    options = options_from_args(parser().parse_args(["--tenant=contoso.example"]))

    line = buildingminds._announcement(options, "127.0.0.1", 8080)  # what run_from_args prints

    assert "token URL http://127.0.0.1:8080/contoso.example/oauth2/v2.0/token" in line
