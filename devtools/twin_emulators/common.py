"""What every platform emulator shares: the front door (request log, fault injection, bearer
token, rate budget), the admin views of faults and the request log, the command-line flags every
`emulate NAME` takes, and serving from the command line.

Each emulator keeps its own wire format: the pieces here take the emulator's error-response
builder (`ErrorResponse`) and credential lookup instead of writing a body of their own.

Must not: know any platform's URLs or bodies, read the wall clock (time is the state's injected
`clock`), or start tasks of its own.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import functools
import ipaddress
import math
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeAlias, TypedDict, TypeVar

import anyio
import orjson
from aiohttp import web

from connector.errors import ConfigError
from twin_emulators.faults import PROFILES, FaultInjector, FaultSettings
from twin_emulators.requestlog import LogEntry

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

    from aiohttp.typedefs import Handler, Middleware

    from twin_emulators.faults import Fault
    from twin_emulators.limits import RateLimiter

__all__ = [
    "REQUEST_ID",
    "AdminState",
    "Caller",
    "Emulator",
    "ErrorResponse",
    "GatedState",
    "SharedDefaults",
    "SharedOptions",
    "add_admin_routes",
    "add_emulator_arguments",
    "add_shared_arguments",
    "admit",
    "bad_options",
    "exposure_warning",
    "front_door",
    "inject",
    "json_response",
    "parse_faults",
    "rate_limit_arg",
    "request_log",
    "retry_after",
    "root_url",
    "run_from_args",
    "serve",
    "shared_options",
]

Options = TypeVar("Options")
Credential = TypeVar("Credential")
State = TypeVar("State", bound="LoggedState")

REQUEST_ID: Final = web.RequestKey("emulator_request_id", str)
"""The X-Request-Id of a request, set by an emulator whose platform answers one (Building X)
before its front door runs; the request log shows it."""


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


class LoggedState(Protocol):
    """What the front door needs of an emulator's state: its clock and its request log."""

    requests: deque[LogEntry]

    def clock(self) -> float: ...


class GatedState(LoggedState, Protocol):
    """What `admit` needs besides: the fault injector and the rate limiter."""

    faults: FaultInjector
    limiter: RateLimiter


Answer: TypeAlias = "Callable[[Handler, web.Request], Awaitable[web.StreamResponse]]"
"""Runs the handler, turning aiohttp's own errors (404, 405, 413) into the platform's body."""

Gate: TypeAlias = "Callable[[web.Request, Handler, LogEntry], Awaitable[web.StreamResponse]]"
"""The checks of one kind of request (API, token endpoint) before, and including, its handler."""


def front_door(
    key: web.AppKey[State],
    entry_key: web.RequestKey[LogEntry],
    *,
    admin_prefix: str,
    answer: Answer,
    gate: Callable[[str], Gate | None],
) -> Middleware:
    """An emulator's outermost middleware. Admin requests (below `admin_prefix`) are answered
    and not logged; every other request gets a request-log entry (at `request[entry_key]`,
    its status filled in at the end) and goes through `gate(path)`, or straight to `answer`
    when that is None."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(admin_prefix + "/"):
            return await answer(handler, request)
        state = request.app[key]
        entry = LogEntry(state.clock(), request.method, path, request_id=request.get(REQUEST_ID))
        request[entry_key] = entry
        state.requests.append(entry)
        chosen = gate(path)
        if chosen is None:
            response = await answer(handler, request)
        else:
            response = await chosen(request, handler, entry)
        if entry.fault != "reset":  # a dropped connection has no status
            entry.status = response.status
        return response

    return middleware


@dataclass(frozen=True, slots=True)
class Caller(Generic[Credential]):
    """Whom an API request comes from, as a platform's credential lookup found it."""

    credential: Credential  # the platform's own token or grant
    client_id: str  # as the request log shows it
    budget: str  # the rolling rate window the request counts against
    serial: int  # the token's issue order, which the revoked-tokens fault compares


async def admit(
    request: web.Request,
    state: GatedState,
    entry: LogEntry,
    *,
    error: ErrorResponse,
    lookup: Callable[[str | None, float], Caller[Credential] | str],
    challenge: str,
    revoked: str,
    throttled: str,
) -> Caller[Credential] | web.StreamResponse:
    """The checks every emulated API makes first, in this order: the fault profile; the bearer
    token, by `lookup(Authorization header, now)` (401 with its reason, or `revoked` when the
    revoked-tokens fault took the token, and `WWW-Authenticate: challenge`); the caller's rate
    budget (429 with Retry-After and `throttled`, a template of `{requests}`, `{seconds}` and
    `{wait}`, whole seconds). Every admitted request counts, failed ones included.

    Returns the caller, for the platform's own checks (permissions, partitions) and handler,
    or the response to send instead. Every body is the platform's, by `error`.
    """
    fault = state.faults.api_fault(state.clock())
    if fault is not None:
        entry.fault = fault.kind
        injected = await inject(fault, request, error)
        if injected is not None:
            return injected
    now = state.clock()  # an injected delay may have moved it
    caller = lookup(request.headers.get("Authorization"), now)
    if not isinstance(caller, str) and state.faults.token_revoked(caller.serial, now):
        caller = revoked
    if isinstance(caller, str):
        return error(401, caller, {"WWW-Authenticate": challenge})
    entry.client_id = caller.client_id
    wait = state.limiter.admit(caller.budget, now)
    if wait is not None:
        limiter = state.limiter
        message = throttled.format(
            requests=limiter.requests, seconds=limiter.seconds, wait=math.ceil(wait)
        )
        return error(429, message, retry_after(wait))
    return caller


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


