"""/healthz and /readyz as an orchestrator sees them, on an injected clock: liveness fails only
when the consume loop stops turning (never for a dependency), and not while draining."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from connector.config import Settings
from connector.health import STALL_SECONDS, Status, bind_health
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio


def _pipeline(clock: FakeClock) -> Any:
    return SimpleNamespace(
        clock=clock, heartbeat=clock(), draining=False, rebalances=1, group_lost_since=None,
        has_token=lambda: True, ready=True,
    )  # fmt: skip


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


async def test_liveness_fails_only_when_the_consume_loop_stops_turning() -> None:
    settings = Settings.model_validate(
        {
            "kafka": {"topics": ["t"]},
            "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    clock, status = FakeClock(), Status()
    runner = await bind_health(settings, CollectorRegistry(), status)
    try:
        port = runner.addresses[0][1]
        assert await _get(port, "/healthz") == (200, {"status": "starting",
                                                       "seconds_since_progress": 0})  # fmt: skip
        status.pipeline = pipeline = _pipeline(clock)
        clock.advance(STALL_SECONDS - 1)  # slow, but turning
        assert (await _get(port, "/healthz"))[0] == 200
        assert (await _get(port, "/readyz"))[0] == 200

        clock.advance(2)  # the loop has not turned for longer than the threshold
        code, body = await _get(port, "/healthz")
        assert (code, body["status"]) == (503, "stalled")
        assert body["seconds_since_progress"] == STALL_SECONDS + 1

        pipeline.draining = True  # a drain may outlast it: not a reason to be killed
        assert (await _get(port, "/healthz"))[0] == 200
        assert (await _get(port, "/readyz"))[0] == 503

        pipeline.draining, pipeline.heartbeat = False, clock()  # the loop turned again
        assert (await _get(port, "/healthz"))[0] == 200
        pipeline.group_lost_since = clock()  # Kafka gone: not ready, still alive
        assert (await _get(port, "/readyz"))[0] == 503
        assert (await _get(port, "/healthz"))[0] == 200
    finally:
        await runner.cleanup()
