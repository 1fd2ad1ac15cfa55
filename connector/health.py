"""The HTTP endpoints of a running connector: /metrics, /healthz and /readyz.

`bind_health` listens on `metrics.port` before Kafka is touched (`StartupFailed` naming the
key when it is busy); the handlers read the running `Pipeline` through `Status`, which
`run_connector` fills in as the start goes on.

Must not: check a dependency in /healthz (a broker or API outage must not get the pod
restarted), or touch anything of the pipeline but what it reads.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import anyio
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connector.errors import ConnectorError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from connector.config import Settings
    from connector.pipeline import Pipeline

__all__ = ["STALL_SECONDS", "StartupFailed", "Status", "bind_health"]

STALL_SECONDS = 60.0  # /healthz fails when the consume loop has not turned for this long


class StartupFailed(ConnectorError):
    """`run` could not start; the message names the setting to change (fatal)."""


class Status:
    """What the HTTP endpoints see and what a stop signal acts on, as `run` gets going.

    Until the pipeline runs (`pipeline` is None) a signal cancels `starting` (waiting for
    Kafka, connecting): nothing was consumed, so there is nothing to drain."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.stop_requested = False
        self.starting = anyio.CancelScope()
        self.everything = anyio.CancelScope()


async def bind_health(
    settings: Settings, registry: CollectorRegistry, status: Status
) -> web.AppRunner:
    """Listen on `metrics.port` before Kafka is touched, so a busy port stops `run` at once
    (one line naming the key) instead of after a needless group join. Returns the runner;
    the caller cleans it up."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        """Liveness: the consume loop turned recently (it turns every 200 ms, paused or not).

        Never a dependency check: a broker or API outage must not get the pod restarted, so
        waiting for Kafka at start is healthy too."""
        pipeline = status.pipeline
        if pipeline is None:
            return web.json_response({"status": "starting", "seconds_since_progress": 0})
        stalled = pipeline.clock() - pipeline.heartbeat
        ok = stalled < STALL_SECONDS or pipeline.draining
        return web.json_response(
            {"status": "ok" if ok else "stalled", "seconds_since_progress": round(stalled, 1)},
            status=200 if ok else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        """Readiness: joined the group (holds an assignment), the group's coordinator is
        reachable, holds a token, not draining."""
        pipeline = status.pipeline
        checks = {
            "joined": pipeline is not None and pipeline.rebalances > 0,
            "kafka": pipeline is not None and pipeline.group_lost_since is None,
            "token": pipeline is not None and pipeline.has_token(),
            "not_draining": pipeline is not None and pipeline.ready and not pipeline.draining,
        }
        ok = all(checks.values())
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = settings.metrics.port
    try:
        await web.TCPSite(runner, settings.metrics.host, port).start()
    except OSError as exc:
        await runner.cleanup()
        what = "is in use" if exc.errno == errno.EADDRINUSE else "cannot be listened on"
        raise StartupFailed(f"metrics.port {port} {what}: {exc.strerror or exc}") from None
    return runner
