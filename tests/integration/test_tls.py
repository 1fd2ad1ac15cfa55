"""TLS to the API is verified by default, and a failed verification says how to fix it."""

from __future__ import annotations

import io
import shutil
import ssl
import subprocess
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from connector.commands import run_check
from connector.config import Settings
from twin_devtools.devbroker import free_port
from twin_emulators.buildingminds import EmulatorOptions, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def https_emulator(certificate: tuple[Path, Path]) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    runner = web.AppRunner(create_app(EmulatorOptions()), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def settings(url: str, **sink: object) -> Settings:
    values: dict[str, object] = {
        "base_url": f"{url}/api/digitaltwinintegration",
        "token_url": f"{url}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        "client_id": "demo-client",
        "client_secret": "demo-secret",
        "scope": "api://buildingminds-emulator",
    }
    values.update(sink)
    return Settings.model_validate({"sink": values})


async def test_an_untrusted_certificate_fails_check_with_the_fix(https_emulator: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert not await run_check(settings(https_emulator), out, err, kafka=False)
    assert "TLS certificate verification failed" in err.getvalue()
    assert "sink.ca_file" in err.getvalue()


async def test_the_ca_file_makes_it_trusted(
    https_emulator: str, certificate: tuple[Path, Path]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    trusted = settings(https_emulator, ca_file=str(certificate[0]))
    assert await run_check(trusted, out, err, kafka=False), err.getvalue()
    assert "GET /batch: ok" in out.getvalue()