class SharedDefaults(Protocol):
    """A platform's defaults of the shared flags: its options class, unconfigured."""

    @property
    def rate_limit_requests(self) -> int: ...
    @property
    def rate_limit_seconds(self) -> float: ...
    @property
    def token_lifetime_seconds(self) -> int: ...
    @property
    def seed(self) -> int: ...


class SharedOptions(TypedDict):
    """The options every emulator's options class takes, as the shared flags give them."""

    rate_limit_requests: int
    rate_limit_seconds: float
    token_lifetime_seconds: int
    fault_profile: str
    fault_rate: float | None
    seed: int


def add_shared_arguments(
    parser: argparse.ArgumentParser, defaults: SharedDefaults, *, budget: str
) -> None:
    """The flags every `emulate NAME` takes, with the platform's `defaults` in their help;
    `budget` says whose requests the rate limit counts ("per credential")."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port to listen on; 0 picks a free one (default: 8080)",
    )
    rate = f"{defaults.rate_limit_requests}/{defaults.rate_limit_seconds:g}"
    parser.add_argument(
        "--rate-limit",
        type=rate_limit_arg,
        default=(defaults.rate_limit_requests, defaults.rate_limit_seconds),
        metavar="REQUESTS/SECONDS",
        help=f"API requests {budget} over a rolling window; more are answered 429 "
        f"(default: {rate})",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=defaults.token_lifetime_seconds,
        metavar="SECONDS",
        help=f"access token lifetime (default: {defaults.token_lifetime_seconds})",
    )
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
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="N",
        help=f"seed of the fault decisions (default: {defaults.seed})",
    )


def shared_options(args: argparse.Namespace) -> SharedOptions:
    """The shared flags' values, as keyword arguments of an emulator's options class."""
    requests, seconds = args.rate_limit
    return SharedOptions(
        rate_limit_requests=requests,
        rate_limit_seconds=seconds,
        token_lifetime_seconds=args.token_lifetime,
        fault_profile=args.fault_profile,
        fault_rate=args.fault_rate,
        seed=args.seed,
    )


@contextlib.contextmanager
def bad_options() -> Iterator[None]:
    """Around building an options class from arguments: its ValueError becomes ConfigError."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError([str(exc)]) from exc


def exposure_warning(host: str) -> str | None:
    """The warning for a bind address beyond loopback, or None for a loopback one.

    The admin API has no authentication by design (tests and demos drive it), so anyone who
    reaches the port can read what was sent, switch faults and reset the state."""
    if host == "localhost":
        return None
    with contextlib.suppress(ValueError):  # a host name: it may resolve to anything
        if ipaddress.ip_address(host).is_loopback:
            return None
    return (
        f"warning: listening on {host or 'every address'}, beyond this machine: the admin API "
        "under /_emulator/ has no authentication; anyone who can reach the port can read "
        "every request and record sent, switch faults and reset the emulator. Bind to "
        "127.0.0.1 (the default) unless the network is yours alone."
    )


def root_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to `host:port`."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared only
    return f"http://{shown}:{port}"


class Emulator(Protocol):
    """What `emulate NAME` needs of an emulator module; each of the four is one."""

    # Read-only members, so that a module's constants of narrower types qualify.
    @property
    def SUMMARY(self) -> str:  # noqa: N802 - a module constant
        """One line of `emulate --help`."""

    @property
    def RATE_BUDGET(self) -> str:  # noqa: N802 - a module constant
        """Whose requests the rate limit counts, e.g. "per credential"."""

    @property
    def DEFAULTS(self) -> SharedDefaults:  # noqa: N802 - a module constant
        """Its options as they are unless a flag says otherwise, shown in its help."""

    def add_cli_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The platform's own flags, added after the shared ones."""

    def run_from_args(self, args: argparse.Namespace) -> int:
        """Serve until SIGINT/SIGTERM; the exit code."""


def add_emulator_arguments(parser: argparse.ArgumentParser, emulator: Emulator) -> None:
    """Everything `emulate NAME` takes: the shared flags with the platform's defaults, then
    the platform's own."""
    add_shared_arguments(parser, emulator.DEFAULTS, budget=emulator.RATE_BUDGET)
    emulator.add_cli_arguments(parser)


def run_from_args(
    args: argparse.Namespace,
    options_from_args: Callable[[argparse.Namespace], Options],
    create_app: Callable[[Options], web.Application],
    announcement: Callable[[Options, str, int], str],
) -> int:
    """`emulate NAME`: serve on args.host:args.port until SIGINT/SIGTERM; the exit code
    (2: the options are bad, said on stderr). `announcement(options, host, port)` is the one
    line printed once the socket is bound."""
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - a command-line front end
        return 2
    if (warning := exposure_warning(args.host)) is not None:
        print(warning, file=sys.stderr, flush=True)  # noqa: T201 - a command-line front end
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


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """client_id and secret from an `Authorization: Basic` header, which Entra also accepts."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None
