"""What every platform emulator shares: carrying out faults, the admin views of faults and the
request log, rate-limit arguments and serving from the command line.

Each emulator keeps its own wire format: the pieces here take the emulator's error-response
builder (`ErrorResponse`) instead of writing a body of their own.

Must not: know any platform's URLs or bodies, read the clock, or start tasks of its own.
"""

from __future__ import annotations

import argparse
import functools
import math
import signal
import sys
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import orjson
from aiohttp import web

from connector.emulators.buildingminds_faults import PROFILES, FaultInjector, FaultSettings
from connector.errors import ConfigError

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable, Iterable, Mapping

    from connector.emulators.buildingminds_faults import Fault
    from connector.emulators.buildingminds_state import LogEntry

__all__ = [
    "AdminState",
    "ErrorResponse",
    "add_admin_routes",
    "add_fault_arguments",
    "inject",
    "json_response",
    "parse_faults",
    "rate_limit_arg",
    "request_log",
    "retry_after",
    "run_from_args",
    "serve",
]

Options = TypeVar("Options")


class ErrorResponse(Protocol):
    """An emulator's error answer: `status`, a human message and extra headers."""

    def __call__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response: ...


def json_response(
    data: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type=content_type
    )


def retry_after(seconds: float) -> dict[str, str]:
    """A `Retry-After` header in whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def inject(
    fault: Fault, request: web.Request, error: ErrorResponse
) -> web.StreamResponse | None:
    """Carry out an injected fault: the response to send instead, or None to go on."""
    if fault.kind == "delay":
        await anyio.sleep(fault.seconds)
        return None
    if fault.kind == "error":
        # Injected 503s say when to come back, as a gateway in maintenance would.
        headers = retry_after(1) if fault.status == 503 else None
        return error(fault.status, "The service is temporarily unavailable.", headers)
    if fault.kind == "reset":
        # Drop the connection without an answer: the client sees a disconnect or reset.
        # aiohttp discards the response returned for a transport that is gone.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)
    if fault.kind == "hang":
        await anyio.sleep(fault.seconds)
        return error(504, "The upstream service did not answer in time.")
    return error(429, "Rate limit is exceeded.", retry_after(fault.seconds))


class AdminState(Protocol):
    """What the shared admin routes need of an emulator's state."""

    faults: FaultInjector
    requests: deque[LogEntry]

    def clock(self) -> float: ...
    def iso(self, at: float) -> str: ...
    def set_faults(self, settings: FaultSettings) -> None: ...
    def reset(self) -> None: ...


def add_admin_routes(router: web.UrlDispatcher, prefix: str, key: web.AppKey[Any]) -> None:
    """`GET {prefix}/requests[?limit=]`, `GET|POST {prefix}/faults` and `POST {prefix}/reset`
    on the state at `app[key]`."""

    def state(request: web.Request) -> AdminState:
        found: AdminState = request.app[key]
        return found

    async def requests(request: web.Request) -> web.StreamResponse:
        current = state(request)
        limit = request.query.get("limit", str(len(current.requests)))
        found = request_log(current.requests, current.iso, limit)
        return (
            json_response(found)
            if isinstance(found, dict)
            else json_response({"error": found}, 400)
        )

    async def get_faults(request: web.Request) -> web.StreamResponse:
        current = state(request)
        return json_response(current.faults.active(current.clock()).to_json())

    async def set_faults(request: web.Request) -> web.StreamResponse:
        settings = parse_faults(await request.read())
        if isinstance(settings, str):
            return json_response({"error": settings}, 400)
        state(request).set_faults(settings)
        return json_response(settings.to_json())

    async def reset(request: web.Request) -> web.StreamResponse:
        state(request).reset()
        return json_response({"status": "reset"})

    router.add_get(f"{prefix}/requests", requests)
    router.add_get(f"{prefix}/faults", get_faults)
    router.add_post(f"{prefix}/faults", set_faults)
    router.add_post(f"{prefix}/reset", reset)


def parse_faults(raw: bytes) -> FaultSettings | str:
    """The body of `POST /_emulator/faults` as settings, or what is wrong with it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return 'the body must be a JSON object like {"profile": "errors"}'
    try:
        return FaultSettings.from_mapping(data)
    except (ValueError, TypeError) as exc:
        return str(exc)


def request_log(
    entries: Iterable[LogEntry], iso: Callable[[float], str], limit: str
) -> dict[str, Any] | str:
    """`GET /_emulator/requests?limit=`: the newest `limit` entries, or what is wrong."""
    if not limit.isdigit():
        return "limit must be a whole number"
    kept = list(entries)[-int(limit) :] if int(limit) else []
    data = [
        {
            "time": iso(e.time),
            "client_id": e.client_id,
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "record_count": e.record_count,
            "fault": e.fault,
            "request_id": e.request_id,
        }
        for e in kept
    ]
    return {"count": len(data), "requests": data}


def rate_limit_arg(text: str) -> tuple[int, float]:
    """argparse type of `--rate-limit REQUESTS/SECONDS`."""
    requests, sep, seconds = text.partition("/")
    try:
        parsed = (int(requests), float(seconds))
    except ValueError:
        parsed = (0, 0.0)
    if not sep or parsed[0] <= 0 or parsed[1] <= 0:
        raise argparse.ArgumentTypeError(f"expected REQUESTS/SECONDS like 100/60, got {text!r}")
    return parsed


def add_fault_arguments(parser: argparse.ArgumentParser, *, seed: int) -> None:
    """`--fault-profile`, `--fault-rate` and `--seed`, the same for every emulator."""
    parser.add_argument(
        "--fault-profile",
        choices=list(PROFILES),
        default="none",
        metavar="NAME",
        help=f"faults to inject: {', '.join(PROFILES)} (default: none)",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of requests the fault profile affects, 0..1 (default: per profile)",
    )
    parser.add_argument(
        "--seed", type=int, default=seed, help=f"seed of the fault decisions (default: {seed})"
    )


def run_from_args(
    args: argparse.Namespace,
    options_from_args: Callable[[argparse.Namespace], Options],
    create_app: Callable[[Options], web.Application],
    announcement: Callable[[Options, str, int], str],
) -> int:
    """`emulate NAME`: serve on args.host:args.port until SIGINT/SIGTERM; the exit code
    (2: the options are bad, said on stderr)."""
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - a command-line front end
        return 2
    announce = functools.partial(announcement, options)
    anyio.run(serve, create_app(options), args.host, args.port, announce)
    return 0


async def serve(
    app: web.Application, host: str, port: int, announce: Callable[[str, int], str]
) -> None:
    """Serve `app` until SIGINT/SIGTERM; print `announce(bound_host, bound_port)` once."""
    # No access log: one line per request would cost more than the emulator's own work
    # under a benchmark; GET /_emulator/requests has the same facts.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await web.TCPSite(runner, host, port).start()
            bound_host, bound_port = runner.addresses[0][:2]
            print(announce(str(bound_host), int(bound_port)), flush=True)  # noqa: T201 - the command's one line
            async for _ in signals:
                break
    finally:
        await runner.cleanup()
