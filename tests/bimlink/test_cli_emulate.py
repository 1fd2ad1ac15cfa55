"""`python -m connector emulate bimlink` as a process: it announces where it listens, answers
as BIMlink does, and stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import sys

import aiohttp
import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_emulate_bimlink_serves_until_sigterm() -> None:
    command = [
        sys.executable, "-m", "connector", "emulate", "bimlink", "--port", "0",
        "--redirect-uri", "http://127.0.0.1:9999/callback", "--rate-limit", "5/60",
    ]  # fmt: skip
    async with await anyio.open_process(command) as proc:
        assert proc.stdout is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive()
        text = line.decode()
        match = re.search(r"authority_url (http://\S+)", text)
        assert match, text
        assert "http://127.0.0.1:9999/callback" in text
        assert "demo-client" in text
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{match.group(1)}/api/v1/domainaccounts") as reply:
                assert reply.status == 401
            async with http.get(f"{match.group(1)}/_emulator/health") as reply:
                assert (await reply.json())["user"] == "demo-user"
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await proc.wait() == 0
